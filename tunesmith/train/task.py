"""What a training step and a callback see: the task (items, batching, objective) and the trainer's
state, as a protocol, so that steps, callbacks and recipes depend on this small interface and not on
the loop that implements it (train/loop.py's Trainer)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

if TYPE_CHECKING:
    from tunesmith.objectives.base import Objective
    from tunesmith.schema import TrainConfig
    from tunesmith.train.parallel.base import Strategy
    from tunesmith.train.precision import Precision


@dataclass
class TrainTask:
    items: Sequence[Any]
    collate: Callable[[list[Any]], dict[str, torch.Tensor]]  # training batches (augmentation on)
    objective: Objective
    pad_id: int | None = None
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None  # collective under DDP / FSDP
    head_params: set[str] = field(default_factory=set)
    lengths: Sequence[int] | None = None  # per item, for length-grouped batches
    # evaluate the starting model (step 0) too, so the best evaluation is never below the start
    evaluate_start: bool = False


class TrainerView(Protocol):
    """The loop's state a step or callback may read (and, for `train_seconds`, add to)."""

    model: nn.Module  # the model as the method left it (its parameters: what the optimizer updates)
    wrapped: nn.Module  # what the forward runs on: the strategy's wrapper (DDP), or `model` itself
    optimizer: torch.optim.Optimizer
    scheduler: Any  # torch.optim.lr_scheduler.LRScheduler
    strategy: Strategy
    precision: Precision
    task: TrainTask
    cfg: TrainConfig
    step: int  # optimizer steps done so far (the loop adds one after each step returns)
    total_steps: int
    steps_per_epoch: int
    train_seconds: float

    def step_indices(self, step: int) -> list[int]: ...

    def say(self, message: str) -> None: ...
