"""What the `data:` section of a run config says."""

from __future__ import annotations

from dataclasses import dataclass, field

from tunesmith.ranges import ranged


@dataclass
class SplitConfig:
    """Fractions carved (seeded, deterministic) out of the training rows for splits not given as files."""

    validation: float = ranged(0.1, "[0, 1)")
    test: float = ranged(0.1, "[0, 1)")
    seed: int = ranged(0, ">= 0")


@dataclass
class DataConfig:
    builtin: str | None = None  # a built-in data set, e.g. "rotten-tomatoes"; or give files below
    train: str | None = None  # .jsonl / .csv / .tsv / .parquet, relative to the working directory
    validation: str | None = None
    test: str | None = None
    format: str = "auto"  # auto (by extension) | jsonl | csv | tsv | parquet
    text_field: str | None = None  # None: the built-in's own column, else "text"
    label_field: str | None = None  # None: the built-in's own column, else "label"
    split: SplitConfig = field(default_factory=SplitConfig)
    max_train_samples: int | None = ranged(None, ">= 1")  # seeded subset of the training split (after splitting)
    max_eval_samples: int | None = ranged(None, ">= 1")  # seeded subset of validation, test and each eval set
    on_bad_rows: str = "error"  # error | skip (skipped rows are counted and the first ones shown)
    # rows of two kinds are refused, naming them: conversations beside plain-string prompts, labels that
    # mix numbers and words (0, 1, fresh); true trains on them as they are
    allow_mixed: bool = False
    # extra evaluation sets, NAME: file (images: file or folder), checked like data.test and evaluated at
    # the end next to it; NAME is lower-case letters, digits, '-' (e.g. ood-shift). A built-in set may
    # bring its own (20newsgroups-subpop: ood-subpop); these come after them.
    eval_sets: dict[str, str] = field(default_factory=dict)
    # images: data.train may also be a folder with one subfolder per class
    image_field: str | None = None  # CSV/JSONL column holding the image path (relative to that file); "path"
    augment: list[str] = field(default_factory=list)  # training images only: crop (random resized) and/or flip
    crop_scale: list[float] = field(default_factory=lambda: [0.7, 1.0])  # crop: area fraction kept, min and max
