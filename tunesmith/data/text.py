"""Rows -> validated text-classification examples, split into train / validation / test, plus named extra
evaluation sets (data.eval_sets, or a built-in set's own, e.g. out-of-distribution ones).

The split, subset and report rules are the shared ones (data/splits.py); this file reads and checks
the text and label of each row.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.data.builtin import get_dataset
from tunesmith.data.columns import CLASSIFY_COLUMNS, Columns
from tunesmith.data.config import DataConfig, describe_train, field_name
from tunesmith.data.packaged import BuiltinText
from tunesmith.data.sources import Row, check_format
from tunesmith.data.splits import (
    SPLITS,
    BadRows,
    DataReport,
    columns,
    finish,
    label_counts,
    label_list,
    merge_eval_sets,
    sort_labels,
    start,
)
from tunesmith.errors import DataError

_INTEGER = re.compile(r"-?\d+")
_LM_ROWS = {"chat": {"messages", "conversations"}, "prompt/completion": {"prompt", "completion"}, "Alpaca": {"instruction"}}


@dataclass(frozen=True, slots=True)
class TextExample:
    text: str
    label: int  # index into TextData.label_names
    where: str  # Row.where, so later stages can still point at the file


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
class Parsed:
    """A checked row whose label is still the string from the file (images: `text` is the image path)."""

    text: str
    label: str
    where: str


def check_label(label: object, label_field: str, where: str, bad: BadRows) -> bool:
    """A label is a non-empty string, an integer or a boolean (classes, not scores)."""
    if label is None or (isinstance(label, str) and not label.strip()):
        bad.bad(where, f"field {label_field!r} is {'null' if label is None else 'empty'}",
                "give every row a label or remove the row")
        return False
    if not isinstance(label, str | int):  # bool is an int
        bad.bad(where, f"field {label_field!r} is a {type(label).__name__} ({label!r:.40})",
                "labels must be strings, integers or booleans (classes, not scores)")
        return False
    return True


def _parse(row: Row, text_field: str, label_field: str, bad: BadRows, need_label: bool = True) -> Parsed | None:
    """Check one row; None when it was bad (and on_bad_rows is skip). Without `need_label` (weak
    supervision's unlabelled training rows) only the text is checked; a usable label is kept (for
    statistics only), anything else becomes "" (no label)."""
    values, where = row.values, row.where
    for name, holds in ((text_field, "text"), *([(label_field, "label")] if need_label else [])):
        if name not in values:
            fix = bad.name_column("text_field" if name == text_field else "label_field", holds)
            kind = next((k for k, keys in _LM_ROWS.items() if keys & set(values)), None)
            if kind:  # a language model's rows given to a classifier
                fix = f"these look like {kind} rows, which train a language model: set objective: causal_lm"
            bad.bad(where, f"no field {name!r} (the row has {columns(values)})", fix)
            return None
    text, label = values[text_field], values.get(label_field)
    if not isinstance(text, str):
        kind = "null" if text is None else f"a {type(text).__name__} ({text!r:.40})"
        bad.bad(where, f"field {text_field!r} is {kind}, not a string", "give the text to classify as a string")
        return None
    if not text.strip():
        bad.bad(where, f"field {text_field!r} is empty", "fill in the text or remove the row")
        return None
    if not need_label:
        return Parsed(text, str(label) if isinstance(label, str | int) and str(label).strip() else "", where)
    if not check_label(label, label_field, where, bad):
        return None
    return Parsed(text, str(label), where)


def to_examples(parsed: list[Parsed], index: dict[str, int], bad: BadRows, unknown: str) -> list[TextExample]:
    """Parsed rows with their labels as indices; a label outside `index` is a bad row."""
    out = []
    for p in parsed:
        if p.label not in index:
            bad.bad(p.where, f"label {p.label!r} {unknown}", f"the training labels are {label_list(list(index))}")
            continue
        out.append(TextExample(p.text, index[p.label], p.where))
    return out


def labels_of_training(parsed: list[Parsed], source: str, one: Callable[[str], str], bad: BadRows,
                       rows: str = "rows", allow_mixed: bool = False) -> list[str]:
    """Label names from the whole training split (so max_train_samples cannot drop one); at least two.
    `one(label)` words the error for a training split with a single label. Labels that mix numbers and
    words are refused (naming the rows of each kind) unless `allow_mixed`."""
    bad.stop()  # a split with one label, or none, is most often what bad rows left
    if not parsed:
        raise DataError(f"{source}: no usable training {rows}" + bad.note())
    labels = {p.label for p in parsed}
    if len(labels) < 2:
        raise DataError(f"{source}: the training split has only one {one(next(iter(labels)))}")
    numbers = sorted(label for label in labels if _INTEGER.fullmatch(label))
    if numbers and len(numbers) < len(labels) and not allow_mixed:
        # 0/1 beside "fresh": a shifted column or rows from another file, far likelier than a real label set
        words = sorted(labels - set(numbers))
        kinds = [(f"numbers ({label_list(numbers)})", [p.where for p in parsed if p.label in numbers]),
                 (f"words ({label_list(words)})", [p.where for p in parsed if p.label not in numbers])]
        described = "; ".join(f"{what} in {len(where):,} {rows if len(where) != 1 else rows[:-1]} (e.g. "
                              f"{', '.join(where[:5])})" for what, where in kinds)
        raise DataError(f"{source}: the training labels mix numbers and words: {described}. A shifted column, or "
                        f"{rows} from another file? Make the labels one kind, or set data.allow_mixed: true to train "
                        f"on them as {len(labels)} classes")
    return sort_labels(labels)


def load_text_classification(cfg: DataConfig, unlabelled_train: bool = False, label_names: list[str] | None = None,
                             validation_limit: int | None = None) -> TextData:
    """Load, validate and split the data a run config describes.

    Weak supervision (`unlabelled_train`): training rows need only a text; a label they carry is kept
    where it is one of the labels (for statistics, never for training), else the example's label is -1.
    Validation and test rows are labelled (carved ones too). The labels are `label_names`, or those of
    the labelled splits. `validation_limit`: a seeded subset of at most that many validation examples."""
    plan = start(cfg)
    bad = plan.bad
    Columns.of(cfg.columns, CLASSIFY_COLUMNS, "classification rows")
    entry = get_dataset(cfg.builtin) if cfg.builtin is not None else None
    # a built-in with official splits: its test split unless data.test names a file; its own eval sets
    splits: BuiltinText | None = entry.load_splits() if entry and entry.load_splits else None
    official_test = splits is not None and splits.test is not None and cfg.test is None
    carved = plan.carve(official_test)
    eval_names = merge_eval_sets(splits.eval_sets if splits else (), plan.eval_files, cfg.builtin)
    text_field = field_name(cfg, "text") or (entry.text_field if entry else "text")
    label_field = field_name(cfg, "label") or (entry.label_field if entry else "label")
    about = splits.about if splits else {}
    train_source = f"builtin:{entry.name}" if entry else describe_train(cfg)
    if "train" in about:
        train_source += f": {about['train']}"
    if splits is not None:
        train_rows = splits.train
    else:
        train_rows = entry.load() if entry else plan.read_train()
    file_rows = {s: bad.read(getattr(cfg, s), cfg.format) if getattr(cfg, s) is not None else splits.test
                 for s in ("validation", "test") if s not in carved}  # splits.test: the official test split
    eval_rows = {name: bad.read(plan.eval_files[name], cfg.format) if name in plan.eval_files
                 else splits.eval_sets[name] for name in eval_names}

    train_parsed = [_parse(row, text_field, label_field, bad, need_label=not unlabelled_train) for row in train_rows]
    indices = plan.indices(len(train_rows))
    parsed = {s: [p for i in indices[s] if (p := train_parsed[i]) is not None] for s in ("train", *carved)}
    for split in carved if unlabelled_train else ():
        for p in parsed[split]:
            if not p.label:
                bad.bad(p.where, f"no label in field {label_field!r}, and the {split} split is carved from "
                        "data.train, so its rows need labels", f"label these rows, or give data.{split} as a "
                        "labelled file")
        parsed[split] = [p for p in parsed[split] if p.label]
    for split, rows in [*file_rows.items(), *eval_rows.items()]:
        parsed[split] = [p for row in rows if (p := _parse(row, text_field, label_field, bad)) is not None]

    named = [s for s in file_rows if not (s == "test" and official_test)]  # from data.<split> files
    sources = plan.sources(train_source, named)
    if official_test:
        ignored = "; data.split.test is ignored" if cfg.split.test else ""
        sources["test"] = f"builtin:{entry.name}: {about.get('test', 'official test set')}{ignored}"
    sources = {s: sources[s] for s in SPLITS}
    for name in eval_names:
        sources[name] = plan.eval_files.get(name) or f"builtin:{cfg.builtin}: {about.get(name, name)}"
    if unlabelled_train:
        label_names = label_names or sort_labels({p.label for s in parsed if s != "train" for p in parsed[s]})
        if len(label_names) < 2:
            raise DataError(f"{sources['validation']}: weak supervision needs at least 2 labels; name them (for "
                            "objective weak: objective.labels) or give labelled validation rows")
        index = {name: i for i, name in enumerate(label_names)}
        examples = {"train": [TextExample(p.text, index.get(p.label, -1), p.where) for p in parsed["train"]]}
    else:
        label_names = labels_of_training(
            parsed["train"], sources["train"], lambda label: f"label ({label!r}) in field {label_field!r}; "
            "classification needs at least 2 (is data.label_field the right column?)", bad,
            allow_mixed=cfg.allow_mixed)
        index = {name: i for i, name in enumerate(label_names)}
        examples = {"train": to_examples(parsed["train"], index, bad, "never appears in training")}
    for split in ("validation", "test", *eval_names):
        examples[split] = to_examples(parsed[split], index, bad, f"(field {label_field!r}) is not one of the labels"
                                      if unlabelled_train else f"(field {label_field!r}) never appears in the "
                                      "training split")
        if split in named and not examples[split]:
            raise DataError(f"{getattr(cfg, split)}: no rows left for the {split} split" + bad.note())
        if split in eval_names and not examples[split]:
            raise DataError(f"{sources[split]}: no rows left for the eval set {split!r}" + bad.note())
    report = finish(plan, examples, sources, eval_names, lambda ex: label_counts(ex, label_names),
                    limits={"validation": validation_limit} if validation_limit else None)
    if unlabelled_train:
        report.label_counts["train"] = {}  # its labels, where it has any, are not trained on
    return TextData(examples["train"], examples["validation"], examples["test"], label_names, report,
                    {name: examples[name] for name in eval_names})


def load_labelled_file(path: str | Path, text_field: str, label_field: str, label_names: list[str],
                       format: str = "auto", on_bad_rows: str = "error") -> tuple[list[TextExample], DataReport]:
    """Load a file to evaluate a trained model on: its labels must be among the ones it was trained on."""
    check_format(format)
    bad = BadRows(on_bad_rows, style="flags")
    parsed = [p for row in bad.read(path, format) if (p := _parse(row, text_field, label_field, bad)) is not None]
    index = {name: i for i, name in enumerate(label_names)}
    examples = to_examples(parsed, index, bad, f"(field {label_field!r}) is not one the model was trained on")
    if not examples:
        raise DataError(f"{path}: no usable rows" + bad.note())
    bad.stop()
    report = DataReport(sources={"eval": str(path)}, counts={"eval": len(examples)},
                        label_counts={"eval": label_counts(examples, list(label_names))}, skipped=bad.count,
                        skipped_examples=list(bad.examples))
    return examples, report
