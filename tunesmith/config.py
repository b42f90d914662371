"""Run configuration: YAML file + `--set a.b=value` overrides -> validated dataclasses.

Every error names the file, the line and the dotted field, so a user can fix it without reading code.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunesmith.data.config import DataConfig, SplitConfig
from tunesmith.errors import ConfigError
from tunesmith.objectives.base import ObjectiveConfig
from tunesmith.ranges import ranged

__all__ = [
    "RunConfig", "ModelConfig", "MethodConfig", "StageConfig", "LoraConfig", "PromptConfig", "TrainConfig",
    "EarlyStopConfig", "DataConfig", "ObjectiveConfig", "SplitConfig", "load_config", "config_from_dict",
    "config_to_dict", "apply_overrides",
]
# Sections a bare name may stand for: `objective: causal_lm` is `objective: {name: causal_lm}`.
SHORTHAND = {"objective": "name"}


@dataclass
class ModelConfig:
    name: str = "minilm-l6"  # a built-in name (`tunesmith models`), a local HF model directory, or module:factory
    max_length: int = ranged(128, "> 0")  # tokens per text; longer texts are truncated (and counted)
    # text classifiers: the [CLS] pooler is part of the new head (its lr, trained under every method);
    # unset: where the checkpoint says it pools otherwise (sentence-transformers, e.g. minilm-l6) and the
    # run starts with LoRA, DoRA or prompt tuning (measured: benchmarks/pooler_defaults.py,
    # configs/compare-20ng-pooler.yaml); under full and freeze it trains with the body at train.lr
    train_pooler: bool | None = None
    # image models: None takes the built-in model's own value
    image_size: int | None = ranged(None, ">= 8")  # square input side in pixels
    mean: list[float] | None = None  # per-channel normalisation of pixels scaled to [0, 1]
    std: list[float] | None = None
    weights: str | None = None  # module:factory models: a .safetensors file, or a .pth read with weights_only
    head: str | None = None  # module:factory models: attribute path of the classifier to replace, e.g. fc


@dataclass
class LoraConfig:
    """method.lora: options of the `lora` and `dora` methods (PEFT's LoraConfig, by the same meaning)."""

    r: int = ranged(8, "> 0")
    alpha: float = ranged(16.0, "> 0")
    dropout: float = ranged(0.0, "[0, 1)")
    # names matched exactly or as a `.suffix`, a regex string (fullmatch on module paths), or "all-linear";
    # None: the usual attention projections of the model type (query/value for BERT, q_proj/v_proj for Llama)
    target_modules: str | list[str] | None = None
    init: str = "kaiming"  # kaiming | gaussian (A's init; B starts at zero)
    bias: str = "none"  # none | all | lora_only: which biases also train
    modules_to_save: list[str] = field(default_factory=list)  # extra modules trained in full; the head always is
    use_rslora: bool = False  # scale by alpha / sqrt(r) instead of alpha / r
    use_dora: bool = False  # weight-decomposed LoRA (the `dora` method sets this)


@dataclass
class PromptConfig:
    """method.prompt: options of the `prompt` method (prompt tuning)."""

    num_virtual_tokens: int = ranged(20, "> 0")
    init: str = "vocab"  # vocab: embeddings of random vocabulary tokens | text: embeddings of init_text
    init_text: str | None = None


@dataclass
class MethodConfig:
    """What learns. Options only some methods read are ignored by the others."""

    name: str = "full"  # full | freeze | linear_probe | bitfit | lora | dora | prompt  (`tunesmith methods`)
    freeze_embeddings: bool = True  # freeze: also freeze the embedding layer
    freeze_layers: int = ranged(0, ">= 0")  # freeze: the first N transformer blocks
    freeze_patterns: list[str] = field(default_factory=list)  # freeze: glob patterns on parameter names
    lora: LoraConfig = field(default_factory=LoraConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)


@dataclass
class EarlyStopConfig:
    # any metric logged at evaluation, e.g. val_loss, val_accuracy; unset: the objective's own default
    # (classify: val_accuracy, causal_lm: val_loss), filled in when the config is read
    metric: str | None = None
    mode: str = "auto"  # auto (min for *loss, else max) | min | max
    patience: int | None = ranged(None, ">= 1")  # evaluations without improvement; None: never stop early
    min_delta: float = ranged(0.0, ">= 0")
    # decides between evaluations whose metric ties the best exactly (a saturated accuracy): auto (the
    # loss of the same split, e.g. val_loss for val_accuracy; none for a loss) | none | a metric name
    tie_breaker: str = "auto"
    restore_best: bool = True  # end with the best evaluated weights, not the last


@dataclass
class TrainConfig:
    epochs: float = ranged(3.0, "> 0")
    max_steps: int | None = ranged(None, "> 0")  # optimizer steps; overrides epochs when set
    batch_size: int = ranged(32, "> 0")  # examples per optimizer step, across all processes and accumulation
    grad_accum: int = ranged(1, "> 0")  # micro-batches per optimizer step (per process)
    group_by_length: bool = True  # batch items of similar length together: less padding, faster
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower
    fused_optimizer: bool = True  # AdamW's fused kernel (one pass over each tensor) where torch has it
    # torch.compile each repeated block that trains (see tunesmith/train/compile.py). Off by default:
    # compiling costs minutes and on a 2-core CPU paid back only after ~2,000 MiniLM steps
    compile: bool = False
    lr: float = ranged(5e-5, "> 0")
    head_lr: float | None = ranged(None, "> 0")  # learning rate of the newly initialised head (default: lr)
    weight_decay: float = ranged(0.01, ">= 0")  # not applied to biases and normalisation weights
    schedule: str = "linear"  # linear | cosine | constant
    warmup_ratio: float = ranged(0.06, "[0, 1)")
    warmup_steps: int | None = ranged(None, ">= 0")  # overrides warmup_ratio
    max_grad_norm: float | None = ranged(1.0, "> 0")  # None: no clipping
    init_seed: int = ranged(0, ">= 0")  # new head weights (and dropout)
    data_seed: int = ranged(0, ">= 0")  # order of training examples
    eval_every: str | int = ranged("epoch", "> 0")  # "epoch" or every N optimizer steps
    eval_batch_size: int = ranged(64, "> 0")
    log_every: int = ranged(10, "> 0")  # optimizer steps between metrics.jsonl lines
    checkpoint_every: int | None = ranged(None, "> 0")  # optimizer steps; a checkpoint is always written at the end
    # minutes of training between checkpoints (besides checkpoint_every), so a killed run loses little
    checkpoint_minutes: float | None = ranged(10.0, "> 0")
    keep_checkpoints: int = ranged(2, ">= 1")
    # a finished run keeps its last checkpoint (and its best) without optimizer state, unless this is set
    keep_optimizer_state: bool = False
    early_stopping: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    device: str = "auto"  # auto | cpu | cuda
    parallelism: str = "auto"  # auto (ddp under torchrun, else none) | none | ddp
    threads: int | None = ranged(None, ">= 1")  # torch intra-op threads; None: torch's default
    progress: bool = True  # tqdm progress bar
    # stop (checkpoint, evaluate, write paused.json) after this fraction of all training steps; resume
    # continues from there. `tunesmith compare --early-discard` uses it to triage seeds.
    pause_at_fraction: float | None = ranged(None, "(0, 1)")
    eval_sets_during_training: bool = False  # also evaluate data.eval_sets (OOD sets) at every evaluation


@dataclass
class StageConfig:
    """One stage of a multi-stage run (e.g. LP-FT: a linear probe, then fine-tuning from its head).
    Each stage applies its own method to the model the previous stage left; unset fields take train.*"""

    name: str = "stage"
    method: MethodConfig = field(default_factory=MethodConfig)
    epochs: float | None = ranged(None, "> 0")
    max_steps: int | None = ranged(None, "> 0")
    lr: float | None = ranged(None, "> 0")
    head_lr: float | None = ranged(None, "> 0")
    weight_decay: float | None = ranged(None, ">= 0")
    warmup_ratio: float | None = ranged(None, "[0, 1)")
    schedule: str | None = None


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)  # ignored when stages are given
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=lambda: _default_objective())  # or `objective: NAME`
    train: TrainConfig = field(default_factory=TrainConfig)
    stages: list[StageConfig] = field(default_factory=list)  # empty: one stage, `method` with `train`


