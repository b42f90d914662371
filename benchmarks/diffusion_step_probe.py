"""The levers on one LoRA training step of the built-in diffusion base (unet-fmnist, batch 32, LoRA r=8 on
to_q, to_k, to_v, to_out.0, conv1, conv2): each variant times forward, backward and AdamW in its own
process, the UNet alone (no data loading, no loop), and prints the median step and its ratio to the plain
fp32 step.

Variants: fp32 (contiguous, as diffusers' loop runs it), channels-last (tunesmith's), channels-last +
bf16 autocast, contiguous + bf16 autocast, channels-last + LoRA folded into the weight at every step
(one convolution / matmul with W + s*B*A), channels-last + oneDNN's implicit tf32 or bf16 for fp32
convolutions and matmuls.

    .venv/bin/python -m benchmarks.diffusion_step_probe [--steps 8] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

VARIANTS = ("fp32", "channels-last", "channels-last-bf16", "bf16", "channels-last-folded",
            "channels-last-onednn-tf32", "channels-last-onednn-bf16")


def _fold_lora() -> None:
    """LoRA layers compute (W + s*B*A) x in one call instead of W x + s*B(A x)."""
    import torch.nn.functional as F

    from tunesmith.methods.lora_layers import LoraConv, LoraLinear

    def conv(self, x, *args, **kwargs):
        b = self.base_layer
        return b._conv_forward(x, b.weight + self.delta_weight(self.active_adapters[0]), b.bias)

    def linear(self, x, *args, **kwargs):
        b = self.base_layer
        return F.linear(x, b.weight + self.delta_weight(self.active_adapters[0]), b.bias)

    LoraConv.forward, LoraLinear.forward = conv, linear


def time_variant(variant: str, steps: int) -> float:
    from tunesmith.methods.lora_model import inject
    from tunesmith.models.diffusion import load_parts
    from tunesmith.models.diffusion_base import locate_base
    from tunesmith.schema import LoraConfig

    if "onednn" in variant:
        precision = variant.rsplit("-", 1)[1]
        torch.backends.mkldnn.conv.fp32_precision = precision
        torch.backends.mkldnn.matmul.fp32_precision = precision
    unet, _ = load_parts(locate_base())
    unet.requires_grad_(False)
    inject(unet, LoraConfig(r=8, alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"]))
    params = [p for n, p in unet.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    if variant.startswith("channels-last"):
        unet.to(memory_format=torch.channels_last)
    if "folded" in variant:
        _fold_lora()
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x, noise = torch.rand(32, 1, 32, 32, generator=g) * 2 - 1, torch.randn(32, 1, 32, 32, generator=g)
    labels, t = torch.randint(0, 10, (32,), generator=g), torch.randint(0, 1000, (32,), generator=g)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant.endswith("bf16") and "onednn" not in variant):
            pred = unet(x + noise, t, encoder_hidden_states=None, class_labels=labels).sample
        (pred.float() - noise).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()

    for _ in range(3):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variant", choices=VARIANTS, help="time one variant here and print it")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.variant:
        print("RESULT " + json.dumps(time_variant(args.variant, args.steps)), flush=True)
        return 0
    from benchmarks.results import machine_line

    seconds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(args.repeats):  # variants interleaved, so each repeat sees the same machine
        for variant in VARIANTS:
            done = subprocess.run([sys.executable, "-m", "benchmarks.diffusion_step_probe", "--variant", variant,
                                   "--steps", str(args.steps), "--threads", str(args.threads)],
                                  capture_output=True, text=True, check=False)
            line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                raise SystemExit(f"{variant} failed:\n{done.stderr[-3000:]}")
            seconds[variant].append(json.loads(line[7:]))
    base = statistics.median(seconds["fp32"])
    print(f"unet-fmnist + LoRA r=8, batch 32, one step (forward, backward, AdamW); median of {args.steps} steps "
          f"per process, median of {args.repeats} processes per variant; machine: {machine_line()}\n")
    print("| variant | step s | samples/s | vs fp32 |\n|---|---|---|---|")
    for variant, values in seconds.items():
        m = statistics.median(values)
        print(f"| {variant} | {m:.3f} | {32 / m:.1f} | {base / m:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
