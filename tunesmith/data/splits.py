"""The skeleton every loader (text classification, images, language-model rows) shares: which splits
come from files and which are carved from the training rows, bad rows (an error naming file, line and
field, or counted with on_bad_rows: skip), seeded subsets, extra evaluation sets, and the report of
what was loaded from where. A loader reads and parses its own rows between `start` and `finish`.

Nothing is dropped silently: a bad row either stops the run or is counted in the report with its first
messages shown.
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

from tunesmith.data.config import DataConfig, train_files, train_weights
from tunesmith.data.sources import Row, check_format, read_rows
from tunesmith.errors import DataError

SPLITS = ("train", "validation", "test")
BAD_ROW_MODES = ("error", "skip")
EVAL_SET_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
_SHOWN_SKIPS = 5
_SHOWN_ERRORS = 10
_SHOWN_LABELS = 10
_INT = re.compile(r"-?\d+")


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
    warnings: list[str] = field(default_factory=list)  # what looks wrong but may be meant
    notes: list[str] = field(default_factory=list)  # what was done to the rows that a user should know
    unit: str = "examples"  # what a split counts (pairs, judgements)
    breakdown: str = "labels"  # what label_counts counts per split (labels, formats, judged)

    def lines(self) -> list[str]:
        out = [f"warning: {message}" for message in self.warnings]
        for split, count in self.counts.items():
            source = self.sources.get(split, "?")
            title = f"eval set {split}" if split in self.eval_sets else split
            out.append(f"{title}: {source}" if source.startswith("none") else
                       f"{title}: {count:,} {self.unit if count != 1 else _singular(self.unit)} from {source}")
            labels = [f"{name}: {n:,}" for name, n in self.label_counts.get(split, {}).items()]
            if count and labels and self.breakdown:
                more = len(labels) - _SHOWN_LABELS
                shown = "; ".join(labels[:_SHOWN_LABELS]) + (f"; ... (+{more} more)" if more > 0 else "")
                out.append(f"  {self.breakdown}: {shown}")
        out += self.notes
        if self.skipped:
            out.append(f"skipped {self.skipped:,} bad row{'s' if self.skipped != 1 else ''} (on_bad_rows: skip):")
            out += [f"  {message}" for message in self.skipped_examples]
            if self.skipped > len(self.skipped_examples):
                out.append(f"  ... and {self.skipped - len(self.skipped_examples):,} more")
        return out


# `tunesmith eval` flags that set what a run config's data.* fields set
_FLAGS = {"text_field": "--text-field", "image_field": "--text-field", "label_field": "--label-field",
          "on_bad_rows": "--skip-bad-rows"}


class BadRows:
    """Carries out on_bad_rows: stop on bad rows (all of them named in one error, once every row was
    read: `stop`), or count them and keep the first messages. `style` words the fixes for where the rows
    come from: a run config ("set data.text_field ...") or `tunesmith eval`'s flags ("... with
    --text-field")."""

    def __init__(self, mode: str, style: str = "config") -> None:
        if mode not in BAD_ROW_MODES:
            raise DataError(f"data.on_bad_rows is {mode!r}; valid values: {', '.join(BAD_ROW_MODES)}")
        self.skip = mode == "skip"
        self.style = style
        self.count = 0
        self.examples: list[str] = []
        self.warnings: list[str] = []
        self.errors: list[tuple[str, str]] = []  # error mode: (problem at file:line, fix) of every bad row

    def name_column(self, option: str, holds: str) -> str:
        """The fix for a missing column, in the words of where the option is set."""
        if self.style == "config":
            return f"set data.{option} to the column that holds the {holds}"
        return f"name the column that holds the {holds} with {_FLAGS[option]}"

    def bad(self, where: str, problem: str, fix: str) -> None:
        if not self.skip:
            self.errors.append((f"{where}: {problem}", fix))
            return
        self.add(f"{where}: {problem}")

    def stop(self) -> None:
        """Error mode: one error naming every bad row found so far (the first ones in full)."""
        if not self.errors:
            return
        skip = "set data.on_bad_rows: skip" if self.style == "config" else f"pass {_FLAGS['on_bad_rows']}"
        errors, self.errors = self.errors, []
        if len(errors) == 1:
            (problem, fix), = errors
            raise DataError(f"{problem}{f'; {fix}' if fix else ''} (or {skip})")
        lines = [f"  {problem}{f'; {fix}' if fix else ''}" for problem, fix in errors[:_SHOWN_ERRORS]]
        if len(errors) > _SHOWN_ERRORS:
            lines.append(f"  ... and {len(errors) - _SHOWN_ERRORS:,} more")
        raise DataError(f"{len(errors):,} bad rows (fix them, or {skip} to train without them):\n" + "\n".join(lines))

    def add(self, message: str) -> None:
        self.count += 1
        if len(self.examples) < _SHOWN_SKIPS:
            self.examples.append(message)

    def read(self, path: str | Path, format: str) -> list[Row]:
        messages: list[str] = []
        rows = read_rows(path, format, skip_bad=messages)
        for message in messages:
            if self.skip:
                self.add(message)
            else:
                self.errors.append((message, ""))  # the reader's message says what to fix
        return rows

    def note(self) -> str:
        """A suffix for an error about rows running out: how many were skipped, and the first. In error
        mode, rows that ran out because they were bad are that error instead (`stop`)."""
        self.stop()
        if not self.count:
            return ""
        return f" ({self.count} bad rows were skipped; the first: {self.examples[0]})"


