"""Users' own callbacks (`train.callbacks`): `module:Class` or `module:function`, found from the config.

A callback class subclasses tunesmith.train.callbacks.Callback and is built with no arguments; a function
takes none and returns a Callback. The module is looked for first in the folder of the config file that
names it (as PYTHONPATH=. would give it when the config sits in the working directory), then on sys.path.
A module found in that folder is recorded by its absolute file (`/abs/dir/my_callbacks.py:Counter`), so
the run's own config.yaml finds it again on `--resume` from any working directory; a file may also be
named directly (`callbacks/counting.py:Counter`, relative to the config's folder).
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable
from pathlib import Path

from tunesmith.errors import ConfigError
from tunesmith.train.callbacks import Callback

FIELD = "train.callbacks"


def _split(spec: str, at: str) -> tuple[str, str]:
    module, sep, attr = str(spec).rpartition(":")
    if not sep or not module or not attr.isidentifier():
        raise ConfigError(f"{at}: {spec!r} is not module:Class (or module:function), e.g. my_callbacks:Counter")
    return module, attr


def _is_file(module: str) -> bool:
    return module.endswith(".py") or "/" in module or "\\" in module


def locate(specs: list[str], base_dir: Path) -> list[str]:
    """Each spec whose module lies in `base_dir` (the config's folder), as its absolute file."""
    out = []
    for spec in specs:
        module, sep, attr = str(spec).rpartition(":")
        if not sep or not module:
            out.append(spec)  # malformed: resolve() says so, naming the line
            continue
        if _is_file(module):
            path = (base_dir / module).resolve()
        else:
            as_path = base_dir.joinpath(*module.split("."))
            found = [p for p in (as_path.with_suffix(".py"), as_path / "__init__.py") if p.is_file()]
            path = found[0].resolve() if found else None
        out.append(f"{path}:{attr}" if path is not None else spec)
    return out


def _module_of_file(path: Path) -> tuple[str, Path]:
    """(dotted module name, the folder to put on sys.path) of a .py file: packages (folders with an
    __init__.py) above it are part of its name, so its relative imports work."""
    parts = [] if path.name == "__init__.py" else [path.stem]
    folder = path.parent
    while (folder / "__init__.py").is_file() and folder.parent != folder:
        parts.insert(0, folder.name)
        folder = folder.parent
    return ".".join(parts), folder


def _import(spec: str, at: str, base_dir: Path | None = None) -> object:
    module, attr = _split(spec, at)
    looked = (f"{base_dir} (the config's folder), then " if base_dir is not None else "") + \
        "the working directory and PYTHONPATH"
    if _is_file(module):
        path = Path(module)
        if not path.is_file():
            raise ConfigError(f"{at}: {spec}: no file {path}")
        module, root = _module_of_file(path)
        looked = str(root)
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))  # kept, so the module's own imports of its neighbours work too
    try:
        found = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"{at}: cannot import {spec} ({type(e).__name__}: {e}); looked in {looked}") from None
    except Exception as e:  # the user's module failed while being imported: say where
        raise ConfigError(f"{at}: importing {module} failed: {type(e).__name__}: {e}") from None
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
