"""Checkpoints: their names, the `latest` and `best` pointers, pruning, and atomic writes across
processes. What goes inside one is the parallelism strategy's business (Strategy.save_state): the
trained tensors and the optimizer state (whole files for one process and DDP, Distributed Checkpoint
shards under FSDP), the state every process shares (schedule, position) and each process's own (RNG,
the objective's, the step's and callbacks' state) in its own file.

A checkpoint folder is written under a temp name and renamed once every process has written its part,
so a kill during a save leaves the previous checkpoint as it was. Frozen weights are not stored: they
are reloaded from the pretrained model, which they still equal.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from tunesmith.atomic import atomic_dir, old_path, temp_path, write_json_atomic
from tunesmith.errors import TrainingError


class Processes(Protocol):
    """What a collective write needs of the strategy (train/parallel/base.py)."""

    world_size: int
    is_main: bool

    def barrier(self) -> None: ...

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor: ...

LATEST = "latest.json"
META = "meta.json"
# Testing hook: "STEP" kills the main process (SIGKILL) while it saves that step's checkpoint, after every
# process wrote its part and before the folder is renamed into place. Unset in normal use.
_KILL_IN_SAVE = int(os.environ["TUNESMITH_KILL_IN_SAVE"]) if os.environ.get("TUNESMITH_KILL_IN_SAVE") else None
# what reading a truncated or corrupted checkpoint file raises
DAMAGED = (OSError, ValueError, KeyError, TypeError, RuntimeError, EOFError, pickle.UnpicklingError, SafetensorError)


def changing_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters + buffers, each tensor once (tied weights are saved under one name)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if param.requires_grad and id(param) not in seen:
            seen.add(id(param))
            out[name] = param.detach().cpu().contiguous()
    for name, buf in model.named_buffers():
        if name not in out and buf is not None:
            out[name] = buf.detach().cpu().contiguous().clone()
    return out


def load_changing_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers())
    unknown = [k for k in state if k not in own]
    if unknown:
        raise ValueError(f"checkpoint has tensors this model lacks, e.g. {unknown[0]!r}")
    with torch.no_grad():
        for name, tensor in state.items():
            own[name].copy_(tensor)


def rank_file(rank: int) -> str:
    return f"rank-{rank:05d}.pt"


def read_torch(path: Path) -> Any:
    """A torch-saved file, tensors and plain containers only (no code runs)."""
    return torch.load(path, weights_only=True)


@contextmanager
def collective_dir(out_dir: Path, strategy: Processes) -> Iterator[Path]:
    """`atomic_dir` for several processes: the main process prepares an empty temp folder, every
    process writes its part into it, and once all have (agreed over the processes, so a failure on one
    stops all), the main process swaps it in. One process: atomic_dir itself."""
    if strategy.world_size == 1:
        with atomic_dir(out_dir) as tmp:
            yield tmp
        return
    out_dir = Path(out_dir)
    tmp, old = temp_path(out_dir), old_path(out_dir)
    if strategy.is_main:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    strategy.barrier()
    failed: BaseException | None = None
    try:
        yield tmp
    except BaseException as e:  # noqa: BLE001 - re-raised below, once every process knows
        failed = e
    if strategy.all_reduce_sum(torch.tensor([float(failed is not None)])).item():
        if strategy.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        strategy.barrier()
        raise failed if failed is not None else TrainingError(f"{out_dir}: another process failed to write its part")
    if strategy.is_main:
        for f in tmp.rglob("*"):
            if f.is_file():
                fd = os.open(f, os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
        if out_dir.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    strategy.barrier()


def write_checkpoint(root: Path, name: str, strategy: Processes, write: Callable[[Path], None], meta: dict[str, Any],
                     pointer: str = LATEST, keep: int = 2) -> Path:
    """root/name/, written by every process through `write(folder)` plus meta.json, then `pointer`
    points at it and older siblings of the same prefix beyond `keep` are pruned.

    `name` is PREFIX-NNNNNNNN (e.g. step-00000120, best-00000100): names sort by step."""
    final = root / name
    with collective_dir(final, strategy) as tmp:
        write(tmp)
        if strategy.is_main:
            (tmp / META).write_text(json.dumps(meta, indent=2))
            if _KILL_IN_SAVE is not None and _KILL_IN_SAVE == meta.get("step") and name.startswith("step-"):
                os.kill(os.getpid(), signal.SIGKILL)  # fault injection: every part written, not yet renamed
    if strategy.is_main:
        write_json_atomic(root / pointer, {"name": name, "step": meta.get("step")})
        prefix = name.rsplit("-", 1)[0]
        for stale in sorted(p for p in root.glob(f"{prefix}-*") if p.is_dir())[:-keep]:
            shutil.rmtree(stale, ignore_errors=True)
    strategy.barrier()
    return final


def latest_checkpoint(root: Path, pointer: str = LATEST) -> Path | None:
    """The checkpoint `pointer` names (None when there is none, or the pointer is unreadable)."""
    path = root / pointer
    try:
        found = root / json.loads(path.read_text())["name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return found if found.is_dir() else None


def _pointed(pointer: Path) -> str | None:
    """The checkpoint name a readable pointer gives, or None."""
    try:
        return str(json.loads(pointer.read_text())["name"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads((path / META).read_text())
    except DAMAGED as e:
        raise TrainingError(f"{path / META}: cannot be read ({type(e).__name__}: {str(e)[:120]}); the checkpoint is "
                            "damaged") from None
    if not isinstance(meta, dict) or "step" not in meta:
        raise TrainingError(f"{path / META}: not a tunesmith checkpoint's meta.json (no step)")
    return meta


def read_file(path: Path, read: Callable[[Path], Any]) -> Any:
    """`read(path)`, a damaged file being a TrainingError that names it."""
    try:
        return read(path)
    except DAMAGED as e:
        raise TrainingError(f"{path}: cannot be read ({type(e).__name__}: {str(e)[:120]}); the checkpoint is "
                            "damaged") from None


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(tensors, torch-saved state with the main process's own state merged in, meta) of a one-process
    or DDP checkpoint, for reading one outside a run; a damaged file is a TrainingError naming it."""
    tensors = read_file(path / "model.safetensors", lambda f: load_file(str(f)))
    extra = read_file(path / "state.pt", lambda f: read_torch(f) if f.exists() else {})
    own = read_file(path / rank_file(0), lambda f: read_torch(f) if f.exists() else {})
    return tensors, extra | own, read_meta(path)


