"""Side-by-side speed, memory and accuracy: tunesmith vs the tools our users run today, on one job.

    .venv/bin/python -m benchmarks.anchor --case minilm-lora [--repeats 3] [--out runs/anchor]
    .venv/bin/python -m benchmarks.anchor --case all

Each run trains in its own process (so its peak RSS is its own: `ru_maxrss` of that child), the
variants alternate within each repeat (A B C, then C B A, ...) so slow drift of a noisy machine hits
all alike, and repeat r uses seed r on every side (weight init and data order). The table gives medians;
"speed vs anchor" is the median of the per-repeat ratios, each measured side by side.

Columns: samples/s and real (non-pad) tokens/s of the training phase (tunesmith: from the start of the
stage, frozen-prefix cache fill included, to its last checkpoint; anchor: the `train()` call), model
FLOPs utilisation (the FLOPs of the standard forward + backward of those samples, counted by torch's
FlopCounterMode, per second, over a measured fp32 matmul peak), peak RSS, and the held-out metric from
the same evaluation code for every side, with its difference from the anchor paired by seed (mean ±
standard error). Writes OUT/CASE.json (every run) and OUT/CASE.md (the table).

Besides tunesmith's ablations (one optimisation off each), every case has the A/B check `same-order`:
the anchor fed tunesmith's own batches. Two runs that see different shuffles differ by more than half
a point on these small held-out sets by chance alone; with the order fixed, what remains is the code.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.cases import CASE_NAMES, Case, get_case, load_data, run_config

ROOT = Path(__file__).resolve().parents[1]


# -- machine ----------------------------------------------------------------------------------------
def matmul_peak(size: int = 1536, seconds: float = 3.0) -> float:
    """Best fp32 FLOP/s of a square matmul on this machine with torch's threads (best of short bursts)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # warm up
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(3):
            torch.mm(a, b)
        best = max(best, 3 * 2 * size**3 / (time.perf_counter() - start))
    return best


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
            f"python {platform.python_version()}")


# -- work per sample: samples, real tokens, model FLOPs ---------------------------------------------
def workload(case: Case, probes: int = 8) -> dict[str, float]:
    """Samples and real tokens per epoch, and model FLOPs per sample (standard path, no caching)."""
    from torch.utils.flop_counter import FlopCounterMode

    from tunesmith.config import config_from_dict
    from tunesmith.methods import METHODS
    from tunesmith.objectives import build_objective, causal_lm

    s = case.setup
    cfg = config_from_dict(run_config(s, case.objective, 0), source="benchmark")
    objective = build_objective(cfg)
    data = load_data(s, case.objective)
    loaded = objective.load_model(cfg, data)
    method = METHODS[cfg.method.name]()
    method.apply(loaded, cfg.method)
    model = loaded.model.train()
    if getattr(objective, "needs_reference", False):  # the standard path: adapters off, full sequences
        objective._reference = lambda: method.reference(model)
        objective.cfg.share_prompt = False
    pad_id = getattr(loaded.tokenizer, "pad_token_id", None)
    items, _ = objective.encode(data.train, loaded.tokenizer, s.max_length)
    tokens = (sum(getattr(it, "token_count", None) or len(it.input_ids) for it in items)
              if hasattr(items[0], "input_ids") else None)
    picks = items[:: max(1, len(items) // probes)][:probes]
    flops = 0
    standard, causal_lm.TARGET_ONLY_LOGITS = causal_lm.TARGET_ONLY_LOGITS, False
    for item in picks:  # one at a time: no padding in the count
        counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward})
        with counter:
            objective.loss_sum(model, objective.collate([item], pad_id)).backward()
        flops += counter.get_total_flops()
        model.zero_grad(set_to_none=True)
    causal_lm.TARGET_ONLY_LOGITS = standard
    per_sample = flops / len(picks)
    return {"samples_per_epoch": len(items), "tokens_per_epoch": tokens, "flops_per_sample": per_sample}


def _conv_backward(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                   _output_padding, _groups, output_mask, out_shape=None, **_) -> int:
    """grad_input and grad_weight each cost what the forward did. (torch's own formula ignores `groups`
    for grad_weight, which counts a depthwise conv's backward as a dense one: 30x too many FLOPs.)"""
    from math import prod

    forward = 2 * prod(x_shape if transposed else grad_out_shape) * prod(w_shape[1:])
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


# -- one run in a child process -------------------------------------------------------------------
def run_child(case_name: str, variant: str, seed: int, result: Path, sizes: dict) -> None:
    case = get_case(case_name, **sizes)
    out = result.parent / "runs" / f"{case_name}-{variant}-seed{seed}"  # by case: two cases may run side by side
    outcome = case.variants[variant](case.setup, seed, out)
    result.write_text(json.dumps(outcome))


