"""The run directory: which config a run (or its resumption) uses, and the files that describe the run as
a whole rather than one training stage (config.yaml, the combined metrics of a multi-stage run)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

try:
    import fcntl
except ImportError:  # Windows: no advisory locks (a run dir is then not protected against two trainers)
    fcntl = None

from tunesmith.atomic import write_text_atomic
from tunesmith.config import RunConfig, config_from_dict, config_to_dict
from tunesmith.errors import ConfigError

# Fields that may differ between a run and its resumption without changing the result.
RESUME_FREE = {"train.progress", "train.threads", "train.device", "train.pause_at_fraction",
               "train.checkpoint_minutes", "train.keep_optimizer_state", "train.report_to"}
# Fields a resumed single-stage run may raise: it trains on to the new length.
EXTENDABLE = {"train.epochs", "train.max_steps"}
# What a run writes; --overwrite clears these (and nothing else a user may keep in the folder).
RUN_FILES = ("checkpoints", "stages", "model", "adapter", "plots", "tensorboard", "metrics.jsonl", "summary.json",
             "paused.json", "config.yaml", "exact_match.jsonl", "wandb", "mlflow.db", "report_to.json")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def read_run_config(run_dir: Path, for_training: bool = True) -> RunConfig:
    """The run's own config. `for_training` false (predict, eval, generate on a finished run): only what
    reading its fields needs is checked, not what training needs (e.g. its labeling functions' code
    importable, its device present)."""
    saved = run_dir / "config.yaml"
    if not saved.exists():
        raise ConfigError(f"{run_dir}: no config.yaml there; is it a tunesmith run directory?")
    return config_from_dict(yaml.safe_load(saved.read_text()), source=str(saved), for_training=for_training)


def prepare_run_dir(cfg: RunConfig | None, run_dir: Path, resume: bool, overwrite: bool,
                    is_main: bool = True) -> RunConfig:
    """A new run gets an empty dir; a resumed run takes its saved config (a given one must agree)."""
    if resume:
        old = read_run_config(run_dir)
        if cfg is not None:
            a, b = _flatten(config_to_dict(old)), _flatten(config_to_dict(cfg))
            free = RESUME_FREE | (EXTENDABLE if not cfg.stages else set())
            diff = [k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and k not in free]
            if diff:
                extend = " (a multi-stage run cannot be extended)" if cfg.stages and set(diff) & EXTENDABLE else ""
                raise ConfigError(f"--resume {run_dir}: the given config differs from the run's in "
                                  f"{', '.join(f'{k} ({a.get(k)!r} -> {b.get(k)!r})' for k in sorted(diff))}{extend}")
            return cfg  # differs at most in fields that do not change the result, or in the run's length
        return old
    assert cfg is not None
    if has_progress(run_dir) and not overwrite and is_main:
        raise ConfigError(f"{run_dir} already holds a run; continue it with --resume {run_dir}, "
                          "or pass --overwrite to start over")
    return cfg


def has_progress(run_dir: Path) -> bool:
    """Whether a run in `run_dir` got as far as a checkpoint (or finished, or paused). A folder that only
    holds the config of a run that failed its checks is not a run: a plain retry starts it afresh."""
    if any((run_dir / name).exists() for name in ("summary.json", "paused.json")):
        return True
    return any(p.is_dir() for folder in (run_dir, *run_dir.glob("stages/*")) for p in folder.glob("checkpoints/step-*"))


class RunLock:
    """An OS lock on RUN_DIR/.lock while a process trains there, released on any exit (even SIGKILL):
    a second trainer, or --resume of a run still training, is refused with the holder's process id."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / ".lock"
        self._file = None

    def acquire(self) -> None:
        if self._file is not None or fcntl is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115  (held open for the whole run)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise ConfigError(f"{self.path.parent} is in use: process {holder} is training there; wait for it to end "
                              f"(or stop it: kill {holder}; it checkpoints first), then --resume") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def start_run_dir(cfg: RunConfig, run_dir: Path, clear: bool) -> None:
    """Create the dir (clearing an earlier run's files: --overwrite, or a run that never reached a
    checkpoint) and record the resolved config."""
    if clear:
        for name in RUN_FILES:
            stale = run_dir / name
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def combine_stage_metrics(stage_dirs: list[tuple[str, Path, int]], run_dir: Path) -> None:
    """RUN_DIR/metrics.jsonl for a multi-stage run: every stage's lines, tagged, steps counted across stages.
    `stage_dirs`: (name, dir, total steps) per stage."""
    lines, offset = [], 0
    for name, folder, total_steps in stage_dirs:
        path = folder / "metrics.jsonl"
        for line in path.read_text().splitlines() if path.exists() else []:
            record = json.loads(line)
            record["stage"], record["step"] = name, record["step"] + offset
            lines.append(json.dumps(record))
        offset += total_steps
    write_text_atomic(run_dir / "metrics.jsonl", "".join(line + "\n" for line in lines))
