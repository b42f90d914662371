"""Diffusion UNets from a local `diffusers` directory: load, save, and the LoRA format diffusers reads.

A model is either a pipeline folder (model_index.json, unet/, scheduler/, maybe vae/ and text_encoder/)
or a bare UNet folder (config.json naming a UNet2DConditionModel or UNet2DModel, with its
scheduler_config.json beside it or in scheduler/). Weights are read with safetensors only. A pipeline
with a VAE (vae/, an AutoencoderKL, as Stable Diffusion's) is a latent diffusion model: the UNet learns
the VAE's latents of the images (the latent distribution's mean, scaled by its scaling_factor), and
samples are decoded back to pixels; the VAE is never trained.

Its LoRA file, in the format diffusers reads, is written by tunesmith.methods.diffusers_lora.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunesmith.atomic import atomic_dir
from tunesmith.errors import ConfigError
from tunesmith.models.captions import CaptionEncoder, caption_folders, load_caption_encoder
from tunesmith.models.control import CONTROL_FILE, attach, encoder_of

UNET_CLASSES = ("UNet2DConditionModel", "UNet2DModel")
# attention projections and the ResNet blocks' 3x3 convolutions, as diffusers' LoRA scripts target
UNET_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"]
PREP_FILE = "tunesmith_diffusion.json"


@dataclass(frozen=True)
class DiffusionPrep:
    """What the UNet takes and was trained on: `channels` x `size` x `size` images scaled to [-1, 1],
    `class_names` for a class-conditioned model (None: unconditioned), the conditioning image of a
    ControlLoRA-style model (`control`: downsample | edges | image, None: none); a latent model's images
    are `latent_scale` times larger, with `image_channels`."""

    size: int
    channels: int
    class_names: list[str] | None = None
    control: str | None = None
    control_factor: int = 4
    extra: dict[str, Any] = field(default_factory=dict)
    latent_scale: int = 1  # pixels per latent along a side (a latent model's VAE); 1: the UNet sees pixels
    image_channels: int = 0  # a latent model's image channels (0: the UNet's)
    pad_token_id = None  # not a tokenizer: nothing to pad

    @property
    def pixel_size(self) -> int:
        return self.size * self.latent_scale

    @property
    def pixel_channels(self) -> int:
        return self.image_channels or self.channels

    def save_pretrained(self, out_dir: str | Path) -> None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / PREP_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")


@dataclass
class DiffusionParts:
    """What a UNet runs with, kept where a text model keeps its tokenizer: its noise scheduler and
    what it takes; saved beside the weights or the adapter."""

    scheduler: Any
    prep: DiffusionPrep
    text: CaptionEncoder | None = None  # a caption-conditioned pipeline's tokenizer and text encoder
    vae: nn.Module | None = None  # a latent diffusion pipeline's frozen VAE
    pad_token_id = None

    def save_pretrained(self, out_dir: str | Path) -> None:
        self.prep.save_pretrained(out_dir)
        self.scheduler.save_pretrained(Path(out_dir) / "scheduler")


def builtin(name_or_path: str):
    """The built-in diffusion model of that name (a registry entry), None for any other name; a built-in
    model of another kind is a ConfigError."""
    from tunesmith.models.registry import MODELS

    entry = MODELS.get(name_or_path)
    if entry is not None and entry.kind != "diffusion":
        raise ConfigError(f"model.name: {name_or_path} is a {entry.kind} model, not a diffusion UNet "
                          f"(built-in diffusion models: {', '.join(n for n, e in MODELS.items() if e.kind == 'diffusion')})")
    return entry


def model_dir(name_or_path: str) -> Path:
    """A built-in diffusion model's folder (made once, then cached) or a local diffusers folder."""
    entry = builtin(name_or_path)
    if entry is not None:
        return entry.locate()
    layout(name_or_path)  # an error naming what is missing when it is not a diffusers folder
    return Path(name_or_path).expanduser()


