"""The run configs that ship inside the package (tunesmith/configs), found by name or by path."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from tunesmith.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

__all__ = ["CONFIG_DIR", "ShippedConfig", "shipped_configs", "resolve_config_path"]


@dataclass(frozen=True)
class ShippedConfig:
    name: str  # the file name without .yaml
    path: Path
    kind: str  # run | compare
    objective: str
    model: str
    about: str  # the config's first comment line


def shipped_configs() -> list[ShippedConfig]:
    out = []
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text) or {}
        about = _first_sentence(text)
        if "strategies" in data:
            base = yaml.safe_load((CONFIG_DIR / data.get("base", "")).read_text()) if data.get("base") else {}
            kind, data = "compare", base or {}
        else:
            kind = "run"
        objective = data.get("objective", "classify")
        objective = objective.get("name", "classify") if isinstance(objective, dict) else objective
        model = data.get("model", {}) or {}
        model = model.get("name", "minilm-l6") if isinstance(model, dict) else str(model)
        out.append(ShippedConfig(path.stem, path, kind, str(objective), str(model), about))
    return out


def _first_sentence(text: str) -> str:
    """The first sentence of the config's leading comment (command lines in it skipped)."""
    words = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        line = line.lstrip("# ").rstrip()
        if not line.startswith("tunesmith "):
            words.append(line)
    sentence = " ".join(words).split(". ")[0].rstrip(".")
    return sentence if len(sentence) <= 100 else sentence[:97].rsplit(" ", 1)[0] + " ..."


def resolve_config_path(given: str | Path) -> Path:
    """A config file as given, else the shipped config of that name (`rt-minilm-full` or
    `rt-minilm-full.yaml`); neither is an error that lists the shipped ones."""
    path = Path(given)
    if path.exists():
        return path
    name = path.name.removesuffix(".yaml").removesuffix(".yml")
    if path.parent == Path(".") and (CONFIG_DIR / f"{name}.yaml").exists():
        return CONFIG_DIR / f"{name}.yaml"
    names = ", ".join(c.name for c in shipped_configs())
    raise ConfigError(f"{given}: config file not found (relative paths start at the working directory "
                      f"{Path.cwd()}); the shipped configs, usable by name, are: {names}")
