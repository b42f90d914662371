"""Scaling out and mixed precision, measured on this machine.

    .venv/bin/python -m benchmarks.scale_out processes [--repeats 3] [--steps 8]
    .venv/bin/python -m benchmarks.scale_out precision [--repeats 3] [--steps 30]

`processes`: SmolLM2-135M full fine-tuning on rotten-tomatoes-chat in one process, then two processes
under DDP and under FSDP (torchrun, gloo), the same global batch and steps, the same cores in all (one
process with 2 threads, or 2 processes with 1 each): samples/s and each process's peak resident memory.

`precision`: fp32 against bf16 (autocast; fp32 weights and AdamW state) for a classifier (MiniLM-L6,
full fine-tuning on rotten-tomatoes) and a causal LM (SmolLM2-135M, LoRA SFT on rotten-tomatoes-chat):
samples/s, peak resident memory and the held-out metric.

Each row runs in its own process(es) from the package's CLI; medians over the repeats, per-repeat values
beside them. Tables go to OUT/results.md and OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

from benchmarks.results import machine_line, save_results

ROOT = Path(__file__).resolve().parents[1]


def sft_config(steps: int, method: str, lr: float, train: int, warmup: float = 0.0) -> dict:
    return {"model": {"name": "smollm2-135m", "max_length": 128}, "method": {"name": method},
            "objective": {"name": "causal_lm", "exact_match": False},
            "data": {"builtin": "rotten-tomatoes-chat", "max_train_samples": train, "max_eval_samples": 64,
                     "split": {"validation": 0.01, "test": 0.0, "seed": 0}},
            "train": {"max_steps": steps, "batch_size": 8, "lr": lr, "warmup_ratio": warmup, "eval_every": steps,
                      "log_every": 1, "progress": False, "checkpoint_minutes": None, "group_by_length": True}}


def classifier_config(steps: int, train: int) -> dict:
    return {"model": {"name": "minilm-l6", "max_length": 128}, "method": {"name": "full"},
            "data": {"builtin": "rotten-tomatoes", "max_train_samples": train, "max_eval_samples": 500},
            "train": {"max_steps": steps, "batch_size": 32, "lr": 1e-4, "eval_every": steps, "log_every": 5,
                      "progress": False, "checkpoint_minutes": None}}


# glibc keeps freed memory for reuse (large blocks too, once its dynamic mmap threshold has grown), so
# a process's resident memory follows its highest transient peak, not what is live; these make every
# allocation of 64 KiB or more its own mapping, returned to the system when freed
RELEASE_MEMORY = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
RELEASE = False


def train(cfg: dict, out: Path, processes: int, threads: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)} | (RELEASE_MEMORY if RELEASE else {})
    head = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
            if processes > 1 or cfg["train"].get("parallelism") == "fsdp" else [sys.executable])
    cmd = [*head, "-m", "tunesmith", "train", str(path), "--out", str(out / "run"), "--overwrite"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads((out / "run" / "summary.json").read_text())


def median_row(label: str, runs: list[dict], metric: str | None) -> dict:
    speed = [r["samples_per_s"] for r in runs]
    rss = [max(r["train_peak_rss_mb_per_process"]) for r in runs]
    life = [max(r["peak_rss_mb_per_process"]) for r in runs]
    row = {"variant": label, "samples_per_s": statistics.median(speed), "speed_runs": speed,
           "peak_rss_mb_per_process": statistics.median(rss), "rss_runs": rss,
           "lifetime_peak_rss_mb": statistics.median(life),
           "processes": runs[0]["world_size"]}
    if metric:
        values = [r["final"][metric] for r in runs]
        row |= {"metric": metric, "value": statistics.median(values), "values": values,
                "val_loss": statistics.median(r["final"]["val_loss"] for r in runs)}
    return row


def processes(args: argparse.Namespace) -> tuple[str, list[dict]]:
    rows = []
    variants = [("1 process", 1, 2, "none"), ("2 processes, ddp", 2, 1, "ddp"), ("2 processes, fsdp", 2, 1, "fsdp")]
    for label, n, threads, parallelism in variants:
        runs = []
        for repeat in range(args.repeats):
            cfg = sft_config(args.steps, "full", 2e-5, args.train)
            cfg["train"]["parallelism"] = parallelism
            print(f"== {label}, repeat {repeat + 1}", file=sys.stderr, flush=True)
            runs.append(train(cfg, Path(args.out) / "processes" / parallelism / str(repeat), n, threads))
        rows.append(median_row(label, runs, "val_loss"))
    base = rows[0]
    lines = ["| variant | samples/s | vs 1 process | RSS while training, per process (MB) | vs 1 process | "
             "process peak, with load and export (MB) | val loss |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['samples_per_s']:.2f} ({', '.join(f'{v:.2f}' for v in r['speed_runs'])}) "
                     f"| {r['samples_per_s'] / base['samples_per_s']:.2f}x | {r['peak_rss_mb_per_process']:,.0f} "
                     f"({', '.join(f'{v:,.0f}' for v in r['rss_runs'])}) | "
                     f"{r['peak_rss_mb_per_process'] / base['peak_rss_mb_per_process']:.2f}x | "
                     f"{r['lifetime_peak_rss_mb']:,.0f} | {r['value']:.4f} |")
    head = (f"SmolLM2-135M full fine-tuning, rotten-tomatoes-chat, {args.steps} steps of 8 conversations (max length "
            f"128), AdamW lr 2e-5, fp32; the same 2 cores throughout; {args.repeats} repeat(s), medians "
            "(per repeat in brackets)")
    return head + "\n\n" + "\n".join(lines), rows


def precision(args: argparse.Namespace) -> tuple[str, list[dict]]:
    rows = []
    cases = [("minilm-l6 full, rotten-tomatoes", lambda: classifier_config(2 * args.steps, 64 * args.steps),
              "val_accuracy"),
             ("smollm2-135m LoRA SFT, rotten-tomatoes-chat",
              lambda: sft_config(args.steps, "lora", 5e-4, 8 * args.steps, warmup=0.1), "val_loss")]
    for label, make, metric in cases:
        for name in ("fp32", "bf16"):
            runs = []
            for repeat in range(args.repeats):
                cfg = make()
                cfg["train"]["precision"] = name
                print(f"== {label} {name}, repeat {repeat + 1}", file=sys.stderr, flush=True)
                runs.append(train(cfg, Path(args.out) / "precision" / f"{label.split()[0]}-{name}" / str(repeat),
                                  1, 2))
            rows.append(median_row(f"{label}: {name}", runs, metric))
    lines = ["| case | samples/s | vs fp32 | RSS while training (MB) | vs fp32 | held-out metric |",
             "|---|---|---|---|---|---|"]
    for i, r in enumerate(rows):
        ref = rows[i - i % 2]
        lines.append(f"| {r['variant']} | {r['samples_per_s']:.2f} ({', '.join(f'{v:.2f}' for v in r['speed_runs'])}) "
                     f"| {r['samples_per_s'] / ref['samples_per_s']:.2f}x | {r['peak_rss_mb_per_process']:,.0f} | "
                     f"{r['peak_rss_mb_per_process'] / ref['peak_rss_mb_per_process']:.2f}x | {r['metric']} "
                     f"{r['value']:.4f}" + ("" if r["metric"] == "val_loss" else f", val_loss {r['val_loss']:.4f}") + " |")
    head = (f"minilm: {2 * args.steps} steps, batch 32, lr 1e-4; smollm2: {args.steps} steps, batch 8, LoRA r=8 on q "
            "and v, lr 5e-4, warmup 10%; "
            f"one process, 2 threads; {args.repeats} repeat(s), medians (per repeat in brackets)")
    return head + "\n\n" + "\n".join(lines), rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=("processes", "precision"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (processes: 8; precision: 40, the classifier twice as many)")
    p.add_argument("--train", type=int, default=256, help="processes: training conversations (seeded subset)")
    p.add_argument("--out", default="runs/bench-scale-out")
    p.add_argument("--release-memory", action="store_true",
                   help="run with " + " ".join(f"{k}={v}" for k, v in RELEASE_MEMORY.items()) + " (see the code)")
    args = p.parse_args()
    global RELEASE
    RELEASE = args.release_memory
    args.steps = args.steps or (8 if args.part == "processes" else 40)
    table, rows = (processes if args.part == "processes" else precision)(args)
    machine = machine_line() + ("; allocator: " + " ".join(f"{k}={v}" for k, v in RELEASE_MEMORY.items())
                                if args.release_memory else "; allocator: glibc defaults")
    name = args.part + ("-release" if args.release_memory else "")
    save_results(Path(args.out) / name, f"machine: {machine}\n\n{table}", machine, args, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
