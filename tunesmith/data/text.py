"""Rows -> validated text-classification examples, split into train / validation / test, plus named extra
evaluation sets (data.eval_sets, or a built-in set's own, e.g. out-of-distribution ones).

Nothing is dropped silently: a bad row either stops the run with a message naming file, line and field
(on_bad_rows: error), or is counted in the report with its first messages shown (on_bad_rows: skip).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.data.builtin import BuiltinText, get_dataset
from tunesmith.data.config import DataConfig
from tunesmith.data.sources import Row, check_format, read_rows
from tunesmith.errors import DataError

SPLITS = ("train", "validation", "test")
BAD_ROW_MODES = ("error", "skip")
_SHOWN_SKIPS = 5
_SHOWN_LABELS = 10
_INT = re.compile(r"-?\d+")
EVAL_SET_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")


@dataclass(frozen=True, slots=True)
class TextExample:
    text: str
    label: int  # index into TextData.label_names
    where: str  # Row.where, so later stages can still point at the file


@dataclass
class DataReport:
    """What was loaded and from where, so a run's log shows exactly which data it trained on."""

    sources: dict[str, str]
    counts: dict[str, int]
    label_counts: dict[str, dict[str, int]]
    skipped: int = 0
    skipped_examples: list[str] = field(default_factory=list)
    # names of the extra evaluation sets, in order; sources / counts / label_counts list them after test
    eval_sets: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = []
        for split, count in self.counts.items():
            source = self.sources.get(split, "?")
            title = f"eval set {split}" if split in self.eval_sets else split
            out.append(
                f"{title}: {source}"
                if source.startswith("none")
                else f"{title}: {count:,} examples from {source}"
            )
            labels = [f"{name}: {n:,}" for name, n in self.label_counts.get(split, {}).items()]
            if count and labels:
                more = len(labels) - _SHOWN_LABELS
                shown = "; ".join(labels[:_SHOWN_LABELS]) + (f"; ... (+{more} more)" if more > 0 else "")
                out.append(f"  labels: {shown}")
        if self.skipped:
            out.append(
                f"skipped {self.skipped:,} bad row{'s' if self.skipped != 1 else ''} (on_bad_rows: skip):"
            )
            out += [f"  {message}" for message in self.skipped_examples]
            if self.skipped > len(self.skipped_examples):
                out.append(f"  ... and {self.skipped - len(self.skipped_examples):,} more")
        return out


@dataclass
class TextData:
    train: list[TextExample]
    validation: list[TextExample]  # empty when its fraction is 0 and no file was given
    test: list[TextExample]
    label_names: list[str]
    report: DataReport
    # named extra evaluation sets (e.g. "ood-subpop"), in order: the built-in set's own, then data.eval_sets
    eval_sets: dict[str, list[TextExample]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Parsed:
    text: str
    label: str
    where: str


class _BadRows:
    """Carries out on_bad_rows: raise at the first bad row, or count it and keep the first messages."""

    def __init__(self, mode: str, option: str) -> None:
        if mode not in BAD_ROW_MODES:
            raise DataError(f"{option}on_bad_rows is {mode!r}; valid values: {', '.join(BAD_ROW_MODES)}")
        self.skip = mode == "skip"
        self.option = option  # "data." in a run config, "" for a plain function call
        self.count = 0
        self.examples: list[str] = []

    def bad(self, where: str, problem: str, fix: str) -> None:
        if not self.skip:
            raise DataError(f"{where}: {problem}; {fix} (or set {self.option}on_bad_rows: skip)")
        self.add(f"{where}: {problem}")

    def add(self, message: str) -> None:
        self.count += 1
        if len(self.examples) < _SHOWN_SKIPS:
            self.examples.append(message)

    def read(self, path: str | Path, format: str) -> list[Row]:
        messages: list[str] | None = [] if self.skip else None
        rows = read_rows(path, format, skip_bad=messages)
        for message in messages or []:
            self.add(message)
        return rows


def _columns(values: dict[str, Any]) -> str:
    return ", ".join(repr(k) for k in values) if values else "no fields at all"


def _parse(row: Row, text_field: str, label_field: str, bad: _BadRows) -> _Parsed | None:
    """Check one row; None when it was bad (and on_bad_rows is skip)."""
    values, where, option = row.values, row.where, bad.option
    if text_field not in values:
        bad.bad(
            where,
            f"no field {text_field!r} (the row has {_columns(values)})",
            f"set {option}text_field to the column that holds the text",
        )
        return None
    if label_field not in values:
        bad.bad(
            where,
            f"no field {label_field!r} (the row has {_columns(values)})",
            f"set {option}label_field to the column that holds the label",
        )
        return None
    text, label = values[text_field], values[label_field]
    if not isinstance(text, str):
        kind = "null" if text is None else f"a {type(text).__name__} ({text!r:.40})"
        bad.bad(
            where, f"field {text_field!r} is {kind}, not a string", "give the text to classify as a string"
        )
        return None
    if not text.strip():
        bad.bad(where, f"field {text_field!r} is empty", "fill in the text or remove the row")
        return None
    if label is None or (isinstance(label, str) and not label.strip()):
        bad.bad(
            where,
            f"field {label_field!r} is {'null' if label is None else 'empty'}",
            "give every row a label or remove the row",
        )
        return None
    if not isinstance(label, str | int):  # bool is an int
        bad.bad(
            where,
            f"field {label_field!r} is a {type(label).__name__} ({label!r:.40})",
            "labels must be strings, integers or booleans (classes, not scores)",
        )
        return None
    return _Parsed(text, str(label), where)


def sort_labels(labels: set[str] | list[str]) -> list[str]:
    """Integer labels in numeric order ("2" before "10"), anything else lexicographically."""
    if labels and all(_INT.fullmatch(label) for label in labels):
        return sorted(labels, key=lambda label: (int(label), label))
    return sorted(labels)


def _check_fractions(validation: float, test: float) -> None:
    for name, value in (("validation", validation), ("test", test)):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
        ):
            raise DataError(f"data.split.{name} is {value!r}; give a fraction in [0, 1)")
    if validation + test >= 1:
        raise DataError(
            f"data.split.validation + data.split.test = {validation + test:g} leaves no training rows; "
            "their sum must be below 1"
        )


