"""Reading a config's YAML into dataclasses: line numbers for every dotted field, `--set a.b=value`
overrides, and a builder that coerces and checks each field by its type hint, naming the file, the
line and the field in every error. A bottom module: it knows the schema's classes only through the
types it is given (and the objective sections objectives register in schema.OBJECTIVE_SECTIONS).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any

import yaml

from tunesmith.errors import ConfigError
from tunesmith.schema import OBJECTIVE_SECTIONS, ObjectiveConfig

# Sections a bare name may stand for: `objective: causal_lm` is `objective: {name: causal_lm}`.
SHORTHAND = {"objective": "name"}


def line_index(node: yaml.Node, source: str, prefix: str = "", out: dict[str, Any] | None = None) -> dict[str, Any]:
    """Map dotted field names to 1-based line numbers, so errors can point into the file. A key given
    twice in one mapping is an error: YAML would silently keep the last."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(f"{source}:{line}: {key}: given twice (lines {seen[key]} and {line}); YAML would "
                                  "keep only the last, so delete one")
            seen[key] = out[key] = line
            line_index(value_node, source, key + ".", out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[f"{prefix}{i}"] = item.start_mark.line + 1
            line_index(item, source, f"{prefix}{i}.", out)
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides; the value is parsed as YAML (so 2 is an int, [a, b] a list)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected FIELD=VALUE, e.g. --set train.epochs=2")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        parts = key.strip().split(".")
        target = data
        for part in parts[:-1]:
            nxt = target.setdefault(part, {})
            if target is data and part in SHORTHAND and isinstance(nxt, str):
                nxt = target[part] = {SHORTHAND[part]: nxt}
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a section")
            target = nxt
        target[parts[-1]] = value
    return data


SET = "--set"  # in a line index: the field's value came from --set
# what the tools our users come from call our fields (transformers TrainingArguments, TRL, PEFT)
_SYNONYMS = {"learning_rate": "lr", "num_train_epochs": "epochs", "per_device_train_batch_size": "batch_size",
             "train_batch_size": "batch_size", "gradient_accumulation_steps": "grad_accum", "max_seq_length": "max_length",
             "seed": "init_seed", "lora_alpha": "alpha", "lora_dropout": "dropout", "lora_r": "r",
             "save_steps": "checkpoint_every", "eval_steps": "eval_every", "logging_steps": "log_every",
             "save_total_limit": "keep_checkpoints", "lr_scheduler_type": "schedule", "model_name_or_path": "name"}


def where(source: str, lines: dict[str, Any], key: str) -> str:
    line = lines.get(key)
    if line is None:  # a default, or a field inside a section given as a whole
        parent = key.rsplit(".", 1)[0] if "." in key else None
        line = lines.get(parent) if parent else None
        if line is None:
            return f"{source} (default) {key}"
    return f"--set {key}" if line == SET else f"{source}:{line}: {key}"


def build_section(cls: type, data: Any, prefix: str, source: str, lines: dict[str, Any]) -> Any:
    section = prefix.rstrip(".") or "the config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where(source, lines, section)}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = f"{prefix}{unknown[0]}"
        close = [_SYNONYMS[unknown[0]]] if _SYNONYMS.get(unknown[0]) in fields else \
            difflib.get_close_matches(str(unknown[0]), fields, n=1)
        guess = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"{where(source, lines, key)}: unknown field; {guess}{section} takes: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        hint = hints[name]
        if hint is ObjectiveConfig:
            kwargs[name] = _build_objective(value, key, source, lines)
        elif dataclasses.is_dataclass(hint):
            kwargs[name] = build_section(hint, value if value is not None else {}, key + ".", source, lines)
        elif typing.get_origin(hint) is list and dataclasses.is_dataclass(typing.get_args(hint)[0]):
            if not isinstance(value, list):
                raise ConfigError(f"{where(source, lines, key)}: expected a list, got {value!r}")
            kwargs[name] = [build_section(typing.get_args(hint)[0], item, f"{key}.{i}.", source, lines)
                            for i, item in enumerate(value)]
        else:
            kwargs[name] = coerce(value, hint, where(source, lines, key))
    return cls(**kwargs)


def _build_objective(value: Any, key: str, source: str, lines: dict[str, Any]) -> ObjectiveConfig:
    """The objective's section, in the schema of the objective it names."""
    if value is None:
        value = {}
    at = key if isinstance(value, str) else key + ".name"
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        raise ConfigError(f"{where(source, lines, key)}: give an objective name ({', '.join(OBJECTIVE_SECTIONS)}) or a "
                          f"mapping with its name and options, got {value!r}")
    name = value.get("name", ObjectiveConfig.name)
    if name not in OBJECTIVE_SECTIONS:
        raise ConfigError(f"{where(source, lines, at)}: {name!r} is not one of {', '.join(OBJECTIVE_SECTIONS)}")
    return build_section(OBJECTIVE_SECTIONS[name], value, key + ".", source, lines)


def coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(value, option, where)
            except ConfigError as e:
                errors.append(str(e).rsplit(": ", 1)[-1])
        names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
        raise ConfigError(f"{where}: expected {names}, got {value!r}")
    if origin is list:
        (item_type,) = typing.get_args(hint)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [coerce(v, item_type, where) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 5e-5 as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def yaml_value(value: Any) -> str:
    """A default as it would be written in YAML."""
    if dataclasses.is_dataclass(value):
        return "(section)"
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()
