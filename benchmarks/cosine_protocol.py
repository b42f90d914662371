"""COSINE on (close to) its paper's protocol: rotten-tomatoes-weak on its whole training set.

Per seed (init and data order), on the same 10,246 training texts, dev set (300 labelled) and test set:

  (b) fine-tune on the weak labels: minilm-l6 (mean pooling, as the checkpoint declares), full
      fine-tuning on the texts some LF covers, soft targets from the label model, best dev accuracy
      restored;
  then four self-training arms, each started from (b)'s model, for --cosine-steps steps with a
  relabeling every T = --update-period steps, weight decay 1e-4 (the official code's), best dev accuracy
  restored (step 0 included, so an arm never ends below its start on dev):
  (c) COSINE: every term (sharpened, selected pseudo-labels; contrastive and confidence regularisers);
  (c') contrastive off: lambda = 0;
  (c'') select all: eps = 0, every text trains on its pseudo-label (what the official code's order of
      operations amounts to with the paper's threshold);
  (c3) COSINE at 3x --cosine-lr;
  (c*) for the seeds with every arm, the arm whose restored weights score best on the dev texts (the
      arms are the choice: COSINE as the paper sets it, lambda = 0, eps = 0, or the higher learning
      rate), chosen on dev, never on test;
  and, for --control-seeds, a self-distillation control: (d) fully supervised on the same texts, then
  the COSINE arm started from (d). If the objective is sound, it keeps (d)'s accuracy within a point.

The diagnostics beside each arm come from its relabelings (the training texts' gold labels are read
for them only, never trained on): the pseudo-labels' accuracy on covered / uncovered x selected /
unselected texts at the first and the last relabeling, the fraction selected, and each loss term's sum.

    .venv/bin/python -m benchmarks.cosine_protocol [--seeds 0,1,2] [--arms cosine,no-contrastive,select-all,cosine-lr-x3]

Runs already finished under --out are read rather than retrained, so invocations with different --seeds
or --arms can share the work (and run side by side once each seed's (b) exists); the table covers the
--seeds given, with whatever of them is finished.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from benchmarks.results import machine_line, save_results
from benchmarks.weak_supervision import run_config

TASK = "rotten-tomatoes-weak"
# arm -> (label, objective settings, learning rate as a multiple of --cosine-lr)
ARMS = {"cosine": ("(c) COSINE", {}, 1.0),
        "no-contrastive": ("(c') contrastive off", {"contrastive_weight": 0.0}, 1.0),
        "select-all": ("(c'') select all", {"eps": 0.0}, 1.0),
        "cosine-lr-x3": ("(c3) COSINE, 3x the learning rate", {}, 3.0)}
GROUPS = ("covered_selected", "covered_unselected", "uncovered_selected", "uncovered_unselected")


def config(seed: int, args: argparse.Namespace, epochs: float, **objective) -> dict:
    return {"model": {"name": "minilm-l6", "max_length": 64, "pooling": "auto"},
            "method": {"name": "full"},
            "objective": {"name": "weak", "update_period": args.update_period,
                          "self_training_stage": None} | objective,
            "data": {"builtin": TASK, "split": {"seed": 0}},
            "train": {"batch_size": 32, "lr": args.lr, "epochs": epochs, "init_seed": seed, "data_seed": seed,
                      "progress": False, "log_every": 50, "eval_every": args.eval_every, "threads": args.threads,
                      "checkpoint_minutes": None, "early_stopping": {"patience": None, "restore_best": True}}}


def self_training(start: Path, seed: int, args: argparse.Namespace, lr_factor: float = 1.0, **objective) -> dict:
    cfg = config(seed, args, 1, self_training_stage="cosine", **objective)
    cfg["model"]["name"] = str(start)
    cfg["stages"] = [{"name": "cosine", "method": {"name": "full"}, "max_steps": args.cosine_steps,
                      "lr": args.cosine_lr * lr_factor, "weight_decay": 1e-4}]
    return cfg


def relabelings(run_dir: Path) -> list[dict]:
    """The diagnostics each relabeling logged (metrics.jsonl rows that carry them)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if "pseudo_accuracy" in r]


