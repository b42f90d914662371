"""Same steps? tunesmith against its anchor with the randomness taken out.

    .venv/bin/python -m benchmarks.same_steps --case efficientnet-freeze [--train 512] [--epochs 1]

Seeds alone cannot show that two trainers compute the same thing: on these small held-out sets two runs
that differ only in the shuffle or the dropout masks land a point or more apart. So this runs a case of
`benchmarks.anchor` once per side with both sources of chance removed: dropout (and EfficientNet's drop
connect) off, and the anchor fed tunesmith's own batches. What is left is the arithmetic of each side's
training step (loss, gradient clipping, AdamW, schedule, frozen parts). Prints the training loss of every
step side by side, the largest relative difference, and both held-out metrics.

Warmup is off here, on both sides: the one place where tunesmith differs by design. Its warmup starts
at lr/(w+1) and reaches lr at step w; Hugging Face's (and torchtune's) starts at 0, so their first step
moves no weight.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def no_dropout() -> None:
    """Turn off every dropout the cases' models use, in this process, for both sides alike."""
    from torch import nn
    from transformers import PreTrainedModel

    def zero(model: nn.Module) -> nn.Module:
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
            for name in ("dropout_prob", "attention_dropout"):  # attention dropout applied inside sdpa
                if isinstance(getattr(module, name, None), float):
                    setattr(module, name, 0.0)
        return model

    load = PreTrainedModel.from_pretrained.__func__

    def from_pretrained(cls, *args, **kwargs):
        out = load(cls, *args, **kwargs)
        zero(out[0] if isinstance(out, tuple) else out)
        return out

    PreTrainedModel.from_pretrained = classmethod(from_pretrained)
    nn.Dropout.forward = lambda self, x: x  # the image models' head dropout
    try:
        import efficientnet_lite_pytorch.model as efficientnet

        efficientnet.drop_connect = lambda x, p, training: x
    except ImportError:
        pass


def child(case_name: str, side: str, sizes: dict, out: Path) -> dict:
    from benchmarks.cases import get_case

    no_dropout()
    case = get_case(case_name, **sizes)
    runner = case.variants["same-order" if side == "anchor" else "tunesmith"]
    return runner(case.setup, 0, out, step_losses=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--case", default="efficientnet-freeze")
    p.add_argument("--train", type=int, default=512)
    p.add_argument("--test", type=int, default=500)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--model", help="another model (name or local HF directory) for the same job")
    p.add_argument("--out", default="runs/same-steps")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    sizes = {"train": a.train, "test": a.test, "epochs": a.epochs, "model": a.model, "warmup_ratio": 0.0}
    out = Path(a.out).resolve()
    if a.child:
        print(json.dumps(child(a.case, a.child, sizes, out / a.child)))
        return 0
    from benchmarks.anchor import machine
    from benchmarks.cases import get_case

    case = get_case(a.case, **sizes)
    sides = {}
    for side in ("anchor", "tunesmith"):
        print(f"== {side}", file=sys.stderr, flush=True)
        run = subprocess.run([sys.executable, "-m", "benchmarks.same_steps", "--case", a.case, "--train", str(a.train),
                              "--test", str(a.test), "--epochs", str(a.epochs), "--out", str(out), "--child", side]
                             + (["--model", a.model] if a.model else []),
                             cwd=ROOT, capture_output=True, text=True)
        if run.returncode != 0:
            raise SystemExit(f"{side} failed:\n{run.stderr[-3000:]}")
        sides[side] = json.loads(run.stdout.strip().splitlines()[-1])
    a_loss, t_loss = sides["anchor"]["step_losses"], sides["tunesmith"]["step_losses"]
    if len(a_loss) != len(t_loss):
        raise SystemExit(f"the sides took different numbers of steps: {len(a_loss)} vs {len(t_loss)}")
    rel = [abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a_loss, t_loss, strict=True)]
    metric = case.metric
    lines = [f"machine: {machine()}",
             f"### same steps: {case.name} ({case.title}), {a.train} training samples x {a.epochs:g} epoch(s), "
             f"dropout and warmup off, the anchor ({case.anchor}) fed tunesmith's batches, seed 0", "",
             "| step | anchor loss | tunesmith loss | relative difference |", "|---|---|---|---|"]
    for i, (x, y, r) in enumerate(zip(a_loss, t_loss, rel, strict=True)):
        if i < 5 or i >= len(rel) - 3 or i % max(1, len(rel) // 8) == 0:
            lines.append(f"| {i + 1} | {x:.5f} | {y:.5f} | {r:.1e} |")
    lines += ["", f"largest relative loss difference over {len(rel)} steps: {max(rel):.1e} (step {rel.index(max(rel)) + 1}); "
              f"held-out {metric}: anchor {sides['anchor']['metrics'][metric]:.4f}, "
              f"tunesmith {sides['tunesmith']['metrics'][metric]:.4f}"]
    text = "\n".join(lines)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{case.name}.md").write_text(text + "\n")
    (out / f"{case.name}.json").write_text(json.dumps(sides | {"max_relative_difference": max(rel)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
