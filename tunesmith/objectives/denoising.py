"""The arithmetic of denoising diffusion on a diffusers UNet: the forward process's targets, the
per-image loss, min-SNR weights, sampling, and images to and from the model's [-1, 1] space. Plain
functions, shared by the diffusion objective, `tunesmith sample` and the benchmarks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.errors import TunesmithError
from tunesmith.fastpath import no_autograd

_EVAL_SEED = 20_231_204  # fixed noise for validation: the same images see the same noise at every evaluation


def seeded_draws(seeds: list[int], shape, num_timesteps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise of `shape`, a timestep) per image, each from its own seed: what an image draws does not
    depend on the batch it is in, nor on the process that holds it."""
    noise, steps = [], []
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        steps.append(torch.randint(0, num_timesteps, (1,), generator=g))
        noise.append(torch.randn(tuple(shape), generator=g))
    return torch.stack(noise), torch.cat(steps)


def fixed_draws(indices: list[int], shape, num_timesteps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Validation's noise and timesteps: the same for an image at every evaluation, in every run."""
    return seeded_draws([_EVAL_SEED + index for index in indices], shape, num_timesteps)


def _condition_kwargs(unet: nn.Module, labels: torch.Tensor, context: torch.Tensor | None) -> dict:
    from tunesmith.models.diffusion import num_classes

    kwargs: dict = {"class_labels": labels} if num_classes(unet) else {}
    if type(unet).__name__ == "UNet2DConditionModel":
        kwargs["encoder_hidden_states"] = context  # None: no cross-attention blocks, nothing to attend to
    return kwargs


def denoise(unet: nn.Module, noisy: torch.Tensor, t: torch.Tensor, labels: torch.Tensor,
            control: torch.Tensor | None = None, context: torch.Tensor | None = None) -> torch.Tensor:
    """The UNet's prediction; `control`: the conditioning image of a ControlLoRA-style run; `context`:
    the text encoder's hidden states of the captions (caption-conditioned models)."""
    from tunesmith.models.control import set_condition

    set_condition(unet, control)
    try:
        return unet(noisy, t, **_condition_kwargs(getattr(unet, "module", unet), labels, context)).sample.float()
    finally:
        set_condition(unet, None)


def to_model_input(pixels: Sequence[torch.Tensor], size: int, channels: int) -> torch.Tensor:
    """uint8 (3, s, s) images -> float (n, channels, size, size) in [-1, 1]."""
    x = torch.stack(list(pixels)).float().div_(255)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)
    if channels == 1:
        x = x.mean(1, keepdim=True)
    return x.mul_(2).sub_(1)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Model-space images in [-1, 1] -> uint8 (n, h, w, c)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()


