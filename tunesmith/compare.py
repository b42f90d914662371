"""`tunesmith compare CONFIG`: several fine-tuning strategies on the same data, over several seeds, in
one report (in-distribution and out-of-distribution metrics, trainable parameters, time, peak memory).

Each run is an ordinary run directory, trained in its own process (so its peak memory is its own)
with `python -m tunesmith train`; finished runs are never recomputed and killed ones resume, so the
command can be re-run at will. With early discard (Dodge et al., 2020) every seed trains to a fraction
of its steps, the best `keep` per strategy continue, and the report says how much compute that saved.

A compare config:

    base: rt-minilm-full.yaml          # a run config (relative to this file); every strategy starts from it
    seeds: 3                           # runs per strategy (--seeds overrides)
    vary: both                         # which seeds change between runs: init | data | both
    metrics: {id: test_accuracy, ood: [ood-subpop_accuracy]}   # default: test_accuracy and every eval set's
    strategies:                        # name -> fields merged into the base config
      linear-probe: {method: {name: linear_probe}, train: {lr: 0.01}}
      full: {method: {name: full}}
      lp-ft: {stages: [{name: probe, method: {name: linear_probe}, epochs: 2, lr: 0.01},
                       {name: finetune, method: {name: full}, lr: 1.0e-4}]}
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunesmith.config import config_from_dict, config_to_dict, load_config
from tunesmith.errors import ConfigError, TunesmithError

VARY = ("init", "data", "both")


@dataclass
class CompareConfig:
    base: Path
    strategies: dict[str, dict[str, Any]]
    seeds: int = 3
    vary: str = "both"
    id_metric: str = "test_accuracy"
    ood_metrics: list[str] | None = None  # None: every eval set's accuracy found in the summaries
    source: str = ""


@dataclass
class RunPlan:
    strategy: str
    seed: int
    config: dict[str, Any]
    dir: Path
    peak_rss_mb: float | None = None
    status: str = "todo"  # todo | paused | done | discarded
    summary: dict[str, Any] = field(default_factory=dict)


def load_compare_config(path: str | Path, seeds: int | None = None, vary: str | None = None) -> CompareConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read the compare config: {e}") from None
    known = {"base", "strategies", "seeds", "vary", "metrics"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown field {unknown[0]!r}; a compare config takes: {', '.join(sorted(known))}")
    if "base" not in raw or not isinstance(raw.get("strategies"), dict) or not raw["strategies"]:
        raise ConfigError(f"{path}: give `base:` (a run config) and `strategies:` (name -> config fields)")
    for name, fields in raw["strategies"].items():
        if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"{path}: strategy name {name!r}: use letters, digits, - and _")
        if not isinstance(fields, dict):
            raise ConfigError(f"{path}: strategies.{name}: expected a mapping of config fields")
    metrics = raw.get("metrics") or {}
    ood = metrics.get("ood")
    cfg = CompareConfig(base=(path.parent / raw["base"]).resolve(), strategies=raw["strategies"],
                        seeds=int(seeds if seeds is not None else raw.get("seeds", 3)),
                        vary=vary or raw.get("vary", "both"), id_metric=metrics.get("id", "test_accuracy"),
                        ood_metrics=[ood] if isinstance(ood, str) else ood, source=str(path))
    if cfg.vary not in VARY:
        raise ConfigError(f"{path}: vary is {cfg.vary!r}; one of {', '.join(VARY)}")
    if cfg.seeds < 1:
        raise ConfigError(f"{path}: seeds must be >= 1")
    if not cfg.base.exists():
        raise ConfigError(f"{path}: base config {cfg.base} does not exist")
    return cfg


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of config dicts; lists and scalars in `override` replace."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def plan_runs(cfg: CompareConfig, out: Path) -> list[RunPlan]:
    base = config_to_dict(load_config(cfg.base))
    plans = []
    for name, fields in cfg.strategies.items():
        for seed in range(cfg.seeds):
            merged = merge(base, fields)
            train = merged.setdefault("train", {})
            if cfg.vary in ("init", "both"):
                train["init_seed"] = base["train"]["init_seed"] + seed
            if cfg.vary in ("data", "both"):
                train["data_seed"] = base["train"]["data_seed"] + seed
            train["progress"] = False
            where = f"{cfg.source}: strategies.{name}"
            checked = config_to_dict(config_from_dict(merged, source=where))  # errors name the strategy
            plans.append(RunPlan(name, seed, checked, out / name / f"seed-{seed}"))
    return plans


def _same_config(run_dir: Path, wanted: dict[str, Any]) -> bool:
    saved = run_dir / "config.yaml"
    if not saved.exists():
        return False
    have = yaml.safe_load(saved.read_text()) or {}
    strip = lambda d: {**d, "train": {k: v for k, v in d.get("train", {}).items()  # noqa: E731
                                      if k not in ("pause_at_fraction", "progress", "threads", "device")}}
    return strip(have) == strip(wanted)


def refresh(plan: RunPlan) -> None:
    """Read what is on disk: finished, paused or not (yet) done."""
    if (plan.dir / "summary.json").exists() and _same_config(plan.dir, plan.config):
        plan.status, plan.summary = "done", json.loads((plan.dir / "summary.json").read_text())
    elif (plan.dir / "paused.json").exists() and _same_config(plan.dir, plan.config):
        plan.status, plan.summary = "paused", json.loads((plan.dir / "paused.json").read_text())
        if (plan.dir / "discarded").exists():
            plan.status = "discarded"
    else:
        plan.status, plan.summary = "todo", {}
    rss = plan.dir / "peak_rss_mb"
    plan.peak_rss_mb = float(rss.read_text()) if rss.exists() else plan.peak_rss_mb


def execute(plan: RunPlan, pause_at: float | None, log=print) -> None:
    """Train (or resume) one run in a child process; records the child's own peak memory."""
    plan.dir.mkdir(parents=True, exist_ok=True)
    config = merge(plan.config, {"train": {"pause_at_fraction": pause_at}})
    config_file = plan.dir.parent / f"seed-{plan.seed}.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    resumable = (plan.dir / "config.yaml").exists() and _same_config(plan.dir, plan.config)
    args = [sys.executable, "-m", "tunesmith", "train", str(config_file), "--out", str(plan.dir),
            "--resume" if resumable else "--overwrite"] + ([str(plan.dir)] if resumable else [])
    log(f"{plan.strategy} seed {plan.seed}: {'resuming' if resumable else 'training'} -> {plan.dir}")
    start = time.perf_counter()
    with open(plan.dir.parent / f"seed-{plan.seed}.log", "a") as out:
        child = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise TunesmithError(f"{plan.strategy} seed {plan.seed} failed (exit {child.returncode}); see "
                             f"{plan.dir.parent / f'seed-{plan.seed}.log'}")
    rss = usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)
    plan.peak_rss_mb = max(plan.peak_rss_mb or 0.0, rss)
    (plan.dir / "peak_rss_mb").write_text(f"{plan.peak_rss_mb:.1f}")
    log(f"  done in {time.perf_counter() - start:.0f} s")
    refresh(plan)


