"""Run configuration: YAML file + `--set a.b=value` overrides -> validated dataclasses.

Every error names the file, the line and the dotted field, so a user can fix it without reading code.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunesmith.data.config import DataConfig, SplitConfig
from tunesmith.errors import ConfigError

__all__ = [
    "RunConfig", "ModelConfig", "MethodConfig", "StageConfig", "LoraConfig", "PromptConfig", "TrainConfig", "EarlyStopConfig", "DataConfig",
    "SplitConfig", "load_config", "config_from_dict", "config_to_dict", "apply_overrides",
]


@dataclass
class ModelConfig:
    name: str = "minilm-l6"  # a built-in name (`tunesmith models`), a local HF model directory, or module:factory
    max_length: int = 128  # tokens per text; longer texts are truncated (and counted)
    # image models: None takes the built-in model's own value
    image_size: int | None = None  # square input side in pixels
    mean: list[float] | None = None  # per-channel normalisation of pixels scaled to [0, 1]
    std: list[float] | None = None
    weights: str | None = None  # module:factory models: a .safetensors file, or a .pth read with weights_only
    head: str | None = None  # module:factory models: attribute path of the classifier to replace, e.g. fc


@dataclass
class LoraConfig:
    """method.lora: options of the `lora` and `dora` methods (PEFT's LoraConfig, by the same meaning)."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
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

    num_virtual_tokens: int = 20
    init: str = "vocab"  # vocab: embeddings of random vocabulary tokens | text: embeddings of init_text
    init_text: str | None = None


@dataclass
class MethodConfig:
    """What learns. Options only some methods read are ignored by the others."""

    name: str = "full"  # full | freeze | linear_probe | bitfit | lora | dora | prompt  (`tunesmith methods`)
    freeze_embeddings: bool = True  # freeze: also freeze the embedding layer
    freeze_layers: int = 0  # freeze: the first N transformer blocks
    freeze_patterns: list[str] = field(default_factory=list)  # freeze: glob patterns on parameter names
    lora: LoraConfig = field(default_factory=LoraConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)


@dataclass
class EarlyStopConfig:
    metric: str = "val_accuracy"  # any metric logged at evaluation, e.g. val_loss, val_accuracy
    mode: str = "auto"  # auto (min for *loss, else max) | min | max
    patience: int | None = None  # evaluations without improvement before stopping; None: never stop early
    min_delta: float = 0.0
    restore_best: bool = True  # end with the best evaluated weights, not the last


@dataclass
class TrainConfig:
    epochs: float = 3.0
    max_steps: int | None = None  # optimizer steps; overrides epochs when set
    batch_size: int = 32  # examples per optimizer step, across all processes and accumulation
    grad_accum: int = 1  # micro-batches per optimizer step (per process)
    group_by_length: bool = True  # batch items of similar length together: less padding, faster
    packing: bool = False  # causal_lm: several samples per row (no attention across them)
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower
    # freeze / linear_probe: compute the frozen embeddings-or-stem + leading blocks once per training
    # example and reuse them every epoch (classification objectives, no data augmentation)
    cache_frozen_prefix: bool = True
    prefix_cache_mb: float = 2048.0  # the cache is dropped (training recomputes) above this size
    fused_optimizer: bool = True  # AdamW's fused kernel (one pass over each tensor) where torch has it
    # torch.compile each repeated block that trains (see tunesmith/train/compile.py). Off by default:
    # compiling costs minutes and on a 2-core CPU paid back only after ~2,000 MiniLM steps
    compile: bool = False
    exact_match: bool = True  # causal_lm: greedy answers on the test split vs the expected answers
    lr: float = 5e-5
    head_lr: float | None = None  # learning rate of the newly initialised head (default: lr)
    weight_decay: float = 0.01  # not applied to biases and normalisation weights
    schedule: str = "linear"  # linear | cosine | constant
    warmup_ratio: float = 0.06
    warmup_steps: int | None = None  # overrides warmup_ratio
    max_grad_norm: float | None = 1.0
    init_seed: int = 0  # new head weights (and dropout)
    data_seed: int = 0  # order of training examples
    eval_every: str | int = "epoch"  # "epoch" or every N optimizer steps
    eval_batch_size: int = 64
    log_every: int = 10  # optimizer steps between metrics.jsonl lines
    checkpoint_every: int | None = None  # optimizer steps; a checkpoint is always written at the end
    keep_checkpoints: int = 2
    early_stopping: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    device: str = "auto"  # auto | cpu | cuda
    threads: int | None = None  # torch intra-op threads; None: torch's default
    progress: bool = True  # tqdm progress bar
    # stop (checkpoint, evaluate, write paused.json) after this fraction of all training steps; resume
    # continues from there. `tunesmith compare --early-discard` uses it to triage seeds.
    pause_at_fraction: float | None = None
    eval_sets_during_training: bool = False  # also evaluate data.eval_sets (OOD sets) at every evaluation


@dataclass
class StageConfig:
    """One stage of a multi-stage run (e.g. LP-FT: a linear probe, then fine-tuning from its head).
    Each stage applies its own method to the model the previous stage left; unset fields take train.*"""

    name: str = "stage"
    method: MethodConfig = field(default_factory=MethodConfig)
    epochs: float | None = None
    max_steps: int | None = None
    lr: float | None = None
    head_lr: float | None = None
    weight_decay: float | None = None
    warmup_ratio: float | None = None
    schedule: str | None = None


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)  # ignored when stages are given
    data: DataConfig = field(default_factory=DataConfig)
    objective: str = "classify"
    train: TrainConfig = field(default_factory=TrainConfig)
    stages: list[StageConfig] = field(default_factory=list)  # empty: one stage, `method` with `train`


