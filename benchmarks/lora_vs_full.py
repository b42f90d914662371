"""LoRA r=8 on query/value vs full fine-tuning vs linear probe: minilm-l6 on rotten-tomatoes.

Same data, epochs, seeds and batch size for all three; only the method and its learning rate differ.
Prints a markdown table (and writes it with the raw numbers to OUT/results.{md,json}).

    .venv/bin/python benchmarks/lora_vs_full.py [--epochs 2] [--train 6000] [--out runs/bench-lora]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

from tunesmith.config import load_config
from tunesmith.run import run

ROOT = Path(__file__).resolve().parents[1]

METHODS = {
    "linear probe": ["method.name=linear_probe", "train.lr=0.1", "train.head_lr=0.1", "train.weight_decay=0.0",
                     "train.warmup_ratio=0.0"],
    # BERT's classification head is pooler + classifier; the pooler of all-MiniLM-L6-v2 was never trained
    # for [CLS] features (the model was trained with mean pooling), so it trains with the head
    # (model.train_pooler's default for such checkpoints): LoRA learns it too; a run that starts with a
    # linear probe keeps it frozen (measured better there, benchmarks/pooler_defaults.py)
    "LoRA r=8 (query, value)": ["method.name=lora", "method.lora.r=8", "method.lora.alpha=16",
                                "method.lora.target_modules=[query, value]", "train.lr=2e-3"],
    "full fine-tuning": ["method.name=full", "train.lr=1e-4"],
}


def size_mb(run_dir: Path) -> float:
    path = run_dir / "adapter" / "adapter_model.safetensors"
    if not path.exists():
        path = run_dir / "model" / "model.safetensors"
    return path.stat().st_size / 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--train", type=int, default=6000, help="training snippets (seeded subset)")
    p.add_argument("--out", default="runs/bench-lora")
    args = p.parse_args()
    out = Path(args.out)
    common = [f"train.epochs={args.epochs}", f"data.max_train_samples={args.train}", "train.progress=false",
              "train.eval_every=epoch", "train.head_lr=1e-3"]  # a method's own head_lr comes later and wins
    rows = []
    for label, overrides in METHODS.items():
        print(f"== {label}", file=sys.stderr, flush=True)
        cfg = load_config(ROOT / "configs" / "rt-minilm-full.yaml", common + overrides)
        run_dir = out / label.split()[0].lower()
        s = run(cfg, run_dir, overwrite=True)
        rows.append({"method": label, "test_accuracy": s["final"]["test_accuracy"],
                     "trainable_params": s["trainable_params"], "total_params": s["total_params"],
                     "trainable_pct": 100 * s["trainable_params"] / s["total_params"],
                     "saved_mb": size_mb(run_dir), "train_seconds": s["train_seconds"],
                     "samples_per_s": s["samples_per_s"], "wall_seconds": s["wall_seconds"]})
    machine = (f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
               f"python {platform.python_version()}")
    lines = [f"minilm-l6 on rotten-tomatoes: {args.train:,} training snippets, {args.epochs:g} epoch(s), "
             f"batch 32, test = 1,921 held-out snippets; machine: {machine}", "",
             "| method | test accuracy | trainable params | trainable % | saved file | train s | samples/s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['test_accuracy']:.4f} | {r['trainable_params']:,} | "
                     f"{r['trainable_pct']:.2f}% | {r['saved_mb']:.2f} MB | {r['train_seconds']:.0f} | "
                     f"{r['samples_per_s']:.1f} |")
    table = "\n".join(lines)
    print(table)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({"machine": machine, "args": vars(args), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
