"""Language-model data: prompt/completion pairs, chat conversations, or plain text, validated and split.

Row formats, recognised per row by which columns it has (the first that matches):
- `{"messages": [{"role": ..., "content": ...}, ...]}` (OpenAI / TRL)   rendered with the chat template;
  loss on the assistant turns only
- `{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}, ...]}` (ShareGPT)   the same
- `{"instruction": ..., "input": ..., "output": ...}` (Alpaca)   a prompt/completion pair: the prompt is
  the instruction, then a blank line and the input when the input is not empty
- `{"prompt": ..., "completion": ...}`   loss on the completion only
- `{"text": ...}`   continued pretraining; loss on every token
A `system` column (Alpaca, ShareGPT, messages) adds a system message: the first turn of a conversation,
or the first paragraph of an Alpaca prompt. data.columns renames any of these (see data/columns.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunesmith.data.builtin import get_dataset
from tunesmith.data.columns import LM_COLUMNS, Columns
from tunesmith.data.config import DataConfig, describe_train
from tunesmith.data.sources import Row
from tunesmith.data.splits import BadRows, DataReport, finish_splits, refuse_mixed_formats, start
from tunesmith.errors import DataError

ROLES = ("system", "user", "assistant")
# speakers as files write them -> the chat template's roles (ShareGPT: human, gpt)
ROLE_NAMES = {"system": "system", "user": "user", "assistant": "assistant", "human": "user", "gpt": "assistant"}
# Alpaca's instruction and input are one prompt: a blank line between them, as in Stanford Alpaca's own
# prompt (LLaMA-Factory joins them with a single newline)
ALPACA_JOIN = "\n\n"


@dataclass(frozen=True, slots=True)
class LMExample:
    kind: str  # prompt | chat | text
    where: str
    prompt: str | None = None
    completion: str | None = None
    messages: tuple[dict[str, str], ...] | None = None
    text: str | None = None

    @property
    def answer(self) -> str | None:
        """The expected output, for exact-match evaluation: the completion or the last assistant turn."""
        if self.kind == "prompt":
            return self.completion
        if self.kind == "chat" and self.messages and self.messages[-1]["role"] == "assistant":
            return self.messages[-1]["content"]
        return None


@dataclass
class LMData:
    train: list[LMExample]
    validation: list[LMExample]
    test: list[LMExample]
    report: DataReport
    label_names: list[str] | None = None  # no classes: the targets are tokens


def lm_columns(cfg: DataConfig) -> Columns:
    """data.columns for language-model rows; data.text_field is the text column's older spelling."""
    mapping = dict(cfg.columns or {})
    if cfg.text_field:
        mapping["text"] = cfg.text_field
    return Columns.of(mapping, LM_COLUMNS, "language-model rows")


def parse_lm_row(row: Row, cols: Columns, bad: BadRows) -> LMExample | None:
    missing = cols.missing(row.values)
    if missing:
        bad.bad(row.where, f"no column {', '.join(missing)} (the row has {_have(row.values)})",
                "give it in every row, or fix data.columns")
        return None
    v = cols.rename(row.values)
    if "messages" in v or "conversations" in v:
        return _chat(row.where, v, "messages" if "messages" in v else "conversations", cols, bad)
    if "instruction" in v:
        return _alpaca(row.where, v, cols, bad)
    if "prompt" in v or "completion" in v:
        for field in ("prompt", "completion"):
            if not _text(v.get(field)):
                bad.bad(row.where, f"field {cols.name(field)} is missing or empty", "give both prompt and completion")
                return None
        return LMExample("prompt", row.where, prompt=v["prompt"], completion=v["completion"])
    if "text" in v:
        if not _text(v["text"]):
            bad.bad(row.where, f"field {cols.name('text')} is empty", "remove the row or give it text")
            return None
        return LMExample("text", row.where, text=v["text"])
    bad.bad(row.where, f"no field {cols.name('messages')}, {cols.name('conversations')}, {cols.name('instruction')}, "
            f"{cols.name('prompt')}/{cols.name('completion')} or {cols.name('text')} (the row has {_have(row.values)})",
            "use one of the formats in docs/data-formats.md, or name your columns with data.columns")
    return None


