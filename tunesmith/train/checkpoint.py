"""Checkpoints written atomically (temp dir + rename), holding only what the run changed.

A checkpoint holds the trainable parameters and all buffers (safetensors), the optimizer and scheduler
state, the trainer's position and every process's RNG state: with these a killed run resumes exactly.
Frozen weights are not stored: they are reloaded from the pretrained model, which they still equal.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tunesmith.atomic import atomic_dir, write_json_atomic

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
    path = root / pointer
    if not path.exists():
        return None
    found = root / json.loads(path.read_text())["name"]
    return found if found.is_dir() else None


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    tensors = load_file(str(path / "model.safetensors"))
    extra = torch.load(path / "state.pt", weights_only=True) if (path / "state.pt").exists() else {}
    meta = json.loads((path / "meta.json").read_text())
    return tensors, extra, meta


def load_meta(path: Path) -> dict[str, Any]:
    return json.loads((path / "meta.json").read_text())
