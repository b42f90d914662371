"""run(config) wires the stages together: data -> model -> method -> objective -> loop -> artifacts.

Nothing else in the package knows about all the parts.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from tunesmith import artifacts
from tunesmith.atomic import write_json_atomic
from tunesmith.errors import ConfigError, Interrupted, TrainingError
from tunesmith.generate import describe_prompt_format
from tunesmith.infer import open_saved
from tunesmith.methods import count_parameters
from tunesmith.objectives import Objective, build_objective
from tunesmith.objectives.base import StageStart
from tunesmith.rundir import RunLock, combine_stage_metrics, has_progress, prepare_run_dir, start_run_dir
from tunesmith.schema import RunConfig
from tunesmith.stages import Stage, plan_stages, set_up_stage, stage_steps
from tunesmith.train import checkpoint as ckpt
from tunesmith.train.distributed import setup, teardown
from tunesmith.train.loop import TrainResult, train
from tunesmith.train.parallel import Strategy, make_strategy
from tunesmith.train.reporters import Reporting
from tunesmith.train.task import TrainTask
from tunesmith.train.user_callbacks import build_callbacks


def run(cfg: RunConfig | None, run_dir: str | Path, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train one run and write its artifacts; returns the summary (also in RUN_DIR/summary.json)."""
    started = time.perf_counter()
    run_dir = Path(run_dir)
    info = setup(cfg.train.device if cfg is not None else "auto")
    lock = RunLock(run_dir)
    try:
        if run_dir.exists() and not run_dir.is_dir():
            raise ConfigError(f"{run_dir} is a file; the run directory must be a folder (give another --out)")
        if info.rank == 0 and run_dir.exists():
            lock.acquire()  # a live run there: refused before anything is read or written
        cfg = prepare_run_dir(cfg, run_dir, resume, overwrite, info.rank == 0)
        strategy = make_strategy(cfg.train.parallelism, info, cfg.train)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        # the run's trackers (train.report_to), on the main process; closed however the run ends
        with Reporting(cfg.train.report_to if strategy.is_main else [], run_dir, _sayer(strategy)) as reporting:
            summary = _run(cfg, run_dir, resume, overwrite, strategy, started, lock, reporting)
        # every process waits for the main one to finish writing: a process that tears its process group
        # down while another still works can abort in gloo's threads ("terminate called ...")
        strategy.barrier()
        return summary
    except Interrupted as e:
        raise Interrupted(f"{e}; continue with: tunesmith train --resume {run_dir}", e.signum) from None
    finally:
        lock.release()
        teardown()


