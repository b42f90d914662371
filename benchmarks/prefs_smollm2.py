"""Preference tuning, measured: SmolLM2-135M learns which verdict a review deserves (rotten-tomatoes-prefs).

    .venv/bin/python -m benchmarks.prefs_smollm2 [--train 800] [--test 300] [--out runs/bench-prefs] [--only TEXT]

Rows (seed 0, the same held-out pairs and prompts for every row):
- the base model as it ships (SmolLM2-135M-Instruct), before and after DPO + LoRA (reference: adapters off);
- an SFT run (LoRA on rotten-tomatoes-chat, the same questions answered), merged, before and after DPO + LoRA
  starting from it;
- reward models on the same pairs: MiniLM-L6 (full fine-tuning) and SmolLM2 (LoRA, a scalar head).

Columns: held-out preference accuracy (the policy's own log-likelihood ranks the chosen verdict above
the rejected one; for DPO runs also the implicit-reward accuracy), exact match and answer match of
greedy answers to the held-out prompts, training time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from benchmarks.results import machine_line, save_results

SFT_LR, DPO_LR = 1e-3, 5e-4
LORA = {"name": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj",
                                                                                       "o_proj"]}}


def data_block(name: str, args) -> dict:
    return {"builtin": name, "split": {"validation": 0.02, "test": 0.15, "seed": 0},
            "max_train_samples": args.train, "max_eval_samples": args.test}


def run_config(model: str, objective, data: str, method: dict, lr: float, args, **train) -> dict:
    return {"model": {"name": model, "max_length": 160}, "objective": objective, "method": method,
            "data": data_block(data, args),
            "train": {"epochs": 1, "batch_size": 8, "lr": lr, "weight_decay": 0.0, "warmup_ratio": 0.05,
                      "progress": False, "log_every": 10, "checkpoint_minutes": None, "init_seed": 0,
                      "data_seed": 0} | train}


def before(model_dir: str, args) -> dict:
    """The untouched model on the held-out pairs and prompts."""
    from contextlib import nullcontext

    from tunesmith.config import config_from_dict
    from tunesmith.generate import exact_match
    from tunesmith.models import load_causal_lm
    from tunesmith.objectives import build_objective

    cfg = config_from_dict(run_config(model_dir, "dpo", "rotten-tomatoes-prefs", {"name": "full"}, 1e-4, args))
    objective = build_objective(cfg)
    data = objective.load_data(cfg)
    loaded = load_causal_lm(model_dir, 0)
    model = loaded.model.eval()
    objective._reference = lambda: nullcontext(model)
    items, _ = objective.encode(data.test, loaded.tokenizer, cfg.model.max_length)
    metrics = objective.metrics(objective.eval_sums(model, items, 32, loaded.tokenizer.pad_token_id,
                                                    torch.device("cpu"), 0))
    answers = exact_match(model, loaded.tokenizer, data.test, progress=False)
    return {"likelihood_accuracy": metrics["likelihood_accuracy"], "reward_accuracy": None,
            "exact_match": answers["exact_match"], "answer_match": answers.get("answer_match"), "train_seconds": 0}


def trained(summary: dict) -> dict:
    final = summary["final"]
    return {"likelihood_accuracy": final.get("test_likelihood_accuracy"), "reward_accuracy": final.get("test_accuracy"),
            "exact_match": final.get("test_exact_match"), "answer_match": final.get("test_answer_match"),
            "train_seconds": summary["train_seconds"]}


def main(argv: list[str] | None = None) -> int:
    from tunesmith.config import config_from_dict
    from tunesmith.infer import merge_run
    from tunesmith.models import MODELS
    from tunesmith.run import run

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train", type=int, default=800, help="training pairs / conversations")
    p.add_argument("--test", type=int, default=300, help="held-out pairs and prompts")
    p.add_argument("--out", default="runs/bench-prefs")
    p.add_argument("--only", help="run only the rows whose label contains this text (e.g. MiniLM); SFT + DPO "
                                  "then starts from the SFT model an earlier invocation left in --out")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = str(MODELS["smollm2-135m"].locate())
    rows = []

    def wanted(label: str) -> bool:
        return not args.only or args.only.lower() in label.lower()

    def step(label: str, fn):
        if not wanted(label):
            return
        print(f"== {label}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        row = fn()
        rows.append({"row": label, **row, "seconds": round(time.perf_counter() - started, 1)})
        print(f"   {json.dumps(rows[-1])}", file=sys.stderr, flush=True)

    step("base model", lambda: before(base, args))
    step("base + DPO (LoRA)", lambda: trained(run(config_from_dict(run_config(
        base, "dpo", "rotten-tomatoes-prefs", LORA, DPO_LR, args)), out / "dpo-from-base", overwrite=True)))
    step("SFT (LoRA on rotten-tomatoes-chat)", lambda: trained(run(config_from_dict(run_config(
        base, "causal_lm", "rotten-tomatoes-chat", LORA, SFT_LR, args)), out / "sft", overwrite=True)))
    sft = str(out / "sft-merged")
    if wanted("SFT (LoRA"):
        merge_run(out / "sft", out / "sft-merged", overwrite=True)
        rows[-1] |= before(sft, args) | {"train_seconds": rows[-1]["train_seconds"]}  # the SFT model on the pairs
    step("SFT + DPO (LoRA)", lambda: trained(run(config_from_dict(run_config(
        sft, "dpo", "rotten-tomatoes-prefs", LORA, DPO_LR, args)), out / "dpo-from-sft", overwrite=True)))
    for label, model, method, lr in (("reward model: MiniLM-L6, full", "minilm-l6", {"name": "full"}, 5e-5),
                                     ("reward model: SmolLM2, LoRA", base, LORA, 1e-3)):
        step(label, lambda model=model, method=method, lr=lr, label=label: {
            "reward_accuracy": (s := run(config_from_dict(run_config(
                model, "reward", "rotten-tomatoes-prefs", method, lr, args) | {"model": {"name": model,
                                                                                     "max_length": 160}}),
                out / label.split(":")[1].split(",")[0].strip().lower(), overwrite=True))["final"]["test_accuracy"],
            "train_seconds": s["train_seconds"]})
    machine = machine_line()
    lines = [f"rotten-tomatoes-prefs / -chat: {args.train:,} training pairs (or conversations), 1 epoch, batch 8, "
             f"DPO beta 0.1 lr {DPO_LR:g}, SFT lr {SFT_LR:g}, LoRA r=8 (q,k,v,o); held-out: {args.test:,} pairs and "
             f"prompts; seed 0; machine: {machine}", "",
             "| row | preference accuracy (likelihood) | implicit-reward accuracy | exact match | answer match | train s |",
             "|---|---|---|---|---|---|"]
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    for r in rows:
        lines.append(f"| {r['row']} | {fmt(r.get('likelihood_accuracy'))} | {fmt(r.get('reward_accuracy'))} | "
                     f"{fmt(r.get('exact_match'))} | {fmt(r.get('answer_match'))} | {r.get('train_seconds', 0):.0f} |")
    table = "\n".join(lines)
    save_results(out / "only" if args.only else out, table, machine, args, rows)  # a partial table apart
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
