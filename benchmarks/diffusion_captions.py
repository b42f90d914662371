"""Text to image, end to end on this CPU: a small caption-conditioned pipeline (a cross-attention UNet, a
frozen random CLIP text encoder and a word tokenizer, written as a diffusers folder) trained by
`tunesmith train` on MNIST digits captioned "a handwritten digit three", then asked for each digit by
prompt with and without classifier-free guidance.

No pretrained text-to-image weights install offline, so this trains one from scratch: it measures that the
caption path learns (the UNet reads the digit from the text encoder's states through cross-attention)
and what guidance does, not the quality of a real Stable Diffusion fine-tune. Samples are judged by the
digit classifier of benchmarks/diffusion_lora.py (trained there, or here if missing): the share that
shows the digit the prompt names, and a Frechet distance on the classifier's features against the test
digits.

    .venv/bin/python -m benchmarks.diffusion_captions [--steps 1200] [--threads 2] [--per-digit 25]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.diffusion_lora import CLASSIFIER, Judge, frechet, test_digits, train
from benchmarks.results import machine_line, save_results
from tunesmith.models.diffusion_base import UNET_CONFIG, init_caption_pipeline

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# unet-fmnist's layout with cross-attention (to the caption) at 8x8 and in the middle instead of self-attention
UNET_CHANGES = {"down_block_types": ["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"],
                "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
                "mid_block_type": "UNetMidBlock2DCrossAttn", "num_class_embeds": None, "cross_attention_dim": 64}


def caption(digit: int) -> str:
    return f"a handwritten digit {DIGITS[digit]}"


def write_digits(folder: Path) -> Path:
    """mnist-5k's training digits as PNG files and captions.jsonl (path, text)."""
    from PIL import Image

    from tunesmith.config import config_from_dict
    from tunesmith.data.images import load_image_classification, read_image

    rows_file = folder / "captions.jsonl"
    if rows_file.exists():
        return rows_file
    data = load_image_classification(config_from_dict({"data": {"builtin": "mnist-5k", "split": {"seed": 0}},
                                                       "objective": "image_classify",
                                                       "model": {"name": "efficientnet-lite0"}}).data)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, e in enumerate(data.train):
        Image.fromarray(read_image(e)[..., 0]).save(folder / "img" / f"{i}.png")
        rows.append({"path": f"img/{i}.png", "text": caption(int(data.label_names[e.label]))})
    rows_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows_file


def run_config(pipe: Path, rows: Path, args: argparse.Namespace) -> dict:
    return {"model": {"name": str(pipe)}, "method": {"name": "full"},
            "objective": {"name": "diffusion", "caption_dropout": 0.1, "samples_per_class": 8, "sample_steps": 30,
                          "guidance_scale": 2.0},
            "data": {"train": str(rows), "split": {"seed": 0, "validation": 0.05, "test": 0.05}},
            "train": {"batch_size": 64, "lr": 1e-3, "max_steps": args.steps, "warmup_ratio": 0.02, "schedule": "cosine",
                      "weight_decay": 0.0, "eval_every": max(1, args.steps // 4), "log_every": 50,
                      "threads": args.threads, "init_seed": 0, "data_seed": 0,
                      "early_stopping": {"patience": None, "restore_best": False}}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--per-digit", type=int, default=25, help="samples per digit and guidance scale")
    p.add_argument("--sample-steps", type=int, default=30)
    p.add_argument("--guidance", default="1,2,4", help="classifier-free guidance scales to compare")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rerun", action="store_true")
    p.add_argument("--out", default="runs/bench-diffusion-captions")
    p.add_argument("--judge", default="runs/bench-diffusion-lora/classifier", help="the digit classifier's run")
    p.add_argument("--figures", default="docs/images")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out, started = Path(args.out), time.perf_counter()
    pipe = out / "pipe"
    if not (pipe / "unet").is_dir():
        init_caption_pipeline(pipe, ["a", "handwritten", "digit", *DIGITS], UNET_CONFIG | UNET_CHANGES, width=64)
    rows = write_digits(out / "data")
    summary = train(run_config(pipe, rows, args), out / "run", args.rerun)
    judge_dir = Path(args.judge)
    judge_summary = train(CLASSIFIER | {"train": CLASSIFIER["train"] | {"threads": args.threads}}, judge_dir, False)
    judge = Judge(judge_dir)
    real_x, _ = test_digits()
    _, real_feats = judge(real_x)

    from tunesmith.objectives.denoising import sample_captions
    from tunesmith.sampling import open_sampler

    unet, parts = open_sampler(str(out / "run"))
    prompts = [caption(d) for d in range(10)]
    truth = [str(d) for d in range(10) for _ in range(args.per_digit)]
    results, grids = [], {}
    for scale in [float(s) for s in args.guidance.split(",")]:
        t0 = time.perf_counter()
        drawn = sample_captions(unet, parts, prompts, args.per_digit, args.sample_steps, 0, guidance_scale=scale)
        said, feats = judge(drawn)
        results.append({"guidance_scale": scale, "sample_seconds": round(time.perf_counter() - t0, 1),
                        "digit_accuracy": float(np.mean([s == t for s, t in zip(said, truth, strict=True)])),
                        "frechet": frechet(feats, real_feats)})
        grids[scale] = drawn.view(10, args.per_digit, 1, 32, 32)[:, :8]
    write_figure(grids, Path(args.figures))
    lines = [f"a caption-conditioned UNet ({sum(p.numel() for p in unet.parameters()):,} parameters; unet-fmnist's "
             "layout with cross-attention at 8x8 and in the middle) and a frozen random-init CLIP text encoder "
             f"(2 layers, width 64), trained from scratch by tunesmith on mnist-5k's {summary['data']['counts']['train']:,} "
             f"training digits captioned 'a handwritten digit three': {args.steps} steps of batch 64, AdamW lr "
             f"1e-3, cosine, caption_dropout 0.1 ({summary['train_seconds'] / 60:.1f} min, test denoising loss "
             f"{summary['final']['test_loss']:.4f}); samples: {args.per_digit} per digit prompt, DDIM "
             f"{args.sample_steps} steps, seed 0; judge: the digit classifier (test accuracy "
             f"{judge_summary['final']['test_accuracy']:.4f}); machine: {machine_line()}", "",
             "| guidance scale | samples showing the digit the prompt names | Frechet distance to the test digits | "
             "sampling s |", "|---|---|---|---|"]
    lines += [f"| {r['guidance_scale']:g} | {r['digit_accuracy']:.1%} | {r['frechet']:.1f} | {r['sample_seconds']:.0f} |"
              for r in results]
    lines += ["", f"{(time.perf_counter() - started) / 60:.0f} min in this invocation"]
    save_results(out, "\n".join(lines), machine_line(), args, results)
    return 0


def write_figure(grids: dict[float, torch.Tensor], folder: Path) -> None:
    """docs/images/diffusion_captions.png: 8 samples per digit prompt (rows), one panel per guidance scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(grids), figsize=(3 * len(grids), 3.4))
    for ax, (scale, g) in zip(np.atleast_1d(axes), grids.items(), strict=True):
        picture = g[:, :, 0].permute(0, 2, 1, 3).reshape(320, 32 * g.shape[1])
        ax.imshow(((picture + 1) / 2).clamp(0, 1).numpy(), cmap="gray")
        ax.set_title(f"guidance {scale:g}", fontsize=10)
        ax.axis("off")
    fig.suptitle('prompts "a handwritten digit zero" ... "nine" (rows), 8 samples each', fontsize=10)
    fig.tight_layout()
    fig.savefig(folder / "diffusion_captions.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
