"""How far fine-tuning moved the features, in and out of distribution (Kumar et al., 2022).

LP-FT's argument: full fine-tuning with a random head changes the features of in-distribution inputs
while those of out-of-distribution inputs move less, so the head learns on features that OOD inputs no
longer share; a good head first (the linear probe) keeps the early gradients, and with them the
distortion, small. This measures it for every finished run of a `tunesmith compare` directory: the
features the head reads (its input: the pooled vector), for each text of the run's test set (ID) and
of each extra eval set (OOD), before (the pretrained checkpoint) and after fine-tuning; per set, the
mean over texts of ||after - before|| / ||before||.

    .venv/bin/python -m benchmarks.feature_distortion runs/compare-20ng-mean [--out DIR]

Each run's figures are kept in its directory (feature_distortion.json) and read back next time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from benchmarks.results import machine_line, save_results


@torch.inference_mode()
def features(model: torch.nn.Module, tokenizer, texts: list[str], max_length: int, num_labels: int) -> torch.Tensor:
    from tunesmith.objectives.cosine import capture_input, feature_module

    head = feature_module(model, num_labels)
    out = []
    for at in range(0, len(texts), 64):
        batch = tokenizer(texts[at : at + 64], truncation=True, max_length=max_length, padding=True,
                          return_tensors="pt")
        with capture_input(head) as held:
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        out.append(held[0].float())
    return torch.cat(out)


def relative_change(after: torch.Tensor, before: torch.Tensor) -> float:
    return float(((after - before).norm(dim=-1) / before.norm(dim=-1).clamp_min(1e-12)).mean())


def main(argv: list[str] | None = None) -> int:
    from tunesmith.infer import open_saved

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("compare_dir", help="a `tunesmith compare` output directory (STRATEGY/seed-N run dirs)")
    p.add_argument("--out", default=None, help="where results.md / results.json go (default: COMPARE_DIR/distortion)")
    args = p.parse_args(argv)
    root = Path(args.compare_dir)
    runs = sorted(d for d in root.glob("*/seed-*") if (d / "summary.json").exists())
    if not runs:
        print(f"error: {root} holds no finished runs (STRATEGY/seed-N/summary.json)", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    before_cache: dict[tuple, dict[str, torch.Tensor]] = {}
    rows = []
    for run_dir in runs:
        cached = run_dir / "feature_distortion.json"  # a run measured by an earlier invocation is read back
        if cached.exists():
            rows.append(json.loads(cached.read_text()))
            continue
        opened = open_saved(run_dir)
        cfg, label_names = opened.cfg, opened.label_names
        data = opened.objective.load_data(cfg)
        sets = {"id": [e.text for e in data.test]} | {name: [e.text for e in rows_]
                                                      for name, rows_ in data.eval_sets.items()}
        key = (cfg.model.name, cfg.model.pooling, cfg.model.max_length, tuple(len(t) for t in sets.values()))
        if key not in before_cache:  # the pretrained encoder: the head is new, but its input is not
            pretrained = opened.objective.load_model(cfg, SimpleNamespace(label_names=label_names)).model.eval()
            before_cache[key] = {name: features(pretrained, opened.tokenizer, texts, cfg.model.max_length,
                                                len(label_names)) for name, texts in sets.items()}
        before = before_cache[key]
        row = {"strategy": run_dir.parent.name, "seed": int(run_dir.name.split("-")[-1])}
        for name, texts in sets.items():
            after = features(opened.model, opened.tokenizer, texts, cfg.model.max_length, len(label_names))
            row[name] = relative_change(after, before[name])
        rows.append(row)
        cached.write_text(json.dumps(row))
        print(f"   {row}", file=sys.stderr, flush=True)
    names = [k for k in rows[0] if k not in ("strategy", "seed")]
    lines = [f"feature change ||after - before|| / ||before|| of the head's input, mean over texts; {len(runs)} runs "
             f"from {root}; machine: {machine_line()}", "",
             "| strategy | runs | " + " | ".join(f"{n} change" for n in names) + " | "
             + " | ".join(f"{n} / id" for n in names[1:]) + " |",
             "|---|---|" + "---|" * (2 * len(names) - 1)]
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        mine = [r for r in rows if r["strategy"] == strategy]
        cells = []
        for n in names:
            values = [r[n] for r in mine]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.fmean(values):.3f} ± {std:.3f}")
        ratios = [f"{statistics.fmean(r[n] / r['id'] if r['id'] else 0.0 for r in mine):.2f}" for n in names[1:]]
        lines.append(f"| {strategy} | {len(mine)} | " + " | ".join(cells + ratios) + " |")
    save_results(Path(args.out or root / "distortion"), "\n".join(lines), machine_line(), args, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
