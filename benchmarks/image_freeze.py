"""EfficientNet-Lite0 on Fashion-MNIST: linear probe vs freezing the stem and the first N blocks vs conv
LoRA vs full fine-tuning. Same data, image size, epochs, batch size and seeds for every method; only
what trains (and its learning rate) differs.

    .venv/bin/python benchmarks/image_freeze.py [--train 8000] [--test 2000] [--size 64] [--epochs 2]
        [--freeze 4,8,12,16] [--methods probe,freeze,lora,full] [--out runs/bench-image]

Prints a markdown table, writes OUT/results.{md,json} and OUT/accuracy_vs_frozen.png (also copied to
docs/images/ with --docs). Test accuracy is on a fixed seeded subset of the official 10,000 test images.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from benchmarks.results import machine_line, save_results
from tunesmith.config import load_config
from tunesmith.run import run

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "fmnist-efficientnet.yaml"
BLOCKS = 16  # MBConv blocks of EfficientNet-Lite0


def methods(freeze_depths: list[int], chosen: list[str]) -> list[tuple[str, str, int | None, list[str]]]:
    """(key, label, frozen blocks for the plot or None, overrides)."""
    out = []
    if "probe" in chosen:
        out.append(("probe", "linear probe (all frozen)", None,
                    ["method.name=linear_probe", "train.lr=1e-2", "train.weight_decay=0.0"]))
    if "freeze" in chosen:
        for n in sorted(freeze_depths, reverse=True):
            out.append((f"freeze{n}", f"freeze stem + {n} blocks", n,
                        ["method.name=freeze", "method.freeze_embeddings=true", f"method.freeze_layers={n}"]))
    if "lora" in chosen:
        out.append(("lora", "LoRA r=8 (1x1 convs) + head", None,
                    ["method.name=lora", "method.lora.r=8", "method.lora.alpha=16", "train.lr=3e-3"]))
    if "full" in chosen:
        out.append(("full", "full fine-tuning", 0, ["method.name=full"]))
    return out


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    depth = sorted((r for r in rows if r["frozen_blocks"] is not None), key=lambda r: r["frozen_blocks"])
    if depth:
        ax.plot([r["frozen_blocks"] for r in depth], [r["test_accuracy"] for r in depth], "o-", color="tab:blue",
                label="freeze stem + first N blocks (N=0: full fine-tuning)")
    styles = {"probe": ("tab:red", "linear probe"), "lora": ("tab:green", "LoRA r=8 on 1x1 convs")}
    for r in rows:
        if r["key"] in styles:
            colour, label = styles[r["key"]]
            ax.axhline(r["test_accuracy"], color=colour, ls="--", label=f"{label}: {r['test_accuracy']:.3f}")
    ax.set_xlabel(f"frozen MBConv blocks (of {BLOCKS}), stem frozen except at N=0")
    ax.set_ylabel("test accuracy")
    ax.set_title(title.replace(", test =", ",\ntest ="), fontsize=9)
    ax.set_xticks(range(0, BLOCKS + 1, 2))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=int, default=8000, help="training images (seeded subset of the 58,800)")
    p.add_argument("--test", type=int, default=2000, help="test images (seeded subset of the official 10,000)")
    p.add_argument("--size", type=int, default=64, help="input side in pixels")
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--freeze", default="4,8,12,16", help="numbers of frozen blocks to try")
    p.add_argument("--methods", default="probe,freeze,lora,full")
    p.add_argument("--out", default="runs/bench-image")
    p.add_argument("--docs", action="store_true", help="also copy the plot to docs/images/")
    p.add_argument("--replot", action="store_true", help="only redraw the plot from OUT/results.json")
    args = p.parse_args()
    out = Path(args.out)
    if args.replot:
        saved = json.loads((out / "results.json").read_text())
        a = saved["args"]
        plot(saved["rows"], out / "accuracy_vs_frozen.png",
             f"efficientnet-lite0 on fashion-mnist: {a['train']:,} training images at {a['size']}x{a['size']}, "
             f"{a['epochs']:g} epochs, batch 64, test = {a['test']:,} official test images")
        if args.docs:
            shutil.copy(out / "accuracy_vs_frozen.png", ROOT / "docs" / "images" / "fmnist_accuracy_vs_frozen.png")
        return 0
    common = [f"data.max_train_samples={args.train}", f"data.max_eval_samples={args.test}",
              f"model.image_size={args.size}", f"train.epochs={args.epochs}", "train.progress=false"]
    rows = []
    for key, label, frozen, overrides in methods([int(n) for n in args.freeze.split(",") if n],
                                                 args.methods.split(",")):
        print(f"== {label}", file=sys.stderr, flush=True)
        s = run(load_config(CONFIG, common + overrides), out / key, overwrite=True)
        rows.append({"key": key, "method": label, "frozen_blocks": frozen,
                     "test_accuracy": s["final"]["test_accuracy"], "val_accuracy": s["final"].get("val_accuracy"),
                     "trainable_params": s["trainable_params"], "total_params": s["total_params"],
                     "train_seconds": s["train_seconds"], "samples_per_s": s["samples_per_s"],
                     "per_class": s["details"]["test"]["accuracy"]})
    machine = machine_line()
    title = (f"efficientnet-lite0 on fashion-mnist: {args.train:,} training images at {args.size}x{args.size}, "
             f"{args.epochs:g} epochs, batch 64, test = {args.test:,} official test images")
    lines = [title, f"machine: {machine}", "",
             "| method | test accuracy | trainable params | trainable % | train s | images/s |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['test_accuracy']:.4f} | {r['trainable_params']:,} | "
                     f"{100 * r['trainable_params'] / r['total_params']:.2f}% | {r['train_seconds']:.0f} | "
                     f"{r['samples_per_s']:.1f} |")
    total = sum(r["train_seconds"] for r in rows)
    lines += ["", f"total training time {total / 60:.1f} min"]
    table = "\n".join(lines)
    save_results(out, table, machine, args, rows)
    plot(rows, out / "accuracy_vs_frozen.png", title)
    if args.docs:
        (ROOT / "docs" / "images").mkdir(parents=True, exist_ok=True)
        shutil.copy(out / "accuracy_vs_frozen.png", ROOT / "docs" / "images" / "fmnist_accuracy_vs_frozen.png")
    print(f"plot: {out / 'accuracy_vs_frozen.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