def _split_indices(n: int, validation: float, test: float, seed: int) -> dict[str, list[int]]:
    _check_fractions(validation, test)
    order = np.random.default_rng(seed).permutation(n)
    n_val, n_test = math.floor(n * validation + 0.5), math.floor(n * test + 0.5)
    parts = {
        "validation": order[:n_val],
        "test": order[n_val : n_val + n_test],
        "train": order[n_val + n_test :],
    }
    # Within a split, file order: outputs (predictions, errors) then line up with the file.
    return {split: sorted(parts[split].tolist()) for split in SPLITS}


def split_rows(rows: list[Row], validation: float, test: float, seed: int) -> dict[str, list[Row]]:
    """Seeded, deterministic train/validation/test split; each split keeps the rows' file order."""
    return {
        split: [rows[i] for i in idx]
        for split, idx in _split_indices(len(rows), validation, test, seed).items()
    }


def _subset(items: list[Any], limit: int | None, seed: int, stream: int) -> list[Any]:
    """A seeded subset in the original order; `stream` keeps the train and eval draws independent."""
    if limit is None or len(items) <= limit:
        return items
    keep = np.random.default_rng([seed, stream]).permutation(len(items))[:limit]
    return [items[i] for i in sorted(keep.tolist())]


def _check_limit(value: int | None, name: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise DataError(
            f"data.{name} is {value!r}; give a positive whole number of examples (or leave it unset)"
        )


def eval_set_files(cfg: DataConfig) -> dict[str, str]:
    """data.eval_sets checked before anything is read: a mapping of well-formed new names to paths."""
    value = cfg.eval_sets
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DataError(
            f"data.eval_sets is {value!r:.60}; give a mapping of names to files, e.g. "
            "{ood-shift: data/ood.jsonl}"
        )
    files = {}
    for name, path in value.items():
        if isinstance(name, int) and not isinstance(name, bool):  # YAML reads a key 2024 as a number
            name = str(name)
        check_eval_set_name(name, f"data.eval_sets: name {name!r}")
        if not isinstance(path, str | os.PathLike) or not str(path).strip():
            raise DataError(
                f"data.eval_sets.{name} is {path!r:.60}; give the path of a data file (images: a file "
                "or an image folder)"
            )
        files[name] = os.fspath(path)
    return files


def check_eval_set_name(name: object, what: str) -> None:
    if not isinstance(name, str) or not EVAL_SET_NAME.fullmatch(name):
        raise DataError(
            f"{what}: an eval set name is lower-case letters, digits and '-', starting with a letter or "
            "digit (e.g. ood-subpop)"
        )
    if name in SPLITS:
        raise DataError(
            f"{what}: {name!r} is a split, not an extra eval set; pick another name (e.g. ood-{name})"
        )


def merge_eval_sets(builtin: Iterable[str], files: dict[str, str], dataset: str | None) -> list[str]:
    """All eval set names, the built-in's first; a file may not reuse a built-in set's name."""
    builtin = list(builtin)
    for name in files:
        if name in builtin:
            raise DataError(
                f"data.eval_sets.{name}: the built-in data set {dataset} already has an eval set named "
                f"{name!r} ({', '.join(builtin)}); pick another name for your file"
            )
    return [*builtin, *files]


def eval_stream(name: str) -> int:
    """The seeded-subset stream of one eval set: from its name alone, so adding, removing or reordering
    other eval sets never changes which of its examples max_eval_samples keeps."""
    return len(SPLITS) + 1 + int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")


def _label_list(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:20])
    return shown + (f", ... ({len(names)} in all)" if len(names) > 20 else "")