def columns(values: dict[str, Any]) -> str:
    return ", ".join(repr(k) for k in values) if values else "no fields at all"


def path_value(values: dict[str, Any], field: str, where: str, bad: BadRows, what: str = "image") -> str | None:
    """A row's file path field as a non-empty string, or None when the row is bad (reported to `bad`)."""
    value = values[field]
    if not isinstance(value, str):
        kind = "null" if value is None else f"a {type(value).__name__} ({value!r:.40})"
        bad.bad(where, f"field {field!r} is {kind}, not a string", f"give the {what}'s file path")
        return None
    if not value.strip():
        bad.bad(where, f"field {field!r} is empty", f"give the {what}'s file path or remove the row")
        return None
    return value


def existing_file(value: str, field: str, where: str, base: Path, bad: BadRows, what: str = "image") -> Path | None:
    """The file a row's path names (relative to `base`, its file's folder), or None when it is not one."""
    path = base / value  # an absolute `value` replaces base
    if not path.is_file():
        state = "is a folder, not a file" if path.is_dir() else "not found"
        bad.bad(where, f"field {field!r}: {what} {value!r} {state} (looked at {path})",
                f"fix the path (relative paths start at the file's folder, {os.path.abspath(base)})")
        return None
    return path


def sort_labels(labels: set[str] | list[str]) -> list[str]:
    """Integer labels in numeric order ("2" before "10"), anything else lexicographically."""
    if labels and all(_INT.fullmatch(label) for label in labels):
        return sorted(labels, key=lambda label: (int(label), label))
    return sorted(labels)


def label_list(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:20])
    return shown + (f", ... ({len(names)} in all)" if len(names) > 20 else "")


def label_counts(examples: list, names: list[str]) -> dict[str, int]:
    counts = Counter(e.label for e in examples)
    return {name: counts[i] for i, name in enumerate(names)}


# -- splits and subsets ------------------------------------------------------------------------------


