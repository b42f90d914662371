"""What the `data:` section of a run config says, and the checks on it that need no file or model."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from tunesmith.data.sources import FORMATS
from tunesmith.errors import ConfigError
from tunesmith.ranges import option, ranged


@dataclass
class SplitConfig:
    """Fractions carved (seeded, deterministic) out of the training rows for splits not given as files."""

    validation: float = ranged(0.1, "[0, 1)", "fraction of the training rows held out for validation when data.validation names no file")
    test: float = ranged(0.1, "[0, 1)", "fraction of the training rows held out for testing when data.test names no file (and the built-in set has no official test split)")
    seed: int = ranged(0, ">= 0", "seed of the split and of the seeded subsets and weights (max_train_samples, train_weights)")


@dataclass
class DataConfig:
    """The `data:` section: the rows a run trains and evaluates on, and how they are read (formats and
    column names: docs/data-formats.md)."""

    builtin: str | None = option(None, "a built-in data set (`tunesmith datasets` lists them), e.g. rotten-tomatoes; or give your own files with data.train")
    train: str | list[str] | None = option(None, "training file (.jsonl, .json, .csv, .tsv, .parquet; optionally .gz/.bz2/.xz) relative to the working directory, or a list of files mixed by data.train_weights; images: also a folder with one subfolder per class")
    train_weights: list[float] | None = option(None, "one weight per data.train file: how many times each of its training rows counts (2: twice, 0.5: a seeded half, 0: none); unset: all 1")
    validation: str | None = option(None, "validation file; unset: carved from the training rows (data.split.validation)")
    test: str | None = option(None, "test file; unset: carved from the training rows (data.split.test)")
    format: str = option("auto", "auto (by the file's extension) | json (a JSON array, or JSON Lines) | jsonl | csv | tsv | parquet")
    columns: dict[str, str] = option(help="your column names for the ones tunesmith reads, e.g. {prompt: question, completion: answer}; see docs/data-formats.md for the names", default_factory=dict)
    text_field: str | None = option(None, "the column holding the text (classification, language-model text rows, a diffusion image's caption); unset: the built-in's own, else data.columns.text, else text")
    label_field: str | None = option(None, "the column holding the label; unset: the built-in's own, else data.columns.label, else label")
    chat_template: str | None = option(None, "the chat template conversations are rendered with, replacing the tokenizer's: a name (chatml, llama3, zephyr), a .jinja or .txt file (relative to the working directory) or the Jinja text itself; the run keeps it for generate")
    split: SplitConfig = option(help="how validation and test rows are carved from the training rows when they are not given as files", default_factory=SplitConfig)
    max_train_samples: int | None = ranged(None, ">= 1", "keep a seeded subset of this many training examples (after splitting)")
    max_eval_samples: int | None = ranged(None, ">= 1", "keep a seeded subset of this many examples of validation, test and each eval set")
    on_bad_rows: str = option("error", "error | skip: a bad row stops the run naming file:line, or is skipped, counted and shown in the report")
    allow_mixed: bool = option(False, "train on rows of two kinds that are otherwise refused: conversations beside plain-string prompts, labels that mix numbers and words (0, 1, fresh)")
    eval_sets: dict[str, str] = option(help="extra evaluation sets, NAME: file (images: file or folder), evaluated at the end next to data.test; NAME is lower-case letters, digits and '-' (e.g. ood-shift)", default_factory=dict)
    image_field: str | None = option(None, "images: the CSV/JSONL column holding the image path (relative to that file); unset: data.columns.image, else path")
    augment: list[str] = option(help="training images only: crop (random resized) and/or flip", default_factory=list)
    crop_scale: list[float] = option(help="crop: the area fraction kept, min and max", default_factory=lambda: [0.7, 1.0])


def train_files(cfg: DataConfig) -> list[str]:
    """data.train as a list (one file, several, or none for a built-in set)."""
    if cfg.train is None:
        return []
    return [str(cfg.train)] if isinstance(cfg.train, str) else [str(p) for p in cfg.train]


def train_weights(cfg: DataConfig) -> list[float]:
    return list(cfg.train_weights) if cfg.train_weights is not None else [1.0] * len(train_files(cfg))


def describe_train(cfg: DataConfig) -> str:
    """data.train for the report: the file, or every file with its weight."""
    files = train_files(cfg)
    if len(files) == 1 and cfg.train_weights is None:
        return files[0]
    return " + ".join(f"{path} (weight {weight:g})" for path, weight in zip(files, train_weights(cfg), strict=True))


def field_name(cfg: DataConfig, canonical: str) -> str | None:
    """The user's column for text, label or image: data.<canonical>_field, else data.columns.<canonical>."""
    own = {"text": cfg.text_field, "label": cfg.label_field, "image": cfg.image_field}.get(canonical)
    return own or (cfg.columns or {}).get(canonical)


def check_data_config(cfg: DataConfig, where: Callable[[str], str], training: bool = True) -> None:
    """What can be said about the data section before any file is read. `training` false (a finished
    run opened for use): a template file need not exist any more (the run's saved tokenizer has it)."""
    from tunesmith.data.chat import template_problem
    from tunesmith.data.columns import check_columns

    if cfg.format not in ("auto", *FORMATS):
        raise ConfigError(f"{where('data.format')}: {cfg.format!r} is not one of auto, {', '.join(FORMATS)}")
    files = train_files(cfg)
    if isinstance(cfg.train, list) and not files:
        raise ConfigError(f"{where('data.train')}: an empty list; give a file, or a list of files")
    if isinstance(cfg.train, list) and not all(isinstance(p, str) and p.strip() for p in cfg.train):
        raise ConfigError(f"{where('data.train')}: every entry of the list must be a file path, got {cfg.train!r:.120}")
    _check_weights(cfg, files, where)
    check_columns(cfg.columns, where("data.columns"))
    for canonical, own in (("text", cfg.text_field), ("label", cfg.label_field), ("image", cfg.image_field)):
        mapped = (cfg.columns or {}).get(canonical)
        if own is not None and mapped is not None and own != mapped:
            raise ConfigError(f"{where(f'data.{canonical}_field')}: {own!r}, but data.columns.{canonical} is {mapped!r}; "
                              "give the column once")
    if cfg.chat_template is not None:
        problem = template_problem(cfg.chat_template, check_file=training)
        if problem:
            raise ConfigError(f"{where('data.chat_template')}: {problem}")


def _check_weights(cfg: DataConfig, files: list[str], where: Callable[[str], str]) -> None:
    weights = cfg.train_weights
    if weights is None:
        return
    at = where("data.train_weights")
    if cfg.train is None:
        raise ConfigError(f"{at}: weights mix several data.train files; data.train is not set")
    if not isinstance(weights, list) or not all(isinstance(w, int | float) and not isinstance(w, bool)
                                                for w in weights):
        raise ConfigError(f"{at}: give one number per data.train file, got {weights!r:.120}")
    if len(weights) != len(files):
        raise ConfigError(f"{at}: {len(weights)} weight{'s' if len(weights) != 1 else ''} for {len(files)} "
                          f"data.train file{'s' if len(files) != 1 else ''}; give one per file, in the same order")
    for path, weight in zip(files, weights, strict=True):
        if not math.isfinite(weight) or weight < 0:
            raise ConfigError(f"{at}: the weight of {path} is {weight:g}; weights are numbers >= 0 (0 leaves "
                              "the file out of training)")
    if not any(weights):
        raise ConfigError(f"{at}: every weight is 0, so nothing would train; give at least one file a weight > 0")
