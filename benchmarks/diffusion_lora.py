"""LoRA vs full fine-tuning of the built-in diffusion base (unet-fmnist, pretrained on Fashion-MNIST) on
a domain it never saw: the 5,000 MNIST digits (mnist-5k: 4,000 train, 500 validation, 500 test); and a
ControlLoRA-style run that also sees a 4x4-block downsample of each target.

Per arm (each a `tunesmith train` in its own process, so peak memory is its own): trainable parameters,
training time, samples/s, peak RSS, held-out denoising loss (test split, fixed noise); then, from
--per-class samples per digit (DDIM, --sample-steps, seeded), judged by a tunesmith-trained digit
classifier (EfficientNet-Lite0 fine-tuned on the same training digits): the fraction classified as the
digit asked for, and the Frechet distance between the classifier's pooled features of the samples and
of the 500 test digits. The control arm is also scored on how well samples follow their condition:
the mean absolute error between the sample's 4x4-block downsample and the condition made from a test
digit (pixels in [0, 1]), against the LoRA arm's samples for the same digits and seeds.

    .venv/bin/python -m benchmarks.diffusion_lora [--steps 600] [--per-class 50] [--threads 1]

Finished runs under --out are read, not retrained (--rerun to train again).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from benchmarks.results import machine_line, save_results

ARMS = {"base": "the base, not fine-tuned", "lora": "LoRA r=8 (attention + ResNet convs)", "full": "full fine-tuning",
        "control-lora": "ControlLoRA: LoRA r=8 + control encoder (4x4 downsample)"}


def arm_config(arm: str, args: argparse.Namespace) -> dict:
    lora = arm in ("lora", "control-lora")
    cfg = {"model": {"name": "unet-fmnist"},
           "method": {"name": "lora", "lora": {"r": 8, "alpha": 8}} if lora else {"name": "full"},
           "objective": {"name": "diffusion", "samples_per_class": 8, "sample_steps": args.sample_steps},
           "data": {"builtin": "mnist-5k", "split": {"seed": 0}},
           "train": {"batch_size": 32, "lr": args.lora_lr if lora else args.full_lr, "max_steps": args.steps,
                     "schedule": "cosine", "warmup_ratio": 0.05, "weight_decay": 0.0, "eval_every": args.steps // 4,
                     "log_every": 25, "threads": args.threads, "init_seed": 0, "data_seed": 0,
                     "early_stopping": {"patience": None, "restore_best": False}}}
    if arm == "control-lora":
        cfg["objective"] |= {"control": "downsample", "control_factor": 4}
    return cfg


CLASSIFIER = {"model": {"name": "efficientnet-lite0", "image_size": 32}, "method": {"name": "full"},
              "objective": "image_classify", "data": {"builtin": "mnist-5k", "split": {"seed": 0}},
              "train": {"epochs": 4, "batch_size": 64, "lr": 2e-3, "schedule": "cosine", "warmup_ratio": 0.05,
                        "eval_every": "epoch", "init_seed": 0, "data_seed": 0,
                        "early_stopping": {"metric": "val_accuracy", "restore_best": True}}}


def train(cfg: dict, out: Path, rerun: bool) -> dict:
    if (out / "summary.json").exists() and not rerun:
        return json.loads((out / "summary.json").read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    config = out.with_suffix(".yaml")
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    subprocess.run([sys.executable, "-m", "tunesmith", "train", str(config), "--out", str(out), "--overwrite"],
                   check=True)
    return json.loads((out / "summary.json").read_text())


class Judge:
    """The digit classifier: predicted digit and pooled features of model-space images in [-1, 1]."""

    def __init__(self, run_dir: Path) -> None:
        from tunesmith.infer import open_saved

        opened = open_saved(run_dir)
        self.model, self.prep, self.names = opened.model.eval(), opened.tokenizer, opened.label_names
        head = json.loads((run_dir / "model" / "tunesmith.json").read_text()).get("head") if (
            run_dir / "model" / "tunesmith.json").exists() else None
        self.head = dict(self.model.named_modules())[head or "_fc"]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> tuple[list[str], np.ndarray]:
        import torch.nn.functional as F

        grey = (x.clamp(-1, 1) + 1) / 2  # [0, 1], (n, 1, h, w)
        rgb = F.interpolate(grey.expand(-1, 3, -1, -1), size=(self.prep.size, self.prep.size), mode="bilinear",
                            align_corners=False)
        mean, std = torch.tensor(self.prep.mean).view(1, -1, 1, 1), torch.tensor(self.prep.std).view(1, -1, 1, 1)
        seen = []
        hook = self.head.register_forward_hook(lambda m, inp, out: seen.append(inp[0].flatten(1)))
        labels, feats = [], []
        try:
            for start in range(0, len(rgb), 128):
                out = self.model((rgb[start : start + 128] - mean) / std)
                logits = out.logits if hasattr(out, "logits") else out
                labels += [self.names[i] for i in logits.argmax(-1).tolist()]
                feats.append(seen.pop().double())
        finally:
            hook.remove()
        return labels, torch.cat(feats).numpy()


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(m)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (FID's formula); the trace of
    sqrt(cov_a cov_b) is taken as that of sqrt(s cov_b s), s = sqrt(cov_a), which is symmetric."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    s = _psd_sqrt(cov_a)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(s @ cov_b @ s), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)


def test_digits(limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The mnist-5k test split, as the runs see it: model-space (n, 1, 32, 32) and labels."""
    from tunesmith.config import config_from_dict
    from tunesmith.data.images import load_image_classification, read_image
    from tunesmith.objectives.denoising import to_model_input
    from tunesmith.objectives.image_classify import to_pixels

    cfg = config_from_dict({"data": {"builtin": "mnist-5k", "split": {"seed": 0}}, "objective": "image_classify",
                            "model": {"name": "efficientnet-lite0"}})
    data = load_image_classification(cfg.data)
    examples = data.test[:limit] if limit else data.test
    x = to_model_input([to_pixels(read_image(e), 32) for e in examples], 32, 1)
    return x, torch.tensor([e.label for e in examples])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--lora-lr", type=float, default=2e-3)
    p.add_argument("--full-lr", type=float, default=5e-4)
    p.add_argument("--per-class", type=int, default=50, help="samples per digit judged by the classifier")
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--judge-epochs", type=float, default=4, help="epochs of the digit classifier")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--rerun", action="store_true")
    p.add_argument("--out", default="runs/bench-diffusion-lora")
    p.add_argument("--figures", default="docs/images", help="where the sample grids go")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out, started = Path(args.out), time.perf_counter()
    from tunesmith.models.diffusion_base import locate_base

    base_dir = locate_base()
    judge_cfg = CLASSIFIER | {"train": CLASSIFIER["train"] | {"threads": args.threads, "epochs": args.judge_epochs}}
    judge_summary = train(judge_cfg, out / "classifier", args.rerun)
    judge = Judge(out / "classifier")
    real_x, real_y = test_digits()
    _, real_feats = judge(real_x)

    from tunesmith.models.control import condition_of, set_condition
    from tunesmith.objectives.denoising import sample
    from tunesmith.sampling import open_sampler

    rows, grids = [], {}
    labels = torch.arange(10).repeat_interleave(args.per_class)
    for arm in [a for a in args.arms.split(",") if a]:
        summary = None if arm == "base" else train(arm_config(arm, args), out / arm, args.rerun)
        unet, parts = open_sampler(str(base_dir) if arm == "base" else str(out / arm))
        t0 = time.perf_counter()
        drawn = sample(unet, parts.scheduler, labels, 32, 1, args.sample_steps, seed=0)
        sample_s = time.perf_counter() - t0
        said, feats = judge(drawn)
        row = {"arm": arm, "what": ARMS[arm],
               "class_accuracy": float(np.mean([s == str(int(y)) for s, y in zip(said, labels.tolist(), strict=True)])),
               "frechet": frechet(feats, real_feats), "sample_seconds": round(sample_s, 1)}
        if summary is not None:
            row |= {"trainable_params": summary["trainable_params"], "train_seconds": summary["train_seconds"],
                    "samples_per_s": summary["samples_per_s"], "peak_rss_mb": summary["peak_rss_mb"],
                    "test_loss": summary["final"]["test_loss"], "val_loss": summary["final"]["val_loss"]}
        grids[arm] = drawn.view(10, args.per_class, 1, 32, 32)[:, :8]
        rows.append(row)
        if arm == "control-lora":  # follows its condition? against the LoRA arm on the same digits and seeds
            n = min(len(real_x), 10 * args.per_class)
            cond = condition_of(real_x[:n], "downsample", 4)
            set_condition(unet, None)
            ctl = sample(unet, parts.scheduler, real_y[:n], 32, 1, args.sample_steps, seed=1, control=cond)
            row["condition_error"] = float((condition_of(ctl, "downsample", 4) - cond).abs().mean() / 2)
            row["condition_class_accuracy"] = float(np.mean([s == str(int(y)) for s, y in
                                                             zip(judge(ctl)[0], real_y[:n].tolist(), strict=True)]))
            free_unet, free_parts = open_sampler(str(out / "lora"))
            free = sample(free_unet, free_parts.scheduler, real_y[:n], 32, 1, args.sample_steps, seed=1)
            row["unconditioned_condition_error"] = float((condition_of(free, "downsample", 4) - cond).abs().mean() / 2)
            grids["control-targets"] = real_x[:8]
            grids["control-conditions"] = cond[:8]
            grids["control-samples"] = ctl[:8]
            grids["control-unconditioned"] = free[:8]
    write_figures(grids, Path(args.figures))
    lines = [f"unet-fmnist ({base_dir}) fine-tuned on mnist-5k (4,000 training digits, 32x32 grey), {args.steps} steps "
             f"of batch 32, AdamW, cosine schedule; LoRA lr {args.lora_lr:g}, full lr {args.full_lr:g}; samples: "
             f"{args.per_class} per digit, DDIM {args.sample_steps} steps, seed 0; judge: EfficientNet-Lite0 "
             f"fine-tuned on the same digits (test accuracy {judge_summary['final']['test_accuracy']:.4f}); Frechet "
             f"distance on its pooled features against the 500 test digits; machine: {machine_line()}", "",
             "| arm | trainable params | train s | samples/s | peak RSS MB | test denoising loss | samples of the "
             "digit asked for | Frechet distance |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        trained = (f"{r['trainable_params']:,} | {r['train_seconds']:.0f} | {r['samples_per_s']:.1f} | "
                   f"{r['peak_rss_mb']:.0f} | {r['test_loss']:.4f}") if "test_loss" in r else "- | - | - | - | -"
        lines.append(f"| {r['what']} | {trained} | {r['class_accuracy']:.1%} | {r['frechet']:.1f} |")
    ctl = next((r for r in rows if "condition_error" in r), None)
    if ctl:
        lines += ["", f"ControlLoRA, conditions from the first {10 * args.per_class} test digits (seed 1): mean absolute "
                  f"error of the samples' 4x4-block downsample against the condition {ctl['condition_error']:.4f} "
                  f"(the LoRA arm without control, same digits and seeds: {ctl['unconditioned_condition_error']:.4f}); "
                  f"samples classified as the digit of their condition: {ctl['condition_class_accuracy']:.1%}"]
    lines += ["", f"{(time.perf_counter() - started) / 60:.0f} min in this invocation"]
    save_results(out, "\n".join(lines), machine_line(), args, rows)
    return 0


