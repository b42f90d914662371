"""Users' own Python named in a config: `module:attr` or `path/to/file.py:attr` (labeling functions,
callbacks, reward functions).

The module is looked for first in the folder of the config file that names it (as PYTHONPATH=. would
give it when the config sits in the working directory), then in the working directory and on
PYTHONPATH. That folder stays on sys.path, so the module's own imports of its neighbours work too. A
file may be named directly, relative to the config's folder; `locate` turns a spec found in that folder
into its absolute file, so a run's own config.yaml finds it again on `--resume` from anywhere.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from tunesmith.errors import ConfigError


def split_spec(spec: str, at: str, form: str = "module:function", example: str = "my_module:name") -> tuple[str, str]:
    """(module or file, attribute) of `module:attr`; else an error naming `at`, the form and an example."""
    module, sep, attr = str(spec).rpartition(":")
    if not sep or not module or not attr.isidentifier():
        raise ConfigError(f"{at}: {spec!r} is not {form}, e.g. {example}")
    return module, attr


def is_file(module: str) -> bool:
    return module.endswith(".py") or "/" in module or "\\" in module


def module_of_file(path: Path) -> tuple[str, Path]:
    """(dotted module name, the folder to put on sys.path) of a .py file: packages (folders with an
    __init__.py) above it are part of its name, so its relative imports work."""
    parts = [] if path.name == "__init__.py" else [path.stem]
    folder = path.parent
    while (folder / "__init__.py").is_file() and folder.parent != folder:
        parts.insert(0, folder.name)
        folder = folder.parent
    return ".".join(parts), folder


def locate(specs: list[str], base_dir: Path) -> list[str]:
    """Each spec whose module lies in `base_dir` (the config's folder), as its absolute file."""
    out = []
    for spec in specs:
        module, sep, attr = str(spec).rpartition(":")
        if not sep or not module:
            out.append(spec)  # malformed: import_object says so, naming the line
            continue
        if is_file(module):
            path = (base_dir / module).resolve()
        else:
            as_path = base_dir.joinpath(*module.split("."))
            found = [p for p in (as_path.with_suffix(".py"), as_path / "__init__.py") if p.is_file()]
            path = found[0].resolve() if found else None
        out.append(f"{path}:{attr}" if path is not None else spec)
    return out


def resolve_code_dir(code_dir: str | None, base_dir: Path) -> str:
    """An objective's `code_dir` made absolute against the config's folder (unset: that folder), so the
    run's recorded config finds users' code again from any working directory."""
    return str((base_dir / (code_dir or ".")).resolve())


def _on_path(folder: Path | str) -> None:
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


def import_object(spec: str, at: str, code_dir: str | Path | None = None, form: str = "module:function",
                  example: str = "my_module:name") -> object:
    """The object `spec` names; an error naming `at`, the spec and where it was looked for if it
    cannot be imported, or if importing the user's module fails."""
    module, attr = split_spec(spec, at, form, example)
    looked = (f"{code_dir}, then " if code_dir is not None else "") + "the working directory and PYTHONPATH"
    if is_file(module):
        path = Path(module) if Path(module).is_absolute() or code_dir is None else Path(code_dir) / module
        if not path.is_file():
            raise ConfigError(f"{at}: {spec}: no file {path}")
        module, root = module_of_file(path)
        looked = str(root)
        _on_path(root)
    elif code_dir is not None:
        _on_path(code_dir)
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"{at}: cannot import {spec} ({type(e).__name__}: {e}); looked in {looked}") from None
    except Exception as e:  # the user's module failed while being imported: say where
        raise ConfigError(f"{at}: importing {module} failed: {type(e).__name__}: {e}") from None
