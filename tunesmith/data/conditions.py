"""Conditioning images named by rows (ControlLoRA-style diffusion with `objective.control: image`): a
column beside each row's image path, in the column diffusers' ControlNet training scripts read
(`conditioning_image`, or data.columns.condition), relative to the rows file's folder."""

from __future__ import annotations

from pathlib import Path

from tunesmith.data.config import DataConfig
from tunesmith.data.sources import Row
from tunesmith.data.splits import BadRows, columns, existing_file, path_value
from tunesmith.errors import DataError

DEFAULT_CONDITION_FIELD = "conditioning_image"


def condition_field(cfg: DataConfig) -> str:
    return (cfg.columns or {}).get("condition") or DEFAULT_CONDITION_FIELD


def condition_path(row: Row, field: str, base: Path, bad: BadRows) -> Path | None:
    """The row's conditioning image file, or None when the row is bad (reported to `bad`)."""
    if field not in row.values:
        bad.bad(row.where, f"no field {field!r} (the row has {columns(row.values)})",
                "give each row its conditioning image's path, or name the column with data.columns.condition")
        return None
    value = path_value(row.values, field, row.where, bad, "conditioning image")
    return None if value is None else existing_file(value, field, row.where, base, bad, "conditioning image")


def no_conditions(source: str) -> DataError:
    return DataError(f"{source}: objective.control: image reads each image's conditioning image from a rows "
                     f"file's {DEFAULT_CONDITION_FIELD!r} column (CSV/JSONL/Parquet); an image folder or a built-in "
                     "set has none")
