"""`make demo`: fine-tune the packaged MiniLM-L6 on Rotten Tomatoes and compare against baselines.

Prints test accuracy of the majority class, of a linear probe (frozen pretrained encoder + trained
head) and of full fine-tuning, all on the same held-out test split.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections import Counter
from pathlib import Path

import torch

from tunesmith.config import load_config
from tunesmith.data import load_text_classification
from tunesmith.run import run
from tunesmith.shipped import CONFIG_DIR


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--configs", default=str(CONFIG_DIR), help="folder holding rt-minilm-{probe,full}.yaml "
                                                           "(default: the shipped configs)")
    p.add_argument("--out", default="runs/demo")
    args = p.parse_args(argv)
    configs, out = Path(args.configs), Path(args.out)
    started = time.perf_counter()

    full_cfg = load_config(configs / "rt-minilm-full.yaml")
    probe_cfg = load_config(configs / "rt-minilm-probe.yaml")
    data = load_text_classification(full_cfg.data)
    majority = Counter(e.label for e in data.train).most_common(1)[0][0]
    majority_acc = sum(e.label == majority for e in data.test) / len(data.test)

    print("== 1/2 linear probe (encoder frozen, head trains) ==", file=sys.stderr)
    probe = run(probe_cfg, out / "probe", overwrite=True)
    print("== 2/2 full fine-tuning ==", file=sys.stderr)
    full = run(full_cfg, out / "full", overwrite=True)

    rows = [
        ("majority class", f"{majority_acc:.4f}", "-", "-", "-"),
        ("linear probe", f"{probe['final']['test_accuracy']:.4f}", f"{probe['trainable_params']:,}",
         f"{probe['train_seconds']:.0f}", f"{out / 'probe'}"),
        ("full fine-tuning", f"{full['final']['test_accuracy']:.4f}", f"{full['trainable_params']:,}",
         f"{full['train_seconds']:.0f}", f"{out / 'full'}"),
    ]
    print()
    print(f"tunesmith demo: minilm-l6 on rotten-tomatoes; {len(data.train):,} training snippets, "
          f"test accuracy on {len(data.test):,} held-out snippets")
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"python {platform.python_version()}")
    header = ("", "test accuracy", "trainable params", "train s", "run dir")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    print(f"total {time.perf_counter() - started:.0f} s. Try: tunesmith predict {out / 'full'} "
          '"a gorgeous, moving film"')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