Found = tuple[Path, dict[str, Any]]  # a checkpoint folder and its meta


def find_resumable(root: Path, warn: Callable[[str], None], verify: Callable[[Path], None]) -> Found | None:
    """The newest complete step checkpoint under `root` whose files `verify` accepts: the one
    latest.json names, else (when it or its pointer is damaged or gone, with a warning naming the
    problem) the newest older one. None when there is none; an error when every one is damaged."""
    named = latest_checkpoint(root)
    candidates = ([named] if named else []) + sorted((p for p in root.glob("step-*") if p.is_dir() and p != named),
                                                     reverse=True)
    problems = []
    for path in candidates:
        try:
            meta = read_meta(path)
            verify(path)
        except TrainingError as e:
            problems.append(str(e))
            continue
        if problems:
            warn(f"warning: {problems[0]}; resuming from the newest complete checkpoint instead, {path.name}")
        elif named is None:
            gone = _pointed(root / LATEST)
            warn(f"warning: {root / LATEST} names {gone}, which is gone; resuming from {path.name}" if gone else
                 f"warning: {root / LATEST} is missing or unreadable; resuming from {path.name}")
        return path, meta
    if problems:
        raise TrainingError(f"{root}: no checkpoint can be read: " + "; ".join(problems[:3]))
    return None


def remove_leftovers(root: Path) -> list[Path]:
    """Temp folders of checkpoint writes that were killed half-way (never a checkpoint themselves)."""
    stale = [p for p in root.glob(".*.tmp") if p.is_dir()] + [p for p in root.glob(".*.old") if p.is_dir()]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def slim_finished(root: Path, keep_optimizer: bool) -> int:
    """A finished stage keeps one step checkpoint (its last: what `--resume` re-opens) and its best;
    without `keep_optimizer`, the last one drops its optimizer state (twice the trained tensors under
    AdamW). Returns the bytes freed."""
    last = latest_checkpoint(root)
    if last is None:
        return 0
    freed = 0
    for stale in (p for p in root.glob("step-*") if p.is_dir() and p != last):
        freed += _size(stale)
        shutil.rmtree(stale, ignore_errors=True)
    if keep_optimizer:
        return freed
    sharded = last / "optimizer"  # Distributed Checkpoint shards of the optimizer (FSDP)
    if sharded.is_dir():
        freed += _size(sharded)
        shutil.rmtree(sharded, ignore_errors=True)
    state = last / "state.pt"
    if state.exists():
        extra = read_torch(state)
        if extra.get("optimizer") is not None:
            before = state.stat().st_size
            extra["optimizer"] = None
            tmp = state.with_name(f".{state.name}.tmp")
            torch.save(extra, tmp)
            tmp.replace(state)
            freed += before - state.stat().st_size
    return freed


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
