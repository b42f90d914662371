"""Captioned images for text-to-image diffusion: rows naming an image file and its caption.

data.train (and data.validation / data.test) is either
- a CSV/TSV/JSONL/Parquet file whose rows name an image (data.image_field, default `path`, relative to the
  file's folder) and its caption (data.text_field, default `text`, the column diffusers' training scripts
  read), or
- a folder of images with a metadata.jsonl / metadata.csv / metadata.parquet file in it (Hugging Face's
  imagefolder layout: the image column is `file_name`, relative to the folder).
Validation and test are carved from training rows (seeded) unless given; bad rows are an error naming the
file, line and field, or counted and skipped (data.on_bad_rows: skip).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tunesmith.data.columns import Columns
from tunesmith.data.conditions import condition_field, condition_path
from tunesmith.data.config import DataConfig, field_name
from tunesmith.data.sources import Row
from tunesmith.data.splits import (
    BadRows,
    DataReport,
    columns,
    existing_file,
    finish_splits,
    path_value,
    start,
)
from tunesmith.errors import DataError

CAPTION_COLUMNS = ("image", "text")
DEFAULT_CAPTION_FIELD = "text"
METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")


@dataclass(frozen=True, slots=True)
class CaptionedImage:
    image: Path
    caption: str
    where: str  # "captions.jsonl:7"
    condition: Path | None = None  # its conditioning image (objective.control: image)


@dataclass
class CaptionData:
    train: list[CaptionedImage]
    validation: list[CaptionedImage]
    test: list[CaptionedImage]
    report: DataReport
    label_names: list[str] | None = None  # captions, not classes


def rows_file(path: str) -> tuple[str, bool]:
    """(the file listing the images, whether it is a folder's imagefolder metadata file)."""
    if not os.path.isdir(path):
        if not os.path.exists(path):
            raise DataError(f"{path}: not found; give a CSV/JSONL/Parquet file of image paths and captions, or a "
                            f"folder of images with a {' / '.join(METADATA_FILES)} file")
        return path, False
    for name in METADATA_FILES:
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name), True
    raise DataError(f"{path}: a folder of captioned images needs a metadata file ({' or '.join(METADATA_FILES)}) "
                    "with a file_name and a caption column per image; class subfolders give classes, not "
                    "captions")


def parse_caption_row(row: Row, image_field: str, caption_field: str, base: Path, bad: BadRows,
                      condition_field: str | None = None) -> CaptionedImage | None:
    values, where = row.values, row.where
    for name, option, holds in ((image_field, "image_field", "image path"), (caption_field, "text_field", "caption")):
        if name not in values:
            bad.bad(where, f"no field {name!r} (the row has {columns(values)})", bad.name_column(option, holds))
            return None
    value, caption = path_value(values, image_field, where, bad), values[caption_field]
    if value is None:
        return None
    if not isinstance(caption, str):
        kind = "null" if caption is None else f"a {type(caption).__name__} ({caption!r:.40})"
        bad.bad(where, f"field {caption_field!r} is {kind}, not a caption", "give the caption as text")
        return None
    path = existing_file(value, image_field, where, base, bad)
    if path is None:
        return None
    condition = condition_path(row, condition_field, base, bad) if condition_field else None
    if condition_field and condition is None:
        return None
    return CaptionedImage(path, caption, where, condition)


def load_image_captions(cfg: DataConfig, conditioned: bool = False) -> CaptionData:
    """Load, validate and split captioned image rows (same split and subset rules as every other task);
    `conditioned`: each row names a conditioning image too (data/conditions.py)."""
    plan = start(cfg, "a file of image paths and captions, or a folder with a metadata file", eval_sets=False)
    bad = plan.bad
    if cfg.builtin is not None:
        raise DataError(f"data.builtin: {cfg.builtin} has classes, not captions; a caption-conditioned model "
                        "trains on data.train: a file of image paths and captions")
    if isinstance(cfg.train, list) or cfg.train_weights is not None:
        raise DataError("data.train: captioned images are read from one file or folder")
    Columns.of(cfg.columns, (*CAPTION_COLUMNS, "condition") if conditioned else CAPTION_COLUMNS, "captioned image rows")
    extra = condition_field(cfg) if conditioned else None
    caption_field = field_name(cfg, "text") or DEFAULT_CAPTION_FIELD
    carved = plan.carve(official_test=False)

    def read(path: str) -> tuple[list[Row], list[CaptionedImage | None]]:
        listing, in_folder = rows_file(path)
        image_field = field_name(cfg, "image") or ("file_name" if in_folder else "path")
        rows = bad.read(listing, cfg.format if not in_folder else "auto")
        base = Path(listing).parent
        return rows, [parse_caption_row(r, image_field, caption_field, base, bad, extra) for r in rows]

    train_rows, parsed = read(str(cfg.train))
    indices = plan.indices(len(train_rows))
    examples = {s: [p for i in indices[s] if (p := parsed[i]) is not None] for s in ("train", *carved)}
    file_rows = {}
    for split in ("validation", "test"):
        if split not in carved:
            file_rows[split], given = read(str(getattr(cfg, split)))
            examples[split] = [p for p in given if p is not None]
            if not examples[split]:
                raise DataError(f"{getattr(cfg, split)}: no usable rows for the {split} split" + bad.note())
    bad.stop()
    report = finish_splits(plan, examples, file_rows, str(cfg.train), lambda split: {})
    return CaptionData(examples["train"], examples["validation"], examples["test"], report)