def spawn(case: Case, variant: str, seed: int, out: Path, sizes: dict) -> dict:
    result = out / "results" / f"{case.name}-{variant}-seed{seed}.json"
    result.parent.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "benchmarks.anchor", "--child", variant, "--case", case.name, "--seed", str(seed),
            "--result", str(result)] + [f"--{k.replace('_', '-')}={v}" for k, v in sizes.items() if v is not None]
    log = out / "logs" / result.name.replace(".json", ".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w") as handle:
        child = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT,
                                 env=os.environ | {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
                                                   "TRANSFORMERS_VERBOSITY": "error"})
        _, status, usage = os.wait4(child.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{case.name} / {variant} / seed {seed} failed (exit {code}); see {log}:\n"
                         + "\n".join(log.read_text().splitlines()[-15:]))
    outcome = json.loads(result.read_text())
    outcome |= {"variant": variant, "seed": seed, "peak_rss_mb": usage.ru_maxrss / 1024,
                "process_seconds": time.perf_counter() - start}
    return outcome


# -- the table --------------------------------------------------------------------------------------
def summarise(case: Case, runs: list[dict], work: dict, peak: float) -> list[dict]:
    rows = []
    epochs = case.setup.epochs
    anchor = {r["seed"]: r for r in runs if r["variant"] == "anchor"}
    for variant in case.variants:
        mine = [r for r in runs if r["variant"] == variant]
        if not mine:
            continue
        sps = [work["samples_per_epoch"] * epochs / r["train_seconds"] for r in mine]
        row = {"variant": variant, "runs": len(mine),
               "samples_per_s": statistics.median(sps),
               "tokens_per_s": (statistics.median(work["tokens_per_epoch"] * epochs / r["train_seconds"] for r in mine)
                                if work["tokens_per_epoch"] else None),
               "mfu": statistics.median(s * work["flops_per_sample"] for s in sps) / peak,
               "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in mine),
               "metric": statistics.median(r["metrics"][case.metric] for r in mine),
               "metrics_per_seed": [round(r["metrics"][case.metric], 4) for r in mine],
               "train_seconds": statistics.median(r["train_seconds"] for r in mine),
               "notes": next((r.get("notes") for r in mine if r.get("notes")), "")}
        ratios = [anchor[r["seed"]]["train_seconds"] / r["train_seconds"] for r in mine if r["seed"] in anchor]
        rss = [r["peak_rss_mb"] / anchor[r["seed"]]["peak_rss_mb"] for r in mine if r["seed"] in anchor]
        row["speed_vs_anchor"] = statistics.median(ratios) if ratios else None
        row["rss_vs_anchor"] = statistics.median(rss) if rss else None
        diffs = [r["metrics"][case.metric] - anchor[r["seed"]]["metrics"][case.metric] for r in mine if r["seed"] in anchor]
        row["metric_mean"] = statistics.fmean(r["metrics"][case.metric] for r in mine)
        row["metric_diffs"] = diffs  # paired by seed: the same seed's anchor run
        row["metric_diff_mean"] = statistics.fmean(diffs) if diffs else None
        row["metric_diff_se"] = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else None
        rows.append(row)
    return rows


