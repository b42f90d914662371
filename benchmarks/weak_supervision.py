"""Weak supervision on the built-in benchmarks: does COSINE beat fine-tuning on the weak labels?

Per task (rotten-tomatoes-weak, 20newsgroups-weak) and seed (init and data order), on the same
training texts, dev set (300 labelled) and test set:

  (a) the label model alone: LF votes -> label model -> its label (texts no LF covers: the most
      frequent class), no training;
  (b) direct fine-tuning on the weak labels: minilm-l6, full fine-tuning on the texts some LF covers,
      soft targets from the label model, early-stopped (best dev accuracy restored);
  (c) COSINE: (b)'s model, self-trained on all training texts (covered or not), relabeling every
      `--update-period` steps; best dev accuracy restored;
  (d) fully supervised on the same texts with their real labels (the ceiling).

Also the label models (majority, Dawid-Skene, snorkel's LabelModel where installed) on the same label
matrices: accuracy on the training texts the LFs cover, and on the whole test set.

    .venv/bin/python -m benchmarks.weak_supervision [--seeds 3] [--train N] [--out runs/bench-weak]

Runs already finished under --out are read rather than retrained (an interrupted invocation picks up
where it stopped; delete --out to measure afresh).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks.results import machine_line, save_results

# training texts per task: 20newsgroups' posts are longer (128 tokens) and its LFs cover 91% of them, so
# fewer texts keep its three seeds within this machine's hour
TASKS = {"rotten-tomatoes-weak": {"max_length": 64, "train": 3000},
         "20newsgroups-weak": {"max_length": 128, "train": 1000}}
VARIANTS = ("label model alone", "fine-tune on weak labels", "COSINE", "fully supervised")


def train_size(task: str, args: argparse.Namespace) -> int:
    return args.train or TASKS[task]["train"]


def base_config(task: str, seed: int, args: argparse.Namespace, **objective) -> dict:
    return {"model": {"name": "minilm-l6", "max_length": TASKS[task]["max_length"]},
            "method": {"name": "full"},
            "objective": {"name": "weak", "update_period": args.update_period} | objective,
            "data": {"builtin": task, "split": {"seed": 0}, "max_train_samples": train_size(task, args)},
            "train": {"batch_size": 32, "lr": args.lr, "epochs": args.epochs, "init_seed": seed, "data_seed": seed,
                      "progress": False, "log_every": 50, "eval_every": args.eval_every, "checkpoint_minutes": None,
                      "early_stopping": {"patience": None, "restore_best": True}}}


def run_config(cfg: dict, out: Path) -> dict:
    from tunesmith.config import config_from_dict
    from tunesmith.run import run

    if (out / "summary.json").exists():  # finished by an earlier invocation: read, not retrained
        return json.loads((out / "summary.json").read_text())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # COSINE from (b)'s model: its self-training stage comes first, as meant
        return run(config_from_dict(cfg, source="benchmark"), out, overwrite=True)


def label_models(task: str, args: argparse.Namespace) -> dict:
    """Accuracy of each label model on the same label matrices (training texts the LFs cover; test)."""
    from tunesmith.config import config_from_dict
    from tunesmith.data.label_model import fit_label_model
    from tunesmith.data.weak import label_matrix
    from tunesmith.objectives.weak import Weak

    cfg = config_from_dict(base_config(task, 0, args), source="benchmark")
    objective = Weak(cfg)
    data = objective.load_data(cfg)
    L, k = objective.matrix, len(data.label_names)
    gold = np.array([e.label for e in data.train])
    test_L = label_matrix(objective.lfs, [e.text for e in data.test], [e.where for e in data.test], data.label_names)
    test_gold = np.array([e.label for e in data.test])
    covered = (L != -1).any(1)
    out = {"coverage": float(covered.mean()), "test_coverage": float((test_L != -1).any(1).mean()),
           "chosen": objective.stats["label_model"]["name"], "models": {}}
    for name in ("majority", "dawid_skene"):
        model = fit_label_model(name, L, k)
        out["models"][name] = {"train_covered": float((model.predict(L)[covered] == gold[covered]).mean()),
                               "test": float((model.predict(test_L) == test_gold).mean())}
    try:
        from snorkel.labeling.model import LabelModel
    except ImportError:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = LabelModel(cardinality=k, verbose=False)
        reference.fit(L, n_epochs=500, seed=0, progress_bar=False)
    train_predicted = reference.predict(L[covered], tie_break_policy="random")
    # snorkel abstains where no LF votes: those texts get the class it predicts most often, as ours do
    fallback = int(np.bincount(train_predicted, minlength=k).argmax())
    predicted = reference.predict(test_L, tie_break_policy="random")
    predicted = np.where(predicted == -1, fallback, predicted)
    out["models"]["snorkel"] = {"train_covered": float((train_predicted == gold[covered]).mean()),
                                "test": float((predicted == test_gold).mean())}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--train", type=int, default=None,
                   help="training texts per task, a seeded subset (default: " +
                        ", ".join(f"{t} {v['train']:,}" for t, v in TASKS.items()) + ")")
    p.add_argument("--epochs", type=float, default=3, help="epochs of (b) and (d)")
    p.add_argument("--cosine-epochs", type=float, default=2, help="epochs of COSINE self-training (c)")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--cosine-lr", type=float, default=1e-5)
    p.add_argument("--update-period", type=int, default=50, help="COSINE's T: steps between relabelings")
    p.add_argument("--eval-every", default="25", help="evaluation (and best-checkpoint) period in steps")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--out", default="runs/bench-weak")
    args = p.parse_args(argv)
    args.eval_every = int(args.eval_every) if args.eval_every.isdigit() else args.eval_every
    out = Path(args.out)
    rows, lms = [], {}
    started = time.perf_counter()
    for task in args.tasks.split(","):
        lms[task] = label_models(task, args)
        print(f"== {task}: label models {json.dumps(lms[task])}", file=sys.stderr, flush=True)
        for seed in range(args.seeds):
            where = out / task / f"seed{seed}"
            print(f"== {task} / seed {seed}: (b) fine-tune on weak labels", file=sys.stderr, flush=True)
            weak = run_config(base_config(task, seed, args), where / "weak")
            print(f"== {task} / seed {seed}: (c) COSINE from (b)", file=sys.stderr, flush=True)
            cosine_cfg = base_config(task, seed, args) | {"stages": [
                {"name": "cosine", "method": {"name": "full"}, "epochs": args.cosine_epochs, "lr": args.cosine_lr}]}
            cosine_cfg["model"]["name"] = str(where / "weak" / "model")
            cosine = run_config(cosine_cfg, where / "cosine")
            print(f"== {task} / seed {seed}: (d) fully supervised", file=sys.stderr, flush=True)
            gold = run_config(base_config(task, seed, args, label_model="gold"), where / "supervised")
            row = {"task": task, "seed": seed,
                   "label model alone": weak["final"]["test_label_model_accuracy"],
                   "fine-tune on weak labels": weak["final"]["test_accuracy"],
                   "COSINE": cosine["final"]["test_accuracy"], "fully supervised": gold["final"]["test_accuracy"],
                   "cosine_relabels": cosine["final"].get("cosine_relabels"),
                   "cosine_relabel_seconds": cosine["final"].get("cosine_relabel_seconds"),
                   "train_seconds": {"weak": weak["train_seconds"], "cosine": cosine["train_seconds"],
                                     "supervised": gold["train_seconds"]}}
            rows.append(row)
            print(f"   {json.dumps(row)}", file=sys.stderr, flush=True)
    machine = machine_line()
    eval_unit = f"{args.eval_every} steps" if isinstance(args.eval_every, int) else str(args.eval_every)
    sizes = ", ".join(f"{task} {train_size(task, args):,}" for task in args.tasks.split(","))
    lines = [f"minilm-l6, full fine-tuning; training texts (seeded subsets): {sizes}; dev 300, the "
             f"tasks' test sets; (b), (d): {args.epochs:g} epochs at lr {args.lr:g}; (c): {args.cosine_epochs:g} epochs "
             f"at lr {args.cosine_lr:g}, T = {args.update_period} steps, other COSINE settings at their defaults; "
             f"batch 32; best dev accuracy restored (evaluated every {eval_unit}); seeds "
             f"0..{args.seeds - 1}: mean ± std (per seed); machine: {machine}; "
             f"{(time.perf_counter() - started) / 60:.0f} min in all", "",
             "| task | LF coverage (train / test) | label model on covered train texts | "
             + " | ".join(f"({chr(97 + i)}) {v}" for i, v in enumerate(VARIANTS)) + " | (c) - (b) |",
             "|---|---|---|" + "---|" * len(VARIANTS) + "---|"]
    for task in args.tasks.split(","):
        mine = [r for r in rows if r["task"] == task]
        lm = lms[task]
        cells = []
        for variant in VARIANTS:
            values = [r[variant] for r in mine]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.fmean(values):.4f} ± {std:.4f} ({', '.join(f'{v:.3f}' for v in values)})")
        gain = [r["COSINE"] - r["fine-tune on weak labels"] for r in mine]
        lines.append(f"| {task} | {lm['coverage']:.3f} / {lm['test_coverage']:.3f} | "
                     f"{lm['models'][lm['chosen']]['train_covered']:.4f} ({lm['chosen']}) | " + " | ".join(cells)
                     + f" | {100 * statistics.fmean(gain):+.1f} points |")
    lines += ["", "Label models on the same label matrices (accuracy on the training texts the LFs cover / on the "
              "whole test set, uncovered texts getting the most frequent class):", "",
              "| task | majority | dawid_skene | snorkel LabelModel |", "|---|---|---|---|"]
    for task in args.tasks.split(","):
        models = lms[task]["models"]
        lines.append(f"| {task} | " + " | ".join(
            f"{models[m]['train_covered']:.4f} / {models[m]['test']:.4f}" if m in models else "not installed"
            for m in ("majority", "dawid_skene", "snorkel")) + " |")
    table = "\n".join(lines)
    save_results(out, table, machine, args, rows, label_models=lms)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
