"""One optimizer update, and the data order it draws from.

The data order is a pure function of (data_seed, epoch), and the position in it is the optimizer step,
so a checkpoint needs no sampler state: resuming at step s replays exactly the batches after s.

`SupervisedStep` is the update most objectives use: the step's items split over processes and
micro-batches, each loss term's *sum* divided by that term's count over the whole step (all
micro-batches, all processes), which is exactly the large-batch mean; then clipping, the optimizer and
the schedule. A recipe that must generate, run several inner epochs or relabel brings its own step
(any callable taking the trainer and returning a StepOutput), with its own state_dict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from tunesmith.errors import TrainingError

if TYPE_CHECKING:
    from tunesmith.train.loop import Trainer


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


class SupervisedStep:
    """Forward and backward over the step's micro-batches, then clip, update, schedule."""

    def __call__(self, trainer: Trainer) -> StepOutput:
        task, strategy, objective = trainer.task, trainer.strategy, trainer.task.objective
        indices = trainer.step_indices(trainer.step)
        micro = chunks(chunks(indices, strategy.world_size)[strategy.rank], trainer.cfg.grad_accum)
        batches = [task.collate([task.items[i] for i in ids]) if ids else None for ids in micro]
        local: dict[str, float] = {}
        for batch in batches:
            for name, n in (objective.counts(batch) if batch is not None else {}).items():
                local[name] = local.get(name, 0.0) + float(n)
        names = self._count_names(trainer)
        totals = strategy.all_reduce_sum(torch.tensor([local.get(n, 0.0) for n in names], dtype=torch.float64))
        counts = dict(zip(names, totals.tolist(), strict=True))
        if not any(counts.values()):
            raise TrainingError(f"step {trainer.step + 1}: the batch has nothing to learn from (no targets)")
        sums: dict[str, float] = {}
        logs: dict[str, tuple[float, float]] = {}
        for j, batch in enumerate(batches):
            weight = 1.0
            if batch is None:  # this process got no items; DDP still needs its backward
                batch, weight = task.collate([task.items[0]]), 0.0
            with strategy.sync_gradients(trainer.wrapped, sync=j == len(batches) - 1):
                out = objective.loss(trainer.wrapped, _to(batch, strategy.device))
                total = sum(term * (strategy.world_size / max(counts.get(name, 0.0), 1.0))
                            for name, term in out.terms.items())
                value = total.item()
                if not math.isfinite(value):
                    raise TrainingError(
                        f"the loss became {value} at step {trainer.step + 1} (epoch "
                        f"{trainer.step // trainer.steps_per_epoch + 1}); lower train.lr, set train.max_grad_norm, "
                        "or check the data for extreme values")
                (total * weight).backward()
            for name, term in out.terms.items():
                sums[name] = sums.get(name, 0.0) + term.item() * weight
            for name, (amount, per) in out.logs.items():
                before = logs.get(name, (0.0, counts.get(per, 0.0)))
                logs[name] = (before[0] + float(amount) * weight, before[1])
        params = [p for p in trainer.model.parameters() if p.grad is not None]
        if trainer.cfg.max_grad_norm is not None:
            norm = strategy.clip_grad_norm_(params, trainer.cfg.max_grad_norm)
        else:
            norm = strategy.grad_norm(params)
        if not torch.isfinite(norm):  # checked before the update: the weights stay finite
            raise TrainingError(
                f"the gradients became {norm.item()} at step {trainer.step + 1} (epoch "
                f"{trainer.step // trainer.steps_per_epoch + 1}), so the step was not applied; lower train.lr, "
                "set train.max_grad_norm, or check the data for extreme values")
        trainer.optimizer.step()
        trainer.scheduler.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        return StepOutput(sums, counts, logs, samples=len(indices))

    @staticmethod
    def _count_names(trainer: Trainer) -> list[str]:
        """The objective's count names, the same on every process (one may hold no items this step)."""
        if not hasattr(trainer, "_count_names"):
            objective = trainer.task.objective
            probe = objective.collate([trainer.task.items[0]], trainer.task.pad_id)  # no augmentation: no RNG draw
            trainer._count_names = sorted(objective.counts(probe))
        return trainer._count_names

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
