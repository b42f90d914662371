"""Atomic writes: a file or a folder appears complete (temp + fsync + rename) or not at all.

Every artifact tunesmith writes goes through here (run config, metrics, summary, checkpoints, saved
models, adapters, converted GGUF models), so a process killed mid-write never leaves a half file that a
later read would trust. The temp and the displaced old copy sit beside the target, hidden
(`.NAME.tmp`, `.NAME.old`), on the same file system, so the rename is atomic.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def old_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def leftovers(path: Path) -> list[Path]:
    """What a write of `path` killed half-way can leave behind."""
    return [temp_path(path), old_path(path)]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> Path:
    path = Path(path)
    tmp = temp_path(path)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def write_json_atomic(path: Path, data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2))


@contextmanager
def atomic_dir(out_dir: Path) -> Iterator[Path]:
    """Yield an empty temp folder; when the block ends without error its files are synced and it
    replaces `out_dir` (an existing `out_dir` is moved aside first, then deleted: rename cannot replace a
    non-empty folder). On error the temp folder is removed and `out_dir` is left as it was."""
    out_dir = Path(out_dir)
    tmp, old = temp_path(out_dir), old_path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for f in tmp.rglob("*"):
        if f.is_file():
            _fsync(f)
    if out_dir.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    _fsync(out_dir.parent)
    shutil.rmtree(old, ignore_errors=True)