# --- loading -------------------------------------------------------------------------------------


def _line_index(node: yaml.Node, prefix: str = "", out: dict[str, int] | None = None) -> dict[str, int]:
    """Map dotted field names to 1-based line numbers, so errors can point into the file."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            out[key] = key_node.start_mark.line + 1
            _line_index(value_node, key + ".", out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[f"{prefix}{i}"] = item.start_mark.line + 1
            _line_index(item, f"{prefix}{i}.", out)
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
    lines = _line_index(node) if node is not None else {}
    data = apply_overrides(data, overrides or [])
    return config_from_dict(data, source=str(path), lines=lines)


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
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a section")
            target = nxt
        target[parts[-1]] = value
    return data


def config_from_dict(data: dict[str, Any], source: str = "<config>", lines: dict[str, int] | None = None) -> RunConfig:
    cfg = _build(RunConfig, data, "", source, lines or {})
    _check(cfg, source, lines or {})
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _where(source: str, lines: dict[str, int], key: str) -> str:
    line = lines.get(key)
    if line is None:  # the field came from --set or a default
        parent = key.rsplit(".", 1)[0] if "." in key else None
        line = lines.get(parent) if parent else None
        return f"{source} (--set or default) {key}" if line is None else f"{source}:{line}: {key}"
    return f"{source}:{line}: {key}"


def _build(cls: type, data: Any, prefix: str, source: str, lines: dict[str, int]) -> Any:
    section = prefix.rstrip(".") or "the config"
    if not isinstance(data, dict):
        raise ConfigError(f"{_where(source, lines, section)}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = f"{prefix}{unknown[0]}"
        raise ConfigError(f"{_where(source, lines, key)}: unknown field; {section} takes: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value if value is not None else {}, key + ".", source, lines)
        elif typing.get_origin(hint) is list and dataclasses.is_dataclass(typing.get_args(hint)[0]):
            if not isinstance(value, list):
                raise ConfigError(f"{_where(source, lines, key)}: expected a list, got {value!r}")
            kwargs[name] = [_build(typing.get_args(hint)[0], item, f"{key}.{i}.", source, lines)
                            for i, item in enumerate(value)]
        else:
            kwargs[name] = _coerce(value, hint, _where(source, lines, key))
    return cls(**kwargs)


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


def _choice(value: Any, allowed: tuple[str, ...], where: str) -> None:
    if value not in allowed:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(allowed)}")


def _check(cfg: RunConfig, source: str, lines: dict[str, int]) -> None:
    """Cross-field rules the types cannot express."""
    w = lambda key: _where(source, lines, key)  # noqa: E731
    t = cfg.train
    _choice(t.schedule, ("linear", "cosine", "constant"), w("train.schedule"))
    _choice(t.device, ("auto", "cpu", "cuda"), w("train.device"))
    _choice(t.early_stopping.mode, ("auto", "min", "max"), w("train.early_stopping.mode"))
    _choice(cfg.data.on_bad_rows, ("error", "skip"), w("data.on_bad_rows"))
    _choice(cfg.data.format, ("auto", "jsonl", "csv", "tsv", "parquet"), w("data.format"))
    positive = {"train.batch_size": t.batch_size, "train.grad_accum": t.grad_accum, "train.lr": t.lr,
                "train.eval_batch_size": t.eval_batch_size, "train.log_every": t.log_every,
                "train.keep_checkpoints": t.keep_checkpoints, "model.max_length": cfg.model.max_length}
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{w(key)}: must be > 0, got {value}")
    if t.epochs <= 0 and t.max_steps is None:
        raise ConfigError(f"{w('train.epochs')}: must be > 0 (or set train.max_steps)")
    if t.batch_size % t.grad_accum:
        raise ConfigError(f"{w('train.batch_size')}: {t.batch_size} is not divisible by train.grad_accum={t.grad_accum}")
    if isinstance(t.eval_every, str) and t.eval_every != "epoch":
        raise ConfigError(f"{w('train.eval_every')}: expected 'epoch' or a number of steps, got {t.eval_every!r}")
    if isinstance(t.eval_every, int) and t.eval_every <= 0:
        raise ConfigError(f"{w('train.eval_every')}: must be > 0")
    if not 0 <= t.warmup_ratio < 1:
        raise ConfigError(f"{w('train.warmup_ratio')}: must be in [0, 1), got {t.warmup_ratio}")
    from tunesmith.methods import METHODS
    from tunesmith.objectives import OBJECTIVES

    _choice(cfg.method.name, tuple(METHODS), w("method.name"))
    import re

    seen: set[str] = set()
    for i, stage in enumerate(cfg.stages):
        at = f"stages.{i}"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", stage.name) or stage.name in seen:
            raise ConfigError(f"{w(at + '.name')}: {stage.name!r}: give each stage a distinct name of letters, "
                              "digits, - and _")
        seen.add(stage.name)
        _choice(stage.method.name, tuple(METHODS), w(at + ".method.name"))
        if stage.schedule is not None:
            _choice(stage.schedule, ("linear", "cosine", "constant"), w(at + ".schedule"))
        for key in ("epochs", "max_steps", "lr", "head_lr"):
            value = getattr(stage, key)
            if value is not None and value <= 0:
                raise ConfigError(f"{w(f'{at}.{key}')}: must be > 0, got {value}")
    if t.pause_at_fraction is not None and not 0 < t.pause_at_fraction < 1:
        raise ConfigError(f"{w('train.pause_at_fraction')}: must be in (0, 1), got {t.pause_at_fraction}")
    _choice(cfg.objective, tuple(OBJECTIVES), w("objective"))
    _choice(cfg.method.prompt.init, ("vocab", "text"), w("method.prompt.init"))
    if cfg.method.name == "prompt" and t.packing:
        raise ConfigError(f"{w('train.packing')}: prompt tuning cannot pack samples (each needs its own prompt)")
    lora = cfg.method.lora
    _choice(lora.init, ("kaiming", "gaussian"), w("method.lora.init"))
    _choice(lora.bias, ("none", "all", "lora_only"), w("method.lora.bias"))
    if lora.r <= 0:
        raise ConfigError(f"{w('method.lora.r')}: must be > 0, got {lora.r}")
    if not 0 <= lora.dropout < 1:
        raise ConfigError(f"{w('method.lora.dropout')}: must be in [0, 1), got {lora.dropout}")
    from tunesmith.models.vision import is_vision_model

    if is_vision_model(cfg.model.name) != (cfg.objective == "image_classify"):
        hint = ("an image model; set objective: image_classify" if cfg.objective != "image_classify" else
                "not an image model (image_classify needs e.g. efficientnet-lite0 or a module:factory model)")
        raise ConfigError(f"{w('objective')}: {cfg.objective}, but model.name {cfg.model.name!r} is {hint}")
    if t.packing and cfg.objective != "causal_lm":
        raise ConfigError(f"{w('train.packing')}: packing is for objective causal_lm")
    if cfg.method.freeze_layers < 0:
        raise ConfigError(f"{w('method.freeze_layers')}: must be >= 0")
    d, m = cfg.data, cfg.model
    for i, name in enumerate(d.augment):
        _choice(name, ("crop", "flip"), w("data.augment") + f"[{i}]")
    lo_hi = d.crop_scale
    if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1] <= 1:
        raise ConfigError(f"{w('data.crop_scale')}: give [min, max] area fractions with 0 < min <= max <= 1, "
                          f"got {lo_hi}")
    if m.image_size is not None and m.image_size < 8:
        raise ConfigError(f"{w('model.image_size')}: must be >= 8 pixels, got {m.image_size}")
    for key, values in (("model.mean", m.mean), ("model.std", m.std)):
        if values is not None and (len(values) not in (1, 3) or (key == "model.std" and min(values) <= 0)):
            raise ConfigError(f"{w(key)}: give 1 or 3 numbers per channel" + (" (all > 0)" if "std" in key else "")
                              + f", got {values}")
