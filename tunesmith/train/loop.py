"""The training loop's shell: checkpoints, evaluation, early stopping, pausing and logging around a
pluggable step (train/step.py). It knows a model, a list of items, an objective and a strategy.

Everything a resumed run needs is in its checkpoints: the trained tensors, the optimizer and schedule,
every process's RNG state, the early stopper, and the state of the objective, the step and each
callback, so a killed run resumes bitwise.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from tunesmith.errors import Interrupted, TrainingError
from tunesmith.schema import TrainConfig
from tunesmith.train import checkpoint as ckpt
from tunesmith.train.callbacks import Callback
from tunesmith.train.early_stop import EarlyStopper
from tunesmith.train.memory import PeakRSS
from tunesmith.train.optim import build_optimizer, build_scheduler
from tunesmith.train.parallel import Strategy
from tunesmith.train.precision import Precision
from tunesmith.train.signals import StopRequests
from tunesmith.train.step import StepOutput, SupervisedStep, epoch_batches
from tunesmith.train.task import TrainTask
from tunesmith.train.track import MetricsLog

# Testing hook: "STEP" sends this process SIGKILL right after that optimizer step, exactly like an OOM
# kill or a pre-empted node; "STEP:TERM" (or INT) sends that signal instead, as a scheduler or Ctrl-C
# would. Tests use it to prove that resuming is exact. Unset in normal use.
_KILL = os.environ.get("TUNESMITH_KILL_AT_STEP", "").partition(":")
_KILL_AT = int(_KILL[0]) if _KILL[0] else None
_KILL_WITH = getattr(signal, f"SIG{_KILL[2]}") if _KILL[2] else signal.SIGKILL


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
    warnings: list[str] = field(default_factory=list)  # what looks wrong with how training went
    train_peak_rss_mb: float | None = None  # this process's resident memory at its highest while training


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


class Trainer:
    """The shell's state: model (and its strategy's wrapper), optimizer, schedule, position, stopper."""

    def __init__(self, model: nn.Module, task: TrainTask, cfg: TrainConfig, run_dir: Path, strategy: Strategy,
                 step: Callable[[Trainer], StepOutput] | None = None, callbacks: Sequence[Callback] = ()) -> None:
        self.model, self.task, self.cfg, self.strategy = model, task, cfg, strategy
        self.step_fn = step or SupervisedStep()
        self.callbacks = list(callbacks)
        keys = [cb.key for cb in self.callbacks]
        if len(set(keys)) != len(keys):
            raise TrainingError(f"two callbacks share the checkpoint key {keys!r}; give each its own `key`")
        self.ckpt_dir = run_dir / "checkpoints"
        n = len(task.items)
        if n == 0:
            raise TrainingError("no training items")
        self.steps_per_epoch = math.ceil(n / cfg.batch_size)
        self.total_steps = cfg.max_steps or math.ceil(cfg.epochs * self.steps_per_epoch)
        self.precision = Precision(cfg.precision, strategy.device)
        self.wrapped = strategy.wrap(model)  # before the optimizer: a sharding strategy replaces parameters
        self.optimizer = build_optimizer(model, cfg, task.head_params)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.total_steps)
        self.stopper = EarlyStopper.from_config(cfg.early_stopping, task.objective.default_metric)
        self.step = 0
        self.samples = 0
        self.train_seconds = 0.0
        self.last_eval: dict[str, float] = {}
        self._epoch_cache: tuple[int, list[list[int]]] = (-1, [])
        self.finished = False
        self.last_save = time.monotonic()  # checkpoint_minutes counts from here
        # the loss of the first step and of the last logged window: a run that ends far above where it
        # started has diverged, even when every weight is finite
        self.loss_start: tuple[int, float] | None = None
        self.loss_end: tuple[int, float] | None = None
        self.warnings: list[str] = []

    # -- checkpoints ---------------------------------------------------------------------------
    def _position(self) -> dict[str, Any]:
        return {"step": self.step, "samples": self.samples, "train_seconds": self.train_seconds,
                "stopper": self.stopper.state_dict(), "last_eval": self.last_eval,
                "total_steps": self.total_steps, "loss_start": self.loss_start, "loss_end": self.loss_end}

    def _states(self) -> dict[str, Any]:
        """The objective's, the step's and every callback's state."""
        step_state = self.step_fn.state_dict() if hasattr(self.step_fn, "state_dict") else {}
        return {"objective": self.task.objective.state_dict(), "step": step_state,
                "callbacks": {cb.key: cb.state_dict() for cb in self.callbacks},
                "precision": self.precision.state_dict()}

    def checkpoint_due(self) -> bool:
        minutes = self.cfg.checkpoint_minutes
        return minutes is not None and time.monotonic() - self.last_save >= 60 * minutes

    def agree(self, *flags: bool) -> list[bool]:
        """Each flag true on any process is true on all (they must checkpoint and stop together)."""
        if self.strategy.world_size == 1:
            return list(flags)
        summed = self.strategy.all_reduce_sum(torch.tensor([float(f) for f in flags], device=self.strategy.device))
        return [bool(v) for v in summed.tolist()]

    def save(self, final: bool = False) -> None:
        """A step checkpoint, written collectively through the strategy (every process its part)."""
        self.last_save = time.monotonic()
        shared = {"scheduler": self.scheduler.state_dict()}
        own = {"rng": _rng_state(self.strategy.device), "states": self._states()}  # this process's
        meta = self._position() | {"final": final, "world_size": self.strategy.world_size,
                                   "parallelism": self.strategy.name}
        ckpt.write_checkpoint(self.ckpt_dir, f"step-{self.step:08d}", self.strategy,
                              lambda folder: self.strategy.save_state(folder, self.model, self.optimizer, shared, own),
                              meta, keep=self.cfg.keep_checkpoints)

    def save_best(self) -> None:
        meta = {"step": self.step, "metric": self.stopper.metric, "value": self.stopper.best,
                "world_size": self.strategy.world_size, "parallelism": self.strategy.name}
        ckpt.write_checkpoint(self.ckpt_dir, f"best-{self.step:08d}", self.strategy,
                              lambda folder: self.strategy.save_state(folder, self.model, None, {}, {}),
                              meta, pointer="best.json", keep=1)

    def resume(self, path: Path, meta: dict[str, Any]) -> None:
        """Continue from a checkpoint (found and checked by checkpoint.find_resumable), loaded through the
        strategy after the model was wrapped, so a sharded run reads its shards (on any number of
        processes)."""
        written = meta.get("parallelism", "ddp" if meta.get("world_size", 1) > 1 else "none")
        if (written == "fsdp") != (self.strategy.name == "fsdp"):
            raise TrainingError(f"{path}: written by a {written} run, and this one is {self.strategy.name}: resume "
                                f"it with train.parallelism: {written}")
        shared, own = self.strategy.load_state(path, self.model, self.optimizer, meta.get("world_size", 1))
        self.scheduler.load_state_dict(shared["scheduler"])
        self.step, self.samples, self.train_seconds = meta["step"], meta["samples"], meta["train_seconds"]
        # a finished run given more epochs or steps trains on (one that stopped early stays stopped)
        completed = meta["step"] >= meta["total_steps"]
        extended = meta["total_steps"] != self.total_steps
        if extended and self.total_steps < self.step:
            raise TrainingError(f"{path}: the run has trained {self.step} steps; this config gives only "
                                f"{self.total_steps}: give more epochs or steps, or resume with the run's own config")
        self.finished = bool(meta.get("final")) and not (completed and self.total_steps > self.step)
        if not shared.get("optimizer_restored") and not self.finished:
            self.say(f"{path}: the optimizer state was not kept (train.keep_optimizer_state: false), so AdamW's "
                     "moments start afresh")
        if extended:  # the schedule of the new length, at this step
            for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs, strict=True):
                group["lr"] = base * self.scheduler.lr_lambdas[0](self.step)
            self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
            self.say(f"extending the run from {meta['total_steps']} to {self.total_steps} steps; the learning "
                     "rate follows the schedule of the new length from here")
        self.stopper.load_state_dict(meta["stopper"])
        self.last_eval = meta["last_eval"]
        self.loss_start = tuple(meta["loss_start"]) if meta.get("loss_start") else None
        self.loss_end = tuple(meta["loss_end"]) if meta.get("loss_end") else None
        if own is None:  # a checkpoint from before each process kept its own file
            rng = shared.get("rng", [])
            own = {"states": shared.get("states", {}),
                   **({"rng": rng[self.strategy.rank]} if len(rng) == self.strategy.world_size else {})}
        states = own.get("states", {})
        self.task.objective.load_state_dict(states.get("objective", {}))
        self.precision.load_state_dict(states.get("precision", {}))
        if hasattr(self.step_fn, "load_state_dict"):
            self.step_fn.load_state_dict(states.get("step", {}))
        for cb in self.callbacks:
            cb.load_state_dict(states.get("callbacks", {}).get(cb.key, {}))
        if "rng" in own:
            _set_rng_state(own["rng"], self.strategy.device)
        elif not self.finished:
            self.say(f"{path}: written by {meta.get('world_size', 1)} processes, resumed on {self.strategy.world_size}: "
                     "the random streams (dropout, sampling) start afresh")
        if not self.finished:
            self.say(f"resumed from step {self.step} of {self.total_steps} ({path})")

    # -- position ------------------------------------------------------------------------------
    def step_indices(self, step: int) -> list[int]:
        """Every item of optimizer step `step`, across all processes."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        if self._epoch_cache[0] != epoch:
            lengths = self.task.lengths if self.cfg.group_by_length else None
            self._epoch_cache = (epoch, epoch_batches(len(self.task.items), self.cfg.batch_size,
                                                      self.cfg.data_seed, epoch, lengths))
        return self._epoch_cache[1][pos]

    @property
    def epoch(self) -> float:
        return round(self.step / self.steps_per_epoch, 4)

    def eval_due(self) -> bool:
        every = self.cfg.eval_every
        if self.step == self.total_steps:
            return True
        if every == "epoch":
            return self.step % self.steps_per_epoch == 0
        return self.step % int(every) == 0

    # -- evaluation ----------------------------------------------------------------------------
    def _run_evaluation(self) -> dict[str, float]:
        assert self.task.evaluate is not None
        self.model.eval()
        try:
            return self.task.evaluate(self.model)
        finally:
            self.model.train()

    def say(self, message: str) -> None:
        if self.strategy.is_main:
            tqdm.write(message, file=sys.stderr)  # above the progress bar, not through it

    def evaluate(self, log: MetricsLog) -> None:
        self.last_eval = self._run_evaluation()
        log.log({"step": self.step, "epoch": self.epoch} | self.last_eval)
        self.say(f"step {self.step} (epoch {self.epoch:g}): "
                 + "  ".join(f"{k} {v:.4f}" for k, v in self.last_eval.items()))
        for cb in self.callbacks:
            cb.on_evaluate(self, self.last_eval)
        metric = self.stopper.metric
        if metric not in self.last_eval:
            raise TrainingError(f"train.early_stopping.metric: {metric!r} is not computed; "
                                f"evaluation gives {', '.join(self.last_eval)}")
        tie, watch = (self.last_eval.get(m) if m else None for m in (self.stopper.tie_metric, self.stopper.watch_metric))
        if self.stopper.update(self.last_eval[metric], self.step, tie, watch) and self.cfg.early_stopping.restore_best:
            self.save_best()

    def peek(self, log: MetricsLog) -> None:
        """Evaluate without telling early stopping (a pause must not change how the run ends)."""
        self.last_eval = self._run_evaluation()
        log.log({"step": self.step, "epoch": self.epoch, "pause": True} | self.last_eval)

    def restore_best(self) -> dict[str, Any] | None:
        if self.stopper.best_step is None:
            return None
        best = {"step": self.stopper.best_step, "metric": self.stopper.metric, "value": self.stopper.best}
        if self.cfg.early_stopping.restore_best and self.stopper.best_step != self.step:
            path = ckpt.latest_checkpoint(self.ckpt_dir, "best.json")
            if path is None:
                raise TrainingError(f"{self.ckpt_dir}: the best checkpoint (step {self.stopper.best_step}) is missing")
            self.strategy.load_model_state(path, self.model)
            best["restored"] = True
            self.say(f"restored the best weights, from step {best['step']} ({best['metric']} {best['value']:.4f})")
            self.warn(self._early_best())
        return best

    def _early_best(self) -> str | None:
        """A warning when the restored step lies in the first half of training while the loss of its
        split went on falling after it: the metric saw no difference the loss saw."""
        stop, loss = self.stopper, self.stopper.watch_metric
        if loss is None or stop.best_watch is None or loss not in self.last_eval or stop.best_step > self.step / 2:
            return None
        end = self.last_eval[loss]
        if not end < stop.best_watch:
            return None
        return (f"the restored weights are from step {stop.best_step} of {self.step} ({stop.metric} {stop.best:.4f}), "
                f"but {loss} went on improving after it ({stop.best_watch:.4f} there, {end:.4f} at step {self.step}): "
                f"{stop.metric} no longer told the steps apart (a small validation set?); set "
                f"train.early_stopping.metric: {loss}, or restore_best: false")

    def warn(self, message: str | None) -> None:
        if message:
            self.warnings.append(message)
            self.say(f"warning: {message}")

    def note_loss(self, out: StepOutput, record: dict[str, float] | None) -> None:
        """The first step's loss (all processes') and the last logged window's, for `diverged`."""
        if self.loss_start is None:
            names = sorted(out.sums)
            sums = self.strategy.all_reduce_sum(torch.tensor([out.sums[n] for n in names], dtype=torch.float64))
            value = sum(v / max(out.counts.get(n, 0.0), 1.0) for n, v in zip(names, sums.tolist(), strict=True))
            self.loss_start = (self.step, value)
        if record is not None:
            self.loss_end = (self.step, record["train_loss"])

    def diverged(self) -> str | None:
        """A warning when the training loss ended far above where it started."""
        if self.loss_start is None or self.loss_end is None or self.loss_end[0] == self.loss_start[0]:
            return None
        (s0, first), (s1, last) = self.loss_start, self.loss_end
        if not (math.isfinite(first) and math.isfinite(last)) or last <= max(2 * first, first + 1.0):
            return None
        val = self.last_eval.get("val_loss")
        return (f"training diverged: the training loss ended far above where it started ({first:.4g} at step {s0}, "
                f"{last:.4g} by step {s1}" + (f"; val_loss {val:.4g}" if val is not None else "") +
                f"); lower train.lr (now {self.cfg.lr:g})" +
                ("" if self.cfg.max_grad_norm else " or set train.max_grad_norm") + " and train again")


