"""Cross-field rules of a run config, checked when the config is read: before any data or model is
loaded and before the run directory is written. Each error names the file, the line and the field.

The objective and each method check their own options (Objective.check, Method.check); this module holds
the rules that span sections.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

from tunesmith.errors import ConfigError
from tunesmith.ranges import check_ranges, choice
from tunesmith.schema import RunConfig, stage_methods

Where = Callable[[str], str]
SCHEDULES = ("linear", "cosine", "constant")


def check_run(cfg: RunConfig, w: Where, training: bool = True, base_dir: str | Path | None = None) -> None:
    """Every rule; `training` false (a finished run opened for use): only the ones about the fields
    themselves, not about what training needs (data, code and devices of the machine it ran on).
    `base_dir`: the config file's folder, where train.callbacks' modules are looked for first."""
    from tunesmith.objectives import build_objective

    objective = build_objective(cfg)
    check_ranges(cfg, w)
    _check_train(cfg, w, training)
    _check_reporting(cfg, w, training, base_dir)
    _check_data(cfg, w, training)
    if training:
        objective.check(cfg, w)
        _check_model(cfg, objective, w)
    _check_methods(cfg, objective, w)
    _check_early_stopping(cfg, objective, w)


def _check_train(cfg: RunConfig, w: Where, training: bool = True) -> None:
    from tunesmith.train.parallel import CHOICES

    t = cfg.train
    choice(t.schedule, SCHEDULES, w("train.schedule"))
    choice(t.device, ("auto", "cpu", "cuda"), w("train.device"))
    if t.device == "cuda" and training:
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"{w('train.device')}: cuda, but this torch ({torch.__version__}) sees no CUDA device; "
                              "use auto or cpu")
    choice(t.parallelism, CHOICES, w("train.parallelism"))
    _check_parallelism(cfg, w, training)
    from tunesmith.train.precision import MODEL_DTYPES, PRECISIONS, precision_problem

    choice(t.precision, PRECISIONS, w("train.precision"))
    choice(cfg.model.dtype, tuple(MODEL_DTYPES), w("model.dtype"))
    if training:
        import torch

        device = t.device if t.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        problem = precision_problem(t.precision, device)
        if problem:
            raise ConfigError(f"{w('train.precision')}: {t.precision}: {problem}")
    choice(t.early_stopping.mode, ("auto", "min", "max"), w("train.early_stopping.mode"))
    if t.batch_size % t.grad_accum:
        raise ConfigError(f"{w('train.batch_size')}: {t.batch_size} is not divisible by train.grad_accum={t.grad_accum}")
    if isinstance(t.eval_every, str) and t.eval_every != "epoch":
        raise ConfigError(f"{w('train.eval_every')}: expected 'epoch' or a number of steps, got {t.eval_every!r}")
    seen: set[str] = set()
    for i, stage in enumerate(cfg.stages):
        at = f"stages.{i}"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", stage.name) or stage.name in seen:
            raise ConfigError(f"{w(at + '.name')}: {stage.name!r}: give each stage a distinct name of letters, "
                              "digits, - and _")
        seen.add(stage.name)
        if stage.schedule is not None:
            choice(stage.schedule, SCHEDULES, w(at + ".schedule"))


def _check_reporting(cfg: RunConfig, w: Where, training: bool, base_dir: str | Path | None) -> None:
    """train.report_to: known trackers, installed here; train.callbacks: importable Callbacks (user code,
    imported only to train)."""
    from tunesmith.train import user_callbacks
    from tunesmith.train.reporters import REPORTERS, report_to_problem
    from tunesmith.user_code import locate

    t = cfg.train
    for i, name in enumerate(t.report_to):
        if name in t.report_to[:i]:
            raise ConfigError(f"{w('train.report_to')}[{i}]: {name} is listed twice")
        choice(name, tuple(REPORTERS), f"{w('train.report_to')}[{i}]")
        problem = report_to_problem(name) if training else None  # a finished run is used without its trackers
        if problem:
            raise ConfigError(f"{w('train.report_to')}[{i}]: {problem}")
    if base_dir is not None:
        t.callbacks = locate(t.callbacks, Path(base_dir))
    if training:
        user_callbacks.resolve(t.callbacks, w, None if base_dir is None else Path(base_dir))


def _check_parallelism(cfg: RunConfig, w: Where, training: bool) -> None:
    """What a strategy cannot do, said before anything loads."""
    from tunesmith.train.distributed import launched_by_torchrun

    t = cfg.train
    if t.fsdp_cpu_offload and t.parallelism != "fsdp":
        raise ConfigError(f"{w('train.fsdp_cpu_offload')}: is for train.parallelism: fsdp (it is {t.parallelism})")
    if t.parallelism != "fsdp":
        return
    if training and not launched_by_torchrun():
        raise ConfigError(f"{w('train.parallelism')}: fsdp shards the model over processes: launch it with "
                          "torchrun --nproc_per_node=N -m tunesmith train ...")
    if cfg.stages:
        raise ConfigError(f"{w('train.parallelism')}: fsdp trains one stage per run; run the stages as runs of their "
                          "own (model.name: the previous run's model/), or use ddp")
    if t.precision == "fp16":
        raise ConfigError(f"{w('train.precision')}: fp16 under fsdp needs a sharded gradient scaler; use bf16 (as "
                          "FSDP users do), or ddp")
    if t.compile:
        raise ConfigError(f"{w('train.compile')}: not with fsdp; set train.compile: false")


def _check_data(cfg: RunConfig, w: Where, training: bool = True) -> None:
    from tunesmith.data.config import check_data_config

    d, m = cfg.data, cfg.model
    choice(d.on_bad_rows, ("error", "skip"), w("data.on_bad_rows"))
    check_data_config(d, w, training)  # format, train files and weights, columns, chat_template
    for i, name in enumerate(d.augment):
        choice(name, ("crop", "flip"), w("data.augment") + f"[{i}]")
    lo_hi = d.crop_scale
    if len(lo_hi) != 2 or not all(math.isfinite(v) for v in lo_hi) or not 0 < lo_hi[0] <= lo_hi[1] <= 1:
        raise ConfigError(f"{w('data.crop_scale')}: give [min, max] area fractions with 0 < min <= max <= 1, "
                          f"got {lo_hi}")
    for key, values in (("model.mean", m.mean), ("model.std", m.std)):
        if values is not None and (len(values) not in (1, 3) or not all(math.isfinite(v) for v in values)
                                   or (key == "model.std" and min(values) <= 0)):
            raise ConfigError(f"{w(key)}: give 1 or 3 numbers per channel" + (" (all > 0)" if "std" in key else "")
                              + f", got {values}")


def _check_model(cfg: RunConfig, objective, w: Where) -> None:
    """What can be known about the model without loading it: safe weights, its longest input."""
    from tunesmith.models.registry import max_positions, weights_problem

    if not objective.checks_text_model:
        return
    problem = weights_problem(cfg.model.name)
    if problem:
        raise ConfigError(f"{w('model.name')}: {problem}")
    limit, source = max_positions(cfg.model.name)
    virtual = max((m.prompt.num_virtual_tokens for _, m in stage_methods(cfg) if m.name == "prompt"), default=0)
    if limit is not None and cfg.model.max_length + virtual > limit:
        plus = f" + {virtual} virtual tokens" if virtual else ""
        raise ConfigError(f"{w('model.max_length')}: {cfg.model.max_length}{plus} is more than the model takes "
                          f"({limit} positions, from {source}); at most {limit - virtual}")


def _check_methods(cfg: RunConfig, objective, w: Where) -> None:
    from tunesmith.methods import METHODS

    found = []
    for at, method in stage_methods(cfg):
        choice(method.name, tuple(METHODS), w(at + ".name"))
        cls = METHODS[method.name]
        if cls.model_kinds is not None and objective.model_kind not in cls.model_kinds:
            raise ConfigError(f"{w(at + '.name')}: {method.name} works on a {' or '.join(cls.model_kinds)} model; "
                              f"objective {objective.name} trains a {objective.model_kind}")
        cls().check(method, cfg, w, at)
        found.append((at, cls))
    adapters = [(at, cls) for at, cls in found if cls.adapter]
    if len(adapters) > 1:
        raise ConfigError(f"{w(adapters[1][0] + '.name')}: a run has one adapter stage ({adapters[0][0]} is "
                          f"{adapters[0][1].name}); put other stages' methods around it")
    alone = [(at, cls) for at, cls in found if cls.exclusive]
    if alone and len(found) > 1:
        at, cls = alone[0]
        raise ConfigError(f"{w(at + '.name')}: {cls.name} wraps the model, so it cannot share a run with other "
                          "stages' methods; give it a run of its own")


def _check_early_stopping(cfg: RunConfig, objective, w: Where) -> None:
    """Fill in the objective's default metric; a given one must be something evaluation computes."""
    from tunesmith.data.builtin import builtin_eval_sets

    stop = cfg.train.early_stopping
    if stop.patience is not None and cfg.data.validation is None and cfg.data.split.validation == 0:
        raise ConfigError(f"{w('train.early_stopping.patience')}: early stopping needs validation data, and "
                          "data.split.validation is 0 with no data.validation file; give one, or drop patience")
    splits = ["val"]
    if cfg.train.eval_sets_during_training:
        splits += [*builtin_eval_sets(cfg.data.builtin), *map(str, cfg.data.eval_sets or {})]
    known = [f"{split}_{name}" for split in splits for name in objective.metric_names]
    if stop.tie_breaker not in ("auto", "none") and stop.tie_breaker not in known:
        raise ConfigError(f"{w('train.early_stopping.tie_breaker')}: {stop.tie_breaker!r} is not computed during "
                          f"training by objective {objective.name}; choose auto, none or one of {', '.join(known)}")
    if stop.metric is None:
        stop.metric = objective.default_metric
        return
    if stop.metric not in known:
        raise ConfigError(f"{w('train.early_stopping.metric')}: {stop.metric!r} is not computed during training "
                          f"by objective {objective.name}; choose one of {', '.join(known)}")