def noise_target(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    if kind == "sample":
        return x0
    raise TunesmithError(f"scheduler prediction_type {kind!r} is not one tunesmith trains (epsilon, "
                         "v_prediction, sample)")


def snr_weights(scheduler, t: torch.Tensor, gamma: float) -> torch.Tensor:
    alphas = scheduler.alphas_cumprod.to(t.device)[t].float()
    snr = alphas / (1 - alphas)
    clipped = torch.minimum(snr, torch.full_like(snr, gamma))
    kind = scheduler.config.prediction_type
    return clipped / (snr + 1) if kind == "v_prediction" else (clipped / snr if kind == "epsilon" else clipped)


def per_image_loss(unet: nn.Module, scheduler, x0: torch.Tensor, labels: torch.Tensor, noise: torch.Tensor,
                   t: torch.Tensor, control: torch.Tensor | None = None,
                   context: torch.Tensor | None = None) -> torch.Tensor:
    noisy = scheduler.add_noise(x0, noise, t)
    pred = denoise(unet, noisy, t, labels, control, context)
    return (pred - noise_target(scheduler, x0, noise, t).float()).pow(2).mean(dim=(1, 2, 3))


@no_autograd
def sample(unet: nn.Module, scheduler, labels: torch.Tensor, size: int, channels: int, steps: int, seed: int,
           sampler: str = "ddim", batch_size: int = 64, control: torch.Tensor | None = None,
           context: torch.Tensor | None = None, guidance_scale: float = 1.0,
           unconditional: torch.Tensor | None = None) -> torch.Tensor:
    """Samples (n, channels, size, size) in the UNet's space (images in [-1, 1], or a latent model's latents:
    decode_latents turns them into images), one per label (and conditioning image, and caption `context`),
    from seeded noise; `guidance_scale` > 1 mixes in the prediction at the `unconditional` context
    (classifier-free guidance: uncond + scale * (cond - uncond)), in batches of half the size."""
    from diffusers import DDIMScheduler

    runner = DDIMScheduler.from_config(scheduler.config) if sampler == "ddim" else type(scheduler).from_config(
        scheduler.config)
    runner.set_timesteps(steps)
    device = next(unet.parameters()).device
    if context is not None and guidance_scale != 1.0:
        batch_size = max(1, batch_size // 2)  # each image runs twice: unconditional and captioned
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((len(labels), channels, size, size), generator=generator) * runner.init_noise_sigma
    out = []
    for start in range(0, len(labels), batch_size):
        xb, lb = x[start : start + batch_size].to(device), labels[start : start + batch_size].to(device)
        cb = None if control is None else control[start : start + batch_size].to(device)
        kb = None if context is None else context[start : start + batch_size].to(device)
        guided = kb is not None and guidance_scale != 1.0
        if guided:  # one batch of twice the images: the unconditional half, then the captioned half
            kb = torch.cat([unconditional.to(device).expand(len(kb), -1, -1), kb])
            lb, cb = lb.repeat(2), None if cb is None else cb.repeat(2, 1, 1, 1)
        for t in runner.timesteps:
            model_in = runner.scale_model_input(xb, t)
            model_in = torch.cat([model_in, model_in]) if guided else model_in
            pred = denoise(unet, model_in, t.expand(len(model_in)).to(device), lb, cb, kb)
            if guided:
                plain, captioned = pred.chunk(2)
                pred = plain + guidance_scale * (captioned - plain)
            xb = runner.step(pred, t, xb, generator=generator).prev_sample
        out.append(xb.cpu())
    return torch.cat(out)


def sample_captions(unet: nn.Module, parts, captions: list[str], num: int, steps: int, seed: int,
                    sampler: str = "ddim", guidance_scale: float = 1.0) -> torch.Tensor:
    """`num` images per caption of a caption-conditioned model (its DiffusionParts `parts`), in caption order."""
    text = parts.text
    device = next(unet.parameters()).device
    context = text.embed(text.tokens(captions).to(device)).repeat_interleave(num, dim=0)
    unconditional = text.embed(text.tokens([""]).to(device)) if guidance_scale != 1.0 else None
    labels = torch.zeros(len(context), dtype=torch.long)
    return sample(unet, parts.scheduler, labels, parts.prep.size, parts.prep.channels, steps, seed, sampler,
                  context=context, guidance_scale=guidance_scale, unconditional=unconditional)


def on_accelerator(module: nn.Module) -> torch.device:
    """Where a frozen helper model (a VAE) runs: the current GPU when there is one (it is moved there once),
    else where it is."""
    if torch.cuda.is_available():
        module.to(torch.device("cuda", torch.cuda.current_device()))
    return next(module.parameters()).device


@no_autograd
def encode_latents(vae: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> the VAE's scaled latents (the latent distribution's mean: the same latents at
    every epoch and in every run)."""
    device = on_accelerator(vae)
    mean = vae.encode(x.to(device)).latent_dist.mean
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return ((mean - shift) * vae.config.scaling_factor).float().cpu()


@no_autograd
def decode_latents(parts, x: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Samples in the UNet's space -> images in [-1, 1]: decoded by the VAE of a latent model, as they are
    otherwise."""
    vae = parts.vae
    if vae is None:
        return x
    device = on_accelerator(vae)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    out = [vae.decode(chunk.to(device) / vae.config.scaling_factor + shift).sample.float().cpu()
           for chunk in x.split(batch_size)]
    return torch.cat(out)


def save_png(image: torch.Tensor, path: Path) -> Path:
    """A uint8 (h, w, c) image as a PNG: grey for one channel, RGB for three."""
    from PIL import Image

    array = image.numpy()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(path)
    return path


def save_grid(images: torch.Tensor, rows: int, path: Path) -> Path:
    """uint8 (n, h, w, c) images as one PNG, `rows` rows."""
    n, h, w, c = images.shape
    cols = -(-n // rows)
    grid = torch.zeros((rows * h, cols * w, c), dtype=torch.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, cols)
        grid[r * h : (r + 1) * h, col * w : (col + 1) * w] = img
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_png(grid, path)