def _default_objective() -> ObjectiveConfig:
    from tunesmith.objectives import OBJECTIVES

    return OBJECTIVES[ObjectiveConfig.name].Config()


# --- loading -------------------------------------------------------------------------------------


def _line_index(node: yaml.Node, source: str, prefix: str = "", out: dict[str, Any] | None = None) -> dict[str, Any]:
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
            _line_index(value_node, source, key + ".", out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[f"{prefix}{i}"] = item.start_mark.line + 1
            _line_index(item, source, f"{prefix}{i}.", out)
    return out


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
    lines = _line_index(node, str(path)) if node is not None else {}
    data = apply_overrides(data, overrides or [])
    for item in overrides or []:  # an error about an overridden field names --set, not the file's line
        key = item.split("=", 1)[0].strip()
        lines = {k: v for k, v in lines.items() if k != key and not k.startswith(key + ".")} | {key: SET}
    return config_from_dict(data, source=str(path), lines=lines, base_dir=path.resolve().parent)


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


def config_from_dict(data: dict[str, Any], source: str = "<config>", lines: dict[str, Any] | None = None,
                     for_training: bool = True, base_dir: str | Path | None = None) -> RunConfig:
    """Build and check a run config; every error names the file, the line and the field. `for_training`
    false checks only what using a finished run needs; `base_dir` is the config file's folder, against
    which the objective resolves paths it reads relative to the config (e.g. LF code)."""
    from tunesmith.objectives import OBJECTIVES
    from tunesmith.validate import check_run

    lines = lines or {}
    data = _moved_fields(data, source, lines)
    cfg = _build(RunConfig, data, "", source, lines)
    if base_dir is not None:
        OBJECTIVES[cfg.objective.name].locate(cfg.objective, Path(base_dir))
    check_run(cfg, lambda key: _where(source, lines, key), training=for_training)
    return cfg


# Fields that moved into the objective's own section: train.X -> objective.X, with the default the old
# place had (an old run dir records them all; a default that the objective does not take is dropped).
_MOVED_TO_OBJECTIVE = {"packing": False, "exact_match": True, "cache_frozen_prefix": True, "prefix_cache_mb": 2048.0}


def _moved_fields(data: dict[str, Any], source: str, lines: dict[str, Any]) -> dict[str, Any]:
    train = data.get("train")
    if not isinstance(train, dict) or not any(k in train for k in _MOVED_TO_OBJECTIVE):
        return data
    from tunesmith.objectives import OBJECTIVES

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
        where = _where(source, lines, f"train.{key}")
        if key in takes:
            if key in objective and objective[key] != value:
                raise ConfigError(f"{where}: train.{key} is now objective.{key}, and both are given; keep objective.{key}")
            objective.setdefault(key, value)
            if value != default:
                warnings.warn(f"{where}: train.{key} is now objective.{key}; moved it there", FutureWarning,
                              stacklevel=3)
        elif value != default:
            raise ConfigError(f"{where}: train.{key} moved to objective.{key}, which objective "
                              f"{objective.get('name', ObjectiveConfig.name)} does not take")
    data["objective"] = objective
    return data


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


SET = "--set"  # in a line index: the field's value came from --set
# what the tools our users come from call our fields (transformers TrainingArguments, TRL, PEFT)
_SYNONYMS = {"learning_rate": "lr", "num_train_epochs": "epochs", "per_device_train_batch_size": "batch_size",
             "train_batch_size": "batch_size", "gradient_accumulation_steps": "grad_accum", "max_seq_length": "max_length",
             "seed": "init_seed", "lora_alpha": "alpha", "lora_dropout": "dropout", "lora_r": "r",
             "save_steps": "checkpoint_every", "eval_steps": "eval_every", "logging_steps": "log_every",
             "save_total_limit": "keep_checkpoints", "lr_scheduler_type": "schedule", "model_name_or_path": "name"}


def _where(source: str, lines: dict[str, Any], key: str) -> str:
    line = lines.get(key)
    if line is None:  # a default, or a field inside a section given as a whole
        parent = key.rsplit(".", 1)[0] if "." in key else None
        line = lines.get(parent) if parent else None
        if line is None:
            return f"{source} (default) {key}"
    return f"--set {key}" if line == SET else f"{source}:{line}: {key}"


def _build(cls: type, data: Any, prefix: str, source: str, lines: dict[str, Any]) -> Any:
    section = prefix.rstrip(".") or "the config"
    if not isinstance(data, dict):
        raise ConfigError(f"{_where(source, lines, section)}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = f"{prefix}{unknown[0]}"
        close = [_SYNONYMS[unknown[0]]] if _SYNONYMS.get(unknown[0]) in fields else \
            difflib.get_close_matches(str(unknown[0]), fields, n=1)
        guess = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"{_where(source, lines, key)}: unknown field; {guess}{section} takes: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        hint = hints[name]
        if hint is ObjectiveConfig:
            kwargs[name] = _build_objective(value, key, source, lines)
        elif dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value if value is not None else {}, key + ".", source, lines)
        elif typing.get_origin(hint) is list and dataclasses.is_dataclass(typing.get_args(hint)[0]):
            if not isinstance(value, list):
                raise ConfigError(f"{_where(source, lines, key)}: expected a list, got {value!r}")
            kwargs[name] = [_build(typing.get_args(hint)[0], item, f"{key}.{i}.", source, lines)
                            for i, item in enumerate(value)]
        else:
            kwargs[name] = _coerce(value, hint, _where(source, lines, key))
    return cls(**kwargs)


def _build_objective(value: Any, key: str, source: str, lines: dict[str, Any]) -> ObjectiveConfig:
    """The objective's section, in the schema of the objective it names."""
    from tunesmith.objectives import OBJECTIVES

    if value is None:
        value = {}
    at = key if isinstance(value, str) else key + ".name"
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        raise ConfigError(f"{_where(source, lines, key)}: give an objective name ({', '.join(OBJECTIVES)}) or a "
                          f"mapping with its name and options, got {value!r}")
    name = value.get("name", ObjectiveConfig.name)
    if name not in OBJECTIVES:
        raise ConfigError(f"{_where(source, lines, at)}: {name!r} is not one of {', '.join(OBJECTIVES)}")
    return _build(OBJECTIVES[name].Config, value, key + ".", source, lines)


def _coerce(value: Any, hint: Any, where: str) -> Any:
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
                return _coerce(value, option, where)
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
        return [_coerce(v, item_type, where) for v in value]
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


