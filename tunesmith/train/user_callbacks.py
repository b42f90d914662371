"""Users' own callbacks (`train.callbacks`): `module:Class` or `module:function`, found from the config
as tunesmith.user_code finds users' code (recorded as `/abs/dir/my_callbacks.py:Counter` when found in
the config's folder). A callback class subclasses tunesmith.train.callbacks.Callback and is built with
no arguments; a function takes none and returns a Callback.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

from tunesmith.errors import ConfigError
from tunesmith.train.callbacks import Callback
from tunesmith.user_code import import_object

FIELD = "train.callbacks"
FORM, EXAMPLE = "module:Class (or module:function)", "my_callbacks:Counter"


def _import(spec: str, at: str, base_dir: Path | None = None) -> object:
    found = import_object(spec, at, base_dir, FORM, EXAMPLE)
    if inspect.isclass(found):
        if not issubclass(found, Callback):
            raise ConfigError(f"{at}: {spec} is a class but not a tunesmith.train.callbacks.Callback; subclass it")
    elif not callable(found):
        raise ConfigError(f"{at}: {spec} is neither a Callback subclass nor a function returning a Callback")
    return found


def resolve(specs: list[str], where: Callable[[str], str],
            base_dir: Path | None = None) -> list[Callable[[], Callback]]:
    """Import every spec (a config-time check: an error names the field and the module)."""
    return [_import(spec, f"{where(FIELD)}[{i}]", base_dir) for i, spec in enumerate(specs)]  # type: ignore[misc]


def build_callbacks(specs: list[str]) -> list[Callback]:
    """The run's instances, one per spec, living for the whole run (every stage)."""
    out = []
    for i, spec in enumerate(specs):
        at = f"{FIELD}[{i}]"
        try:
            made = _import(spec, at)()  # type: ignore[operator]
        except ConfigError:
            raise
        except Exception as e:  # the user's constructor: a class built with no arguments
            raise ConfigError(f"{at}: {spec}() failed: {type(e).__name__}: {e}") from None
        if not isinstance(made, Callback):
            raise ConfigError(f"{at}: {spec} returned {type(made).__name__}, not a tunesmith.train.callbacks.Callback")
        out.append(made)
    return out
