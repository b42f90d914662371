"""Cross-field rules of a run config, checked when the config is read: before any data or model is
loaded and before the run directory is written. Each error names the file, the line and the field.

The objective and each method check their own options (Objective.check, Method.check); this module holds
the rules that span sections.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from tunesmith.config import RunConfig
from tunesmith.errors import ConfigError

Where = Callable[[str], str]
SCHEDULES = ("linear", "cosine", "constant")


def choice(value, allowed: tuple[str, ...], where: str) -> None:
    if value not in allowed:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(allowed)}")


def check_run(cfg: RunConfig, w: Where) -> None:
    from tunesmith.objectives import build_objective

    objective = build_objective(cfg)
    _check_train(cfg, w)
    _check_data(cfg, w)
    objective.check(cfg, w)
    _check_methods(cfg, objective, w)
    _check_early_stopping(cfg, objective, w)


def _check_train(cfg: RunConfig, w: Where) -> None:
    from tunesmith.train.parallel import CHOICES

    t = cfg.train
    choice(t.schedule, SCHEDULES, w("train.schedule"))
    choice(t.device, ("auto", "cpu", "cuda"), w("train.device"))
    choice(t.parallelism, CHOICES, w("train.parallelism"))
    choice(t.early_stopping.mode, ("auto", "min", "max"), w("train.early_stopping.mode"))
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
    if t.pause_at_fraction is not None and not 0 < t.pause_at_fraction < 1:
        raise ConfigError(f"{w('train.pause_at_fraction')}: must be in (0, 1), got {t.pause_at_fraction}")
    seen: set[str] = set()
    for i, stage in enumerate(cfg.stages):
        at = f"stages.{i}"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", stage.name) or stage.name in seen:
            raise ConfigError(f"{w(at + '.name')}: {stage.name!r}: give each stage a distinct name of letters, "
                              "digits, - and _")
        seen.add(stage.name)
        if stage.schedule is not None:
            choice(stage.schedule, SCHEDULES, w(at + ".schedule"))
        for key in ("epochs", "max_steps", "lr", "head_lr"):
            value = getattr(stage, key)
            if value is not None and value <= 0:
                raise ConfigError(f"{w(f'{at}.{key}')}: must be > 0, got {value}")


def _check_data(cfg: RunConfig, w: Where) -> None:
    d, m = cfg.data, cfg.model
    choice(d.on_bad_rows, ("error", "skip"), w("data.on_bad_rows"))
    choice(d.format, ("auto", "jsonl", "csv", "tsv", "parquet"), w("data.format"))
    for i, name in enumerate(d.augment):
        choice(name, ("crop", "flip"), w("data.augment") + f"[{i}]")
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


def stage_methods(cfg: RunConfig) -> list[tuple[str, object]]:
    """(config section, method config) of every stage: `method`, or each `stages.N.method`."""
    if not cfg.stages:
        return [("method", cfg.method)]
    return [(f"stages.{i}.method", stage.method) for i, stage in enumerate(cfg.stages)]


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
    if stop.metric is None:
        stop.metric = objective.default_metric
        return
    splits = ["val"]
    if cfg.train.eval_sets_during_training:
        splits += [*builtin_eval_sets(cfg.data.builtin), *map(str, cfg.data.eval_sets or {})]
    known = [f"{split}_{name}" for split in splits for name in objective.metric_names]
    if stop.metric not in known:
        raise ConfigError(f"{w('train.early_stopping.metric')}: {stop.metric!r} is not computed during training "
                          f"by objective {objective.name}; choose one of {', '.join(known)}")
