"""Online RL, measured: SmolLM2-135M learns to continue review openings positively.

    .venv/bin/python -m benchmarks.online_rl [--steps 60] [--variants tunesmith-grpo,tunesmith-ppo,trl-grpo]
                                             [--classifier RUN_DIR] [--out runs/bench-online-rl]

- Prompts: `rotten-tomatoes-openings` (the first five words of Rotten Tomatoes snippets); training takes
  steps x prompts-per-step of its training split, the held-out prompts are its test split.
- Reward: the probability of `fresh` that a MiniLM-L6 classifier gives the prompt followed by the
  completion. The classifier is tunesmith's own `rt-minilm-full` recipe, trained once into
  OUT/classifier (or `--classifier`, any classify run with a `fresh` label).
- Variants, each in its own process (so its peak RSS is its own), with the same prompts, completions per
  prompt, completion length, steps, learning rate, KL weight and LoRA (r 8, alpha 16, q/k/v/o):
  `tunesmith-grpo`, `tunesmith-ppo` (its value head; 2 PPO epochs per step) and `trl-grpo`
  (`trl.GRPOTrainer` with a PEFT `LoraConfig`, `loss_type: grpo`, TRL's generation).
- Held-out yardstick, the same code for every side: greedy completions for the test prompts, then the
  mean reward, the fraction the classifier calls fresh (p > 0.5), distinct-2 and the perplexity of the
  completions under the base model (reward hacking shows as repetition or text the base finds unlikely);
  the base model gives the "before" row.
- Speed: completions per second of the training phase (tunesmith: its train_seconds, evaluation
  excluded; TRL: the `train()` call, no evaluation), peak RSS of the process.

Writes OUT/results.md and .json (the table), OUT/reward_kl.png (reward and KL over the steps of each
variant) and OUT/samples.md (held-out completions before and after). Each variant's outcome is kept in
OUT/results/, and a later invocation with the same settings reads it instead of training again (so the
variants can run in separate sittings; `--rerun` trains them all again).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from benchmarks.results import machine_line, save_results

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("tunesmith-grpo", "tunesmith-ppo", "trl-grpo")
LORA = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
SAMPLES_SHOWN = 6


# -- what every side shares --------------------------------------------------------------------------
def run_config(args: argparse.Namespace, objective: str, classifier: Path) -> dict:
    extra = {"num_ppo_epochs": 2} if objective == "ppo" else {}
    return {"model": {"name": args.model, "max_length": 64},
            "method": {"name": "lora", "lora": LORA},
            "objective": {"name": objective, "reward_funcs": [{"run": str(classifier), "label": "fresh"}],
                          "num_generations": args.k, "max_completion_length": args.tokens, "beta": args.beta,
                          "temperature": 1.0, **extra},
            "data": {"builtin": "rotten-tomatoes-openings", "max_train_samples": args.steps * args.prompts,
                     "max_eval_samples": args.test},
            "train": {"max_steps": args.steps, "batch_size": args.prompts, "lr": args.lr, "weight_decay": 0.0,
                      "warmup_ratio": 0.0, "schedule": "linear", "max_grad_norm": 1.0, "eval_every": args.steps,
                      "log_every": 1, "progress": False, "checkpoint_minutes": None, "init_seed": args.seed,
                      "data_seed": args.seed}}


def judge(args: argparse.Namespace, classifier: Path):
    """A grpo objective set up to sample and score held-out prompts outside a run; (objective, test items,
    tokenizer)."""
    from transformers import AutoTokenizer

    from tunesmith.config import config_from_dict
    from tunesmith.infer import open_saved
    from tunesmith.models.registry import resolve_model_dir
    from tunesmith.objectives import build_objective
    from tunesmith.rewards import load_rewards

    cfg = config_from_dict(run_config(args, "grpo", classifier), source="benchmark")
    objective = build_objective(cfg)
    data = objective.load_data(cfg)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir(args.model))
    objective.tokenizer = tokenizer
    objective.rewards = load_rewards(cfg.objective.reward_funcs, "reward", None, open_saved)
    objective.weights = [1.0]
    items, _ = objective.encode(data.test, tokenizer, cfg.model.max_length)
    return objective, items, tokenizer, data


def held_out(model, args: argparse.Namespace, classifier: Path) -> dict[str, Any]:
    """Greedy completions of the test prompts, scored: the yardstick for every side."""
    from transformers import AutoModelForCausalLM

    from tunesmith.models.registry import resolve_model_dir
    from tunesmith.objectives.causal_lm import IGNORE, collate
    from tunesmith.objectives.grpo import _Sequence, distinct

    objective, items, tokenizer, _ = judge(args, classifier)
    model.eval()
    out = objective.rollout(model, items, seed=0, device=torch.device("cpu"), temperature=0.0, generations=1)
    base = AutoModelForCausalLM.from_pretrained(resolve_model_dir(args.model), dtype=torch.float32).eval()
    objective._reference = lambda: nullcontext(base)
    batch = collate([_Sequence(it.input_ids + t, [IGNORE] * len(it.input_ids) + t)
                     for it, t in zip(out["rows"], out["tokens"], strict=True)], tokenizer.pad_token_id)
    mask = batch["labels"][:, 1:] != IGNORE
    nll = -objective.reference_logps(batch)[mask].double().mean().item()
    generated = [t if cut else t[:-1] for t, cut in zip(out["tokens"], out["cut"].bool().tolist(), strict=True)]
    rewards = out["total"]
    return {"reward": rewards.mean().item(), "fresh": (rewards > 0.5).float().mean().item(),
            "distinct_2": sum(distinct(t, 2) for t in generated) / len(generated),
            "ref_perplexity": float(torch.exp(torch.tensor(nll))), "prompts": len(items),
            "samples": [{"prompt": it.example.for_rewards, "completion": text, "reward": r}
                        for it, text, r in zip(out["rows"], out["texts"], rewards.tolist(), strict=True)][:SAMPLES_SHOWN]}


# -- the sides ------------------------------------------------------------------------------------
def tunesmith_side(args: argparse.Namespace, objective: str, classifier: Path, out: Path) -> dict[str, Any]:
    from tunesmith.config import config_from_dict
    from tunesmith.infer import open_saved
    from tunesmith.run import run

    summary = run(config_from_dict(run_config(args, objective, classifier), source="benchmark"), out, overwrite=True)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    curve = [{"step": r["step"], "reward": r["train_reward"], "kl": r.get("train_kl")}
             for r in rows if "train_reward" in r]
    completions = args.steps * args.prompts * args.k
    return {"train_seconds": summary["train_seconds"], "completions": completions, "curve": curve,
            "held_out": held_out(open_saved(out).model, args, classifier)}


def trl_side(args: argparse.Namespace, classifier: Path, out: Path) -> dict[str, Any]:
    """TRL's GRPOTrainer with a PEFT LoRA adapter on the same prompts, k, lengths, steps and reward."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, set_seed
    from trl import GRPOConfig, GRPOTrainer

    from tunesmith.models.registry import resolve_model_dir

    objective, _, tokenizer, data = judge(args, classifier)
    reward = objective.rewards[0]

    def fresh(prompts, completions, **_):
        return reward.fn(prompts=prompts, completions=completions)

    set_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(resolve_model_dir(args.model), dtype=torch.float32)
    config = GRPOConfig(output_dir=str(out), per_device_train_batch_size=args.prompts * args.k,
                        gradient_accumulation_steps=1, num_generations=args.k, max_completion_length=args.tokens,
                        learning_rate=args.lr, weight_decay=0.0, warmup_steps=0, lr_scheduler_type="linear",
                        max_grad_norm=1.0, max_steps=args.steps, beta=args.beta, epsilon=0.2, loss_type="grpo",
                        scale_rewards="group", temperature=1.0, top_p=1.0, disable_dropout=True, logging_steps=1,
                        save_strategy="no", report_to="none", use_cpu=True, seed=args.seed, bf16=False, fp16=False,
                        gradient_checkpointing=False)
    trainer = GRPOTrainer(model=model, reward_funcs=fresh, args=config,
                          train_dataset=Dataset.from_list([{"prompt": e.prompt} for e in data.train]),
                          processing_class=tokenizer,
                          peft_config=LoraConfig(task_type="CAUSAL_LM", r=LORA["r"], lora_alpha=LORA["alpha"],
                                                 lora_dropout=LORA["dropout"], target_modules=LORA["target_modules"]))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    curve = [{"step": r["step"], "reward": r["reward"], "kl": r.get("kl")} for r in trainer.state.log_history
             if "reward" in r]
    return {"train_seconds": seconds, "completions": args.steps * args.prompts * args.k, "curve": curve,
            "held_out": held_out(trainer.model.merge_and_unload(), args, classifier)}