def _run(cfg: RunConfig, run_dir: Path, resume: bool, overwrite: bool, strategy: Strategy,
         started: float, lock: RunLock, reporting: Reporting) -> dict[str, Any]:
    say = _sayer(strategy)
    callbacks = build_callbacks(cfg.train.callbacks)  # the user's (train.callbacks): one instance for the run
    objective = build_objective(cfg)
    objective.run_dir = run_dir
    data = objective.load_data(cfg)
    for line in data.report.lines():
        say(line)
    fmt = objective.prompt_format(data)
    if fmt:
        say(describe_prompt_format(fmt, "the training rows are conversations" if fmt == "chat" else
                                   "the training rows give them", "generate, score and pairs on this run render "
                                   "prompts the same way"))
    stages = plan_stages(cfg, run_dir)
    if resume and not has_progress(run_dir):
        say(f"no checkpoint in {run_dir} yet: starting from the beginning")
    if strategy.is_main:
        lock.acquire()
        start_run_dir(cfg, run_dir, clear=not resume and (overwrite or not has_progress(run_dir)))
        reporting.start(asdict(cfg), continuing=resume and has_progress(run_dir))
        for stage in stages:
            for stale in ckpt.remove_leftovers(stage.dir / "checkpoints"):
                say(f"removed {stale}, a checkpoint write that was killed half-way")
    loaded = objective.load_model(cfg, data)
    pad_id = getattr(loaded.tokenizer, "pad_token_id", None)  # None for images
    encoded, encode_stats = _encode(objective, data, loaded.tokenizer, cfg, say)
    evaluators = _evaluators(objective, encoded, cfg, pad_id, len(data.label_names or []), strategy)
    during = ["validation", *(getattr(data, "eval_sets", None) or {} if cfg.train.eval_sets_during_training else ())]
    evaluate = _merged(evaluators, [name for name in during if encoded[name]])
    total = sum(stage_steps(st, len(objective.train_items(st.name, encoded["train"]))) for st in stages)
    pause_at = None if cfg.train.pause_at_fraction is None else math.ceil(cfg.train.pause_at_fraction * total)

    results, rows, steps_before = [], [], 0
    for stage in stages:
        model = set_up_stage(stage, loaded, objective, cfg, strategy.device,
                             lambda m, st=stage: say(m if len(stages) == 1 else f"stage {st.name}: {m}"))
        previous = None if not results else {"name": stages[len(results) - 1].name, "steps": results[-1].steps,
                                             "best": results[-1].best}
        objective.begin_stage(StageStart(model, stage.method, stage.name, encoded, pad_id, strategy, run_dir,
                                         cfg.train.eval_batch_size, say, previous, open_saved))
        items = objective.train_items(stage.name, encoded["train"])
        if len(items) < len(encoded["train"]):
            say(f"{f'stage {stage.name}: ' if len(stages) > 1 else ''}trains on {len(items):,} of the "
                f"{len(encoded['train']):,} training examples")
        task = TrainTask(items=items, collate=lambda items: objective.collate(items, pad_id, train=True),
                         objective=objective, pad_id=pad_id, evaluate=evaluate, head_params=set(loaded.head_params),
                         lengths=_lengths(objective, items), evaluate_start=objective.evaluates_start(stage.name))
        result, row = _train_stage(stage, model, task, cfg, objective, strategy, resume,
                                   None if pause_at is None or pause_at <= steps_before else pause_at - steps_before,
                                   loaded, say, len(stages) > 1, callbacks, reporting.at(steps_before))
        results.append(result)
        rows.append(row)
        steps_before += result.total_steps
        if result.paused:
            return _pause(run_dir, strategy, stage, result, steps_before - result.total_steps + result.steps,
                          pause_at, total, started, say)
    if stages[0].dir != run_dir and strategy.is_main:  # stages keep their own metrics: one file for the run
        combine_stage_metrics([(st.name, st.dir, r.total_steps) for st, r in zip(stages, results, strict=True)],
                              run_dir)

    model.eval()
    final, details = {}, {}
    for name in _eval_splits(data):
        if encoded[name]:
            metrics, sums = evaluators[name](model)
            details[name] = objective.details(sums, data.label_names)
            final |= metrics
    final |= objective.final_metrics(model, loaded.tokenizer, data, strategy)
    reporting.log(final, steps_before - results[-1].total_steps + results[-1].steps)  # at the run's last step
    _check_finite(model)
    summary = _summary(cfg, objective, data, stages, results, rows, encode_stats, final, details, strategy,
                       started, count_parameters(loaded.model)[1])
    meta = {"model": cfg.model.name, "objective": objective.name, "label_names": data.label_names,
            "init_seed": cfg.train.init_seed}
    _export(model, loaded, stages, objective, cfg, data, strategy, run_dir, meta)
    if strategy.is_main:
        (run_dir / "paused.json").unlink(missing_ok=True)
        artifacts.write_report(run_dir, summary, details, objective, data.label_names, cfg)
        freed = sum(ckpt.slim_finished(st.dir / "checkpoints", cfg.train.keep_optimizer_state) for st in stages)
        n = len(summary["warnings"])  # each was said when found; the last line points back at them
        say(artifacts.final_line(run_dir, final) + (f"; {freed / 2**20:,.0f} MB of checkpoints no longer needed "
                                                    "were removed" if freed else "")
            + (f"; {n} warning{'s' if n > 1 else ''} above (also in summary.json)" if n else ""))
    return summary


def _export(model: torch.nn.Module, loaded, stages: list[Stage], objective: Objective, cfg: RunConfig, data,
            strategy: Strategy, run_dir: Path, meta: dict) -> None:
    """RUN_DIR/model or RUN_DIR/adapter as plain files. A sharded model is first gathered to the main
    process, which rebuilds the unsharded model (the pretrained one, the stage's method applied) and
    loads it into that: every format a run writes then comes from the same code."""
    if not strategy.shards:
        if strategy.is_main:
            artifacts.save_trained(model, loaded, [st.method for st in stages], run_dir, meta)
        return
    full = strategy.full_model_state(model)  # collective: every process takes part
    if strategy.is_main:
        from tunesmith.methods import METHODS

        twin = objective.load_model(cfg, data)
        methods = []
        for stage in stages:
            method = METHODS[stage.method_cfg.name]()
            method.apply(twin, stage.method_cfg)
            methods.append(method)
        missing, _ = twin.model.load_state_dict(full, strict=False)
        trained = {n for n, p in twin.model.named_parameters() if p.requires_grad}
        if trained & set(missing):
            raise TrainingError(f"the gathered model lacks trained tensors, e.g. {sorted(trained & set(missing))[0]}; "
                                "nothing was saved")
        artifacts.save_trained(twin.model, twin, methods, run_dir, meta)
    strategy.barrier()