def check_fractions(validation: float, test: float) -> None:
    for name, value in (("validation", validation), ("test", test)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise DataError(f"data.split.{name} is {value!r}; give a fraction in [0, 1)")
    if validation + test >= 1:
        raise DataError(f"data.split.validation + data.split.test = {validation + test:g} leaves no training "
                        "rows; their sum must be below 1")


def split_indices(n: int, validation: float, test: float, seed: int) -> dict[str, list[int]]:
    check_fractions(validation, test)
    order = np.random.default_rng(seed).permutation(n)
    n_val, n_test = math.floor(n * validation + 0.5), math.floor(n * test + 0.5)
    parts = {"validation": order[:n_val], "test": order[n_val : n_val + n_test], "train": order[n_val + n_test :]}
    # Within a split, file order: outputs (predictions, errors) then line up with the file.
    return {split: sorted(parts[split].tolist()) for split in SPLITS}


def split_rows(rows: list[Row], validation: float, test: float, seed: int) -> dict[str, list[Row]]:
    """Seeded, deterministic train/validation/test split; each split keeps the rows' file order."""
    return {split: [rows[i] for i in idx] for split, idx in split_indices(len(rows), validation, test, seed).items()}


def subset(items: list[Any], limit: int | None, seed: int, stream: int) -> list[Any]:
    """A seeded subset in the original order; `stream` keeps the train and eval draws independent."""
    if limit is None or len(items) <= limit:
        return items
    keep = np.random.default_rng([seed, stream]).permutation(len(items))[:limit]
    return [items[i] for i in sorted(keep.tolist())]


def _check_limit(value: int | None, name: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise DataError(f"data.{name} is {value!r}; give a positive whole number of examples (or leave it unset)")


# -- extra evaluation sets ----------------------------------------------------------------------------


def eval_set_files(cfg: DataConfig) -> dict[str, str]:
    """data.eval_sets checked before anything is read: a mapping of well-formed new names to paths."""
    value = cfg.eval_sets
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DataError(f"data.eval_sets is {value!r:.60}; give a mapping of names to files, e.g. "
                        "{ood-shift: data/ood.jsonl}")
    files = {}
    for name, path in value.items():
        if isinstance(name, int) and not isinstance(name, bool):  # YAML reads a key 2024 as a number
            name = str(name)
        check_eval_set_name(name, f"data.eval_sets: name {name!r}")
        if not isinstance(path, str | os.PathLike) or not str(path).strip():
            raise DataError(f"data.eval_sets.{name} is {path!r:.60}; give the path of a data file (images: a file "
                            "or an image folder)")
        files[name] = os.fspath(path)
    return files


def check_eval_set_name(name: object, what: str) -> None:
    if not isinstance(name, str) or not EVAL_SET_NAME.fullmatch(name):
        raise DataError(f"{what}: an eval set name is lower-case letters, digits and '-', starting with a letter or "
                        "digit (e.g. ood-subpop)")
    if name in SPLITS:
        raise DataError(f"{what}: {name!r} is a split, not an extra eval set; pick another name (e.g. ood-{name})")


def merge_eval_sets(builtin: Iterable[str], files: dict[str, str], dataset: str | None) -> list[str]:
    """All eval set names, the built-in's first; a file may not reuse a built-in set's name."""
    builtin = list(builtin)
    for name in files:
        if name in builtin:
            raise DataError(f"data.eval_sets.{name}: the built-in data set {dataset} already has an eval set named "
                            f"{name!r} ({', '.join(builtin)}); pick another name for your file")
    return [*builtin, *files]


def eval_stream(name: str) -> int:
    """The seeded-subset stream of one eval set: from its name alone, so adding, removing or reordering
    other eval sets never changes which of its examples max_eval_samples keeps."""
    return len(SPLITS) + 1 + int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")


def refuse_mixed_formats(examples: dict[str, list], is_chat: Any, allow: bool, unit: str = "rows") -> None:
    """Conversations (rendered with the chat template) beside plain-string prompts, across all splits,
    are an error naming the rows of the rarer kind: a model trained on both learns two prompt formats
    and is later prompted in one. `allow` (data.allow_mixed) lets them through."""
    if allow:
        return
    found = [e for split in examples.values() for e in split]
    chat = [e.where for e in found if is_chat(e)]
    plain = [e.where for e in found if not is_chat(e)]
    if not chat or not plain:
        return
    few, many = (("conversations (a list of messages, rendered with the chat template)", chat),
                 ("plain strings (no chat template)", plain))
    if len(few[1]) > len(many[1]):
        few, many = many, few
    shown = ", ".join(few[1][:5]) + (f", ... ({len(few[1]):,} in all)" if len(few[1]) > 5 else "")
    raise DataError(f"{shown}: {len(few[1]):,} of {len(found):,} {unit} are {few[0]}, the other {len(many[1]):,} are "
                    f"{many[0]}: a model trained on both learns two prompt formats and is then prompted in one; "
                    "make them one kind, or set data.allow_mixed: true")


# -- the skeleton ------------------------------------------------------------------------------------


@dataclass
class Plan:
    """What a loader knows before reading a row: the bad-row policy, the extra eval-set files, and (once
    it knows whether the data has an official test split) which splits are carved from training rows."""

    cfg: DataConfig
    bad: BadRows
    eval_files: dict[str, str]
    carved: dict[str, float] = field(default_factory=dict)
    # rows each data.train file gave, in order (read_train): what data.train_weights apply to
    file_rows: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # for the report (what the weights did)

    def read_train(self) -> list[Row]:
        """The rows of every data.train file, one after the other."""
        rows: list[Row] = []
        for path in train_files(self.cfg):
            found = self.bad.read(path, self.cfg.format)
            self.file_rows.append(len(found))
            rows += found
        return rows

    def carve(self, official_test: bool) -> dict[str, float]:
        """Validation (and test, unless given as a file or official) carved from the training rows."""
        self.carved = {s: getattr(self.cfg.split, s) for s in ("validation", "test")
                       if getattr(self.cfg, s) is None and not (s == "test" and official_test)}
        check_fractions(*self.fractions)
        return self.carved

    @property
    def fractions(self) -> tuple[float, float]:
        return self.carved.get("validation", 0.0), self.carved.get("test", 0.0)

    def indices(self, n: int) -> dict[str, list[int]]:
        """Rows are validated in file order (so "error" mode reports the first bad line) and split
        afterwards: the split depends only on the number of rows, not on which of them are bad. Weights
        apply to the training split only, after splitting, so no copy of a validation or test row trains."""
        found = split_indices(n, *self.fractions, self.cfg.split.seed)
        if self.cfg.train_weights is not None and sum(self.file_rows) == n:
            found["train"] = self._weighted(found["train"])
        return found

    def _weighted(self, train: list[int]) -> list[int]:
        """Each training row of a file with weight w counts floor(w) times, plus once more for a seeded
        share (w - floor(w)) of them; copies stay beside the original, in file order."""
        out: list[int] = []
        start = 0
        for i, (path, size, weight) in enumerate(zip(train_files(self.cfg), self.file_rows,
                                                     train_weights(self.cfg), strict=True)):
            mine = [r for r in train if start <= r < start + size]
            start += size
            whole, part = int(weight), weight - int(weight)
            extra: set[int] = set()
            if part and mine:
                # its own stream (a constant apart from the split's and the subsets'), one per file
                draw = np.random.default_rng([self.cfg.split.seed, 104729, i]).permutation(len(mine))
                extra = {mine[j] for j in draw[: math.floor(len(mine) * part + 0.5)].tolist()}
            counted = [r for r in mine for _ in range(whole + (r in extra))]
            out += counted
            self.notes.append(f"data.train_weights: {path} weight {weight:g}: {len(mine):,} training rows count as "
                              f"{len(counted):,}")
        return out

    def sources(self, train_source: str, named: Iterable[str]) -> dict[str, str]:
        """Where each split came from: `named` splits from data.<split> files, the others carved."""
        sources = {s: str(getattr(self.cfg, s)) for s in named}
        if not self.carved:
            return {"train": train_source, **sources}
        train_fraction = 1 - sum(self.carved.values())
        if len(self.carved) == 2:
            split = f"{train_fraction:.4g}/{self.carved['validation']:.4g}/{self.carved['test']:.4g}"
        else:
            ((name, fraction),) = self.carved.items()
            split = f"train/{name} {train_fraction:.4g}/{fraction:.4g}"
        described = f"{train_source} (seeded split {split}, seed {self.cfg.split.seed})"
        sources["train"] = described
        for name, fraction in self.carved.items():
            sources[name] = described if fraction > 0 else f"none (data.split.{name} is 0)"
        return {s: sources[s] for s in SPLITS if s in sources}


def start(cfg: DataConfig, train_is: str = "a file", eval_sets: bool = True) -> Plan:
    """The checks every loader makes first."""
    check_format(cfg.format)
    bad = BadRows(cfg.on_bad_rows)
    if (cfg.builtin is None) == (cfg.train is None):
        both = "both are set" if cfg.builtin is not None else "neither is set"
        raise DataError(f"give exactly one of data.builtin (a built-in data set) or data.train ({train_is}); {both}")
    _check_limit(cfg.max_train_samples, "max_train_samples")
    _check_limit(cfg.max_eval_samples, "max_eval_samples")
    files = eval_set_files(cfg)
    if files and not eval_sets:
        raise DataError(f"data.eval_sets ({', '.join(files)}): extra evaluation sets are for classification (text "
                        "or images); language-model runs evaluate on validation and test only")
    return Plan(cfg, bad, files)


def finish(plan: Plan, examples: dict[str, list], sources: dict[str, str], eval_names: list[str],
           counts_of: Any, same_stream_as_test: Iterable[str] = (), limits: dict[str, int] | None = None
           ) -> DataReport:
    """Seeded subsets (max_train_samples, max_eval_samples; each split and eval set on its own stream,
    except eval sets that are altered copies of the test set, which keep the test subset's examples),
    noted in the sources; then the report. `counts_of(examples)` gives a split's label counts."""
    plan.bad.stop()
    cfg, seed = plan.cfg, plan.cfg.split.seed
    limits = {"train": cfg.max_train_samples, "validation": cfg.max_eval_samples, "test": cfg.max_eval_samples} | {
        split: min(n, cfg.max_eval_samples or n) for split, n in (limits or {}).items()}  # a loader's own caps
    streams = {**{split: i for i, split in enumerate(SPLITS, 1)}, **{n: eval_stream(n) for n in eval_names}}
    for name in same_stream_as_test:
        streams[name] = streams["test"]
    for split, stream in streams.items():
        before = len(examples[split])
        examples[split] = subset(examples[split], limits.get(split, cfg.max_eval_samples), seed, stream)
        if len(examples[split]) < before:
            sources[split] += f"; seeded subset of {len(examples[split]):,} of {before:,} (seed {seed})"
    return DataReport(sources={s: sources[s] for s in streams}, counts={s: len(examples[s]) for s in streams},
                      label_counts={s: counts_of(examples[s]) for s in streams}, skipped=plan.bad.count,
                      skipped_examples=list(plan.bad.examples), eval_sets=list(eval_names),
                      warnings=list(plan.bad.warnings), notes=list(plan.notes))


def finish_splits(plan: Plan, examples: dict[str, list], file_rows: Iterable[str], train_source: str,
                  counts_of: Any) -> DataReport:
    """`finish` for the loaders without extra eval sets (language-model and preference data): each split's
    source, and an error naming the training source when no row of it was usable."""
    sources = plan.sources(train_source, file_rows)
    sources = {s: sources[s] for s in SPLITS}
    if not examples["train"]:
        raise DataError(f"{sources['train']}: no usable training rows" + plan.bad.note())
    return finish(plan, examples, sources, [], counts_of)


def _singular(unit: str) -> str:
    """examples -> example, pairs -> pair, judgements -> judgement."""
    return unit[:-1] if unit.endswith("s") else unit