def run_child(args: argparse.Namespace) -> None:
    classifier, out = Path(args.classifier), Path(args.out) / "runs" / args.child
    if args.child == "trl-grpo":
        outcome = trl_side(args, classifier, out)
    else:
        outcome = tunesmith_side(args, args.child.removeprefix("tunesmith-"), classifier, out)
    Path(args.result).write_text(json.dumps(outcome))


def spawn(args: argparse.Namespace, variant: str, out: Path, argv: list[str]) -> dict[str, Any]:
    """One variant in its own process; its outcome with the process's peak RSS."""
    result = out / "results" / f"{variant}.json"
    log = out / "logs" / f"{variant}.log"
    result.parent.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "benchmarks.online_rl", *argv, "--child", variant, "--result", str(result),
               "--classifier", str(args.classifier)]
    with open(log, "w") as handle:
        child = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT,
                                 env=os.environ | {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
                                                   "TRANSFORMERS_VERBOSITY": "error"})
        _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{variant} failed; see {log}:\n" + "\n".join(log.read_text().splitlines()[-15:]))
    return json.loads(result.read_text()) | {"variant": variant, "peak_rss_mb": usage.ru_maxrss / 1024}


SETTINGS = ("steps", "prompts", "k", "tokens", "test", "lr", "beta", "seed", "model")


def reusable(path: Path, settings: dict, rerun: bool) -> bool:
    """A result from an earlier invocation with the same settings."""
    return not rerun and path.exists() and json.loads(path.read_text()).get("settings") == settings


# -- the classifier, the table, the figure ------------------------------------------------------------
def classifier_run(out: Path) -> Path:
    """tunesmith's rt-minilm-full recipe, trained once."""
    from tunesmith.config import load_config
    from tunesmith.run import run

    target = out / "classifier"
    if not (target / "summary.json").exists():
        print("== training the reward classifier (rt-minilm-full)", file=sys.stderr, flush=True)
        run(load_config(ROOT / "tunesmith" / "configs" / "rt-minilm-full.yaml"), target, overwrite=True)
    return target


def table(args: argparse.Namespace, before: dict, rows: list[dict], classifier: Path, machine: str) -> str:
    accuracy = json.loads((classifier / "summary.json").read_text())["final"].get("test_accuracy")
    lines = [f"SmolLM2-135M continuing {before['prompts']} held-out review openings (rotten-tomatoes-openings); "
             f"reward: P(fresh) from a MiniLM-L6 classifier (test accuracy {accuracy:.3f}) on prompt + completion; "
             f"{args.steps} steps x {args.prompts} prompts x {args.k} completions of at most {args.tokens} tokens, "
             f"LoRA r 8 (q, k, v, o), lr {args.lr:g}, KL weight {args.beta:g}, seed {args.seed}; machine: {machine}", "",
             "| | held-out reward | called fresh | distinct-2 | perplexity under the base | KL at the end | "
             "completions/s | peak RSS MB |", "|---|---|---|---|---|---|---|---|"]

    def cells(h: dict) -> str:
        return f"{h['reward']:.3f} | {100 * h['fresh']:.1f}% | {h['distinct_2']:.3f} | {h['ref_perplexity']:.1f}"

    lines.append(f"| before (the base model) | {cells(before)} | | | |")
    for r in rows:
        kls = [c["kl"] for c in r["curve"] if c.get("kl") is not None]
        kl = f"{sum(kls[-5:]) / len(kls[-5:]):.4f}" if kls else "-"
        lines.append(f"| {r['variant']} | {cells(r['held_out'])} | {kl} | "
                     f"{r['completions'] / r['train_seconds']:.2f} | {r['peak_rss_mb']:.0f} |")
    trl = next((r for r in rows if r["variant"] == "trl-grpo"), None)
    ours = next((r for r in rows if r["variant"] == "tunesmith-grpo"), None)
    if trl and ours:
        lines += ["", f"tunesmith-grpo vs trl-grpo: {trl['train_seconds'] / ours['train_seconds']:.2f}x the "
                      f"completions/s, {ours['peak_rss_mb'] / trl['peak_rss_mb']:.2f}x the peak RSS, held-out reward "
                      f"{ours['held_out']['reward'] - trl['held_out']['reward']:+.3f}"]
    lines += ["", "KL at the end: the mean of the last 5 logged steps (grpo: per-token k3 estimate, TRL's too; ppo: "
                  "per-token log-ratio of the sampling policy to the reference)."]
    return "\n".join(lines)


def figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for r in rows:
        steps = [c["step"] for c in r["curve"]]
        top.plot(steps, [c["reward"] for c in r["curve"]], label=r["variant"])
        if any(c.get("kl") is not None for c in r["curve"]):
            bottom.plot(steps, [c.get("kl") or 0.0 for c in r["curve"]], label=r["variant"])
    top.set_ylabel("mean reward of the sampled completions")
    bottom.set_ylabel("KL to the reference")
    bottom.set_xlabel("step")
    top.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def samples_page(before: dict, rows: list[dict]) -> str:
    lines = ["# Held-out completions, greedy, before and after", ""]
    for i, sample in enumerate(before["samples"]):
        lines += [f"**{sample['prompt']}**", "", f"- before: {sample['completion']!r} (reward {sample['reward']:.3f})"]
        for r in rows:
            after = r["held_out"]["samples"][i]
            lines.append(f"- {r['variant']}: {after['completion']!r} (reward {after['reward']:.3f})")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--prompts", type=int, default=4, help="prompts per step")
    p.add_argument("--k", type=int, default=4, help="completions per prompt")
    p.add_argument("--tokens", type=int, default=24, help="max completion length")
    p.add_argument("--test", type=int, default=64, help="held-out prompts")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--beta", type=float, default=0.04, help="KL weight (every side)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--classifier", default=None, help="a classify run with a 'fresh' label (default: trained)")
    p.add_argument("--out", default="runs/bench-online-rl")
    p.add_argument("--rerun", action="store_true", help="train every variant again (default: results of an earlier "
                                                        "invocation with the same settings are read)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        run_child(args)
        return 0
    out = Path(args.out)
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"--variants: {', '.join(sorted(unknown))} not among {', '.join(VARIANTS)}")
    args.classifier = Path(args.classifier) if args.classifier else classifier_run(out)
    machine = machine_line()
    from transformers import AutoModelForCausalLM

    from tunesmith.models.registry import resolve_model_dir

    settings = {name: getattr(args, name) for name in SETTINGS} | {"classifier": str(args.classifier)}
    before_file = out / "results" / "before.json"
    if reusable(before_file, settings, args.rerun):
        before = json.loads(before_file.read_text())
    else:
        print("== the base model on the held-out prompts", file=sys.stderr, flush=True)
        base = AutoModelForCausalLM.from_pretrained(resolve_model_dir(args.model), dtype=torch.float32)
        before = held_out(base, args, args.classifier) | {"settings": settings}
        del base
        before_file.parent.mkdir(parents=True, exist_ok=True)
        before_file.write_text(json.dumps(before))
    child_argv = [f"--{name}={getattr(args, name)}" for name in SETTINGS + ("out",)]
    rows = []
    for variant in variants:
        result = out / "results" / f"{variant}.json"
        if reusable(result, settings, args.rerun):  # a later invocation can add variants or finish a killed one
            print(f"== {variant}: read from {result}", file=sys.stderr, flush=True)
            rows.append(json.loads(result.read_text()))
            continue
        print(f"== {variant}", file=sys.stderr, flush=True)
        row = spawn(args, variant, out, child_argv) | {"settings": settings}
        result.write_text(json.dumps(row))
        rows.append(row)
    text = table(args, before, rows, args.classifier, machine)
    figure(rows, out / "reward_kl.png")
    (out / "samples.md").write_text(samples_page(before, rows))
    args.classifier = str(args.classifier)
    save_results(out, text, machine, args, rows, before=before)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
