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
    from tunesmith.models.diffusion import DiffusionParts, load_unet, model_dir

    unet, scheduler, prep = load_unet(model_dir(run_or_model))
    return unet.eval(), DiffusionParts(scheduler, prep)


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


def sample_to_folder(run_or_model: str, out_dir: str | Path, classes: list[str] | None = None,
                     prompt: str | None = None, num: int = 8, seed: int = 0, steps: int = 50,
                     sampler: str = "ddim") -> list[Path]:
    """`num` images per class (every class the model names when none is given), seeded; the PNGs and
    grid.png (a row per class) go to `out_dir`. Returns the files written."""
    from tunesmith.models.diffusion import num_classes
    from tunesmith.objectives.diffusion import sample, save_grid, to_uint8

    if prompt is not None:
        raise TunesmithError("sample: --prompt needs a caption-conditioned model (cross-attention and a text "
                             "encoder), which tunesmith does not train yet; use --class")
    unet, parts = open_sampler(run_or_model)
    if num_classes(unet):
        names = parts.prep.class_names or [str(i) for i in range(num_classes(unet))]
        picked = class_indices(parts, classes) if classes else list(range(len(names)))
        tags = [names[i] for i in picked]
    else:
        if classes:
            raise TunesmithError(f"sample: {run_or_model} is not class-conditioned; drop --class")
        picked, tags = [0], ["sample"]
    labels = torch.tensor(picked).repeat_interleave(num)
    images = to_uint8(sample(unet, parts.scheduler, labels, parts.prep.size, parts.prep.channels, steps, seed,
                             sampler))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    written = []
    for i, img in enumerate(images):
        tag = tags[i // num].replace("/", "_").replace(" ", "_")
        path = out_dir / f"{tag}_{i % num:03d}.png"
        array = img.numpy()
        Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(path)
        written.append(path)
    written.append(save_grid(images, len(picked), out_dir / "grid.png"))
    return written
