"""Run configuration: YAML file + `--set a.b=value` overrides -> the validated dataclasses of schema.py.

Every error names the file, the line and the dotted field, so a user can fix it without reading code.
The sections' classes live in schema.py (importable from anywhere); the parsing helpers in parsing.py;
this module ties them to the objectives and the cross-section checks (validate.py).
"""

from __future__ import annotations

import dataclasses
import sys
import warnings
from pathlib import Path
from typing import Any

import yaml

from tunesmith.errors import ConfigError
from tunesmith.objectives import OBJECTIVES  # importing it registers every objective's config section
from tunesmith.parsing import SET, apply_overrides, build_section, line_index, where
from tunesmith.schema import (
    DataConfig,
    EarlyStopConfig,
    LoraConfig,
    MethodConfig,
    ModelConfig,
    ObjectiveConfig,
    PromptConfig,
    RunConfig,
    SplitConfig,
    StageConfig,
    TrainConfig,
)
from tunesmith.validate import check_run

__all__ = [
    "RunConfig", "ModelConfig", "MethodConfig", "StageConfig", "LoraConfig", "PromptConfig", "TrainConfig",
    "EarlyStopConfig", "DataConfig", "ObjectiveConfig", "SplitConfig", "load_config", "config_from_dict",
    "config_to_dict", "apply_overrides",
]


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid UTF-8 ({e.reason}); re-save the file as UTF-8") from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: the config must be a mapping of sections (model:, method:, data:, train:)")
    lines = line_index(node, str(path)) if node is not None else {}
    data = _own_data_replaces_builtin(data, overrides or [], path)
    data = apply_overrides(data, overrides or [])
    for item in overrides or []:  # an error about an overridden field names --set, not the file's line
        key = item.split("=", 1)[0].strip()
        lines = {k: v for k, v in lines.items() if k != key and not k.startswith(key + ".")} | {key: SET}
    return config_from_dict(data, source=str(path), lines=lines, base_dir=path.resolve().parent)


def _own_data_replaces_builtin(data: dict[str, Any], overrides: list[str], path: Path) -> dict[str, Any]:
    """`--set data.train=my.csv` on a config that names a built-in data set means "my data instead": the
    built-in is dropped (with a note) rather than refused as a conflict."""
    keys = {item.split("=", 1)[0].strip() for item in overrides}
    section = data.get("data")
    if "data.train" in keys and "data.builtin" not in keys and isinstance(section, dict) and section.get("builtin"):
        print(f"note: --set data.train replaces {path}'s data.builtin ({section['builtin']})", file=sys.stderr)
        data = {**data, "data": {k: v for k, v in section.items() if k != "builtin"}}
    return data


def config_from_dict(data: dict[str, Any], source: str = "<config>", lines: dict[str, Any] | None = None,
                     for_training: bool = True, base_dir: str | Path | None = None) -> RunConfig:
    """Build and check a run config; every error names the file, the line and the field. `for_training`
    false checks only what using a finished run needs; `base_dir` is the config file's folder, against
    which the objective resolves paths it reads relative to the config (e.g. LF code)."""
    lines = lines or {}
    data = _moved_fields(data, source, lines)
    cfg = build_section(RunConfig, data, "", source, lines)
    if base_dir is not None:
        OBJECTIVES[cfg.objective.name].locate(cfg.objective, Path(base_dir))
    check_run(cfg, lambda key: where(source, lines, key), training=for_training, base_dir=base_dir)
    return cfg


# Fields that moved into the objective's own section: train.X -> objective.X, with the default the old
# place had (an old run dir records them all; a default that the objective does not take is dropped).
_MOVED_TO_OBJECTIVE = {"packing": False, "exact_match": True, "cache_frozen_prefix": True, "prefix_cache_mb": 2048.0}


def _moved_fields(data: dict[str, Any], source: str, lines: dict[str, Any]) -> dict[str, Any]:
    train = data.get("train")
    if not isinstance(train, dict) or not any(k in train for k in _MOVED_TO_OBJECTIVE):
        return data
    data = {**data, "train": dict(train)}
    objective = data.get("objective", {}) or {}
    objective = {"name": objective} if isinstance(objective, str) else dict(objective)
    cls = OBJECTIVES.get(objective.get("name", ObjectiveConfig.name))
    takes = {f.name for f in dataclasses.fields(cls.Config)} if cls else set()
    for key, default in _MOVED_TO_OBJECTIVE.items():
        if key not in data["train"]:
            continue
        value = data["train"].pop(key)
        if cls is None:
            continue  # the objective's name is wrong: that is the error to report
        at = where(source, lines, f"train.{key}")
        if key in takes:
            if key in objective and objective[key] != value:
                raise ConfigError(f"{at}: train.{key} is now objective.{key}, and both are given; keep objective.{key}")
            objective.setdefault(key, value)
            if value != default:
                warnings.warn(f"{at}: train.{key} is now objective.{key}; moved it there", FutureWarning,
                              stacklevel=3)
        elif value != default:
            raise ConfigError(f"{at}: train.{key} moved to objective.{key}, which objective "
                              f"{objective.get('name', ObjectiveConfig.name)} does not take")
    data["objective"] = objective
    return data


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
