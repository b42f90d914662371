"""LoRA on the built-in diffusion base (unet-fmnist) with tunesmith against diffusers' own LoRA training
recipe, on the same digits (mnist-5k), batch, steps, LoRA settings, optimizer and schedule.

The diffusers arm is the loop of diffusers' example scripts (train_text_to_image_lora.py, without the
text encoder and VAE this pixel-space, class-conditioned UNet does not have): the UNet frozen, PEFT LoRA
added with `unet.add_adapter`, per-example PIL preprocessing in a DataLoader (resize, to tensor,
normalise to [-1, 1]), AdamW on the LoRA parameters, noise and timesteps drawn per batch, `mse_loss`
against the scheduler's target, gradient clipping at 1, a cosine schedule with warm-up. The tunesmith
arm is `tunesmith train` with the same settings (validation off while timing).

`--precision bf16` runs both arms under bf16 autocast (the diffusers arm as accelerate's
`mixed_precision="bf16"` does: the forward and loss under torch.autocast, weights and AdamW in fp32).

Each arm runs in its own process (peak RSS is that process's); arms alternate over --repeats and the
table quotes medians. Both final adapters are scored on the same held-out loss: the 500 test digits at
noise and timesteps fixed per image.

    .venv/bin/python -m benchmarks.diffusion_vs_diffusers [--steps 150] [--repeats 3] [--threads 2] [--precision bf16]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.results import machine_line, save_results

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"]


def settings(args: argparse.Namespace) -> dict:
    return {"r": 8, "alpha": 8, "lr": args.lr, "batch": 32, "steps": args.steps, "warmup": 0.05,
            "weight_decay": 0.01, "clip": 1.0}


def held_out_loss(unet, scheduler) -> float:
    """Mean denoising loss on the mnist-5k test digits at noise and timesteps fixed per image."""
    from benchmarks.diffusion_lora import test_digits
    from tunesmith.objectives.denoising import per_image_loss

    x, y = test_digits()
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(x), 100):
            g = torch.Generator().manual_seed(1234 + start)
            xb, yb = x[start : start + 100], y[start : start + 100]
            noise = torch.randn(xb.shape, generator=g)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (len(xb),), generator=g)
            total += float(per_image_loss(unet.eval(), scheduler, xb, yb, noise, t).sum())
    return total / len(x)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_diffusers(args: argparse.Namespace, base: Path) -> dict:
    import numpy as np
    import torch.nn.functional as F
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from diffusers.optimization import get_scheduler
    from peft import LoraConfig
    from PIL import Image

    from tunesmith.config import config_from_dict
    from tunesmith.data.images import load_image_classification, read_image

    s = settings(args)
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_pretrained(base / "unet")
    noise_scheduler = DDPMScheduler.from_pretrained(base / "scheduler")
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=s["r"], lora_alpha=s["alpha"], init_lora_weights="gaussian", target_modules=TARGETS))
    params = [p for p in unet.parameters() if p.requires_grad]
    data = load_image_classification(config_from_dict({"data": {"builtin": "mnist-5k", "split": {"seed": 0}},
                                                       "objective": "image_classify",
                                                       "model": {"name": "efficientnet-lite0"}}).data)
    images = [Image.fromarray(np.asarray(read_image(e))).convert("L") for e in data.train]  # the dataset's images

    def transform(i: int) -> dict:  # as the example's train_transforms: resize, to tensor, normalise
        image = images[i].resize((32, 32), Image.BILINEAR)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).unsqueeze(0)
        return {"pixel_values": (pixels - 0.5) / 0.5, "labels": data.train[i].label}

    loader = torch.utils.data.DataLoader(list(range(len(images))), batch_size=s["batch"], shuffle=True,
                                         collate_fn=lambda idx: torch.utils.data.default_collate([transform(i) for i in idx]),
                                         drop_last=True)
    optimizer = torch.optim.AdamW(params, lr=s["lr"], betas=(0.9, 0.999), weight_decay=s["weight_decay"], eps=1e-8)
    schedule = get_scheduler("cosine", optimizer, num_warmup_steps=round(s["warmup"] * s["steps"]),
                             num_training_steps=s["steps"])
    unet.train()
    step, started = 0, time.perf_counter()
    while step < s["steps"]:
        for batch in loader:
            latents = batch["pixel_values"]
            noise = torch.randn_like(latents)
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],)).long()
            noisy = noise_scheduler.add_noise(latents, noise, timesteps)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
                pred = unet(noisy, timesteps, encoder_hidden_states=None, class_labels=batch["labels"],
                            return_dict=False)[0]
                loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, s["clip"])
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            step += 1
            if step >= s["steps"]:
                break
    seconds = time.perf_counter() - started
    return {"train_seconds": seconds, "samples_per_s": s["steps"] * s["batch"] / seconds,
            "peak_rss_mb": peak_rss_mb(), "held_out_loss": held_out_loss(unet, noise_scheduler),
            "trainable_params": sum(p.numel() for p in params)}


def run_tunesmith(args: argparse.Namespace, base: Path, out: Path) -> dict:
    from tunesmith.config import config_from_dict
    from tunesmith.infer import open_saved
    from tunesmith.run import run

    s = settings(args)
    cfg = {"model": {"name": "unet-fmnist"},
           "method": {"name": "lora", "lora": {"r": s["r"], "alpha": s["alpha"], "init": "gaussian",
                                                "target_modules": TARGETS}},
           "objective": {"name": "diffusion", "samples_per_class": 0},
           "data": {"builtin": "mnist-5k", "split": {"seed": 0}},
           "train": {"batch_size": s["batch"], "lr": s["lr"], "max_steps": s["steps"], "schedule": "cosine",
                     "warmup_ratio": s["warmup"], "weight_decay": s["weight_decay"], "max_grad_norm": s["clip"],
                     "eval_every": 10 * s["steps"], "progress": False, "threads": args.threads, "compile": args.compile,
                     "precision": args.precision,
                     "init_seed": 0, "data_seed": 0, "early_stopping": {"patience": None, "restore_best": False}}}
    summary = run(config_from_dict(cfg, source="benchmark"), out, overwrite=True)
    opened = open_saved(out)
    return {"train_seconds": summary["train_seconds"], "samples_per_s": summary["samples_per_s"],
            "peak_rss_mb": peak_rss_mb(), "held_out_loss": held_out_loss(opened.model, opened.tokenizer.scheduler),
            "trainable_params": summary["trainable_params"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--compile", action="store_true", help="tunesmith arm: train.compile")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="both arms: bf16 autocast or not")
    p.add_argument("--arm", choices=("tunesmith", "diffusers"), help="run one arm here and print its JSON")
    p.add_argument("--out", default="runs/bench-diffusion-vs-diffusers")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from tunesmith.models.diffusion_base import locate_base

    base, out = locate_base(), Path(args.out)
    if args.arm:
        result = run_diffusers(args, base) if args.arm == "diffusers" else run_tunesmith(args, base, out / "run")
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    forwarded = ["--steps", str(args.steps), "--lr", str(args.lr), "--out", str(out), "--precision", args.precision]
    forwarded += (["--threads", str(args.threads)] if args.threads else []) + (["--compile"] if args.compile else [])
    results: dict[str, list[dict]] = {"tunesmith": [], "diffusers": []}
    for i in range(args.repeats):
        for arm in (("diffusers", "tunesmith") if i % 2 else ("tunesmith", "diffusers")):
            done = subprocess.run([sys.executable, "-m", "benchmarks.diffusion_vs_diffusers", "--arm", arm, *forwarded],
                                  capture_output=True, text=True, check=False)
            line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                raise SystemExit(f"{arm} failed:\n{done.stderr[-3000:]}")
            results[arm].append(json.loads(line[7:]))
            print(f"{arm} #{i}: {results[arm][-1]}", file=sys.stderr, flush=True)
    med = {arm: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for arm, rs in results.items()}
    speed = [t["samples_per_s"] / d["samples_per_s"] for t, d in zip(results["tunesmith"], results["diffusers"], strict=True)]
    s = settings(args)
    lines = [f"unet-fmnist + LoRA r={s['r']} alpha={s['alpha']} on {', '.join(TARGETS)}; mnist-5k, batch {s['batch']}, "
             f"{s['steps']} steps, AdamW lr {s['lr']:g} (weight decay {s['weight_decay']}), cosine with "
             f"{s['warmup']:.0%} warm-up, clipping {s['clip']:g}; precision {args.precision} (both arms); tunesmith "
             f"compile: {args.compile}; medians of "
             f"{args.repeats} runs per arm, alternating; machine: {machine_line()}", "",
             "| | samples/s | train s | peak RSS MB | held-out denoising loss | trainable params |",
             "|---|---|---|---|---|---|"]
    for arm in ("tunesmith", "diffusers"):
        m = med[arm]
        lines.append(f"| {arm} | {m['samples_per_s']:.1f} | {m['train_seconds']:.0f} | {m['peak_rss_mb']:.0f} | "
                     f"{m['held_out_loss']:.4f} | {int(m['trainable_params']):,} |")
    lines += ["", f"tunesmith / diffusers samples/s, per pair: {', '.join(f'{x:.2f}x' for x in speed)} "
              f"(median {statistics.median(speed):.2f}x); peak RSS {med['tunesmith']['peak_rss_mb'] / med['diffusers']['peak_rss_mb']:.2f}x"]
    save_results(out, "\n".join(lines), machine_line(), args, [{"arm": a, **r} for a, rs in results.items() for r in rs])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