def _to_examples(
    parsed: list[_Parsed], index: dict[str, int], bad: _BadRows, unknown: str
) -> list[TextExample]:
    out = []
    for p in parsed:
        if p.label not in index:
            bad.bad(
                p.where, f"label {p.label!r} {unknown}", f"the training labels are {_label_list(list(index))}"
            )
            continue
        out.append(TextExample(p.text, index[p.label], p.where))
    return out


def _label_counts(examples: list[TextExample], names: list[str]) -> dict[str, int]:
    counts = Counter(e.label for e in examples)
    return {name: counts[i] for i, name in enumerate(names)}


def load_text_classification(cfg: DataConfig) -> TextData:
    """Load, validate and split the data a run config describes."""
    check_format(cfg.format)
    bad = _BadRows(cfg.on_bad_rows, "data.")
    if (cfg.builtin is None) == (cfg.train is None):
        both = "both are set" if cfg.builtin is not None else "neither is set"
        raise DataError(
            f"give exactly one of data.builtin (a built-in data set) or data.train (a file); {both}"
        )
    _check_limit(cfg.max_train_samples, "max_train_samples")
    _check_limit(cfg.max_eval_samples, "max_eval_samples")
    eval_files = eval_set_files(cfg)
    seed = cfg.split.seed

    entry = get_dataset(cfg.builtin) if cfg.builtin is not None else None
    # a built-in with official splits: its test split unless data.test names a file; its own eval sets
    splits: BuiltinText | None = entry.load_splits() if entry and entry.load_splits else None
    official_test = splits is not None and splits.test is not None and cfg.test is None
    carved = {
        s: getattr(cfg.split, s)
        for s in ("validation", "test")
        if getattr(cfg, s) is None and not (s == "test" and official_test)
    }
    _check_fractions(carved.get("validation", 0.0), carved.get("test", 0.0))
    eval_names = merge_eval_sets(splits.eval_sets if splits else (), eval_files, cfg.builtin)
    text_field = cfg.text_field or (entry.text_field if entry else "text")
    label_field = cfg.label_field or (entry.label_field if entry else "label")
    about = splits.about if splits else {}
    train_source = f"builtin:{entry.name}" if entry else str(cfg.train)
    if "train" in about:
        train_source += f": {about['train']}"
    if splits is not None:
        train_rows = splits.train
    else:
        train_rows = entry.load() if entry else bad.read(str(cfg.train), cfg.format)
    file_rows = {
        s: bad.read(getattr(cfg, s), cfg.format) if getattr(cfg, s) is not None else splits.test
        for s in ("validation", "test")
        if s not in carved
    }  # splits.test: the official test split (official_test)
    eval_rows = {
        name: bad.read(eval_files[name], cfg.format) if name in eval_files else splits.eval_sets[name]
        for name in eval_names
    }

    # Validate in file order (so "error" mode reports the first bad line), split afterwards: the split
    # depends only on the number of rows, not on which of them are bad.
    train_parsed = [_parse(row, text_field, label_field, bad) for row in train_rows]
    indices = _split_indices(len(train_rows), carved.get("validation", 0.0), carved.get("test", 0.0), seed)
    parsed = {s: [p for i in indices[s] if (p := train_parsed[i]) is not None] for s in ("train", *carved)}
    for split, rows in [*file_rows.items(), *eval_rows.items()]:
        parsed[split] = [p for row in rows if (p := _parse(row, text_field, label_field, bad)) is not None]

    named = {s: rows for s, rows in file_rows.items() if not (s == "test" and official_test)}  # data.* files
    sources = _describe_sources(train_source, carved, file_rows, cfg)
    if official_test:
        assert entry is not None
        ignored = "; data.split.test is ignored" if cfg.split.test else ""
        sources["test"] = f"builtin:{entry.name}: {about.get('test', 'official test set')}{ignored}"
    sources = {s: sources[s] for s in SPLITS}
    for name in eval_names:
        builtin_source = f"builtin:{cfg.builtin}: {about.get(name, name)}"
        sources[name] = eval_files[name] if name in eval_files else builtin_source
    train_labels = {p.label for p in parsed["train"]}
    if not parsed["train"]:
        raise DataError(f"{sources['train']}: no usable training rows" + _skip_note(bad))
    if len(train_labels) < 2:
        raise DataError(
            f"{sources['train']}: the training split has only one label ({next(iter(train_labels))!r}) in field "
            f"{label_field!r}; classification needs at least 2 (is data.label_field the right column?)"
        )
    label_names = sort_labels(train_labels)  # from the whole train split, so max_train_samples can't drop one
    index = {name: i for i, name in enumerate(label_names)}

    examples = {"train": _to_examples(parsed["train"], index, bad, "never appears in training")}
    for split in ("validation", "test", *eval_names):
        examples[split] = _to_examples(
            parsed[split], index, bad, f"(field {label_field!r}) never appears in the training split"
        )
        if split in named and not examples[split]:
            raise DataError(f"{getattr(cfg, split)}: no rows left for the {split} split" + _skip_note(bad))
        if split in eval_names and not examples[split]:
            raise DataError(f"{sources[split]}: no rows left for the eval set {split!r}" + _skip_note(bad))

    limits = {
        "train": cfg.max_train_samples,
        "validation": cfg.max_eval_samples,
        "test": cfg.max_eval_samples,
    }
    streams = {**{split: i for i, split in enumerate(SPLITS, 1)}, **{n: eval_stream(n) for n in eval_names}}
    for split, stream in streams.items():
        before = len(examples[split])
        examples[split] = _subset(examples[split], limits.get(split, cfg.max_eval_samples), seed, stream)
        if len(examples[split]) < before:
            sources[split] += f"; seeded subset of {len(examples[split]):,} of {before:,} (seed {seed})"

    report = DataReport(
        sources=sources,
        counts={s: len(examples[s]) for s in streams},
        label_counts={s: _label_counts(examples[s], label_names) for s in streams},
        skipped=bad.count,
        skipped_examples=list(bad.examples),
        eval_sets=list(eval_names),
    )
    return TextData(
        examples["train"],
        examples["validation"],
        examples["test"],
        label_names,
        report,
        {name: examples[name] for name in eval_names},
    )