def triage_metric(plan: RunPlan) -> tuple[str, str]:
    """The early-stopping metric of the run and its direction: what decides which seeds go on."""
    stop = plan.config["train"]["early_stopping"]
    mode = stop["mode"] if stop["mode"] != "auto" else ("min" if stop["metric"].endswith("loss") else "max")
    return stop["metric"], mode


def compare(cfg: CompareConfig, out: Path, early_discard: float | None = None, keep: int = 1,
            strategies: list[str] | None = None, log=print) -> dict[str, Any]:
    plans = [p for p in plan_runs(cfg, out) if strategies is None or p.strategy in strategies]
    if early_discard is not None and not 0 < early_discard < 1:
        raise ConfigError(f"--early-discard is {early_discard}; give the fraction of training after which to "
                          "triage, e.g. 0.25")
    for plan in plans:
        refresh(plan)
    saved = None
    if early_discard is None:
        for plan in plans:
            if plan.status != "done":
                execute(plan, None, log)
    else:
        for plan in plans:  # phase 1: every seed to the triage point
            if plan.status == "todo":
                execute(plan, early_discard, log)
        for name in dict.fromkeys(p.strategy for p in plans):  # phase 2: the best `keep` go on
            group = [p for p in plans if p.strategy == name]
            metric, mode = triage_metric(group[0])

            ranked = sorted(group, key=lambda p, m=metric, d=mode: _score(p, m, d), reverse=True)
            for p in ranked[keep:]:
                if p.status == "paused":
                    (p.dir / "discarded").write_text("")
                    p.status = "discarded"
            for p in ranked[:keep]:
                if p.status != "done":
                    (p.dir / "discarded").unlink(missing_ok=True)
                    (p.dir / "triage.json").write_text(json.dumps(p.summary.get("last_eval") or {}))
                    execute(p, None, log)
        saved = _compute_saved(plans)
    return write_report(cfg, plans, out, early_discard, keep, saved)


def _score(plan: RunPlan, metric: str, mode: str) -> float:
    """Higher is better: the triage metric at the pause point, negated for metrics to minimise."""
    value = (plan.summary.get("last_eval") or {}).get(metric) if plan.status != "done" else \
        _triage_value(plan, metric)
    if value is None:
        raise TunesmithError(f"{plan.dir}: no {metric} at the triage point (is there a validation split?)")
    return value if mode == "max" else -value


def _triage_value(plan: RunPlan, metric: str) -> float | None:
    """The metric a finished run had at its triage point (its paused.json is gone; metrics.jsonl remains)."""
    marker = plan.dir / "triage.json"
    if marker.exists():
        return json.loads(marker.read_text()).get(metric)
    return plan.summary.get("final", {}).get(metric)  # finished before any triage: its final value


def _compute_saved(plans: list[RunPlan]) -> dict[str, float]:
    full = sum(_total_steps(p) for p in plans)
    spent = sum(_total_steps(p) if p.status == "done" else p.summary.get("step", 0) for p in plans)
    return {"steps_full": full, "steps_spent": spent, "saved_fraction": 1 - spent / full if full else 0.0}


