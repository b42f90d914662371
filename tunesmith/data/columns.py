"""data.columns: the user's column names for the ones tunesmith reads, so files need no rewriting.

`{prompt: question, completion: answer}` reads the column `question` as the prompt. A mapped column
replaces a column of the canonical name in the same row (the mapping says which one is meant). Rows are
renamed before they are parsed, and messages about them name the user's column, not the canonical one.
`role` and `content` name the keys inside each turn of a conversation (by default role/content, or
ShareGPT's from/value).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from tunesmith.errors import ConfigError, DataError

# every name data.columns may map, with what it holds
ROW_COLUMNS = {
    "text": "the text (classification; language-model text rows; a diffusion image's caption)",
    "label": "the class (classification), or true/false of an unpaired judgement (KTO)",
    "image": "the image path (image classification, diffusion)",
    "prompt": "the prompt (prompt/completion and preference rows)",
    "completion": "the answer to learn (prompt/completion rows; unpaired judgements)",
    "messages": "a conversation as a list of {role, content}",
    "conversations": "a ShareGPT conversation as a list of {from, value}",
    "instruction": "the Alpaca instruction",
    "input": "the Alpaca input (optional)",
    "output": "the Alpaca output",
    "system": "a system message (Alpaca, ShareGPT; optional)",
    "chosen": "the preferred completion of a pair",
    "rejected": "the other completion of a pair",
    "condition": "a diffusion image's conditioning image path (objective.control: image)",
}
TURN_KEYS = {"role": "the key of a turn's speaker", "content": "the key of a turn's text"}
CANONICAL = {**ROW_COLUMNS, **TURN_KEYS}
OPTIONAL = ("input", "system", "text")  # a row may lack these even when mapped (text: one of the LM kinds)

# the names each kind of row reads
LM_COLUMNS = ("text", "prompt", "completion", "messages", "conversations", "instruction", "input", "output",
              "system", "role", "content")
PREF_COLUMNS = ("prompt", "chosen", "rejected", "completion", "label", "role", "content")
CLASSIFY_COLUMNS = ("text", "label")
IMAGE_COLUMNS = ("image", "label")


def check_columns(columns: Any, where: str) -> None:
    """data.columns at config time: a mapping of known names to distinct column names."""
    if columns is None:
        return
    if not isinstance(columns, dict):
        raise ConfigError(f"{where}: give a mapping of tunesmith's names to your columns, e.g. "
                          f"{{prompt: question, completion: answer}}, got {columns!r:.80}")
    taken: dict[str, str] = {}
    for name, column in columns.items():
        if name not in CANONICAL:
            close = difflib.get_close_matches(str(name), CANONICAL, n=1)
            guess = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"{where}.{name}: unknown name; {guess}data.columns maps these: {', '.join(CANONICAL)}")
        if not isinstance(column, str) or not column.strip():
            raise ConfigError(f"{where}.{name}: give the name of your column as a string, got {column!r:.60}")
        if name in ROW_COLUMNS:
            if column in taken:
                raise ConfigError(f"{where}.{name}: column {column!r} is already data.columns.{taken[column]}; "
                                  "a column holds one thing")
            taken[column] = name


@dataclass(frozen=True)
class Columns:
    """The mapping of one data section, for the rows of one kind (`allowed` names)."""

    mapping: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, columns: dict[str, str] | None, allowed: tuple[str, ...], rows: str) -> Columns:
        """Names that the rows being read do not have are an error here (before any row is read): a
        mapping no row can use is a mistake, e.g. `chosen` given to a causal_lm run."""
        columns = dict(columns or {})
        for name in columns:
            if name not in allowed:
                raise DataError(f"data.columns.{name}: {rows} have no {name!r} column; they read "
                                f"{', '.join(allowed)}")
        return cls(columns)

    def name(self, canonical: str) -> str:
        """How a message names the column: the user's (and what it stands for), else the canonical one."""
        if canonical in self.mapping:
            return f"{self.mapping[canonical]!r} (data.columns.{canonical})"
        return repr(canonical)

    def rename(self, values: dict[str, Any]) -> dict[str, Any]:
        """The row under canonical names; only row columns are renamed (role/content are turn keys)."""
        row_map = {k: v for k, v in self.mapping.items() if k in ROW_COLUMNS}
        if not row_map:
            return values
        users = set(row_map.values())
        out = {k: v for k, v in values.items() if k not in users and k not in row_map}
        for canonical, column in row_map.items():
            if column in values:
                out[canonical] = values[column]
        return out

    def missing(self, values: dict[str, Any]) -> list[str]:
        """Mapped (not optional) row columns this row lacks, as `name` words them."""
        return [self.name(c) for c, column in self.mapping.items()
                if c in ROW_COLUMNS and c not in OPTIONAL and column not in values]

    def turn(self, message: Any) -> tuple[Any, Any] | None:
        """(role, content) of one turn: the mapped keys, else role/content, else ShareGPT's from/value;
        None when the turn is not a mapping or lacks them."""
        if not isinstance(message, dict):
            return None
        role_key = self.mapping.get("role") or ("role" if "role" in message else "from")
        content_key = self.mapping.get("content") or ("content" if "content" in message else "value")
        if role_key not in message or content_key not in message:
            return None
        return message[role_key], message[content_key]

    def turn_shape(self) -> str:
        """The turn format, for messages about a malformed turn."""
        if "role" in self.mapping or "content" in self.mapping:
            return (f"{{{self.mapping.get('role', 'role')!r}: speaker, "
                    f"{self.mapping.get('content', 'content')!r}: text}}")
        return "{'role': speaker, 'content': text} (or ShareGPT's {'from': ..., 'value': ...})"