def _have(values: dict[str, Any]) -> str:
    return ", ".join(map(repr, values)) or "no fields"


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _system(where: str, v: dict[str, Any], cols: Columns, bad: BadRows) -> str | bool:
    """The row's system message; "" when it has none; False when it is not text (reported)."""
    value = v.get("system")
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        bad.bad(where, f"field {cols.name('system')} is a {type(value).__name__}, not text", "fix the row")
        return False
    return value


def _alpaca(where: str, v: dict[str, Any], cols: Columns, bad: BadRows) -> LMExample | None:
    for field in ("instruction", "output"):
        if not _text(v.get(field)):
            bad.bad(where, f"field {cols.name(field)} is missing or empty",
                    "an Alpaca row needs an instruction and an output (the input may be empty)")
            return None
    extra = v.get("input")
    if extra is not None and not isinstance(extra, str):
        bad.bad(where, f"field {cols.name('input')} is a {type(extra).__name__}, not text", "fix the row")
        return None
    system = _system(where, v, cols, bad)
    if system is False:
        return None
    parts = [p for p in (system, v["instruction"], extra) if p and p.strip()]
    return LMExample("prompt", where, prompt=ALPACA_JOIN.join(parts), completion=v["output"])


def _chat(where: str, v: dict[str, Any], field: str, cols: Columns, bad: BadRows) -> LMExample | None:
    turns = v[field]
    name = cols.name(field)
    if not isinstance(turns, list) or not turns:
        bad.bad(where, f"field {name} must be a non-empty list of turns {cols.turn_shape()}", "fix the row")
        return None
    clean = []
    for i, m in enumerate(turns):
        found = cols.turn(m)
        role = ROLE_NAMES.get(found[0]) if found and isinstance(found[0], str) else None
        if found is None or role is None or not isinstance(found[1], str):
            speakers = "/".join(ROLE_NAMES)
            bad.bad(where, f"{field}[{i}] must be {cols.turn_shape()} with the speaker one of {speakers}, "
                    f"got {m!r}"[:300], "fix the row")
            return None
        clean.append({"role": role, "content": found[1]})
    system = _system(where, v, cols, bad)
    if system is False:
        return None
    if system:
        if clean[0]["role"] == "system":
            bad.bad(where, f"a system message in both {cols.name('system')} and the first turn", "keep one")
            return None
        clean.insert(0, {"role": "system", "content": system})
    if not any(m["role"] == "assistant" for m in clean):
        bad.bad(where, "the conversation has no assistant turn, so nothing to learn", "add one")
        return None
    return LMExample("chat", where, messages=tuple(clean))


def load_lm_data(cfg: DataConfig) -> LMData:
    """Load, validate and split language-model rows (same split and subset rules as classification)."""
    plan = start(cfg, eval_sets=False)
    bad = plan.bad
    carved = plan.carve(official_test=False)
    entry = get_dataset(cfg.builtin) if cfg.builtin is not None else None
    cols = lm_columns(cfg)
    train_rows = entry.load() if entry else plan.read_train()
    file_rows = {s: bad.read(getattr(cfg, s), cfg.format) for s in ("validation", "test") if s not in carved}

    parsed_train = [parse_lm_row(r, cols, bad) for r in train_rows]
    indices = plan.indices(len(train_rows))
    examples: dict[str, list[Any]] = {
        s: [p for i in indices[s] if (p := parsed_train[i]) is not None] for s in ("train", *carved)}
    for split, rows in file_rows.items():
        examples[split] = [p for r in rows if (p := parse_lm_row(r, cols, bad)) is not None]
        if not examples[split]:
            raise DataError(f"{getattr(cfg, split)}: no rows left for the {split} split" + bad.note())
    bad.stop()
    refuse_mixed_formats(examples, lambda e: e.kind == "chat", cfg.allow_mixed, "rows")

    def kinds(split_examples: list[LMExample]) -> dict[str, int]:
        counts = {k: sum(e.kind == k for e in split_examples) for k in ("prompt", "chat", "text")}
        return {k: n for k, n in counts.items() if n}

    report = finish_splits(plan, examples, file_rows, f"builtin:{entry.name}" if entry else describe_train(cfg), kinds)
    report.breakdown = "formats"
    return LMData(examples["train"], examples["validation"], examples["test"], report)