def _skip_note(bad: _BadRows) -> str:
    if not bad.count:
        return ""
    return f" ({bad.count} bad rows were skipped; the first: {bad.examples[0]})"


def _describe_sources(
    train_source: str, carved: dict[str, float], file_rows: dict[str, list[Row]], cfg: DataConfig
) -> dict[str, str]:
    sources = {s: str(getattr(cfg, s)) for s in file_rows}
    if not carved:
        return {"train": train_source, **sources}
    train_fraction = 1 - sum(carved.values())
    if len(carved) == 2:
        split = f"{train_fraction:.4g}/{carved['validation']:.4g}/{carved['test']:.4g}"
    else:
        ((name, fraction),) = carved.items()
        split = f"train/{name} {train_fraction:.4g}/{fraction:.4g}"
    described = f"{train_source} (seeded split {split}, seed {cfg.split.seed})"
    sources["train"] = described
    for name, fraction in carved.items():
        sources[name] = described if fraction > 0 else f"none (data.split.{name} is 0)"
    return {s: sources[s] for s in SPLITS}


def load_labelled_file(
    path: str | Path,
    text_field: str,
    label_field: str,
    label_names: list[str],
    format: str = "auto",
    on_bad_rows: str = "error",
) -> tuple[list[TextExample], DataReport]:
    """Load a file to evaluate a trained model on: its labels must be among the ones it was trained on."""
    check_format(format)
    bad = _BadRows(on_bad_rows, "")
    parsed = [
        p for row in bad.read(path, format) if (p := _parse(row, text_field, label_field, bad)) is not None
    ]
    index = {name: i for i, name in enumerate(label_names)}
    examples = _to_examples(
        parsed, index, bad, f"(field {label_field!r}) is not one the model was trained on"
    )
    if not examples:
        raise DataError(f"{path}: no usable rows" + _skip_note(bad))
    report = DataReport(
        sources={"eval": str(path)},
        counts={"eval": len(examples)},
        label_counts={"eval": _label_counts(examples, list(label_names))},
        skipped=bad.count,
        skipped_examples=list(bad.examples),
    )
    return examples, report
