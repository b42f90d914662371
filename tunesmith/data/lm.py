"""Language-model data: prompt/completion pairs, chat conversations, or plain text, validated and split.

Row formats (detected per row, from the column names):
- `{"prompt": ..., "completion": ...}`   loss on the completion only
- `{"messages": [{"role": ..., "content": ...}, ...]}`   rendered with the tokenizer's chat template;
  loss on the assistant turns only
- `{"text": ...}`   continued pretraining; loss on every token
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunesmith.data.builtin import get_dataset
from tunesmith.data.config import DataConfig
from tunesmith.data.sources import Row
from tunesmith.data.splits import BadRows, DataReport, finish_splits, refuse_mixed_formats, start
from tunesmith.errors import DataError

ROLES = ("system", "user", "assistant")


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


def parse_lm_row(row: Row, text_field: str, bad: BadRows) -> LMExample | None:
    v = row.values
    if "messages" in v:
        return _chat(row, bad)
    if "prompt" in v or "completion" in v:
        for field in ("prompt", "completion"):
            value = v.get(field)
            if not isinstance(value, str) or not value.strip():
                bad.bad(row.where, f"field {field!r} is missing or empty", "give both prompt and completion")
                return None
        return LMExample("prompt", row.where, prompt=v["prompt"], completion=v["completion"])
    if text_field in v:
        value = v[text_field]
        if not isinstance(value, str) or not value.strip():
            bad.bad(row.where, f"field {text_field!r} is empty", "remove the row or give it text")
            return None
        return LMExample("text", row.where, text=value)
    bad.bad(row.where, f"no field 'messages', 'prompt'/'completion' or {text_field!r} (the row has "
            f"{', '.join(map(repr, v)) or 'no fields'})", "use one of the three formats")
    return None


def _chat(row: Row, bad: BadRows) -> LMExample | None:
    messages = row.values["messages"]
    if not isinstance(messages, list) or not messages:
        bad.bad(row.where, "field 'messages' must be a non-empty list of {role, content}", "fix the row")
        return None
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            bad.bad(row.where, f"messages[{i}] must be {{'role': one of {'/'.join(ROLES)}, 'content': text}}, "
                    f"got {m!r}"[:300], "fix the row")
            return None
        clean.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "assistant" for m in clean):
        bad.bad(row.where, "the conversation has no assistant turn, so nothing to learn", "add one")
        return None
    return LMExample("chat", row.where, messages=tuple(clean))


def load_lm_data(cfg: DataConfig) -> LMData:
    """Load, validate and split language-model rows (same split and subset rules as classification)."""
    plan = start(cfg, eval_sets=False)
    bad = plan.bad
    carved = plan.carve(official_test=False)
    entry = get_dataset(cfg.builtin) if cfg.builtin is not None else None
    text_field = cfg.text_field or "text"
    train_rows = entry.load() if entry else bad.read(str(cfg.train), cfg.format)
    file_rows = {s: bad.read(getattr(cfg, s), cfg.format) for s in ("validation", "test") if s not in carved}

    parsed_train = [parse_lm_row(r, text_field, bad) for r in train_rows]
    indices = plan.indices(len(train_rows))
    examples: dict[str, list[Any]] = {
        s: [p for i in indices[s] if (p := parsed_train[i]) is not None] for s in ("train", *carved)}
    for split, rows in file_rows.items():
        examples[split] = [p for r in rows if (p := parse_lm_row(r, text_field, bad)) is not None]
        if not examples[split]:
            raise DataError(f"{getattr(cfg, split)}: no rows left for the {split} split" + bad.note())
    bad.stop()
    refuse_mixed_formats(examples, lambda e: e.kind == "chat", cfg.allow_mixed, "rows")

    def kinds(split_examples: list[LMExample]) -> dict[str, int]:
        counts = {k: sum(e.kind == k for e in split_examples) for k in ("prompt", "chat", "text")}
        return {k: n for k, n in counts.items() if n}

    report = finish_splits(plan, examples, file_rows, f"builtin:{entry.name}" if entry else str(cfg.train), kinds)
    report.breakdown = "formats"
    return LMData(examples["train"], examples["validation"], examples["test"], report)
