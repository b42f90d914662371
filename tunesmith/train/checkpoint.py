"""Checkpoints written atomically (temp dir + rename), holding only what the run changed.

A checkpoint holds the trainable parameters and all buffers (safetensors), the optimizer and scheduler
state, the trainer's position and every process's RNG state: with these a killed run resumes exactly.
Frozen weights are not stored: they are reloaded from the pretrained model, which they still equal.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from tunesmith.atomic import atomic_dir, write_json_atomic
from tunesmith.errors import TrainingError

LATEST = "latest.json"


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


def save_checkpoint(root: Path, name: str, tensors: dict[str, torch.Tensor], extra: dict[str, Any],
                    meta: dict[str, Any], pointer: str = LATEST, keep: int = 2) -> Path:
    """Write root/name/ atomically, then point `pointer` at it and prune older siblings.

    `name` is PREFIX-NNNNNNNN (e.g. step-00000120, best-00000100): names sort by step, and the newest
    `keep` of one prefix stay. `extra` (optimizer, RNG...) is torch-saved; `meta` is JSON.
    """
    final = root / name
    with atomic_dir(final) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"))
        torch.save(extra, tmp / "state.pt")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    write_json_atomic(root / pointer, {"name": name, "step": meta.get("step")})
    prefix = name.rsplit("-", 1)[0]
    for stale in sorted(p for p in root.glob(f"{prefix}-*") if p.is_dir())[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
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


# what reading a truncated or corrupted checkpoint file raises
_DAMAGED = (OSError, ValueError, KeyError, TypeError, RuntimeError, EOFError, pickle.UnpicklingError,
            SafetensorError)


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(tensors, torch-saved extra, meta) of one checkpoint; a damaged file is a TrainingError naming it."""
    files = [("model.safetensors", lambda f: load_file(str(f))),
             ("state.pt", lambda f: torch.load(f, weights_only=True) if f.exists() else {}),
             ("meta.json", lambda f: json.loads(f.read_text()))]
    loaded = []
    for name, read in files:
        try:
            loaded.append(read(path / name))
        except _DAMAGED as e:
            raise TrainingError(f"{path / name}: cannot be read ({type(e).__name__}: {str(e)[:120]}); the "
                                "checkpoint is damaged") from None
    tensors, extra, meta = loaded
    if not isinstance(meta, dict) or "step" not in meta:
        raise TrainingError(f"{path / 'meta.json'}: not a tunesmith checkpoint's meta.json (no step)")
    return tensors, extra, meta


Loaded = tuple[Path, dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]


def load_resumable(root: Path, warn) -> Loaded | None:
    """The newest complete step checkpoint under `root`, loaded: the one latest.json names, else (when it
    or its pointer is damaged, with a warning naming the problem) the newest older one that loads.
    None when there is no checkpoint; an error when every one is damaged."""
    named = latest_checkpoint(root)
    candidates = ([named] if named else []) + sorted((p for p in root.glob("step-*") if p.is_dir() and p != named),
                                                     reverse=True)
    problems = []
    for path in candidates:
        try:
            tensors, extra, meta = load_checkpoint(path)
        except TrainingError as e:
            problems.append(str(e))
            continue
        if problems:
            warn(f"warning: {problems[0]}; resuming from the newest complete checkpoint instead, {path.name}")
        elif named is None:
            gone = _pointed(root / LATEST)
            warn(f"warning: {root / LATEST} names {gone}, which is gone; resuming from {path.name}" if gone else
                 f"warning: {root / LATEST} is missing or unreadable; resuming from {path.name}")
        return path, tensors, extra, meta
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
        freed += sum(f.stat().st_size for f in stale.rglob("*") if f.is_file())
        shutil.rmtree(stale, ignore_errors=True)
    state = last / "state.pt"
    if not keep_optimizer and state.exists():
        extra = torch.load(state, weights_only=True)
        if "optimizer" in extra:
            before = state.stat().st_size
            del extra["optimizer"]
            tmp = state.with_name(f".{state.name}.tmp")
            torch.save(extra, tmp)
            tmp.replace(state)
            freed += before - state.stat().st_size
    return freed
