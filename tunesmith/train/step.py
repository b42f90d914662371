"""One optimizer update, and the data order it draws from.

The data order is a pure function of (data_seed, epoch), and the position in it is the optimizer step,
so a checkpoint needs no sampler state: resuming at step s replays exactly the batches after s.

`SupervisedStep` is the update most objectives use, built from four parts a recipe's own step reuses
instead of copying them:
- `micro_batches`: this process's share of the step's items, cut into micro-batches;
- `step_counts`: each loss term's count over the whole step (all micro-batches, all processes);
- `accumulate`: forward and backward of each micro-batch under the run's precision, each term's *sum*
  divided by its whole-step count (exactly the large-batch mean), gradients synchronised on the last
  micro-batch only, a non-finite loss stopped before its backward;
- `apply_update`: clip (or measure) the gradients, stop before an update with non-finite ones, step
  the optimizer and (unless told not to) the schedule, clear the gradients.
A recipe that must generate, run several inner epochs or relabel brings its own step (any callable
taking the trainer and returning a StepOutput, with its own state_dict); an objective hands it to the
loop through `Objective.training_step`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from tunesmith.errors import TrainingError

if TYPE_CHECKING:
    from tunesmith.objectives.base import Loss
    from tunesmith.train.task import TrainerView


@dataclass
class StepOutput:
    """What one optimizer step did, for logging: per-term loss sums and counts (this process's share
    of the sums, the whole step's counts) and extra logged sums with their counts."""

    sums: dict[str, float]
    counts: dict[str, float]
    logs: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (sum, count)
    samples: int = 0


def epoch_order(n: int, data_seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(data_seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def epoch_batches(n: int, batch_size: int, data_seed: int, epoch: int,
                  lengths: Sequence[int] | None = None, group: int = 64) -> list[list[int]]:
    """The optimizer steps of one epoch, as lists of item indices: a pure function of its arguments.

    With `lengths`, items of similar length share a batch (less padding, often 1.3-2x faster): the
    shuffled order is cut into windows of `group` batches, each window sorted by length and cut into
    batches, and the batches shuffled again. Batch composition stays random from epoch to epoch.
    """
    order = epoch_order(n, data_seed, epoch)
    if lengths is not None:
        window = batch_size * group
        order = [i for start in range(0, n, window)
                 for i in sorted(order[start : start + window], key=lambda j: -lengths[j])]
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if lengths is not None:
        # keep the short remainder batch last, so only one step per epoch is small
        full, tail = (batches[:-1], batches[-1:]) if len(batches[-1]) < batch_size else (batches, [])
        generator = torch.Generator().manual_seed(data_seed * 1_000_003 + epoch + 7919)
        batches = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()] + tail
    return batches


def chunks(seq: list[int], parts: int) -> list[list[int]]:
    """Split into `parts` nearly equal consecutive pieces (some may be empty)."""
    size, extra = divmod(len(seq), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(seq[start:end])
        start = end
    return out


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def micro_batches(trainer: TrainerView, indices: list[int]) -> list[dict[str, torch.Tensor] | None]:
    """This process's share of `indices` (a step's items across all processes), collated into
    train.grad_accum micro-batches; None where a micro-batch got no item."""
    task, strategy = trainer.task, trainer.strategy
    micro = chunks(chunks(indices, strategy.world_size)[strategy.rank], trainer.cfg.grad_accum)
    return [task.collate([task.items[i] for i in ids]) if ids else None for ids in micro]


def step_counts(trainer: TrainerView, batches: list[dict[str, torch.Tensor] | None]) -> dict[str, float]:
    """Each loss term's count (its denominator) over the whole step: every micro-batch, every process."""
    objective = trainer.task.objective
    local: dict[str, float] = {}
    for batch in batches:
        for name, n in (objective.counts(batch) if batch is not None else {}).items():
            local[name] = local.get(name, 0.0) + float(n)
    names = _count_names(trainer)
    totals = trainer.strategy.all_reduce_sum(torch.tensor([local.get(n, 0.0) for n in names], dtype=torch.float64))
    counts = dict(zip(names, totals.tolist(), strict=True))
    if not any(counts.values()):
        raise TrainingError(f"step {trainer.step + 1}: the batch has nothing to learn from (no targets)")
    return counts


def accumulate(trainer: TrainerView, batches: list[dict[str, torch.Tensor] | None], counts: dict[str, float],
               loss: Callable[[nn.Module, dict[str, torch.Tensor]], Loss] | None = None
               ) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """Forward and backward of each micro-batch: `loss` (the objective's by default) gives each term's
    sum, divided here by the term's whole-step count. Returns this process's (term sums, logged sums)."""
    task, strategy, precision = trainer.task, trainer.strategy, trainer.precision
    loss = loss or task.objective.loss
    sums: dict[str, float] = {}
    logs: dict[str, tuple[float, float]] = {}
    for j, batch in enumerate(batches):
        weight = 1.0
        if batch is None:  # this process got no items; DDP and FSDP still need its forward and backward
            batch, weight = task.collate([task.items[0]]), 0.0
        with strategy.sync_gradients(trainer.wrapped, sync=j == len(batches) - 1):
            with precision.autocast():
                out = loss(trainer.wrapped, _to(batch, strategy.device))
                total = sum(term.float() * (strategy.world_size / max(counts.get(name, 0.0), 1.0))
                            for name, term in out.terms.items())
            value = total.item()
            if not math.isfinite(value):
                raise TrainingError(
                    f"the loss became {value} at step {trainer.step + 1} (epoch "
                    f"{trainer.step // trainer.steps_per_epoch + 1}); lower train.lr, set train.max_grad_norm, "
                    "or check the data for extreme values")
            precision.backward(total * weight)
        for name, term in out.terms.items():
            sums[name] = sums.get(name, 0.0) + term.item() * weight
        for name, (amount, per) in out.logs.items():
            before = logs.get(name, (0.0, counts.get(per, 0.0)))
            logs[name] = (before[0] + float(amount) * weight, before[1])
    return sums, logs


def apply_update(trainer: TrainerView, schedule: bool = True) -> float:
    """Clip (train.max_grad_norm) or measure the gradients, refuse non-finite ones before the update
    (fp16: the scaler skips that step instead), step the optimizer, the schedule when `schedule`, and
    clear the gradients. Returns the gradient norm before clipping."""
    strategy, precision, optimizer = trainer.strategy, trainer.precision, trainer.optimizer
    precision.unscale_(optimizer)
    params = [p for p in trainer.model.parameters() if p.grad is not None]
    if trainer.cfg.max_grad_norm is not None:
        norm = strategy.clip_grad_norm_(params, trainer.cfg.max_grad_norm)
    else:
        norm = strategy.grad_norm(params)
    value = float(norm)
    if not math.isfinite(value) and not precision.overflow_allowed:  # the weights stay finite
        raise TrainingError(
            f"the gradients became {value} at step {trainer.step + 1} (epoch "
            f"{trainer.step // trainer.steps_per_epoch + 1}), so the step was not applied; lower train.lr, "
            "set train.max_grad_norm, or check the data for extreme values")
    precision.step(optimizer)
    if schedule:
        trainer.scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return value


def _count_names(trainer: TrainerView) -> list[str]:
    """The objective's count names, the same on every process (one may hold no items this step)."""
    cached = getattr(trainer, "_count_names", None)
    if cached is None:
        objective = trainer.task.objective
        probe = objective.collate([trainer.task.items[0]], trainer.task.pad_id)  # no augmentation: no RNG draw
        cached = sorted(objective.counts(probe))
        trainer._count_names = cached  # type: ignore[attr-defined]
    return cached


class SupervisedStep:
    """The plain update: the step's micro-batches, forward and backward, then clip, update, schedule."""

    def __call__(self, trainer: TrainerView) -> StepOutput:
        indices = trainer.step_indices(trainer.step)
        batches = micro_batches(trainer, indices)
        counts = step_counts(trainer, batches)
        sums, logs = accumulate(trainer, batches, counts)
        apply_update(trainer)
        return StepOutput(sums, counts, logs, samples=len(indices))

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
