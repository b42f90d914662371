"""Preference data in TRL's conventions, so users' files work unchanged, validated and split.

Row formats (detected per row, from the column names):
- `{"prompt": str, "chosen": str, "rejected": str}`: a pair of completions of one prompt, the first
  preferred;
- `{"prompt": [messages], "chosen": [messages], "rejected": [messages]}`: the same as conversations,
  rendered with the tokenizer's chat template (chosen / rejected hold the assistant turn(s));
- `{"prompt": ..., "completion": ..., "label": true|false}`: an unpaired judgement (KTO): the
  completion is desirable (true) or not.

data.columns renames any of these columns (e.g. `{chosen: good, rejected: bad}`), and the keys inside
each turn (`role`, `content`); turns may also be ShareGPT's {"from": "human"|"gpt", "value": ...}.

A row whose chosen and rejected are the same, or with an empty side, is a bad row, named by file and
line (an error, or skipped and counted with on_bad_rows: skip). A pair whose completion tokens are all
cut away by model.max_length is caught when it is tokenized (objectives/pairs.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunesmith.data.builtin import get_dataset
from tunesmith.data.columns import PREF_COLUMNS, Columns
from tunesmith.data.config import DataConfig, describe_train
from tunesmith.data.lm import ROLE_NAMES, ROLES
from tunesmith.data.sources import Row
from tunesmith.data.splits import BadRows, DataReport, finish_splits, refuse_mixed_formats, start
from tunesmith.errors import DataError

Text = str | tuple[dict[str, str], ...]  # a string, or messages


@dataclass(frozen=True, slots=True)
class PrefExample:
    """A pair (chosen and rejected set), or an unpaired judgement (completion and label set)."""

    where: str
    prompt: Text
    chosen: Text | None = None
    rejected: Text | None = None
    completion: Text | None = None
    label: bool | None = None

    @property
    def chat(self) -> bool:
        return not isinstance(self.prompt, str)

    @property
    def paired(self) -> bool:
        return self.chosen is not None

    @property
    def answer(self) -> str | None:
        """The preferred answer as text, for exact-match evaluation of greedy generations."""
        best = self.chosen if self.paired else (self.completion if self.label else None)
        if best is None:
            return None
        return best if isinstance(best, str) else best[-1]["content"]

    @property
    def messages(self) -> tuple[dict[str, str], ...] | None:
        """Chat prompts as LMExample gives them to exact-match scoring: the prompt, then the answer."""
        return None if not self.chat else (*self.prompt, {"role": "assistant", "content": self.answer or ""})

    @property
    def kind(self) -> str:
        return "chat" if self.chat else "prompt"


@dataclass
class PrefData:
    train: list[PrefExample]
    validation: list[PrefExample]
    test: list[PrefExample]
    report: DataReport
    label_names: list[str] | None = None


def _messages(value: Any, field: str, where: str, bad: BadRows, roles: tuple[str, ...], cols: Columns
              ) -> tuple | None:
    name = cols.name(field)
    if not isinstance(value, list) or not value:
        bad.bad(where, f"field {name} is an empty list" if isinstance(value, list) else
                f"field {name} must be a list of turns {cols.turn_shape()} like the prompt's", "fix the row")
        return None
    out = []
    for i, m in enumerate(value):
        found = cols.turn(m)
        role = ROLE_NAMES.get(found[0]) if found and isinstance(found[0], str) else None
        if found is None or role not in roles or not isinstance(found[1], str):
            bad.bad(where, f"{field}[{i}] must be {cols.turn_shape()} with the speaker one of {'/'.join(roles)}, "
                    f"got {m!r}"[:300], "fix the row")
            return None
        out.append({"role": role, "content": found[1]})
    return tuple(out)


def _side(values: dict, field: str, chat: bool, where: str, bad: BadRows, cols: Columns) -> Text | None:
    value = values.get(field)
    if chat:
        found = _messages(value, field, where, bad, ("assistant",), cols)
        if found is not None and not any(m["content"].strip() for m in found):
            bad.bad(where, f"field {cols.name(field)} is empty", "give the completion or remove the row")
            return None
        return found
    if not isinstance(value, str) or not value.strip():
        what = "missing" if value is None else ("empty" if isinstance(value, str) else f"a {type(value).__name__}")
        bad.bad(where, f"field {cols.name(field)} is {what}", "give the completion as text (or as messages, with a "
                "message list as the prompt)")
        return None
    return value


def parse_pref_row(row: Row, bad: BadRows, cols: Columns | None = None) -> PrefExample | None:
    """Check one row; None when it was bad (and on_bad_rows is skip)."""
    cols = cols or Columns()
    where = row.where
    missing = cols.missing(row.values)
    if missing:
        have = ", ".join(map(repr, row.values)) or "no fields"
        bad.bad(where, f"no column {', '.join(missing)} (the row has {have})", "give it in every row, or fix data.columns")
        return None
    v = cols.rename(row.values)
    paired, unpaired = "chosen" in v or "rejected" in v, "completion" in v or "label" in v
    if not paired and not unpaired:
        have = ", ".join(map(repr, row.values)) or "no fields"
        bad.bad(where, f"no fields {cols.name('chosen')}/{cols.name('rejected')} (a pair) or {cols.name('completion')}/"
                f"{cols.name('label')} (an unpaired judgement); the row has {have}",
                "use TRL's preference format: prompt, chosen, rejected (or name your columns with data.columns)")
        return None
    prompt = v.get("prompt")
    chat = isinstance(prompt, list)
    if chat:
        prompt = _messages(prompt, "prompt", where, bad, ROLES, cols)
        if prompt is None:
            return None
    elif not isinstance(prompt, str) or not prompt.strip():
        bad.bad(where, f"field {cols.name('prompt')} is missing or empty", "give the prompt (text, or a list of "
                "messages)")
        return None
    if paired:
        chosen, rejected = (_side(v, f, chat, where, bad, cols) for f in ("chosen", "rejected"))
        if chosen is None or rejected is None:
            return None
        if chosen == rejected:
            bad.bad(where, "chosen and rejected are the same", "a pair must differ; remove the row")
            return None
        return PrefExample(where, prompt, chosen=chosen, rejected=rejected)
    completion = _side(v, "completion", chat, where, bad, cols)
    if completion is None:
        return None
    label = v.get("label")
    if not isinstance(label, bool):
        bad.bad(where, f"field {cols.name('label')} is {label!r}", "give true (a desirable completion) or false")
        return None
    return PrefExample(where, prompt, completion=completion, label=label)


def load_pref_data(cfg: DataConfig, paired: bool = True) -> PrefData:
    """Load, validate and split preference rows (the split and subset rules of every loader). `paired`:
    pairs are wanted (DPO, reward models), else unpaired judgements (KTO; a pair then counts as one
    desirable and one undesirable judgement of the same prompt)."""
    plan = start(cfg, eval_sets=False)
    bad = plan.bad
    carved = plan.carve(official_test=False)
    entry = get_dataset(cfg.builtin) if cfg.builtin is not None else None
    cols = Columns.of(cfg.columns, PREF_COLUMNS, "preference rows")
    train_rows = entry.load() if entry else plan.read_train()
    file_rows = {s: bad.read(getattr(cfg, s), cfg.format) for s in ("validation", "test") if s not in carved}
    parsed_train = [parse_pref_row(r, bad, cols) for r in train_rows]
    indices = plan.indices(len(train_rows))
    examples: dict[str, list[PrefExample]] = {
        s: [p for i in indices[s] if (p := parsed_train[i]) is not None] for s in ("train", *carved)}
    for split, rows in file_rows.items():
        examples[split] = [p for r in rows if (p := parse_pref_row(r, bad, cols)) is not None]
    bad.stop()
    refuse_mixed_formats(examples, lambda e: e.chat, cfg.allow_mixed, "rows")
    unpaired_pairs = 0
    for split, found in examples.items():
        kinds = {e.paired for e in found}
        if paired and False in kinds:
            first = next(e for e in found if not e.paired)
            raise DataError(f"{first.where}: an unpaired judgement (completion, label), but this objective learns "
                            "from pairs (prompt, chosen, rejected); use objective: kto for unpaired data")
        if not paired:
            unpaired_pairs += sum(e.paired for e in found)
            examples[split] = [u for e in found for u in _unpaired(e)]
        if split in file_rows and not examples[split]:
            raise DataError(f"{getattr(cfg, split)}: no rows left for the {split} split" + bad.note())

    def judged(split_examples: list[PrefExample]) -> dict[str, int]:
        counts = {"desirable": sum(e.label is True for e in split_examples),
                  "undesirable": sum(e.label is False for e in split_examples)}
        return {k: n for k, n in counts.items() if n} if not paired else {}

    report = finish_splits(plan, examples, file_rows, f"builtin:{entry.name}" if entry else describe_train(cfg), judged)
    report.unit, report.breakdown = ("pairs", "") if paired else ("judgements", "judged")
    if unpaired_pairs:
        report.notes.append(f"{unpaired_pairs:,} pairs (prompt, chosen, rejected) read as {2 * unpaired_pairs:,} "
                            "unpaired judgements: each chosen answer desirable, each rejected one undesirable")
    return PrefData(examples["train"], examples["validation"], examples["test"], report)


def _unpaired(example: PrefExample) -> list[PrefExample]:
    if not example.paired:
        return [example]
    return [PrefExample(f"{example.where} (chosen)", example.prompt, completion=example.chosen, label=True),
            PrefExample(f"{example.where} (rejected)", example.prompt, completion=example.rejected, label=False)]


def load_pref_file(path: str, paired: bool = True, on_bad_rows: str = "error", format: str = "auto",
                   columns: dict[str, str] | None = None) -> tuple[list[PrefExample], DataReport]:
    """A preference file to evaluate (or score with) a finished run: every row checked as in training
    (`columns`: the run's data.columns), all bad rows named at once (`tunesmith eval` and `score` flags in
    the fixes)."""
    bad = BadRows(on_bad_rows, style="flags")
    cols = Columns.of(columns, PREF_COLUMNS, "preference rows")
    examples = [p for row in bad.read(path, format) if (p := parse_pref_row(row, bad, cols)) is not None]
    bad.stop()
    if not examples:
        raise DataError(f"{path}: no usable rows" + bad.note())
    if paired and not all(e.paired for e in examples):
        first = next(e for e in examples if not e.paired)
        raise DataError(f"{first.where}: an unpaired judgement (completion, label); this run scores pairs "
                        "(prompt, chosen, rejected)")
    if not paired:
        examples = [u for e in examples for u in _unpaired(e)]
    report = DataReport(sources={"eval": str(path)}, counts={"eval": len(examples)}, label_counts={},
                        skipped=bad.count, skipped_examples=list(bad.examples),
                        unit="pairs" if paired else "judgements", breakdown="")
    return examples, report