def takes_captions(name_or_path: str) -> bool:
    """Whether the model reads captions (cross-attention); one that does must have its text encoder and
    tokenizer beside it (ConfigError naming what is missing). Reads configs, not weights."""
    if builtin(name_or_path) is not None:
        return False
    config = layout(name_or_path)[2]
    if config.get("addition_embed_type"):  # SDXL's pooled text and size embeddings, a second text encoder
        raise ConfigError(f"model.name: {name_or_path}: a UNet with addition_embed_type "
                          f"{config['addition_embed_type']!r} (SDXL-style extra conditioning) is not one tunesmith "
                          "trains yet; Stable Diffusion 1.x/2.x-style pipelines and class-conditioned UNets are")
    if reads_captions(config):
        caption_folders(Path(name_or_path).expanduser(), config)
        return True
    return False


def reads_captions(config: dict[str, Any]) -> bool:
    blocks = [*config.get("down_block_types", ()), *config.get("up_block_types", ()), config.get("mid_block_type") or ""]
    return any("CrossAttn" in b for b in blocks)


def image_channels(name_or_path: str) -> int:
    """The channels of the images a model learns (its VAE's input, else its UNet's), from configs alone;
    1 for a built-in model (they are grey)."""
    if builtin(name_or_path) is not None:
        return 1
    folder = vae_dir(name_or_path)
    config = _read_json(folder / "config.json") if folder is not None else layout(name_or_path)[2]
    return int(config.get("in_channels") or 3)


def vae_dir(path: str | Path) -> Path | None:
    """A pipeline's vae/ folder (None: it has none, the UNet sees pixels); ConfigError for a VAE tunesmith
    does not read. Weights not read."""
    folder = Path(path).expanduser() / "vae"
    if not folder.is_dir():
        return None
    config = _read_json(folder / "config.json")
    if config is None or config.get("_class_name") != "AutoencoderKL":
        kind = "no readable config.json" if config is None else f"a {config.get('_class_name')!r}"
        raise ConfigError(f"model.name: {folder} holds {kind}; tunesmith's latent diffusion reads an AutoencoderKL "
                          "VAE (Stable Diffusion's)")
    if not any(folder.glob("*.safetensors")):
        raise ConfigError(f"model.name: {folder} has no .safetensors weights (pickled weights can run code when read)")
    return folder


