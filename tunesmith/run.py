"""run(config) wires the stages together: data -> model -> method -> objective -> loop -> artifacts.

Nothing else in the package knows about all the parts.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import yaml

from tunesmith.config import MethodConfig, RunConfig, TrainConfig, config_from_dict, config_to_dict
from tunesmith.errors import ConfigError
from tunesmith.methods import METHODS, count_parameters
from tunesmith.methods.common import frozen_batchnorms, keep_in_eval, release_eval
from tunesmith.models import save_hf_model
from tunesmith.objectives import OBJECTIVES
from tunesmith.train import checkpoint as ckpt
from tunesmith.train.distributed import DistInfo, all_reduce_sum, setup, teardown
from tunesmith.train.loop import TrainTask, train

# Fields that may differ between a run and its resumption without changing the result.
_RESUME_FREE = {"train.progress", "train.threads", "train.device", "train.pause_at_fraction"}


def say(info: DistInfo, message: str) -> None:
    if info.is_main:
        print(message, file=sys.stderr, flush=True)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def prepare_run_dir(cfg: RunConfig | None, run_dir: Path, resume: bool, overwrite: bool,
                    is_main: bool = True) -> RunConfig:
    """A new run gets an empty dir; a resumed run takes its saved config (a given one must agree)."""
    saved = run_dir / "config.yaml"
    if resume:
        if not saved.exists():
            raise ConfigError(f"--resume {run_dir}: no config.yaml there; is it a tunesmith run directory?")
        old = config_from_dict(yaml.safe_load(saved.read_text()), source=str(saved))
        if cfg is not None:
            a, b = _flatten(config_to_dict(old)), _flatten(config_to_dict(cfg))
            diff = [k for k in a if a[k] != b.get(k) and k not in _RESUME_FREE]
            if diff:
                raise ConfigError(f"--resume {run_dir}: the given config differs from the run's in "
                                  f"{', '.join(f'{k} ({a[k]!r} -> {b.get(k)!r})' for k in diff)}")
            return cfg  # differs at most in fields that do not change the result
        return old
    assert cfg is not None
    if saved.exists() and not overwrite and is_main:
        raise ConfigError(f"{run_dir} already holds a run; continue it with --resume {run_dir}, "
                          "or pass --overwrite to start over")
    return cfg


def _evaluator(objective, items, cfg: RunConfig, pad_id: int, num_labels: int, info: DistInfo, prefix: str):
    shard = items[info.rank :: info.world_size]

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        sums = objective.eval_sums(model, shard, cfg.train.eval_batch_size, pad_id, info.device, num_labels)
        sums = {k: all_reduce_sum(v.to(info.device), info).cpu() for k, v in sums.items()}
        return {f"{prefix}{k}": v for k, v in objective.metrics(sums).items()} | {"_sums": sums}

    def metrics_only(model: torch.nn.Module) -> dict[str, float]:
        return {k: v for k, v in evaluate(model).items() if k != "_sums"}

    return evaluate, metrics_only


def run(cfg: RunConfig | None, run_dir: str | Path, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train one run and write its artifacts; returns the summary (also in RUN_DIR/summary.json)."""
    started = time.perf_counter()
    run_dir = Path(run_dir)
    device = cfg.train.device if cfg is not None else "auto"
    info = setup(device)
    try:
        cfg = prepare_run_dir(cfg, run_dir, resume, overwrite, info.is_main)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        return _run(cfg, run_dir, resume, overwrite, info, started)
    finally:
        teardown()


@dataclass
class Stage:
    """One training stage: a method applied to the model as the previous stage left it, its own
    train settings, and its own directory for checkpoints and metrics (the run dir itself when the run
    has a single stage)."""

    name: str
    method: MethodConfig
    train: TrainConfig
    dir: Path


_STAGE_FIELDS = ("epochs", "max_steps", "lr", "head_lr", "weight_decay", "warmup_ratio", "schedule")


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