def write_figures(grids: dict[str, torch.Tensor], folder: Path) -> None:
    """docs/images/diffusion_mnist_samples.png (a row per digit and arm) and, with the control arm,
    diffusion_control.png (targets, conditions, conditioned samples, unconditioned samples)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    arms = [a for a in ARMS if a in grids and a != "control-lora"]  # its samples need conditions: the next figure
    fig, axes = plt.subplots(1, len(arms), figsize=(3 * len(arms), 3.4))
    for ax, arm in zip(np.atleast_1d(axes), arms, strict=True):
        g = grids[arm]  # (10, 8, 1, 32, 32)
        picture = g[:, :, 0].permute(0, 2, 1, 3).reshape(320, 32 * g.shape[1])
        ax.imshow(((picture + 1) / 2).clamp(0, 1).numpy(), cmap="gray")
        ax.set_title(arm, fontsize=10)
        ax.axis("off")
    fig.suptitle("unet-fmnist fine-tuned on MNIST digits: 8 samples per digit (rows 0-9)", fontsize=10)
    fig.tight_layout()
    fig.savefig(folder / "diffusion_mnist_samples.png", dpi=110)
    plt.close(fig)
    if "control-samples" in grids:
        names = ["control-targets", "control-conditions", "control-samples", "control-unconditioned"]
        rows = torch.cat([grids[n] for n in names])  # (32, 1, 32, 32)
        image = rows[:, 0].view(4, 8, 32, 32).permute(0, 2, 1, 3).reshape(128, 256)
        fig, ax = plt.subplots(figsize=(6, 3.4))
        ax.imshow(((image + 1) / 2).clamp(0, 1).numpy(), cmap="gray")
        ax.set_yticks([16, 48, 80, 112], ["test digit", "condition", "ControlLoRA", "LoRA, no control"], fontsize=8)
        ax.set_xticks([])
        fig.tight_layout()
        fig.savefig(folder / "diffusion_control.png", dpi=110)
        plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
