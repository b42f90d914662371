"""Does torch.compile help tunesmith's training steps on this machine? Eager vs regional compile.

    .venv/bin/python -m benchmarks.compile_probe --case minilm-lora [--steps 40] [--repeats 3] [--out DIR]

For a case of `benchmarks.anchor`, builds tunesmith's model, method and batches (length-grouped, as a
run trains), then times the same optimizer steps eager and with every repeated block compiled
(`tunesmith.train.compile.compile_blocks`, dynamic shapes). Each mode runs in its own process with the
same seed, alternating; reports the first-pass time (compilation included), the median step time after
it, and the break-even: how many steps the compiled run needs before its compile time is paid back.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.cases import get_case, run_config

ROOT = Path(__file__).resolve().parents[1]


def measure(case_name: str, mode: str, steps: int, seed: int) -> dict:
    from tunesmith.config import config_from_dict
    from tunesmith.methods import METHODS
    from tunesmith.objectives import build_objective
    from tunesmith.train.compile import compile_blocks
    from tunesmith.train.optim import build_optimizer
    from tunesmith.train.step import epoch_batches

    case = get_case(case_name)
    cfg = config_from_dict(run_config(case.setup, case.objective, seed), source="compile probe")
    objective = build_objective(cfg)
    data = objective.load_data(cfg)
    loaded = objective.load_model(cfg, data)
    METHODS[cfg.method.name]().apply(loaded, cfg.method)
    model = loaded.model
    items, _ = objective.encode(data.train, loaded.tokenizer, cfg.model.max_length)
    pad_id = getattr(loaded.tokenizer, "pad_token_id", None)
    lengths = [len(it.input_ids) for it in items] if hasattr(items[0], "input_ids") else None
    batches = epoch_batches(len(items), cfg.train.batch_size, seed, 0, lengths)
    while len(batches) < steps:
        batches += batches
    compiled = compile_blocks(model) if mode == "compiled" else 0
    optimizer = build_optimizer(model, cfg.train, set(loaded.head_params))
    model.train()
    times, losses = [], []
    for ids in batches[:steps]:
        batch = objective.collate([items[i] for i in ids], pad_id, train=True)
        start = time.perf_counter()
        (count,) = objective.counts(batch).values()
        loss = objective.loss_sum(model, batch) / count
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
    return {"mode": mode, "blocks": compiled, "times": times, "losses": losses}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--case", default="minilm-lora")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="runs/compile-probe")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(measure(a.case, a.child, a.steps, a.seed)))
        return 0
    results: dict[str, list[dict]] = {"eager": [], "compiled": []}
    for r in range(a.repeats):
        for mode in (["eager", "compiled"] if r % 2 == 0 else ["compiled", "eager"]):
            out = subprocess.run([sys.executable, "-m", "benchmarks.compile_probe", "--case", a.case, "--steps",
                                  str(a.steps), "--child", mode, "--seed", "0"], cwd=ROOT, capture_output=True,
                                 text=True)
            if out.returncode != 0:
                raise SystemExit(f"{mode} failed:\n{out.stderr[-3000:]}")
            results[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"{mode}: first step {results[mode][-1]['times'][0]:.1f} s, median after "
                  f"{statistics.median(results[mode][-1]['times'][5:]):.3f} s", file=sys.stderr, flush=True)
    first = {m: statistics.median(r["times"][0] for r in rs) for m, rs in results.items()}
    warm = {m: statistics.median(statistics.median(r["times"][5:]) for r in rs) for m, rs in results.items()}
    # compile happens in every new shape's first step; count all steps of the first pass over shapes
    total = {m: statistics.median(sum(r["times"]) for r in rs) for m, rs in results.items()}
    gain = warm["eager"] - warm["compiled"]
    overhead = total["compiled"] - total["eager"] + gain * a.steps
    same_loss = max(abs(x - y) for x, y in zip(results["eager"][0]["losses"], results["compiled"][0]["losses"],
                                                strict=True))
    lines = [f"machine: {platform()}; case {a.case}; {a.steps} optimizer steps x {a.repeats} repeats per mode "
             f"(medians); {results['compiled'][0]['blocks']} blocks compiled (dynamic shapes)", "",
             "| mode | first step s | median step s (after 5) | total s |", "|---|---|---|---|"]
    lines += [f"| {m} | {first[m]:.1f} | {warm[m]:.3f} | {total[m]:.1f} |" for m in ("eager", "compiled")]
    lines += ["", f"steady-state speed-up {warm['eager'] / warm['compiled']:.2f}x; compile overhead ~{overhead:.0f} s; "
              + (f"break-even after ~{overhead / gain:.0f} steps" if gain > 0 else "never breaks even")
              + f"; max |loss difference| over the steps {same_loss:.2e} (dropout masks differ: inductor draws "
              "its own random numbers)"]
    text = "\n".join(lines)
    print(text)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{a.case}.md").write_text(text + "\n")
    (out / f"{a.case}.json").write_text(json.dumps(results))
    return 0


def platform() -> str:
    from benchmarks.anchor import machine

    return machine()


if __name__ == "__main__":
    raise SystemExit(main())