def _total_steps(plan: RunPlan) -> int:
    if plan.status == "done":
        return sum(s["total_steps"] for s in plan.summary["stages"]) if "stages" in plan.summary \
            else plan.summary["total_steps"]
    return plan.summary.get("total_steps", 0)


# -- report ------------------------------------------------------------------------------------------


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def write_report(cfg: CompareConfig, plans: list[RunPlan], out: Path, early_discard: float | None, keep: int,
                 saved: dict[str, float] | None) -> dict[str, Any]:
    from tunesmith.report.compare import plot_id_vs_ood, plot_learning_curves

    done = [p for p in plans if p.status == "done"]
    ood = cfg.ood_metrics or sorted({k for p in done for k in p.summary["final"]
                                     if k.endswith("_accuracy") and not k.startswith(("val_", "test_"))})
    rows = []
    for name in dict.fromkeys(p.strategy for p in plans):
        group = [p for p in done if p.strategy == name]
        if not group:
            continue
        row = {"strategy": name, "runs": len(group),
               "id": _stats([p.summary["final"][cfg.id_metric] for p in group]),
               "ood": {m: _stats([p.summary["final"][m] for p in group if m in p.summary["final"]])
                       for m in ood if any(m in p.summary["final"] for p in group)},
               "trainable_params": group[0].summary["trainable_params"],
               "total_params": group[0].summary["total_params"],
               "train_seconds": _stats([p.summary["train_seconds"] for p in group]),
               "peak_rss_mb": max((p.peak_rss_mb or 0.0) for p in group)}
        rows.append(row)
    result = {"config": cfg.source, "base": str(cfg.base), "seeds": cfg.seeds, "vary": cfg.vary,
              "id_metric": cfg.id_metric, "ood_metrics": ood, "early_discard": early_discard, "keep": keep,
              "compute_saved": saved, "strategies": rows,
              "runs": [{"strategy": p.strategy, "seed": p.seed, "status": p.status, "dir": str(p.dir),
                        "final": p.summary.get("final")} for p in plans]}
    out.mkdir(parents=True, exist_ok=True)
    plots = [plot_id_vs_ood(rows, cfg.id_metric, ood, out / "id_vs_ood.png"),
             plot_learning_curves([(p.strategy, p.dir) for p in done], out / "learning_curves.png")]
    markdown = report_markdown(result, [p for p in plots if p is not None])
    (out / "report.md").write_text(markdown)
    (out / "report.html").write_text(report_html(markdown))
    (out / "report.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _fmt(s: dict[str, float]) -> str:
    return f"{s['mean']:.4f} ± {s['std']:.4f} [{s['min']:.4f}, {s['max']:.4f}]" if s["n"] > 1 else f"{s['mean']:.4f}"


def report_markdown(result: dict[str, Any], plots: list[Path]) -> str:
    import platform

    import torch

    ood = result["ood_metrics"]
    lines = [f"# tunesmith compare: {result['config']}", "",
             f"base config `{result['base']}`; {result['seeds']} seed(s) per strategy, varying "
             f"{result['vary']} seed(s); mean ± std [min, max] over finished runs.",
             f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
             f"python {platform.python_version()}", "",
             "| strategy | runs | " + " | ".join([result["id_metric"] + " (ID)"] + [f"{m} (OOD)" for m in ood])
             + " | trainable params | train s | peak RSS MB |",
             "|---|---|" + "---|" * (1 + len(ood)) + "---|---|---|"]
    for row in result["strategies"]:
        cells = [_fmt(row["id"])] + [_fmt(row["ood"][m]) if m in row["ood"] else "-" for m in ood]
        lines.append(f"| {row['strategy']} | {row['runs']} | " + " | ".join(cells) +
                     f" | {row['trainable_params']:,} | {row['train_seconds']['mean']:.0f} | {row['peak_rss_mb']:.0f} |")
    saved = result["compute_saved"]
    if saved:
        lines += ["", f"Early discard after {result['early_discard']:g} of training, keeping the best "
                      f"{result['keep']} seed(s) per strategy: {saved['steps_spent']:,} of {saved['steps_full']:,} "
                      f"optimizer steps trained ({100 * saved['saved_fraction']:.0f}% of the compute saved)."]
    lines += [""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def report_html(markdown: str) -> str:
    """The same report as a self-contained page (tables and images), without a markdown dependency."""
    import html

    body, table = [], []
    for line in markdown.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not set("".join(cells)) <= set("-"):
                tag = "th" if not table else "td"
                table.append("<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>")
            continue
        if table:
            body.append("<table>" + "".join(table) + "</table>")
            table = []
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("!["):
            src = line[line.index("(") + 1 : -1]
            body.append(f'<p><img src="{html.escape(src)}" style="max-width: 100%"></p>')
        elif line:
            body.append(f"<p>{html.escape(line)}</p>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}")
    return f"<!doctype html><html><head><meta charset='utf-8'><style>{style}</style></head><body>" + \
        "\n".join(body) + "</body></html>\n"