def _check_finite(model: torch.nn.Module) -> None:
    """No model is saved from weights that are not all finite (gradients are checked every step; this
    also covers what came in from a checkpoint). A sharded parameter: this process's shard."""
    for name, param in model.named_parameters():
        local = param.to_local() if hasattr(param, "to_local") else param
        if param.requires_grad and not bool(torch.isfinite(local).all()):
            raise TrainingError(f"the trained weights hold nan or inf ({name}); nothing was saved; lower train.lr "
                                "or set train.max_grad_norm, and train again")


def _sayer(strategy: Strategy):
    def say(message: str) -> None:
        if strategy.is_main:
            print(message, file=sys.stderr, flush=True)
    return say


def _eval_splits(data) -> list[str]:
    """What is evaluated at the end: validation, test, each eval set."""
    return ["validation", "test", *(getattr(data, "eval_sets", None) or {})]


def _encode(objective: Objective, data, tokenizer, cfg: RunConfig, say) -> tuple[dict, dict]:
    encoded, stats = {}, {}
    eval_sets = getattr(data, "eval_sets", None) or {}
    for split, examples in (("train", data.train), ("validation", data.validation), ("test", data.test),
                            *eval_sets.items()):
        encoded[split], stats[split] = objective.encode(examples, tokenizer, cfg.model.max_length)
        for stat, n in stats[split].items():
            if n:
                say(f"{split}: {n} of {len(encoded[split])} examples {stat.replace('_', ' ')}"
                    + (f" (model.max_length={cfg.model.max_length} tokens)" if stat == "truncated" else ""))
    return encoded, stats


def _lengths(objective: Objective, items: list) -> list[int] | None:
    lengths = [objective.item_length(it) for it in items]
    return None if not lengths or lengths[0] is None else lengths


def _evaluators(objective: Objective, encoded: dict, cfg: RunConfig, pad_id: int | None, num_labels: int,
                strategy: Strategy) -> dict:
    """Per split: model -> (metrics with the split's prefix, the summed tensors), sharded over processes.
    Where every forward is a collective (fsdp), each process evaluates the same number of batches."""
    def make(items: list, prefix: str):
        shard = items[strategy.rank :: strategy.world_size]
        size = cfg.train.eval_batch_size

        def evaluate(model: torch.nn.Module):
            if strategy.collective_forward:
                sums = _lockstep_sums(objective, model, items, size, pad_id, strategy, num_labels)
            else:
                sums = objective.eval_sums(model, shard, size, pad_id, strategy.device, num_labels)
            sums = {k: strategy.all_reduce_sum(v.to(strategy.device)).cpu() for k, v in sums.items()}
            return {f"{prefix}{k}": v for k, v in objective.metrics(sums).items()}, sums
        return evaluate

    prefixes = {"train": "train_", "validation": "val_", "test": "test_"}
    return {name: make(items, prefixes.get(name, f"{name}_")) for name, items in encoded.items()}


def _lockstep_sums(objective: Objective, model: torch.nn.Module, items: list, size: int, pad_id: int | None,
                   strategy: Strategy, num_labels: int) -> dict[str, torch.Tensor]:
    """eval_sums batch by batch, round-robin over processes, every process running every round (a
    process without a batch in the last round evaluates one and discards it)."""
    order = sorted(range(len(items)), key=lambda i: objective.item_length(items[i]) or 0)  # less padding
    batches = [[items[i] for i in order[at : at + size]] for at in range(0, len(order), size)]
    sums: dict[str, torch.Tensor] = {}
    for batch, real in strategy.my_batches(batches):
        for key, value in objective.eval_sums(model, batch, size, pad_id, strategy.device, num_labels).items():
            sums[key] = sums.get(key, torch.zeros_like(value)) + (value if real else torch.zeros_like(value))
    return sums


def _merged(evaluators: dict, names: list[str]):
    if not names:
        return None
    return lambda model: {k: v for name in names for k, v in evaluators[name](model)[0].items()}


def _train_stage(stage: Stage, model: torch.nn.Module, task: TrainTask, cfg: RunConfig, objective: Objective,
                 strategy: Strategy, resume: bool, pause_at: int | None, loaded, say, staged: bool,
                 callbacks: list, report) -> tuple[TrainResult, dict[str, Any]]:
    """`callbacks`: the user's, after the objective's; `report`: where the stage's metrics lines also go."""
    trainable, total = count_parameters(loaded.model)
    say(f"{f'stage {stage.name}: ' if staged else ''}model {cfg.model.name} ({loaded.source}), method "
        f"{stage.method.name}: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)")
    if strategy.is_main:
        stage.dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    resume_from = ckpt.find_resumable(stage.dir / "checkpoints", say, strategy.verify_state) if resume else None
    finished = resume_from is not None and resume_from[1].get("final")
    cache = None if finished else _prefix_cache(cfg, objective, model, task, strategy, say)
    try:
        result = train(model, task, stage.train, stage.dir, strategy, resume_from=resume_from, pause_at_step=pause_at,
                       step=objective.training_step(stage.name),
                       callbacks=[*objective.callbacks(stage.name), *callbacks], report=report)
    finally:
        if cache is not None:
            cache.detach()  # the next stage may train what this one froze
    fill = cache.fill_seconds if cache else 0.0
    row = {"name": stage.name, "method": stage.method.name, "trainable_params": trainable,
           "steps": result.steps, "total_steps": result.total_steps,
           "train_seconds": round(result.train_seconds + fill, 2),  # the cache fill is training work too
           "best": result.best, "stopped_early": result.stopped_early,
           # this attempt's wall time: cache fill, steps, evaluations, checkpoints
           "stage_wall_seconds": round(time.perf_counter() - started, 2), "resumed": resume_from is not None,
           "prefix_cache": None if cache is None else {"blocks": cache.frozen_blocks, "examples": cache.examples,
                                                       "mb": round(cache.megabytes, 3),
                                                       "seconds": round(cache.fill_seconds, 2)}}
    return result, row


