"""The training loop. It knows a model, a list of items, a batch function and a loss; nothing else.

The data order is a pure function of (data_seed, epoch), and the position in it is the optimizer step,
so a checkpoint needs no sampler state: resuming at step s replays exactly the batches after s.
Each optimizer step's loss is the *sum* of per-item losses divided by the item count of the whole step
(all micro-batches, all processes), which is exactly the large-batch mean.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from tunesmith.config import TrainConfig
from tunesmith.errors import TrainingError
from tunesmith.train import checkpoint as ckpt
from tunesmith.train.distributed import DistInfo, all_reduce_sum, barrier, gather_objects
from tunesmith.train.early_stop import EarlyStopper
from tunesmith.train.optim import build_optimizer, build_scheduler
from tunesmith.train.track import MetricsLog

# Testing hook: SIGKILL this process right after the given optimizer step, exactly like an OOM kill or
# a pre-empted node, so tests can prove that resuming is exact. Unset in normal use.
_KILL_AT = int(os.environ["TUNESMITH_KILL_AT_STEP"]) if os.environ.get("TUNESMITH_KILL_AT_STEP") else None


@dataclass
class TrainTask:
    items: Sequence[Any]
    collate: Callable[[list[Any]], dict[str, torch.Tensor]]
    loss_sum: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]
    count: Callable[[dict[str, torch.Tensor]], int]
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None  # collective under DDP
    head_params: set[str] = field(default_factory=set)
    lengths: Sequence[int] | None = None  # per item, for length-grouped batches


@dataclass
class TrainResult:
    steps: int
    total_steps: int
    epochs: float
    stopped_early: bool
    best: dict[str, Any] | None
    last_eval: dict[str, float]
    train_seconds: float
    samples: int
    paused: bool = False  # stopped at pause_at_step; resuming continues

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.train_seconds if self.train_seconds else 0.0


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


def _chunks(seq: list[int], parts: int) -> list[list[int]]:
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


def _rng_state(info: DistInfo) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if info.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(info.device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], info: DistInfo) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and info.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], info.device)


class _Trainer:
    def __init__(self, model: nn.Module, task: TrainTask, cfg: TrainConfig, run_dir: Path, info: DistInfo):
        self.model, self.task, self.cfg, self.info = model, task, cfg, info
        self.ckpt_dir = run_dir / "checkpoints"
        n = len(task.items)
        if n == 0:
            raise TrainingError("no training items")
        self.steps_per_epoch = math.ceil(n / cfg.batch_size)
        self.total_steps = cfg.max_steps or math.ceil(cfg.epochs * self.steps_per_epoch)
        self.optimizer = build_optimizer(model, cfg, task.head_params)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.total_steps)
        self.stopper = EarlyStopper.from_config(cfg.early_stopping)
        self.step = 0
        self.samples = 0
        self.train_seconds = 0.0
        self.last_eval: dict[str, float] = {}
        self._epoch_cache: tuple[int, list[list[int]]] = (-1, [])
        self.last_items = 0
        self.finished = False
        self.ddp = model
        if info.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [info.device.index] if info.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(model, device_ids=ids)

    # -- checkpoints ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"step": self.step, "samples": self.samples, "train_seconds": self.train_seconds,
                "stopper": self.stopper.state_dict(), "last_eval": self.last_eval,
                "total_steps": self.total_steps}

    def save(self, final: bool = False) -> None:
        rng = gather_objects(_rng_state(self.info), self.info)  # every process's dropout stream
        if self.info.is_main:
            extra = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                     "rng": rng}
            meta = self.state() | {"final": final, "world_size": self.info.world_size}
            ckpt.save_checkpoint(self.ckpt_dir, f"step-{self.step:08d}", ckpt.changing_state(self.model),
                                 extra, meta, keep=self.cfg.keep_checkpoints)
        barrier(self.info)

    def save_best(self) -> None:
        if self.info.is_main:
            meta = {"step": self.step, "metric": self.stopper.metric, "value": self.stopper.best}
            ckpt.save_checkpoint(self.ckpt_dir, f"best-{self.step:08d}", ckpt.changing_state(self.model), {},
                                 meta, pointer="best.json", keep=1)
        barrier(self.info)

    def resume(self, path: Path) -> None:
        tensors, extra, meta = ckpt.load_checkpoint(path)
        ckpt.load_changing_state(self.model, tensors)
        self.optimizer.load_state_dict(extra["optimizer"])
        self.scheduler.load_state_dict(extra["scheduler"])
        if meta["total_steps"] != self.total_steps:
            raise TrainingError(f"{path}: the checkpoint was made for {meta['total_steps']} steps, this config "
                                f"gives {self.total_steps}; resume with the run's own config")
        self.step, self.samples, self.train_seconds = meta["step"], meta["samples"], meta["train_seconds"]
        self.stopper.load_state_dict(meta["stopper"])
        self.last_eval = meta["last_eval"]
        self.finished = bool(meta.get("final"))  # e.g. stopped early: resuming must not train on
        rng = extra["rng"]
        if len(rng) == self.info.world_size:
            _set_rng_state(rng[self.info.rank], self.info)

    # -- one optimizer step --------------------------------------------------------------------
    def step_indices(self, step: int) -> list[int]:
        """Every item of optimizer step `step`, across all processes."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        if self._epoch_cache[0] != epoch:
            lengths = self.task.lengths if self.cfg.group_by_length else None
            self._epoch_cache = (epoch, epoch_batches(len(self.task.items), self.cfg.batch_size,
                                                      self.cfg.data_seed, epoch, lengths))
        return self._epoch_cache[1][pos]

    def train_step(self) -> tuple[float, int]:
        task, info = self.task, self.info
        indices = self.step_indices(self.step)
        self.last_items = len(indices)
        micro = _chunks(_chunks(indices, info.world_size)[info.rank], self.cfg.grad_accum)
        batches = [task.collate([task.items[i] for i in ids]) if ids else None for ids in micro]
        local = sum(task.count(b) for b in batches if b is not None)
        total = int(all_reduce_sum(torch.tensor(float(local)), info).item())
        if total == 0:
            raise TrainingError(f"step {self.step + 1}: the batch has nothing to learn from (no targets)")
        loss_total = 0.0
        for j, batch in enumerate(batches):
            weight = 1.0
            if batch is None:  # this process got no items; DDP still needs its backward
                batch, weight = task.collate([task.items[0]]), 0.0
            sync = not info.enabled or j == len(batches) - 1
            with nullcontext() if sync else self.ddp.no_sync():
                loss = task.loss_sum(self.ddp, _to(batch, info.device))
                value = loss.item()
                if not math.isfinite(value):
                    raise TrainingError(
                        f"the loss became {value} at step {self.step + 1} (epoch "
                        f"{self.step // self.steps_per_epoch + 1}); lower train.lr, set train.max_grad_norm, "
                        "or check the data for extreme values")
                (loss * (weight * info.world_size / total)).backward()
            loss_total += value * weight
        if self.cfg.max_grad_norm is not None:
            params = [p for p in self.model.parameters() if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return loss_total, total

    def eval_due(self) -> bool:
        every = self.cfg.eval_every
        if self.step == self.total_steps:
            return True
        if every == "epoch":
            return self.step % self.steps_per_epoch == 0
        return self.step % int(every) == 0

    def evaluate(self, log: MetricsLog) -> None:
        assert self.task.evaluate is not None
        self.model.eval()
        self.last_eval = self.task.evaluate(self.model)
        self.model.train()
        log.log({"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 4)} | self.last_eval)
        metric = self.stopper.metric
        if metric not in self.last_eval:
            raise TrainingError(f"train.early_stopping.metric: {metric!r} is not computed; "
                                f"evaluation gives {', '.join(self.last_eval)}")
        if self.stopper.update(self.last_eval[metric], self.step) and self.cfg.early_stopping.restore_best:
            self.save_best()

    def peek(self, log: MetricsLog) -> None:
        """Evaluate without telling early stopping (a pause must not change how the run ends)."""
        assert self.task.evaluate is not None
        self.model.eval()
        self.last_eval = self.task.evaluate(self.model)
        self.model.train()
        log.log({"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 4), "pause": True}
                | self.last_eval)

    def restore_best(self) -> dict[str, Any] | None:
        if self.stopper.best_step is None:
            return None
        best = {"step": self.stopper.best_step, "metric": self.stopper.metric, "value": self.stopper.best}
        if self.cfg.early_stopping.restore_best and self.stopper.best_step != self.step:
            path = ckpt.latest_checkpoint(self.ckpt_dir, "best.json")
            if path is None:
                raise TrainingError(f"{self.ckpt_dir}: the best checkpoint (step {self.stopper.best_step}) is missing")
            ckpt.load_changing_state(self.model, ckpt.load_checkpoint(path)[0])
            best["restored"] = True
        return best


def train(model: nn.Module, task: TrainTask, cfg: TrainConfig, run_dir: Path, info: DistInfo,
          resume_from: Path | None = None, pause_at_step: int | None = None) -> TrainResult:
    """Train `model` in place; returns what happened. Under DDP every process calls this.

    With `pause_at_step`, stop there (evaluated and checkpointed) without ending the run: resuming
    continues as if never paused (the schedule is the full run's); a run resumed at or past the pause
    step runs to the end."""
    trainer = _Trainer(model, task, cfg, run_dir, info)
    if resume_from is not None:
        trainer.resume(resume_from)
    log = MetricsLog(run_dir, enabled=info.is_main, resume_step=trainer.step if resume_from else None)
    if task.evaluate is None and cfg.early_stopping.patience is not None:
        raise TrainingError("train.early_stopping.patience is set but there is no validation data")
    model.train()
    bar = tqdm(total=trainer.total_steps, initial=trainer.step, unit="step", dynamic_ncols=True,
               disable=not (cfg.progress and info.is_main), desc="train")
    window_loss, window_count, window_start, window_samples = 0.0, 0, time.perf_counter(), 0
    stopped_early = trainer.finished and trainer.step < trainer.total_steps
    paused = False
    if pause_at_step is not None and trainer.step >= pause_at_step:
        pause_at_step = None  # resuming a paused run: continue to the end
    try:
        while trainer.step < trainer.total_steps and not trainer.finished:
            t0 = time.perf_counter()
            loss_sum, count = trainer.train_step()
            trainer.train_seconds += time.perf_counter() - t0
            items = trainer.last_items
            trainer.samples += items
            window_loss += loss_sum
            window_count += count
            window_samples += items
            if trainer.step % cfg.log_every == 0 or trainer.step == trainer.total_steps:
                totals = all_reduce_sum(torch.tensor([window_loss, float(window_count)], dtype=torch.float64), info)
                elapsed = time.perf_counter() - window_start
                record = {"step": trainer.step, "epoch": round(trainer.step / trainer.steps_per_epoch, 4),
                          "train_loss": totals[0].item() / max(totals[1].item(), 1),
                          "lr": trainer.scheduler.get_last_lr()[0],
                          "samples_per_s": window_samples / elapsed if elapsed else 0.0}
                log.log(record)
                bar.set_postfix(loss=f"{record['train_loss']:.4f}", lr=f"{record['lr']:.2e}",
                                samples_s=f"{record['samples_per_s']:.1f}")
                window_loss, window_count, window_start, window_samples = 0.0, 0, time.perf_counter(), 0
            bar.update(1)
            if _KILL_AT == trainer.step:  # fault injection for the kill-and-resume test
                os.kill(os.getpid(), signal.SIGKILL)
            if task.evaluate is not None and trainer.eval_due():
                trainer.evaluate(log)
                stopped_early = trainer.stopper.should_stop and trainer.step < trainer.total_steps
            paused = (pause_at_step is not None and trainer.step >= pause_at_step and not stopped_early
                      and trainer.step < trainer.total_steps)
            if paused and task.evaluate is not None and not trainer.eval_due():
                trainer.peek(log)  # the metric that decides whether the run continues
            every = cfg.checkpoint_every
            if paused or stopped_early or trainer.step == trainer.total_steps or (every and trainer.step % every == 0):
                trainer.save(final=stopped_early or trainer.step == trainer.total_steps)
            if paused:
                break
            if stopped_early:
                bar.write(f"early stop at step {trainer.step}: {trainer.stopper.metric} has not improved "
                          f"for {trainer.stopper.bad_evals} evaluations (best {trainer.stopper.best:.4f} "
                          f"at step {trainer.stopper.best_step})")
                break
    finally:
        bar.close()
        log.close()
    best = None if paused else trainer.restore_best()
    return TrainResult(steps=trainer.step, total_steps=trainer.total_steps,
                       epochs=trainer.step / trainer.steps_per_epoch, stopped_early=stopped_early, best=best,
                       last_eval=trainer.last_eval, train_seconds=trainer.train_seconds, samples=trainer.samples,
                       paused=paused)
