"""Prompts for online RL: the policy writes the completions, so a row holds a prompt and nothing to
imitate.

Row formats, recognised per row by which columns it has:
- `{"prompt": "..."}`   plain text, continued as it is;
- `{"prompt": [{"role": "user", "content": "..."}, ...]}` or `{"messages": [...]}`   a conversation
  (TRL's conversational prompt), rendered with the chat template and the assistant header; it ends with
  a user turn (an assistant turn at the end is an error: the policy writes that).
Every other column of a row is kept and handed to the reward functions by name, one list per column,
as TRL does (e.g. a `solution` column for a correctness reward).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunesmith.data.builtin import get_dataset
from tunesmith.data.config import DataConfig, describe_train
from tunesmith.data.lm import ROLE_NAMES
from tunesmith.data.sources import Row
from tunesmith.data.splits import BadRows, DataReport, finish_splits, refuse_mixed_formats, start
from tunesmith.errors import DataError


@dataclass(frozen=True)
class PromptExample:
    kind: str  # plain | chat
    where: str
    prompt: str | None = None
    messages: tuple[dict[str, str], ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # the row's other columns, for the reward functions

    @property
    def for_rewards(self) -> str | list[dict[str, str]]:
        """The prompt as TRL hands it to reward functions: the text, or the list of messages."""
        return self.prompt if self.kind == "plain" else [dict(m) for m in self.messages or ()]


@dataclass
class PromptData:
    train: list[PromptExample]
    validation: list[PromptExample]
    test: list[PromptExample]
    report: DataReport
    label_names: list[str] | None = None


def _turns(value: Any, where: str, name: str, bad: BadRows) -> tuple[dict[str, str], ...] | None:
    if not isinstance(value, list) or not value:
        bad.bad(where, f"field {name} must be a non-empty list of {{role, content}} turns", "fix the row")
        return None
    clean = []
    for i, m in enumerate(value):
        role = ROLE_NAMES.get(m.get("role")) if isinstance(m, dict) and isinstance(m.get("role"), str) else None
        if role is None or not isinstance(m.get("content"), str):
            bad.bad(where, f"{name}[{i}] must be {{role: system|user|assistant, content: text}}, got {m!r}"[:300],
                    "fix the row")
            return None
        clean.append({"role": role, "content": m["content"]})
    if clean[-1]["role"] != "user":
        bad.bad(where, f"the last turn of {name} is {clean[-1]['role']!r}, not 'user'",
                "end the prompt with the user's turn: the policy writes the answer")
        return None
    return tuple(clean)


def parse_prompt_row(row: Row, bad: BadRows) -> PromptExample | None:
    v = row.values
    key = "prompt" if "prompt" in v else "messages" if "messages" in v else None
    if key is None:
        have = ", ".join(map(repr, v)) or "no fields"
        bad.bad(row.where, f"no field 'prompt' or 'messages' (the row has {have})",
                "give each row a prompt: text, or a list of chat turns")
        return None
    extra = {k: value for k, value in v.items() if k != key}
    value = v[key]
    if isinstance(value, str):
        if not value.strip():
            bad.bad(row.where, f"field {key!r} is empty", "remove the row or give it a prompt")
            return None
        return PromptExample("plain", row.where, prompt=value, extra=extra)
    messages = _turns(value, row.where, repr(key), bad)
    return None if messages is None else PromptExample("chat", row.where, messages=messages, extra=extra)


def load_prompt_data(cfg: DataConfig) -> PromptData:
    """Load, validate and split prompt rows (same split and subset rules as every other task)."""
    plan = start(cfg, eval_sets=False)
    bad = plan.bad
    carved = plan.carve(official_test=False)
    entry = get_dataset(cfg.builtin) if cfg.builtin is not None else None
    train_rows = entry.load() if entry else plan.read_train()
    file_rows = {s: bad.read(getattr(cfg, s), cfg.format) for s in ("validation", "test") if s not in carved}
    parsed = [parse_prompt_row(r, bad) for r in train_rows]
    indices = plan.indices(len(train_rows))
    examples: dict[str, list[Any]] = {s: [p for i in indices[s] if (p := parsed[i]) is not None]
                                      for s in ("train", *carved)}
    for split, rows in file_rows.items():
        examples[split] = [p for r in rows if (p := parse_prompt_row(r, bad)) is not None]
        if not examples[split]:
            raise DataError(f"{getattr(cfg, split)}: no rows left for the {split} split" + bad.note())
    bad.stop()
    refuse_mixed_formats(examples, lambda e: e.kind == "chat", cfg.allow_mixed, "prompts")

    def kinds(split_examples: list[PromptExample]) -> dict[str, int]:
        counts = {k: sum(e.kind == k for e in split_examples) for k in ("plain", "chat")}
        return {k: n for k, n in counts.items() if n}

    report = finish_splits(plan, examples, file_rows, f"builtin:{entry.name}" if entry else describe_train(cfg), kinds)
    report.breakdown = "formats"
    return PromptData(examples["train"], examples["validation"], examples["test"], report)
