"""Every numeric config field declares its range where it is defined; one walk checks them all.

`epochs: float = ranged(3.0, "> 0")` keeps the rule beside the default, so a new field cannot be added
without one (a test walks every config dataclass and finds any numeric field that lacks it). Floats must
also be finite: YAML reads `.nan` and `.inf` as numbers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import field
from typing import Any

from tunesmith.errors import ConfigError

_RULES: dict[str, tuple[Callable[[float], bool], str]] = {
    "> 0": (lambda v: v > 0, "must be > 0"),
    ">= 0": (lambda v: v >= 0, "must be >= 0"),
    ">= 1": (lambda v: v >= 1, "must be >= 1"),
    ">= 2": (lambda v: v >= 2, "must be >= 2"),
    ">= 8": (lambda v: v >= 8, "must be >= 8"),
    "[0, 1)": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "[0, 0.5)": (lambda v: 0 <= v < 0.5, "must be in [0, 0.5)"),
    "(0, 1)": (lambda v: 0 < v < 1, "must be in (0, 1)"),
    "(0, 1]": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
}


def ranged(default: Any, rule: str, help: str = "") -> Any:
    """A numeric field with its allowed range (see _RULES) and its meaning for docs/config.md."""
    if rule not in _RULES:
        raise ValueError(f"unknown range {rule!r}; one of {', '.join(_RULES)}")
    return field(default=default, metadata={"range": rule, "help": help})


def option(default: Any = dataclasses.MISSING, help: str = "", *,
           default_factory: Callable[[], Any] | Any = dataclasses.MISSING) -> Any:
    """A non-numeric config field with its meaning, which docs/config.md and `tunesmith check` show.
    Lists and dicts take `default_factory`."""
    return field(default=default, default_factory=default_factory, metadata={"help": help})


def check_ranges(cfg: Any, where: Callable[[str], str], prefix: str = "") -> None:
    """Every ranged field of `cfg` and of the dataclasses inside it (lists of them too)."""
    for f in dataclasses.fields(cfg):
        value, key = getattr(cfg, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_ranges(value, where, key + ".")
        elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            for i, item in enumerate(value):
                check_ranges(item, where, f"{key}.{i}.")
        elif "range" in f.metadata and isinstance(value, int | float) and not isinstance(value, bool):
            test, words = _RULES[f.metadata["range"]]
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{where(key)}: must be a finite number, got {value}")
            if not test(value):
                raise ConfigError(f"{where(key)}: {words}, got {value}")


def choice(value: Any, allowed: tuple[str, ...], where: str) -> None:
    """A field that names one of a fixed set of options (a method, a loss, a pooling)."""
    if value not in allowed:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(allowed)}")
