"""Which head makes LoRA and the linear probe learn on a sentence-transformers checkpoint (minilm-l6)?

all-MiniLM-L6-v2 was trained through mean pooling; its [CLS] pooler (dense + tanh) is left over from
pretraining and never learned to summarise a sentence. A BERT classifier reads [CLS] through that
pooler, so under LoRA or a linear probe (pooler frozen) it sees a poor feature. Three heads, same data,
seeds and settings:

- `frozen pooler`: the pooler stays as the checkpoint has it (tunesmith's default before);
- `pooler trains with the head`: the pooler is part of the new head under every method (the default
  now, `model.train_pooler`), and the model stays a plain BertForSequenceClassification;
- `mean pooling`: the head reads the masked mean of the last hidden states, as the checkpoint was
  trained (a reference: such a model is not a standard Hugging Face class, so PEFT and transformers
  could not load it as saved).

    .venv/bin/python -m benchmarks.pooler_defaults [--seeds 2] [--train 2000] [--out runs/bench-pooler]

Runs already finished under --out are read rather than retrained, so an interrupted invocation picks
up where it stopped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

from benchmarks.results import machine_line, save_results

TASKS = {  # built-in data set -> what differs from the defaults
    "rotten-tomatoes": {"max_length": 64},
    "20newsgroups": {"max_length": 128},
}
METHODS = {
    # the probe's learning rate is chosen per head on validation accuracy (a head with the pooler in it
    # wants a smaller one); LoRA uses 2e-3 throughout
    "linear_probe": {"method": {"name": "linear_probe"}, "lrs": (0.05, 0.01, 0.002),
                     "train": {"weight_decay": 0.0, "warmup_ratio": 0.0, "epochs": 3}},
    "lora": {"method": {"name": "lora", "lora": {"r": 8, "alpha": 16, "target_modules": ["query", "value"]}},
             "lrs": (2e-3,), "train": {"epochs": 3}},
}
HEADS = ("frozen pooler", "pooler trains with the head", "mean pooling")


class MeanPooler(nn.Module):
    """Stands in for BertPooler: the masked mean of the last hidden states (the mask is caught by a
    pre-hook on the encoder, since BertPooler is called without it)."""

    def __init__(self) -> None:
        super().__init__()
        self.mask: torch.Tensor | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        mask = self.mask if self.mask is not None else torch.ones(hidden.shape[:2], device=hidden.device)
        mask = mask[:, : hidden.shape[1]].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


def _mean_pooling_loader():
    """load_text_classifier, with BERT's pooler replaced by MeanPooler (the reference head)."""
    from tunesmith.models import hf

    original = hf.load_text_classifier

    def load(name, labels, seed, train_pooler=None):
        loaded = original(name, labels, seed, train_pooler=False)
        bert = loaded.model.bert
        pooler = MeanPooler()
        bert.pooler = pooler
        bert.register_forward_pre_hook(lambda m, a, k: setattr(pooler, "mask", k.get("attention_mask")),
                                       with_kwargs=True)
        loaded.head_params = [n for n in loaded.head_params if "pooler" not in n]
        return loaded

    return load


def run_one(task: str, method: str, head: str, seed: int, lr: float, args: argparse.Namespace, out: Path) -> dict:
    from tunesmith.config import config_from_dict
    from tunesmith.run import run

    spec = METHODS[method]
    cfg = {"model": {"name": "minilm-l6", "max_length": TASKS[task]["max_length"],
                     "train_pooler": head == "pooler trains with the head"},
           "method": spec["method"],
           "data": {"builtin": task, "split": {"validation": 0.1, "test": 0.15, "seed": 0},
                    "max_train_samples": args.train, "max_eval_samples": args.test},
           "train": {"batch_size": 32, "init_seed": seed, "data_seed": seed, "progress": False, "log_every": 50,
                     "eval_every": "epoch", "checkpoint_minutes": None, "lr": lr, "head_lr": lr} | spec["train"]}
    where = out / task / method / head.split()[0] / f"lr{lr:g}-seed{seed}"
    if (where / "summary.json").exists():  # a finished run of an earlier invocation: read, not retrained
        summary = json.loads((where / "summary.json").read_text())
    else:
        import tunesmith.models as models

        original = models.load_text_classifier
        if head == "mean pooling":  # the classify objective looks the loader up here when it loads the model
            models.load_text_classifier = _mean_pooling_loader()
        try:
            summary = run(config_from_dict(cfg, source="benchmark"), where, overwrite=True)
        finally:
            models.load_text_classifier = original
    return {"task": task, "method": method, "head": head, "seed": seed, "lr": lr,
            "val_accuracy": summary["final"]["val_accuracy"],
            "test_accuracy": summary["final"]["test_accuracy"], "test_loss": summary["final"]["test_loss"],
            "trainable_params": summary["trainable_params"], "train_seconds": summary["train_seconds"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--probe-lrs", default=",".join(f"{lr:g}" for lr in METHODS["linear_probe"]["lrs"]),
                   help="the linear probe's learning rates to choose from (on validation accuracy)")
    p.add_argument("--out", default="runs/bench-pooler", help="finished runs already here are read, not rerun")
    args = p.parse_args(argv)
    METHODS["linear_probe"]["lrs"] = tuple(float(x) for x in args.probe_lrs.split(","))
    out = Path(args.out)
    rows, methods = [], args.methods.split(",")
    for task in args.tasks.split(","):
        for method in methods:
            for seed in range(args.seeds):
                for head in HEADS:
                    tried = []
                    for lr in METHODS[method]["lrs"]:
                        print(f"== {task} / {method} / {head} / lr {lr:g} / seed {seed}", file=sys.stderr, flush=True)
                        tried.append(run_one(task, method, head, seed, lr, args, out))
                        print(f"   val accuracy {tried[-1]['val_accuracy']:.4f}, test accuracy "
                              f"{tried[-1]['test_accuracy']:.4f}", file=sys.stderr, flush=True)
                    rows.append(max(tried, key=lambda r: r["val_accuracy"]) | {"tried": tried})
    machine = machine_line()
    grids = "; ".join(f"{m}: {', '.join(f'{lr:g}' for lr in METHODS[m]['lrs'])}" for m in methods)
    lines = [f"minilm-l6: {args.train:,} training examples, 3 epochs, batch 32, test on {args.test:,}; "
             f"seeds 0..{args.seeds - 1} (init and data order), mean (per-seed values); each run's learning rate "
             f"is the best on validation of ({grids}); machine: {machine}", "",
             "| task | method | head | test accuracy | test loss | lr chosen | trainable params |",
             "|---|---|---|---|---|---|---|"]
    for task in args.tasks.split(","):
        for method in methods:
            for head in HEADS:
                mine = [r for r in rows if (r["task"], r["method"], r["head"]) == (task, method, head)]
                accs = ", ".join(f"{r['test_accuracy']:.4f}" for r in mine)
                lrs = ", ".join(f"{r['lr']:g}" for r in mine)
                lines.append(f"| {task} | {method} | {head} | {statistics.fmean(r['test_accuracy'] for r in mine):.4f} "
                             f"({accs}) | {statistics.fmean(r['test_loss'] for r in mine):.4f} | {lrs} | "
                             f"{mine[0]['trainable_params']:,} |")
    table = "\n".join(lines)
    save_results(out, table, machine, args, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