class _Window:
    """Loss terms and logged sums since the last metrics line."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, float] = {}
        self.logs: dict[str, list[float]] = {}
        self.samples = 0
        self.start = time.perf_counter()

    def add(self, out: StepOutput) -> None:
        for name, value in out.sums.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        for name, value in out.counts.items():
            self.counts[name] = self.counts.get(name, 0.0) + value
        for name, (value, n) in out.logs.items():
            acc = self.logs.setdefault(name, [0.0, 0.0])
            acc[0] += value
            acc[1] += n
        self.samples += out.samples

    def record(self, trainer: Trainer) -> dict[str, float]:
        """train_loss (every term's mean, added up), each term's mean when there are several, and the logs."""
        names, logs = sorted(self.sums), sorted(self.logs)
        local = [self.sums[n] for n in names] + [self.logs[n][0] for n in logs]
        totals = trainer.strategy.all_reduce_sum(torch.tensor(local, dtype=torch.float64)).tolist()
        means = {n: totals[i] / max(self.counts.get(n, 0.0), 1.0) for i, n in enumerate(names)}
        elapsed = time.perf_counter() - self.start
        record = {"step": trainer.step, "epoch": trainer.epoch, "train_loss": sum(means.values())}
        if len(means) > 1:
            record |= {f"train_{n}": v for n, v in means.items()}
        record |= {f"train_{n}": totals[len(names) + i] / max(self.logs[n][1], 1.0) for i, n in enumerate(logs)}
        return record | {"lr": trainer.scheduler.get_last_lr()[0],
                         "samples_per_s": self.samples / elapsed if elapsed else 0.0}


def train(model: nn.Module, task: TrainTask, cfg: TrainConfig, run_dir: Path, strategy: Strategy,
          resume_from: ckpt.Found | Path | None = None, pause_at_step: int | None = None,
          step: Callable[[Trainer], StepOutput] | None = None, callbacks: Sequence[Callback] = (),
          report: Callable[[dict[str, Any], bool], None] | None = None) -> TrainResult:
    """Train `model` in place; returns what happened. Under DDP every process calls this.

    `resume_from`: a checkpoint (its path, or as checkpoint.find_resumable found it). With
    `pause_at_step`, stop there (evaluated and checkpointed) without ending the run: resuming continues
    as if never paused (the schedule is the full run's); a run resumed at or past the pause step runs to
    the end. SIGTERM / SIGINT: the step in progress finishes, a checkpoint is written, and `Interrupted`
    is raised. `report`: every metrics line also goes there (the run's trackers, on the main process;
    see MetricsLog)."""
    trainer = Trainer(model, task, cfg, run_dir, strategy, step, callbacks)
    if isinstance(resume_from, Path):
        resume_from = (resume_from, ckpt.read_meta(resume_from))
    if resume_from is not None:
        trainer.resume(*resume_from)
    with StopRequests() as stops, PeakRSS() as memory:
        result = _train(trainer, task, cfg, run_dir, strategy, resume_from is not None, pause_at_step, stops, report)
    result.train_peak_rss_mb = None if memory.mb is None else round(memory.mb, 1)
    return result


def _train(trainer: Trainer, task: TrainTask, cfg: TrainConfig, run_dir: Path, strategy: Strategy, resumed: bool,
           pause_at_step: int | None, stops: StopRequests,
           report: Callable[[dict[str, Any], bool], None] | None = None) -> TrainResult:
    model = trainer.model
    log = MetricsLog(run_dir, enabled=strategy.is_main, resume_step=trainer.step if resumed else None, report=report)
    if task.evaluate is None and cfg.early_stopping.patience is not None:
        raise TrainingError("train.early_stopping.patience is set but there is no validation data")
    model.train()
    for cb in trainer.callbacks:
        cb.on_train_start(trainer)
    if task.evaluate_start and task.evaluate is not None and trainer.step == 0 and not resumed:
        trainer.evaluate(log)  # the start is a candidate for the best weights
    bar = tqdm(total=trainer.total_steps, initial=trainer.step, unit="step", dynamic_ncols=True,
               disable=not (cfg.progress and strategy.is_main), desc="train")
    window = _Window()
    stopped_early = trainer.finished and trainer.step < trainer.total_steps
    paused = False
    if pause_at_step is not None and trainer.step >= pause_at_step:
        pause_at_step = None  # resuming a paused run: continue to the end
    try:
        while trainer.step < trainer.total_steps and not trainer.finished:
            t0 = time.perf_counter()
            out = trainer.step_fn(trainer)
            trainer.step += 1
            trainer.train_seconds += time.perf_counter() - t0
            trainer.samples += out.samples
            window.add(out)
            extra = {}
            for cb in trainer.callbacks:
                extra |= cb.on_step_end(trainer, out) or {}
            record = None
            if trainer.step % cfg.log_every == 0 or trainer.step == trainer.total_steps:
                record = window.record(trainer) | extra
                log.log(record)
                bar.set_postfix(loss=f"{record['train_loss']:.4f}", lr=f"{record['lr']:.2e}",
                                samples_s=f"{record['samples_per_s']:.1f}")
                window = _Window()
            elif extra:  # a callback's figures of a step between logging steps (COSINE's relabelings) are kept
                log.log({"step": trainer.step, "epoch": trainer.epoch} | extra)
            trainer.note_loss(out, record)
            bar.update(1)
            if _KILL_AT == trainer.step:  # fault injection for the kill-and-resume tests
                os.kill(os.getpid(), _KILL_WITH)
            if task.evaluate is not None and trainer.eval_due():
                trainer.evaluate(log)
                stopped_early = trainer.stopper.should_stop and trainer.step < trainer.total_steps
            paused = (pause_at_step is not None and trainer.step >= pause_at_step and not stopped_early
                      and trainer.step < trainer.total_steps)
            if paused and task.evaluate is not None and not trainer.eval_due():
                trainer.peek(log)  # the metric that decides whether the run continues
            every = cfg.checkpoint_every
            ending = paused or stopped_early or trainer.step == trainer.total_steps
            stop, due = trainer.agree(stops.received is not None, trainer.checkpoint_due())
            if ending or stop or due or (every and trainer.step % every == 0):
                trainer.save(final=stopped_early or trainer.step == trainer.total_steps)
            if stop and not ending:
                signum = stops.received or signal.SIGTERM  # another process was signalled
                raise Interrupted(f"stopped by {StopRequests.name(signum)} after step {trainer.step} of "
                                  f"{trainer.total_steps}; a checkpoint was written", signum)
            if paused:
                break
            if stopped_early:
                trainer.say(f"early stop at step {trainer.step}: {trainer.stopper.metric} has not improved "
                            f"for {trainer.stopper.bad_evals} evaluations (best {trainer.stopper.best:.4f} "
                            f"at step {trainer.stopper.best_step})")
                break
    finally:
        bar.close()
        log.close()
    best = None if paused else trainer.restore_best()
    if not paused:
        trainer.warn(trainer.diverged())
    return TrainResult(steps=trainer.step, total_steps=trainer.total_steps,
                       epochs=trainer.step / trainer.steps_per_epoch, stopped_early=stopped_early, best=best,
                       last_eval=trainer.last_eval, train_seconds=trainer.train_seconds, samples=trainer.samples,
                       paused=paused, warnings=trainer.warnings)