def _prefix_cache(cfg: RunConfig, objective: Objective, model: torch.nn.Module, task: TrainTask,
                  strategy: Strategy, say):
    """Frozen-prefix caching where it is exact: the objective allows it and nothing re-runs the blocks."""
    budget = objective.prefix_cache_mb(cfg)
    if budget is None or cfg.train.gradient_checkpointing or not task.items or strategy.shards:
        return None  # checkpointing re-runs blocks in backward; sharded blocks are gathered per forward
    from tunesmith.train.prefix_cache import attach_prefix_cache

    return attach_prefix_cache(model, task.items, lambda batch: objective.collate(batch, task.pad_id),
                               objective.loss_sum, strategy.device, batch_size=cfg.train.eval_batch_size,
                               budget_mb=budget, say=say, progress=cfg.train.progress and strategy.is_main)


def _summary(cfg: RunConfig, objective: Objective, data, stages: list[Stage], results: list[TrainResult],
             rows: list[dict], encode_stats: dict, final: dict, details: dict, strategy: Strategy,
             started: float, total_params: int) -> dict[str, Any]:
    last = results[-1]
    train_seconds = sum(row["train_seconds"] for row in rows)
    summary = {
        "model": cfg.model.name, "method": stages[-1].method.name, "objective": objective.name,
        "trainable_params": rows[-1]["trainable_params"], "total_params": total_params,
        "label_names": data.label_names, "steps": last.steps, "total_steps": last.total_steps,
        "epochs": round(last.epochs, 4), "stopped_early": last.stopped_early, "best": last.best, "final": final,
        "details": details, "train_seconds": round(train_seconds, 2),
        "stage_wall_seconds": round(sum(row["stage_wall_seconds"] for row in rows), 2),
        "prefix_cache": [row["prefix_cache"] for row in rows],
        "samples_per_s": round(sum(r.samples for r in results) / train_seconds, 2) if train_seconds else 0.0,
        "wall_seconds": round(time.perf_counter() - started, 2), "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_rss_mb_per_process": strategy.gather_objects(round(peak_rss_mb(), 1)),
        # while the steps ran (loading the model and writing the artifacts left out)
        "train_peak_rss_mb_per_process": strategy.gather_objects(
            max((r.train_peak_rss_mb for r in results if r.train_peak_rss_mb is not None), default=None)),
        "parallelism": strategy.name, "precision": cfg.train.precision,
        "world_size": strategy.world_size, "data": asdict(data.report), "encoding": encode_stats,
        "resumed": any(row["resumed"] for row in rows), "prompt_format": objective.prompt_format(data),
        # what looks wrong with how the run went (each was printed when it was found)
        "warnings": [f"stage {row['name']}: {w}" if cfg.stages else w for row, r in zip(rows, results, strict=True)
                     for w in r.warnings] + objective.warnings,
    }
    if cfg.stages:
        summary["stages"] = [{k: v for k, v in row.items() if k != "resumed"} for row in rows]
    return summary


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _pause(run_dir: Path, strategy: Strategy, stage: Stage, result: TrainResult, step: int, pause_at: int | None,
           total: int, started: float, say) -> dict[str, Any]:
    """A paused run writes paused.json (where it stopped and its validation metrics) and no artifacts."""
    paused = {"paused": True, "stage": stage.name, "step": step, "pause_at": pause_at, "total_steps": total,
              "last_eval": result.last_eval, "train_seconds": round(result.train_seconds, 2),
              "wall_seconds": round(time.perf_counter() - started, 2), "peak_rss_mb": round(peak_rss_mb(), 1)}
    if strategy.is_main:
        write_json_atomic(run_dir / "paused.json", paused)
        say(f"paused at step {step} of {total}: {json.dumps(result.last_eval)}; "
            f"continue with: tunesmith train --resume {run_dir}")
    return paused
