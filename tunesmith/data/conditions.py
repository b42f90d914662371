"""Conditioning images named by rows (ControlLoRA-style diffusion with `objective.control: image`): a
column beside each row's image path, in the column diffusers' ControlNet training scripts read
(`conditioning_image`, or data.columns.condition), relative to the rows file's folder."""

from __future__ import annotations

import os
from pathlib import Path

from tunesmith.data.config import DataConfig
from tunesmith.data.sources import Row
from tunesmith.data.splits import BadRows, columns
from tunesmith.errors import DataError

DEFAULT_CONDITION_FIELD = "conditioning_image"


def condition_field(cfg: DataConfig) -> str:
    return (cfg.columns or {}).get("condition") or DEFAULT_CONDITION_FIELD


def condition_path(row: Row, field: str, base: Path, bad: BadRows) -> Path | None:
    """The row's conditioning image file, or None when the row is bad (reported to `bad`)."""
    value = row.values.get(field)
    if field not in row.values:
        bad.bad(row.where, f"no field {field!r} (the row has {columns(row.values)})",
                "give each row its conditioning image's path, or name the column with data.columns.condition")
        return None
    if not isinstance(value, str) or not value.strip():
        bad.bad(row.where, f"field {field!r} is {value!r:.40}, not an image's file path",
                "give the conditioning image's path")
        return None
    path = base / value
    if not path.is_file():
        bad.bad(row.where, f"field {field!r}: conditioning image {value!r} not found (looked at {path})",
                f"fix the path (relative paths start at the file's folder, {os.path.abspath(base)})")
        return None
    return path


def no_conditions(source: str) -> DataError:
    return DataError(f"{source}: objective.control: image reads each image's conditioning image from a rows "
                     f"file's {DEFAULT_CONDITION_FIELD!r} column (CSV/JSONL/Parquet); an image folder or a built-in "
                     "set has none")