def _run(cfg: RunConfig, run_dir: Path, resume: bool, overwrite: bool, info: DistInfo,
         started: float) -> dict[str, Any]:
    objective = OBJECTIVES[cfg.objective]
    data = objective.load_data(cfg)
    for line in data.report.lines():
        say(info, line)
    stages = plan_stages(cfg, run_dir)
    if resume and ckpt.latest_checkpoint(stages[0].dir / "checkpoints") is None:
        say(info, f"no checkpoint in {stages[0].dir}/checkpoints yet: starting from the beginning")
    if info.is_main:
        if overwrite and not resume:
            for stale in ("checkpoints", "stages", "model", "adapter", "plots", "tensorboard", "metrics.jsonl",
                          "summary.json", "paused.json"):
                shutil.rmtree(run_dir / stale, ignore_errors=True) if (run_dir / stale).is_dir() else \
                    (run_dir / stale).unlink(missing_ok=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / ".config.yaml.tmp"
        tmp.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        os.replace(tmp, run_dir / "config.yaml")

    loaded = objective.load_model(cfg, data)
    model = loaded.model.to(info.device)
    tokenizer = loaded.tokenizer
    pad_id = getattr(tokenizer, "pad_token_id", None)  # None for images

    eval_sets = dict(getattr(data, "eval_sets", None) or {})
    encoded, encode_stats = {}, {}
    for split, examples in (("train", data.train), ("validation", data.validation), ("test", data.test),
                            *eval_sets.items()):
        encoded[split], encode_stats[split] = objective.encode(examples, tokenizer, cfg.model.max_length)
        for stat, n in encode_stats[split].items():
            if n:
                say(info, f"{split}: {n} of {len(encoded[split])} examples {stat.replace('_', ' ')}"
                          + (f" (model.max_length={cfg.model.max_length} tokens)" if stat == "truncated" else ""))
    k = len(data.label_names or [])
    during = [(split, "val_") for split in ("validation",) if encoded[split]]
    if cfg.train.eval_sets_during_training:
        during += [(name, f"{name}_") for name in eval_sets if encoded[name]]
    evaluators = [_evaluator(objective, encoded[split], cfg, pad_id, k, info, prefix)[1] for split, prefix in during]
    val_eval = (lambda m: {key: v for e in evaluators for key, v in e(m).items()}) if evaluators else None
    pack = {"pack": True, "max_length": cfg.model.max_length} if cfg.train.packing else {}
    lengths = [len(it.input_ids) for it in encoded["train"]] if hasattr(encoded["train"][0], "input_ids") else None
    n_train = len(encoded["train"])
    pause_at = (None if cfg.train.pause_at_fraction is None
                else math.ceil(cfg.train.pause_at_fraction * sum(stage_steps(st, n_train) for st in stages)))

    results, stage_rows, steps_before, resumed = [], [], 0, False
    for stage in stages:
        release_eval(model)  # the previous stage's frozen parts may train now
        METHODS[stage.method.name].apply(loaded, stage.method)
        model = loaded.model.to(info.device)  # a method may wrap the model (prompt tuning)
        keep_in_eval(frozen_batchnorms(model))  # a frozen BatchNorm keeps its statistics too
        if cfg.train.gradient_checkpointing:
            _enable_gradient_checkpointing(model)
        prepared = getattr(objective, "prepare_model", None)
        note = prepared(model) if prepared is not None else None
        if note:
            say(info, note)
        if cfg.train.compile:
            _compile(model, info)
        trainable, total = count_parameters(loaded.model)
        say(info, f"{'' if len(stages) == 1 else f'stage {stage.name}: '}model {cfg.model.name} ({loaded.source}), "
                  f"method {stage.method.name}: {trainable:,} trainable of {total:,} parameters "
                  f"({100 * trainable / total:.2f}%)")
        task = TrainTask(items=encoded["train"], collate=lambda items: objective.collate(items, pad_id, train=True, **pack),
                         loss_sum=objective.loss_sum, count=objective.count, evaluate=val_eval,
                         head_params=set(loaded.head_params), lengths=lengths)
        if info.is_main:
            stage.dir.mkdir(parents=True, exist_ok=True)
        stage_started = time.perf_counter()
        resume_from = ckpt.latest_checkpoint(stage.dir / "checkpoints") if resume else None
        finished = resume_from is not None and json.loads((resume_from / "meta.json").read_text()).get("final")
        cache = None if finished else _prefix_cache(cfg, objective, model, encoded["train"], pad_id, info)
        resumed |= resume_from is not None
        local_pause = None if pause_at is None else pause_at - steps_before
        if local_pause is not None and local_pause <= 0:
            local_pause = None
        try:
            result = train(model, task, stage.train, stage.dir, info, resume_from=resume_from,
                           pause_at_step=local_pause)
        finally:
            if cache is not None:
                cache.detach()  # the next stage may train what this one froze
        results.append(result)
        stage_rows.append({"name": stage.name, "method": stage.method.name, "trainable_params": trainable,
                           "steps": result.steps, "total_steps": result.total_steps,
                           # the frozen-prefix cache fill is training work too
                           "train_seconds": round(result.train_seconds + (cache.fill_seconds if cache else 0.0), 2),
                           "best": result.best,
                           "stopped_early": result.stopped_early,
                           # this attempt's wall time: cache fill, steps, evaluations, checkpoints
                           "stage_wall_seconds": round(time.perf_counter() - stage_started, 2),
                           "prefix_cache": None if cache is None else {
                               "blocks": cache.frozen_blocks, "examples": cache.examples,
                               "mb": round(cache.megabytes, 3), "seconds": round(cache.fill_seconds, 2)}})
        steps_before += result.total_steps
        if result.paused:
            return _pause(run_dir, info, stage, result, steps_before - result.total_steps + result.steps, pause_at,
                          sum(stage_steps(st, n_train) for st in stages), started)
    if stages[0].dir != run_dir and info.is_main:
        _combine_stage_metrics(stages, results, run_dir)

    final: dict[str, Any] = {}
    details: dict[str, Any] = {}
    model.eval()
    for split, prefix in (("validation", "val_"), ("test", "test_"), *((n, f"{n}_") for n in eval_sets)):
        if encoded[split]:
            metrics = _evaluator(objective, encoded[split], cfg, pad_id, k, info, prefix)[0](model)
            details[split] = objective.details(metrics.pop("_sums"), data.label_names)
            final |= metrics
    if cfg.objective == "causal_lm" and cfg.train.exact_match and data.test:
        final |= _exact_match(model, tokenizer, data.test, info)
    last = results[-1]
    train_seconds = sum(row["train_seconds"] for row in stage_rows)
    summary = {
        "model": cfg.model.name, "method": stages[-1].method.name, "objective": cfg.objective,
        "trainable_params": stage_rows[-1]["trainable_params"], "total_params": total,
        "label_names": data.label_names, "steps": last.steps, "total_steps": last.total_steps,
        "epochs": round(last.epochs, 4), "stopped_early": last.stopped_early, "best": last.best, "final": final,
        "details": details, "train_seconds": round(train_seconds, 2),
        "stage_wall_seconds": round(sum(row["stage_wall_seconds"] for row in stage_rows), 2),
        "prefix_cache": [row["prefix_cache"] for row in stage_rows],
        "samples_per_s": round(sum(r.samples for r in results) / train_seconds, 2) if train_seconds else 0.0,
        "wall_seconds": round(time.perf_counter() - started, 2), "peak_rss_mb": round(peak_rss_mb(), 1),
        "world_size": info.world_size, "data": asdict(data.report), "encoding": encode_stats,
        "resumed": resumed,
    }
    if cfg.stages:
        summary["stages"] = stage_rows
    if info.is_main:
        (run_dir / "paused.json").unlink(missing_ok=True)
        if loaded.adapter is not None:  # adapters are saved alone, in PEFT's format; the base stays where it is
            loaded.adapter.save(model, run_dir / "adapter", base=loaded.source, extra_files={"tunesmith.json": {
                "model": cfg.model.name, "objective": cfg.objective, "label_names": data.label_names,
                "init_seed": cfg.train.init_seed}})
            tokenizer.save_pretrained(run_dir / "adapter")
        elif loaded.save is not None:
            loaded.save(model, run_dir / "model")
        else:
            save_hf_model(model, tokenizer, run_dir / "model")
        ckpt.write_json_atomic(run_dir / "summary.json", summary)
        from tunesmith.report.plots import plot_final_accuracy, plot_run

        plot_run(run_dir)
        plot_final_accuracy(final, run_dir / "plots" / "accuracy.png")
        objective.plots(details, data.label_names, run_dir / "plots")
        say(info, f"run written to {run_dir}: " + json.dumps({k: round(v, 4) for k, v in final.items()}))
    return summary


def _prefix_cache(cfg: RunConfig, objective, model: torch.nn.Module, items: list, pad_id: int | None,
                  info: DistInfo):
    """Frozen-prefix caching where it is exact: classification objectives with deterministic inputs."""
    t = cfg.train
    if not t.cache_frozen_prefix or cfg.objective not in ("classify", "image_classify") or not items:
        return None
    if cfg.data.augment or t.gradient_checkpointing:
        return None  # augmented inputs differ every epoch; checkpointing re-runs blocks in backward
    from tunesmith.train.prefix_cache import attach_prefix_cache

    return attach_prefix_cache(model, items, lambda batch: objective.collate(batch, pad_id), objective.loss_sum,
                               info.device, batch_size=t.eval_batch_size, budget_mb=t.prefix_cache_mb,
                               say=lambda message: say(info, message), progress=t.progress and info.is_main)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _compile(model: torch.nn.Module, info: DistInfo) -> None:
    from tunesmith.train.compile import compile_available, compile_blocks

    ok, why = compile_available()
    if not ok:
        raise ConfigError(f"train.compile: {why}; set train.compile: false")
    n = compile_blocks(model)
    say(info, f"train.compile: {n} repeated blocks that train will be compiled on first use (dynamic shapes); "
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


def _pause(run_dir: Path, info: DistInfo, stage: Stage, result, step: int, pause_at: int | None, total: int,
           started: float) -> dict[str, Any]:
    """A paused run writes paused.json (where it stopped and its validation metrics) and no artifacts."""
    paused = {"paused": True, "stage": stage.name, "step": step, "pause_at": pause_at, "total_steps": total,
              "last_eval": result.last_eval, "train_seconds": round(result.train_seconds, 2),
              "wall_seconds": round(time.perf_counter() - started, 2), "peak_rss_mb": round(peak_rss_mb(), 1)}
    if info.is_main:
        ckpt.write_json_atomic(run_dir / "paused.json", paused)
        say(info, f"paused at step {step} of {total}: {json.dumps(result.last_eval)}; "
                  f"continue with: tunesmith train --resume {run_dir}")
    return paused


def _combine_stage_metrics(stages: list[Stage], results: list, run_dir: Path) -> None:
    """RUN_DIR/metrics.jsonl for a multi-stage run: every stage's lines, tagged, steps counted across stages."""
    lines, offset = [], 0
    for stage, result in zip(stages, results, strict=True):
        path = stage.dir / "metrics.jsonl"
        for line in path.read_text().splitlines() if path.exists() else []:
            record = json.loads(line)
            record["stage"], record["step"] = stage.name, record["step"] + offset
            lines.append(json.dumps(record))
        offset += result.total_steps
    tmp = run_dir / ".metrics.jsonl.tmp"
    tmp.write_text("".join(line + "\n" for line in lines))
    os.replace(tmp, run_dir / "metrics.jsonl")


def _exact_match(model: torch.nn.Module, tokenizer, examples: list, info: DistInfo) -> dict[str, float]:
    """Greedy answers on the test split vs the expected ones, sharded over processes."""
    from tunesmith.generate import answer_set, exact_match

    candidates = answer_set(examples)
    found = exact_match(model, tokenizer, examples[info.rank :: info.world_size], device=info.device,
                        progress=info.is_main, candidates=candidates)
    n = found.get("exact_match_n", 0)
    keys = ["exact_match"] + (["answer_match"] if candidates else [])  # the same on every rank
    totals = all_reduce_sum(torch.tensor([found.get(k, 0.0) * n for k in keys] + [float(n)], dtype=torch.float64),
                            info)
    if not totals[-1].item():
        return {}
    return {f"test_{k}": totals[i].item() / totals[-1].item() for i, k in enumerate(keys)}