def diagnostics(run_dir: Path, summary: dict) -> dict:
    final = summary["final"]
    steps = relabelings(run_dir)
    out = {"selected": final.get("cosine_selected_fraction"),
           "sums": {t: final.get(f"cosine_{t}_sum") for t in ("self_training", "contrastive", "confidence")}}
    for when, row in (("first", steps[0] if steps else {}), ("last", steps[-1] if steps else {})):
        out[when] = {g: row.get(f"pseudo_accuracy_{g}") for g in ("",) + GROUPS} | {
            "all": row.get("pseudo_accuracy")}
    out["best_step"] = (summary.get("best") or {}).get("step")
    return out


def cell(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {std:.4f} ({', '.join(f'{v:.3f}' for v in values)})"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds to run or read")
    p.add_argument("--arms", default=",".join(ARMS), help="comma-separated: " + ", ".join(ARMS))
    p.add_argument("--control-seeds", default="0", help="seeds of the self-distillation control ('' for none)")
    p.add_argument("--epochs", type=float, default=3, help="epochs of (b)")
    p.add_argument("--supervised-epochs", type=float, default=2, help="epochs of (d)")
    p.add_argument("--lr", type=float, default=5e-5, help="learning rate of (b) and (d)")
    p.add_argument("--cosine-steps", type=int, default=800)
    p.add_argument("--cosine-lr", type=float, default=1e-5)
    p.add_argument("--update-period", type=int, default=100, help="COSINE's T: steps between relabelings")
    p.add_argument("--eval-every", type=int, default=50, help="evaluation (and best-checkpoint) period in steps")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (default: torch's)")
    p.add_argument("--only-run", action="store_true", help="train, but leave the table to a later invocation")
    p.add_argument("--out", default="runs/bench-cosine")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    arms = [a for a in args.arms.split(",") if a]
    controls = [int(s) for s in args.control_seeds.split(",") if s]
    out = Path(args.out)
    started = time.perf_counter()
    say = lambda text: print(f"== {text}", file=sys.stderr, flush=True)  # noqa: E731
    for seed in seeds:  # every (b) first: the arms of a seed can then run in another invocation
        say(f"seed {seed}: (b) fine-tune on weak labels")
        run_config(config(seed, args, args.epochs), out / f"seed{seed}" / "weak")
    for seed in seeds:
        for arm in arms:
            say(f"seed {seed}: {ARMS[arm][0]} from (b)")
            _, objective, lr_factor = ARMS[arm]
            run_config(self_training(out / f"seed{seed}" / "weak" / "model", seed, args, lr_factor, **objective),
                       out / f"seed{seed}" / arm)
    for seed in controls:
        say(f"seed {seed}: (d) fully supervised, then COSINE from it")
        run_config(config(seed, args, args.supervised_epochs, label_model="gold"), out / f"seed{seed}" / "supervised")
        run_config(self_training(out / f"seed{seed}" / "supervised" / "model", seed, args),
                   out / f"seed{seed}" / "control")
    if args.only_run:
        return 0
    return report(args, out, started)


def read(run_dir: Path) -> dict | None:
    path = run_dir / "summary.json"
    return json.loads(path.read_text()) if path.exists() else None


def report(args: argparse.Namespace, out: Path, started: float) -> int:
    wanted = {int(x) for x in args.seeds.split(",") if x}
    seeds = sorted(int(d.name[4:]) for d in out.glob("seed*") if read(d / "weak") and int(d.name[4:]) in wanted)
    weak = {s: read(out / f"seed{s}" / "weak") for s in seeds}
    runs = {arm: {s: read(out / f"seed{s}" / arm) for s in seeds} for arm in ARMS}
    acc = lambda summary: summary["final"]["test_accuracy"]  # noqa: E731
    lines = [f"{TASK}, whole training set ({weak[seeds[0]]['final'].get('train_lf_coverage', 0):.1%} covered by "
             f"an LF); minilm-l6 with mean pooling, full fine-tuning, batch 32, max_length 64; (b), (d): "
             f"{args.epochs:g} / {args.supervised_epochs:g} epochs at lr {args.lr:g}; arms: {args.cosine_steps} steps "
             f"at lr {args.cosine_lr:g} ((c3): {ARMS['cosine-lr-x3'][2] * args.cosine_lr:g}), weight decay 1e-4, "
             f"T = {args.update_period}, other COSINE settings at their defaults; best dev accuracy (300 texts, every {args.eval_every} steps, step 0 included) restored; "
             f"seeds {', '.join(map(str, seeds))}; test accuracy mean ± std (per seed); machine: {machine_line()}",
             "", "| | test accuracy | minus (b), paired | seeds |", "|---|---|---|---|",
             f"| (a) label model alone | {cell([weak[s]['final']['test_label_model_accuracy'] for s in seeds])} | | "
             f"{len(seeds)} |",
             f"| (b) fine-tune on weak labels | {cell([acc(weak[s]) for s in seeds])} | | {len(seeds)} |"]
    for arm, (label, _, _) in ARMS.items():
        done = [s for s in seeds if runs[arm][s]]
        if done:
            gain = [100 * (acc(runs[arm][s]) - acc(weak[s])) for s in done]
            spread = f" ({', '.join(f'{g:+.1f}' for g in gain)})" if len(gain) > 1 else ""
            lines.append(f"| {label} | {cell([acc(runs[arm][s]) for s in done])} | "
                         f"{statistics.fmean(gain):+.1f} points{spread} | {len(done)} |")
    # one of the arms chosen on dev: per seed, the arm whose restored weights score best on the dev
    # texts (ties: the paper's settings); the test set plays no part in the choice
    dev = lambda summary: summary["final"]["val_accuracy"]  # noqa: E731
    complete = [s for s in seeds if all(runs[arm][s] for arm in ARMS)]
    if complete:
        chosen = {s: max(ARMS, key=lambda arm: (dev(runs[arm][s]), arm == "cosine")) for s in complete}
        gain = [100 * (acc(runs[chosen[s]][s]) - acc(weak[s])) for s in complete]
        spread = f" ({', '.join(f'{g:+.1f}' for g in gain)})" if len(gain) > 1 else ""
        lines.append(f"| (c*) the arm best on dev, per seed ({', '.join(chosen[s] for s in complete)}) | "
                     f"{cell([acc(runs[chosen[s]][s]) for s in complete])} | {statistics.fmean(gain):+.1f} points"
                     f"{spread} | {len(complete)} |")
    control = [(s, read(out / f"seed{s}" / "supervised"), read(out / f"seed{s}" / "control")) for s in seeds]
    control = [(s, d, c) for s, d, c in control if d and c]
    for s, d, c in control:
        lines.append(f"| (d) fully supervised, seed {s} | {acc(d):.4f} | | 1 |")
        lines.append(f"| COSINE from (d), seed {s} (self-distillation control) | {acc(c):.4f} | "
                     f"{100 * (acc(c) - acc(d)):+.1f} points against (d) | 1 |")
    lines += ["", "Pseudo-labels at the first / last relabeling (accuracy against the training texts' gold labels, "
              "in %; covered = some LF votes; selected = confidence above eps), fraction selected over all "
              "relabelings, each loss term's sum over the stage, and the step whose weights were restored:", "",
              "| arm, seed | all | covered, selected | covered, unselected | uncovered, selected | "
              "uncovered, unselected | selected | self-training / contrastive / confidence sums | restored step |",
              "|---|---|---|---|---|---|---|---|---|"]
    rows = []
    named = [(ARMS[a][0], a, s, runs[a][s]) for a in ARMS for s in seeds if runs[a][s]]
    named += [("COSINE from (d)", "control", s, c) for s, _, c in control]
    for label, arm, s, summary in named:
        d = diagnostics(out / f"seed{s}" / arm, summary)
        rows.append({"arm": arm, "seed": s, "test_accuracy": acc(summary), "start": acc(weak[s])} | d)
        sums = " / ".join("-" if v is None else f"{v:.0f}" for v in d["sums"].values())
        lines.append(f"| {label}, {s} | {pct(d['first']['all'])} / {pct(d['last']['all'])} | "
                     + " | ".join(f"{pct(d['first'][g])} / {pct(d['last'][g])}" for g in GROUPS)
                     + f" | {pct(d['selected'])} | {sums} | {d['best_step']} |")
    lines.append("")
    lines.append(f"{(time.perf_counter() - started) / 60:.0f} min in this invocation")
    save_results(out, "\n".join(lines), machine_line(), args, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
