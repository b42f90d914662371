"""A parallelism strategy: how the model is wrapped, how gradients are synchronised and clipped, and how
full state dicts are gathered and loaded. The training loop asks its strategy and never knows which
one it has. This base class is the single-process strategy (`none`); others override what differs.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar

import torch
from torch import nn

from tunesmith.train.distributed import DistInfo


class Strategy:
    name: ClassVar[str] = "none"
    multi_process: ClassVar[bool] = False  # needs a torchrun launch (WORLD_SIZE > 1)

    def __init__(self, info: DistInfo) -> None:
        self.info = info

    # -- who this process is -----------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return self.info.rank

    @property
    def world_size(self) -> int:
        return self.info.world_size

    @property
    def device(self) -> torch.device:
        return self.info.device

    @property
    def is_main(self) -> bool:
        """The process that writes files (run dir, checkpoints, logs)."""
        return self.info.rank == 0

    # -- collectives: identities in one process ----------------------------------------------------
    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def barrier(self) -> None:
        return None

    def gather_objects(self, obj: Any) -> list[Any]:
        return [obj]

    # -- the model ---------------------------------------------------------------------------------
    def wrap(self, model: nn.Module) -> nn.Module:
        """What the loop calls forward on; the optimizer is built after wrapping, over `model`'s
        parameters as the strategy left them."""
        return model

    def sync_gradients(self, wrapped: nn.Module, sync: bool) -> AbstractContextManager:
        """Around one micro-batch's forward and backward: `sync` is False for all but the step's last."""
        return nullcontext()

    def clip_grad_norm_(self, params: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
        """Scale the gradients to a total norm of at most `max_norm`; returns the norm before."""
        return torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], max_norm)

    def grad_norm(self, params: Iterable[torch.Tensor]) -> torch.Tensor:
        grads = [p.grad for p in params if p.grad is not None]
        return torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())

    def model_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """What a checkpoint keeps of the model (trainable tensors and buffers), whole, on the main process."""
        from tunesmith.train.checkpoint import changing_state

        return changing_state(model)

    def load_model_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        from tunesmith.train.checkpoint import load_changing_state

        load_changing_state(model, state)

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return optimizer.state_dict()

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        optimizer.load_state_dict(state)