def load_parts(path: str | Path) -> tuple[nn.Module, DiffusionParts]:
    """(UNet, its DiffusionParts): load_unet, plus the pipeline's text encoder when the UNet reads captions
    and its VAE when it has one."""
    import diffusers

    unet, scheduler, prep = load_unet(path)
    text = vae = None
    if reads_captions(dict(unet.config)):
        text = load_caption_encoder(*caption_folders(Path(path).expanduser(), dict(unet.config)))
    folder = vae_dir(path)
    if folder is not None:
        vae = diffusers.AutoencoderKL.from_pretrained(folder, use_safetensors=True, torch_dtype=torch.float32).eval()
        vae.requires_grad_(False)
        if vae.config.latent_channels != prep.channels:
            raise ConfigError(f"model.name: {folder}: the VAE makes {vae.config.latent_channels}-channel latents, but "
                              f"the UNet takes {prep.channels} channels: they are not one pipeline")
        prep = replace(prep, latent_scale=2 ** (len(vae.config.block_out_channels) - 1),
                       image_channels=int(vae.config.in_channels))
    return unet, DiffusionParts(scheduler, prep, text, vae)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def layout(path: str | Path) -> tuple[Path, Path | None, dict[str, Any]]:
    """(the UNet's folder, the scheduler's folder or None, the UNet's config.json) of a diffusers
    directory, its weights not read; ConfigError naming what is missing when it is not one."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ConfigError(f"model.name: {root} is not a directory (a diffusion model is a local diffusers folder)")
    unet_dir = root / "unet" if (root / "unet" / "config.json").exists() else root
    config = _read_json(unet_dir / "config.json")
    if config is None:
        raise ConfigError(f"model.name: {root} is not a diffusers model: no unet/config.json or config.json")
    if config.get("_class_name") not in UNET_CLASSES:
        raise ConfigError(f"model.name: {unet_dir / 'config.json'} describes a {config.get('_class_name')!r}, not a "
                          f"diffusers UNet ({' or '.join(UNET_CLASSES)})")
    if not any(unet_dir.glob("*.safetensors")):
        pickles = sorted(p.name for p in unet_dir.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        hint = (f" (only {pickles[0]}, a pickle that can run code when read; convert it once where you trust it: "
                f"UNet.from_pretrained(...).save_pretrained(..., safe_serialization=True))") if pickles else ""
        raise ConfigError(f"model.name: {unet_dir} has no .safetensors weights{hint}")
    for candidate in (root / "scheduler", unet_dir):
        if (candidate / "scheduler_config.json").exists():
            return unet_dir, candidate, config
    return unet_dir, None, config


def load_unet(path: str | Path) -> tuple[nn.Module, Any, DiffusionPrep]:
    """(UNet in float32, its noise scheduler, what it takes). A folder without a scheduler gets
    diffusers' DDPM defaults (1,000 steps, linear betas, epsilon prediction) and says so in `extra`."""
    import diffusers

    from tunesmith.models.hf import _quiet_transformers

    _quiet_transformers()
    unet_dir, scheduler_dir, config = layout(path)
    unet = getattr(diffusers, config["_class_name"]).from_pretrained(unet_dir, use_safetensors=True,
                                                                     torch_dtype=torch.float32)
    if scheduler_dir is not None:
        scheduler_config = json.loads((scheduler_dir / "scheduler_config.json").read_text())
        cls = getattr(diffusers, scheduler_config.get("_class_name", "DDPMScheduler"), diffusers.DDPMScheduler)
        scheduler = cls.from_config(scheduler_config)
    else:
        scheduler = diffusers.DDPMScheduler()
    saved = _read_json(Path(path).expanduser() / PREP_FILE) or _read_json(unet_dir / PREP_FILE) or {}
    size = config.get("sample_size") or 32
    prep = DiffusionPrep(size=int(size if isinstance(size, int) else size[0]), channels=int(config["in_channels"]),
                         class_names=saved.get("class_names"), control=saved.get("control"),
                         control_factor=int(saved.get("control_factor", 4)),
                         extra={"scheduler": "default DDPM" if scheduler_dir is None else str(scheduler_dir)})
    control_file = Path(path).expanduser() / CONTROL_FILE
    if prep.control is not None and control_file.exists():  # a saved ControlLoRA-style model
        from safetensors.torch import load_file

        attach(unet, control_channels(prep), seed=0)
        encoder_of(unet).load_state_dict(load_file(str(control_file)))
    return unet, scheduler, prep


def control_channels(prep: DiffusionPrep) -> int:
    return 1 if prep.control == "edges" else prep.channels


def num_classes(unet: nn.Module) -> int:
    """How many class labels the UNet embeds (0: not class-conditioned)."""
    return int(getattr(unet.config, "num_class_embeds", None) or 0)


def save_diffusion(unet: nn.Module, parts: DiffusionParts, out_dir: Path, meta: dict[str, Any]) -> Path:
    """A diffusers folder that diffusers loads as it is, written atomically: unet/ and scheduler/, and a
    pipeline's text_encoder/, tokenizer/, vae/ and model_index.json; a ControlLoRA-style run's control
    encoder goes beside them (diffusers' UNet has no place for it)."""
    from safetensors.torch import save_file

    encoder = encoder_of(unet)
    with atomic_dir(out_dir) as tmp:
        if encoder is not None:
            del unet.conv_in._modules["control_encoder"]  # out of the tree while diffusers writes it
        try:
            unet.save_pretrained(tmp / "unet", safe_serialization=True)
        finally:
            if encoder is not None:
                unet.conv_in.add_module("control_encoder", encoder)
        if encoder is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()},
                      str(tmp / CONTROL_FILE))
        parts.save_pretrained(tmp)
        if parts.text is not None:  # a complete pipeline folder: what `tunesmith sample --prompt` reads
            parts.text.save_pretrained(tmp)
        if parts.vae is not None:
            parts.vae.save_pretrained(tmp / "vae", safe_serialization=True)
        source_index = Path(meta.get("source", "")) / "model_index.json"
        if meta.get("source") and source_index.is_file():  # diffusers' pipeline loaders start from it
            index = json.loads(source_index.read_text())
            for name, value in index.items():  # parts not written here (a safety checker): none, not missing
                if isinstance(value, list) and len(value) == 2 and not (tmp / name).is_dir():
                    index[name] = [None, None]
            (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        (tmp / "tunesmith.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir
