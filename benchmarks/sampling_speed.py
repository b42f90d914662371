"""What batching prompts of different lengths together buys when sampling completions (the online RL
objectives' rollouts).

    .venv/bin/python -m benchmarks.sampling_speed [--repeats 3] [--tokens 24] [--copies 4] [--out runs/bench-sampling]

SmolLM2-135M with a LoRA adapter (r 8 on q, k, v, o; B drawn at random so the adapter is not a no-op)
samples `--copies` completions of each of four review openings of different token lengths, as a GRPO
step of 4 prompts x 4 generations does. Variants, alternating within each repeat (A B, then B A):
- `padded`: what generation does: one left-padded batch;
- `by length`: only prompts of equal length batched together (one batch per length).
Prints seconds per rollout (median) and each variant's speed relative to `by length` (median of the
per-repeat ratios).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from benchmarks.results import machine_line, save_results

OPENINGS = ["The film is a", "Despite its flaws, this", "An utterly charming and", "It's hard to imagine anyone"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tokens", type=int, default=24)
    p.add_argument("--copies", type=int, default=4, help="completions per opening")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--out", default="runs/bench-sampling")
    args = p.parse_args(argv)

    from tunesmith import generate as G
    from tunesmith.config import LoraConfig, MethodConfig
    from tunesmith.methods import METHODS
    from tunesmith.models import load_causal_lm
    from tunesmith.models.registry import resolve_model_dir

    loaded = load_causal_lm(resolve_model_dir(args.model), 0)
    METHODS["lora"]().apply(loaded, MethodConfig(name="lora", lora=LoraConfig(
        r=8, alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])))
    model, tokenizer = loaded.model, loaded.tokenizer
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.01)
    prompts = [tokenizer(t, add_special_tokens=True)["input_ids"] for t in OPENINGS for _ in range(args.copies)]
    cfg = G.GenerationConfig(max_new_tokens=args.tokens, temperature=1.0, seed=0)
    stops = G.eos_ids(model, tokenizer)
    pads_left = G.pads_left
    variants = {"padded": pads_left, "by length": lambda m: False}
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(args.repeats):
        for name in names if repeat % 2 == 0 else reversed(names):
            G.pads_left = variants[name]
            start = time.perf_counter()
            with G.evaluating(model):
                G.generate_many(model, prompts, stops, cfg, torch.device("cpu"), batch_size=len(prompts))
            times[name].append(time.perf_counter() - start)
    G.pads_left = pads_left
    machine = machine_line()
    lengths = sorted({len(p) for p in prompts})
    lines = [f"{len(prompts)} completions of at most {args.tokens} tokens ({args.copies} per opening; prompt lengths "
             f"{', '.join(map(str, lengths))} tokens), {args.model} + LoRA r 8 (q, k, v, o), {args.repeats} repeats; "
             f"machine: {machine}", "", "| variant | seconds per rollout (median) | speed vs by length |", "|---|---|---|"]
    rows = []
    for name in names:
        ratio = statistics.median(b / a for a, b in zip(times[name], times["by length"], strict=True))
        rows.append({"variant": name, "seconds": times[name], "speed_vs_by_length": ratio})
        lines.append(f"| {name} | {statistics.median(times[name]):.2f} | {ratio:.2f}x |")
    save_results(Path(args.out), "\n".join(lines), machine, args, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
