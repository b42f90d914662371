"""run(config) wires the stages together: data -> model -> method -> objective -> loop -> artifacts.

Nothing else in the package knows about all the parts.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import yaml

from tunesmith.config import RunConfig, config_from_dict, config_to_dict
from tunesmith.errors import ConfigError
from tunesmith.methods import METHODS, count_parameters
from tunesmith.methods.common import frozen_batchnorms, keep_in_eval
from tunesmith.models import save_hf_model
from tunesmith.objectives import OBJECTIVES
from tunesmith.train import checkpoint as ckpt
from tunesmith.train.distributed import DistInfo, all_reduce_sum, setup, teardown
from tunesmith.train.loop import TrainTask, train

# Fields that may differ between a run and its resumption without changing the result.
_RESUME_FREE = {"train.progress", "train.threads", "train.device"}


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


def _run(cfg: RunConfig, run_dir: Path, resume: bool, overwrite: bool, info: DistInfo,
         started: float) -> dict[str, Any]:
    objective = OBJECTIVES[cfg.objective]
    data = objective.load_data(cfg)
    for line in data.report.lines():
        say(info, line)

    resume_from = ckpt.latest_checkpoint(run_dir / "checkpoints") if resume else None
    if resume and resume_from is None:
        say(info, f"no checkpoint in {run_dir}/checkpoints yet: starting from the beginning")
    if info.is_main:
        if overwrite and not resume:
            for stale in ("checkpoints", "model", "adapter", "plots", "tensorboard", "metrics.jsonl", "summary.json"):
                shutil.rmtree(run_dir / stale, ignore_errors=True) if (run_dir / stale).is_dir() else \
                    (run_dir / stale).unlink(missing_ok=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / ".config.yaml.tmp"
        tmp.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        os.replace(tmp, run_dir / "config.yaml")

    loaded = objective.load_model(cfg, data)
    METHODS[cfg.method.name].apply(loaded, cfg.method)
    keep_in_eval(frozen_batchnorms(loaded.model))  # a frozen BatchNorm keeps its statistics too
    trainable, total = count_parameters(loaded.model)
    say(info, f"model {cfg.model.name} ({loaded.source}), method {cfg.method.name}: "
              f"{trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)")
    model = loaded.model.to(info.device)
    tokenizer = loaded.tokenizer
    pad_id = getattr(tokenizer, "pad_token_id", None)  # None for images

    encoded, encode_stats = {}, {}
    for split in ("train", "validation", "test"):
        encoded[split], encode_stats[split] = objective.encode(getattr(data, split), tokenizer, cfg.model.max_length)
        for stat, n in encode_stats[split].items():
            if n:
                say(info, f"{split}: {n} of {len(encoded[split])} examples {stat.replace('_', ' ')} "
                          f"(model.max_length={cfg.model.max_length} tokens)")
    k = len(data.label_names or [])
    val_eval = _evaluator(objective, encoded["validation"], cfg, pad_id, k, info, "val_")[1] \
        if encoded["validation"] else None
    if cfg.train.gradient_checkpointing:
        inner = getattr(model, "base_model", model) if hasattr(model, "prompt_embeddings") else model
        if hasattr(inner, "activation_checkpointing_enable"):  # transformers 5's name; 4.x has the old one
            inner.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(inner, "enable_input_require_grads"):
            inner.enable_input_require_grads()  # frozen embeddings: keep a grad path into checkpointed blocks
    pack = {"pack": True, "max_length": cfg.model.max_length} if cfg.train.packing else {}
    lengths = [len(it.input_ids) for it in encoded["train"]] if hasattr(encoded["train"][0], "input_ids") else None
    task = TrainTask(items=encoded["train"], collate=lambda items: objective.collate(items, pad_id, train=True, **pack),
                     loss_sum=objective.loss_sum, count=objective.count, evaluate=val_eval,
                     head_params=set(loaded.head_params), lengths=lengths)
    result = train(model, task, cfg.train, run_dir, info, resume_from=resume_from)

    final: dict[str, Any] = {}
    details: dict[str, Any] = {}
    model.eval()
    for split, prefix in (("validation", "val_"), ("test", "test_")):
        if encoded[split]:
            metrics = _evaluator(objective, encoded[split], cfg, pad_id, k, info, prefix)[0](model)
            details[split] = objective.details(metrics.pop("_sums"), data.label_names)
            final |= metrics
    if cfg.objective == "causal_lm" and cfg.train.exact_match and data.test:
        final |= _exact_match(model, tokenizer, data.test, info)
    summary = {
        "model": cfg.model.name, "method": cfg.method.name, "objective": cfg.objective,
        "trainable_params": trainable, "total_params": total, "label_names": data.label_names,
        "steps": result.steps, "total_steps": result.total_steps, "epochs": round(result.epochs, 4),
        "stopped_early": result.stopped_early, "best": result.best, "final": final, "details": details,
        "train_seconds": round(result.train_seconds, 2), "samples_per_s": round(result.samples_per_second, 2),
        "wall_seconds": round(time.perf_counter() - started, 2), "world_size": info.world_size,
        "data": asdict(data.report), "encoding": encode_stats, "resumed": resume_from is not None,
    }
    if info.is_main:
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
        from tunesmith.report.plots import plot_run

        plot_run(run_dir)
        objective.plots(details, data.label_names, run_dir / "plots")
        say(info, f"run written to {run_dir}: " + json.dumps({k: round(v, 4) for k, v in final.items()}))
    return summary


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
