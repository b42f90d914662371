"""Stages of a run: a method applied to the model as the previous stage left it, with its own train
settings and its own directory for checkpoints and metrics (the run dir itself for a single stage)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from tunesmith.errors import ConfigError
from tunesmith.methods import METHODS, Method
from tunesmith.methods.common import frozen_batchnorms, keep_in_eval, release_eval
from tunesmith.models.hf import LoadedModel
from tunesmith.objectives import Objective
from tunesmith.schema import MethodConfig, RunConfig, TrainConfig

_STAGE_FIELDS = ("epochs", "max_steps", "lr", "head_lr", "weight_decay", "warmup_ratio", "schedule")


@dataclass
class Stage:
    name: str
    method_cfg: MethodConfig
    train: TrainConfig
    dir: Path
    method: Method = field(init=False)

    def __post_init__(self) -> None:
        self.method = METHODS[self.method_cfg.name]()


def plan_stages(cfg: RunConfig, run_dir: Path) -> list[Stage]:
    if not cfg.stages:
        return [Stage("main", cfg.method, cfg.train, run_dir)]
    stages = []
    for i, stage in enumerate(cfg.stages, 1):
        overrides = {k: getattr(stage, k) for k in _STAGE_FIELDS if getattr(stage, k) is not None}
        if stage.epochs is not None and stage.max_steps is None:
            overrides["max_steps"] = None  # a stage's own epochs beat a run-wide max_steps
        stages.append(Stage(stage.name, stage.method, replace(cfg.train, **overrides),
                            run_dir / "stages" / f"{i}-{stage.name}"))
    return stages


def stage_steps(stage: Stage, n_items: int) -> int:
    return stage.train.max_steps or math.ceil(stage.train.epochs * math.ceil(n_items / stage.train.batch_size))


def set_up_stage(stage: Stage, loaded: LoadedModel, objective: Objective, cfg: RunConfig, device: torch.device,
                 say: Callable[[str], None]) -> torch.nn.Module:
    """Apply the stage's method to the model the previous stage left, then what depends on what trains:
    frozen BatchNorms kept in eval mode, gradient checkpointing, the objective's exact speed-ups,
    torch.compile. Returns the model to train (a method may wrap it)."""
    release_eval(loaded.model)  # the previous stage's frozen parts may train now
    stage.method.apply(loaded, stage.method_cfg)
    model = loaded.model.to(device)
    keep_in_eval(frozen_batchnorms(model))  # a frozen BatchNorm keeps its statistics too
    if cfg.train.gradient_checkpointing:
        _enable_gradient_checkpointing(model)
    note = objective.prepare_model(model)
    if note:
        say(note)
    if cfg.train.compile:
        _compile(model, say)
    return model


def _compile(model: torch.nn.Module, say: Callable[[str], None]) -> None:
    from tunesmith.train.compile import compile_available, compile_blocks

    ok, why = compile_available()
    if not ok:
        raise ConfigError(f"train.compile: {why}; set train.compile: false")
    n = compile_blocks(model)
    say(f"train.compile: {n} repeated blocks that train will be compiled on first use (dynamic shapes); "
        "the first steps include the compilation" if n else
        "train.compile: no repeated block trains here, so nothing was compiled")


def _enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    inner = getattr(model, "base_model", model) if hasattr(model, "prompt_embeddings") else model
    if hasattr(inner, "activation_checkpointing_enable"):  # transformers 5's name; 4.x has the old one
        inner.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    elif hasattr(inner, "gradient_checkpointing_enable"):
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        raise ConfigError(f"train.gradient_checkpointing: {type(inner).__name__} does not support it")
    if hasattr(inner, "enable_input_require_grads"):
        inner.enable_input_require_grads()  # frozen embeddings: keep a grad path into checkpointed blocks