def table(case: Case, rows: list[dict], work: dict, peak: float, repeats: int) -> str:
    s = case.setup
    better = "higher" if case.higher_is_better else "lower"
    lines = [f"### {case.name}: {case.title}", "",
             f"{work['samples_per_epoch']:,} training samples x {s.epochs:g} epoch(s), batch {s.batch_size}, "
             + (f"max length {s.max_length}, " if case.objective != "image_classify" else "")
             + f"lr {s.lr:g}; held-out {case.metric} ({better} is better) on {s.test:,} "
             f"examples; anchor: {case.anchor}; {repeats} repeat(s), seeds 0..{repeats - 1}, medians", "",
             f"| variant | samples/s | real tokens/s | MFU | peak RSS MB | held-out {case.metric} | {case.metric} vs anchor "
             "| speed vs anchor | RSS vs anchor |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tokens = f"{r['tokens_per_s']:,.0f}" if r["tokens_per_s"] else "-"
        speed = f"{r['speed_vs_anchor']:.2f}x" if r["speed_vs_anchor"] else "-"
        rss = f"{r['rss_vs_anchor']:.2f}x" if r["rss_vs_anchor"] else "-"
        name = case.label(r["variant"])
        name += f" ({r['notes']})" if r["notes"] else ""
        lines.append(f"| {name} | {r['samples_per_s']:.1f} | {tokens} | {100 * r['mfu']:.1f}% | "
                     f"{r['peak_rss_mb']:,.0f} | {r['metric']:.4f} ({', '.join(f'{m:.4f}' for m in r['metrics_per_seed'])}) "
                     f"| {metric_difference(case, r)} | {speed} | {rss} |")
    lines.append("")
    lines.append(f"{case.metric} vs anchor: the mean over seeds of (variant - anchor on the same seed) ± its standard "
                 "error" + (", in accuracy points" if case.metric == "accuracy" else "") + ".")
    lines.append(f"MFU: model FLOPs of the standard forward + backward ({work['flops_per_sample'] / 1e9:.2f} "
                 f"GFLOP per sample) per second over the measured fp32 matmul peak, {peak / 1e9:.1f} GFLOP/s.")
    return "\n".join(lines)


def metric_difference(case: Case, row: dict) -> str:
    if row["variant"] == "anchor" or row["metric_diff_mean"] is None:
        return "-"
    scale, unit, digits = (100, " pt", 2) if case.metric == "accuracy" else (1, "", 4)
    text = f"{scale * row['metric_diff_mean']:+.{digits}f}"
    if row["metric_diff_se"] is not None:
        text += f" ± {scale * row['metric_diff_se']:.{digits}f}"
    return text + unit


def bench(case: Case, repeats: int, out: Path, sizes: dict, variants: list[str] | None, peak: float) -> str:
    print(f"== {case.name}: measuring the workload", file=sys.stderr, flush=True)
    work = workload(case)
    order = [v for v in case.variants if variants is None or v in variants]
    runs = []
    for seed in range(repeats):
        for variant in (order if seed % 2 == 0 else order[::-1]):
            print(f"== {case.name} / {variant} / seed {seed}", file=sys.stderr, flush=True)
            runs.append(spawn(case, variant, seed, out, sizes))
            r = runs[-1]
            print(f"   {r['train_seconds']:.1f} s training, {r['peak_rss_mb']:.0f} MB, "
                  f"{case.metric} {r['metrics'][case.metric]:.4f}", file=sys.stderr, flush=True)
    rows = summarise(case, runs, work, peak)
    text = table(case, rows, work, peak, repeats)
    record = {"case": case.name, "setup": vars(case.setup), "anchor": case.anchor, "machine": machine(),
              "matmul_peak_flops": peak, "workload": work, "rows": rows, "runs": runs}
    (out / f"{case.name}.json").write_text(json.dumps(record, indent=2, default=str))
    (out / f"{case.name}.md").write_text(text + "\n")
    return text


def render(path: Path) -> str:
    record = json.loads(path.read_text())
    case = get_case(record["case"], **{k: record["setup"][k] for k in ("train", "test", "epochs", "batch_size", "model",
                                                                      "max_length") if k in record["setup"]})
    repeats = len({r["seed"] for r in record["runs"]})
    rows = summarise(case, record["runs"], record["workload"], record["matmul_peak_flops"])
    return f"machine: {record['machine']}\n\n" + table(case, rows, record["workload"], record["matmul_peak_flops"], repeats)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--case", help=f"one of {', '.join(CASE_NAMES)}, or all")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="runs/anchor")
    p.add_argument("--variants", help="comma-separated subset: anchor, tunesmith and the case's ablations "
                   "(no-grouping, plain-adamw, all-logits, no-cache) and A/B checks (same-order); default: all)")
    for size in ("train", "test", "batch_size", "max_length"):
        p.add_argument(f"--{size.replace('_', '-')}", dest=size, type=int)
    p.add_argument("--epochs", type=float)
    p.add_argument("--model", help="another model (name or local HF directory) for the same job")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--render", metavar="CASE_JSON", help="print the table of an earlier run's OUT/CASE.json again "
                   "(with this version's columns), measuring nothing")
    a = p.parse_args(argv)
    if a.render:
        print(render(Path(a.render)))
        return 0
    if not a.case:
        p.error("--case is required (or --render)")
    sizes = {k: getattr(a, k) for k in ("train", "test", "batch_size", "epochs", "model", "max_length")}
    if a.child:
        run_child(a.case, a.child, a.seed, Path(a.result), sizes)
        return 0
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    names = CASE_NAMES if a.case == "all" else (a.case,)
    cases = [get_case(name, **sizes) for name in names]
    peak = matmul_peak()
    header = f"machine: {machine()}; fp32 matmul peak {peak / 1e9:.1f} GFLOP/s"
    print(header, file=sys.stderr, flush=True)
    texts = [bench(case, a.repeats, out, sizes, a.variants.split(",") if a.variants else None, peak)
             for case in cases]
    report = header + "\n\n" + "\n\n".join(texts)
    print(report)
    if len(cases) > 1:
        (out / "all.md").write_text(report + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
