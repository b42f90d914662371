"""`tunesmith sample`: images from a diffusion run (its saved model, or its base with its LoRA) or from a
diffusers folder / built-in diffusion model, written as PNGs and one grid."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tunesmith.errors import TunesmithError


def open_sampler(run_or_model: str) -> tuple[nn.Module, object]:
    """(UNet in eval mode, its DiffusionParts) of a finished diffusion run, a built-in diffusion model or a
    local diffusers folder."""
    path = Path(run_or_model).expanduser()
    if (path / "config.yaml").exists():
        from tunesmith.infer import open_saved

        opened = open_saved(path)
        if opened.objective.command != "sample":
            raise TunesmithError(f"{path} is a {opened.objective.name} run, not a diffusion run; use "
                                 f"`tunesmith {opened.objective.command}`")
        return opened.model.eval(), opened.tokenizer
    from tunesmith.models.diffusion import load_parts, model_dir

    unet, parts = load_parts(model_dir(run_or_model))
    return unet.eval(), parts


def class_indices(parts, classes: list[str]) -> list[int]:
    """Class names (or indices, for a model that does not name its classes) -> the labels it embeds."""
    names = parts.prep.class_names
    out = []
    for c in classes:
        if names and c in names:
            out.append(names.index(c))
        elif c.isdigit() and (not names or int(c) < len(names)):
            out.append(int(c))
        else:
            known = ", ".join(names) if names else "none named: give an index"
            raise TunesmithError(f"sample: --class {c!r} is not a class of this model ({known})")
    return out


def conditions_from(parts, images: list[str]) -> torch.Tensor:
    """The conditioning images a ControlLoRA-style model was trained with, made from image files."""
    import numpy as np
    from PIL import Image

    from tunesmith.models.control import condition_of
    from tunesmith.objectives.denoising import to_model_input
    from tunesmith.objectives.image_classify import to_pixels

    prep, pixels = parts.prep, []
    for path in images:
        try:
            array = np.array(Image.open(path).convert("RGB"))
        except OSError as e:
            raise TunesmithError(f"sample: --condition-from {path}: cannot read it as an image ({e})") from None
        pixels.append(to_pixels(array, prep.size))
        if pixels[-1].shape[-1] != pixels[0].shape[-1]:
            raise TunesmithError(f"sample: --condition-from {path} is not the size of {images[0]}")
    return condition_of(to_model_input(pixels, prep.size, prep.channels), prep.control, prep.control_factor)


def sample_to_folder(run_or_model: str, out_dir: str | Path, classes: list[str] | None = None,
                     prompts: list[str] | None = None, num: int = 8, seed: int = 0, steps: int = 50,
                     sampler: str = "ddim", condition_from: list[str] | None = None,
                     guidance_scale: float = 1.0) -> list[Path]:
    """`num` images per class (every class the model names when none is given), seeded; the PNGs and
    grid.png (a row per class) go to `out_dir`. A caption-conditioned model draws `num` per prompt
    (classifier-free guidance at `guidance_scale` > 1); a ControlLoRA-style model `num` for each
    `condition_from` image (its condition made as in training; one --class, or one per image).
    Returns the files written."""
    unet, parts = open_sampler(run_or_model)
    return draw_to_folder(unet, parts, run_or_model, out_dir, classes, num, seed, steps, sampler, condition_from,
                          prompts, guidance_scale)


def draw_to_folder(unet: nn.Module, parts, name: str, out_dir: str | Path, classes: list[str] | None = None,
                   num: int = 8, seed: int = 0, steps: int = 50, sampler: str = "ddim",
                   condition_from: list[str] | None = None, prompts: list[str] | None = None,
                   guidance_scale: float = 1.0) -> list[Path]:
    """sample_to_folder for a UNet already open (`name`: what it was opened from, for messages)."""
    from tunesmith.models.diffusion import num_classes
    from tunesmith.objectives.denoising import decode_latents, sample, sample_captions, to_uint8

    prompts = [prompts] if isinstance(prompts, str) else prompts
    if num < 1 or steps < 1 or guidance_scale < 1:
        raise TunesmithError("sample: the number of images and steps must be >= 1, and the guidance scale >= 1")

    if (parts.text is None) != (not prompts):
        raise TunesmithError(f"sample: {name} " + (
            "reads captions: give one or more --prompt" if parts.text is not None
            else "does not read captions (no cross-attention and text encoder): drop --prompt"))
    if guidance_scale != 1.0 and not prompts:
        raise TunesmithError("sample: --guidance is for caption-conditioned models (with --prompt)")
    if prompts:
        if classes or condition_from:
            raise TunesmithError("sample: give --prompt alone; this model's condition is its caption")
        images = to_uint8(decode_latents(parts, sample_captions(unet, parts, prompts, num, steps, seed, sampler,
                                                                guidance_scale)))
        written = _write(images, [f"prompt{i + 1}" for i in range(len(prompts))], num, len(prompts), Path(out_dir))
        (Path(out_dir) / "prompts.txt").write_text("".join(f"prompt{i + 1} (row {i + 1}): {p}\n"
                                                           for i, p in enumerate(prompts)))
        return written
    if (parts.prep.control is None) != (not condition_from):
        raise TunesmithError(f"sample: {name} " + (
            f"was trained on {parts.prep.control} conditions: give images to make them from with --condition-from"
            if parts.prep.control else "has no control input: drop --condition-from"))
    if condition_from:
        return _conditioned(unet, parts, condition_from, classes, num, seed, steps, sampler, Path(out_dir))
    if num_classes(unet):
        names = parts.prep.class_names or [str(i) for i in range(num_classes(unet))]
        picked = class_indices(parts, classes) if classes else list(range(len(names)))
        tags = [names[i] for i in picked]
    else:
        if classes:
            raise TunesmithError(f"sample: {name} is not class-conditioned; drop --class")
        picked, tags = [0], ["sample"]
    labels = torch.tensor(picked).repeat_interleave(num)
    images = to_uint8(decode_latents(parts, sample(unet, parts.scheduler, labels, parts.prep.size,
                                                   parts.prep.channels, steps, seed, sampler)))
    return _write(images, tags, num, len(picked), Path(out_dir))


def _conditioned(unet, parts, images: list[str], classes: list[str] | None, num: int, seed: int, steps: int,
                 sampler: str, out_dir: Path) -> list[Path]:
    from tunesmith.objectives.denoising import sample, to_uint8

    picked = class_indices(parts, classes) if classes else [0]
    if len(picked) not in (1, len(images)):
        raise TunesmithError(f"sample: {len(picked)} --class for {len(images)} --condition-from images: give one "
                             "class, or one per image")
    picked = picked * len(images) if len(picked) == 1 else picked
    control = conditions_from(parts, images).repeat_interleave(num, dim=0)
    labels = torch.tensor(picked).repeat_interleave(num)
    drawn = to_uint8(sample(unet, parts.scheduler, labels, parts.prep.size, parts.prep.channels, steps, seed,
                            sampler, control=control))
    return _write(drawn, [Path(p).stem for p in images], num, len(images), out_dir)


def _write(images: torch.Tensor, tags: list[str], num: int, rows: int, out_dir: Path) -> list[Path]:
    from tunesmith.objectives.denoising import save_grid, save_png

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i, img in enumerate(images):
        tag = tags[i // num].replace("/", "_").replace(" ", "_")
        written.append(save_png(img, out_dir / f"{tag}_{i % num:03d}.png"))
    written.append(save_grid(images, rows, out_dir / "grid.png"))
    return written
