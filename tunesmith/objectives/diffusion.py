"""Diffusion: teach a UNet to predict the noise (or velocity) its own scheduler added at a random step.

The loss is the mean squared error per image, at timesteps drawn uniformly from the scheduler's
schedule, against what the scheduler's `prediction_type` names (epsilon, v_prediction, sample);
`min_snr_gamma` weights each image by min(SNR, gamma) / SNR (Hang et al. 2023; / (SNR + 1) for
v-prediction). Each training image's noise and timestep are drawn from a generator seeded by
train.data_seed, the stage, the optimizer step and the image's position in the training set: a run is
repeatable, a resumed run draws what the uninterrupted one drew, and a run split over processes
(torchrun) draws, image for image, what one process does. Validation is the same loss at noise and
timesteps fixed per image (seeded by its position), so evaluations compare across steps and runs.

Rows are images with a class (a folder per class, a file listing images, or a built-in image set): a
class-conditioned UNet gets the class as its label, an unconditioned one ignores it. A UNet that reads
text through cross-attention (a pipeline folder with text_encoder/ and tokenizer/) trains on captioned
images instead (data/captions.py): the frozen text encoder's hidden states of each caption are its
condition, and `caption_dropout` replaces a seeded share of them with the empty caption's so that
samples can use classifier-free guidance. The run ends by sampling a grid per class (or per held-out
caption) with a DDIM (or the model's own) sampler, seeded.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import torch
from tqdm.auto import tqdm

from tunesmith.errors import ConfigError, DataError
from tunesmith.fastpath import no_autograd
from tunesmith.methods.diffusers_lora import LORA_WEIGHTS, write_diffusers_lora
from tunesmith.objectives.base import Loss, Objective, SavedRun
from tunesmith.objectives.denoising import (
    decode_latents,
    fixed_draws,
    per_image_loss,
    sample,
    sample_captions,
    save_grid,
    seeded_draws,
    snr_weights,
    to_model_input,
    to_uint8,
)
from tunesmith.ranges import choice, option, ranged
from tunesmith.schema import ObjectiveConfig
from tunesmith.train.callbacks import Callback


@dataclass
class DiffusionConfig(ObjectiveConfig):
    name: str = option("diffusion", "the objective")
    min_snr_gamma: float | None = ranged(None, "> 0", "weight each image's loss by min(SNR, gamma) / SNR (5 is "
                                         "the paper's choice); null: unweighted")
    sampler: str = option("ddim", "how samples are drawn: ddim (fast, deterministic) | model (the model's own "
                          "scheduler, e.g. DDPM)")
    sample_steps: int = ranged(50, ">= 1", "denoising steps per sample")
    control: str | None = option(None, "ControlLoRA-style conditioning on an image made from each target: "
                                 "downsample (a coarse sketch) | edges (Sobel edge map), or given per row: image (the "
                                 "conditioning_image column); a small trainable encoder adds it to the UNet's first "
                                 "features; null: none")
    control_factor: int = ranged(4, ">= 1", "control: downsample: the block size averaged over")
    samples_per_class: int = ranged(8, ">= 0", "images per class (or per held-out caption) in the run's final "
                                    "grid (0: none)")
    sample_seed: int = ranged(0, ">= 0", "seed of the final grid's starting noise")
    caption_dropout: float = ranged(0.0, "[0, 1)", "caption-conditioned models: the share of training captions "
                                    "replaced by the empty caption, so that samples can use classifier-free guidance "
                                    "(0.1 is usual)")
    guidance_scale: float = ranged(1.0, ">= 1", "caption-conditioned models: classifier-free guidance of the final "
                                   "grid (1: none; 7.5 is Stable Diffusion's default; the model must know the empty "
                                   "caption: a pretrained base does, caption_dropout > 0 keeps it so)")


@dataclass(frozen=True, slots=True)
class DiffusionItem:
    pixels: torch.Tensor | None  # uint8 (3, s, s), s <= the model's size; None once latents replace it
    label: int  # 0 for a captioned image
    index: int  # its position in its split: what seeds its noise
    tokens: torch.Tensor | None = None  # its caption's token ids (caption-conditioned models)
    latents: torch.Tensor | None = None  # its VAE latents (latent diffusion models): what the UNet learns
    condition: torch.Tensor | None = None  # uint8 (3, s, s): its conditioning image (control: image)


class StepCounter(Callback):
    """Tells the objective which optimizer step is running (the loop restores it on resume)."""

    def __init__(self, objective: Diffusion) -> None:
        self.objective = objective

    def on_train_start(self, trainer) -> None:
        self.objective.step = trainer.step

    def on_step_end(self, trainer, output) -> None:
        self.objective.step = trainer.step


class Diffusion(Objective):
    """Noise-prediction training of a diffusers UNet; held-out denoising loss; a sample grid per class."""

    name = "diffusion"
    description = ("noise-prediction MSE of a diffusers UNet at random timesteps; samples a grid per class or "
                   "caption")
    Config = DiffusionConfig
    model_kind = "diffusion-unet"
    command = "sample"
    checks_text_model = False
    parts = None  # the model's scheduler and input description (DiffusionParts), once it is loaded

    def check(self, run, where) -> None:
        from tunesmith.models.diffusion import builtin, takes_captions, vae_dir

        # a built-in base is not made here (its first use trains it); a local folder's configs are read
        latent = builtin(run.model.name) is None and vae_dir(run.model.name) is not None
        captions = takes_captions(run.model.name)
        if self.cfg.control is not None and (latent or captions):
            raise ConfigError(f"{where('objective.control')}: {run.model.name} is a "
                              f"{'latent diffusion model (it has a VAE)' if latent else 'caption-conditioned model'}; "
                              "ControlLoRA-style conditioning is for class-conditioned or unconditioned UNets that "
                              "see pixels")
        if not captions:
            for option, default in (("caption_dropout", 0.0), ("guidance_scale", 1.0)):
                if getattr(self.cfg, option) != default:
                    raise ConfigError(f"{where('objective.' + option)}: is for caption-conditioned models; "
                                      f"{run.model.name} does not read captions")
        if run.model.dtype != "float32":
            raise ConfigError(f"{where('model.dtype')}: {run.model.dtype}: diffusion models keep float32 weights; "
                              "compute in lower precision with train.precision: bf16")
        if run.model.pooling != "cls" or run.model.train_pooler is not None:
            raise ConfigError(f"{where('model.pooling')}: is for text classifiers, not {self.name}")
        choice(self.cfg.sampler, ("ddim", "model"), where("objective.sampler"))
        if self.cfg.control is not None:
            from tunesmith.models.control import CONTROL_KINDS

            choice(self.cfg.control, CONTROL_KINDS, where("objective.control"))

    def load_data(self, run):
        from tunesmith.data.captions import load_image_captions
        from tunesmith.data.images import load_image_classification
        from tunesmith.models.diffusion import image_channels, takes_captions

        given = self.cfg.control == "image"  # each row names its conditioning image
        if takes_captions(run.model.name):
            data = load_image_captions(run.data, conditioned=given)
        else:
            data = load_image_classification(run.data, conditioned=given)
        self._check_images([*data.train, *data.validation, *data.test], image_channels(run.model.name) > 1)
        return data

    def _check_images(self, examples: list, colour_matters: bool) -> None:
        """Every image one size (and, for a colour model, one kind: grey or colour), every conditioning image
        its image's size, from the files' headers, before the run starts; DataError naming both files."""
        from tunesmith.data.decode import header_of

        first = None
        for e in self._bar(examples, 5000, desc="checking images", unit="image"):
            h, w, colour = header_of(e)
            if not h:
                continue  # unreadable: read_image says why, by name
            if first is None:
                first = (e, h, w, colour)
            elif (h, w) != first[1:3]:  # resizing them alike would train on distorted images
                raise DataError(f"{e.where}: {w}x{h} pixels, but {first[0].where} is {first[2]}x{first[1]}; a "
                                "diffusion model learns one image size: resize them alike first")
            elif colour != first[3] and colour_matters:  # it would learn to drop colour at random
                raise DataError(f"{e.where}: a {colour} image, but {first[0].where} is {first[3]}; a diffusion model "
                                "learns one kind: convert them alike first")
            if getattr(e, "condition", None) is not None:
                ch, cw, _ = header_of(SimpleNamespace(image=e.condition))
                if ch and (ch, cw) != (h, w):
                    raise DataError(f"{e.where}: conditioning image {e.condition} is {cw}x{ch} pixels, but its image "
                                    f"{e.image} is {w}x{h}; a condition must match its target pixel for pixel")

    def load_model(self, run, data):
        from tunesmith.models.diffusion import (
            UNET_LORA_TARGETS,
            load_parts,
            model_dir,
            num_classes,
            save_diffusion,
        )
        from tunesmith.models.hf import LoadedModel

        source = model_dir(run.model.name)
        unet, parts = load_parts(source)
        prep = parts.prep
        names = list(data.label_names or [])
        embeds = num_classes(unet)
        if embeds and len(names) > embeds:
            raise ConfigError(f"model.name: {source} embeds {embeds} classes; the data has {len(names)} "
                              f"({', '.join(names[:12])})")
        prep = replace(prep, class_names=names if embeds else None, control=run.objective.control,
                       control_factor=run.objective.control_factor)
        self.parts = parts = replace(parts, prep=prep)
        meta = {"model": run.model.name, "objective": self.name, "label_names": names, "source": str(source)}
        head = self._attach_control(unet, prep)
        torch.manual_seed(run.train.init_seed)  # what initialises next (LoRA's A) follows the init seed alone
        return LoadedModel(model=unet, tokenizer=parts, head_params=head, source=str(source),
                           lora_targets=list(UNET_LORA_TARGETS),
                           save=lambda m, out_dir: save_diffusion(m, parts, out_dir, meta),
                           adapter_exports=[write_diffusers_lora])

    def _attach_control(self, unet, prep) -> list[str]:
        """The control encoder's parameters (trained from scratch, as a head is, unless the model saved
        one), or none."""
        from tunesmith.models.control import ENCODER, attach, encoder_of
        from tunesmith.models.diffusion import control_channels

        if prep.control is None:
            return []
        saved = encoder_of(unet)
        if saved is not None:
            return [f"{ENCODER}.{name}" for name, _ in saved.named_parameters()]
        return attach(unet, control_channels(prep), self.run.train.init_seed)

    def conditions(self, x: torch.Tensor) -> torch.Tensor | None:
        """The conditioning images of model-space images x (None: not a ControlLoRA-style run)."""
        from tunesmith.models.control import condition_of

        if self.cfg.control in (None, "image"):  # image: read from the rows, not made from x
            return None
        return condition_of(x, self.cfg.control, self.cfg.control_factor)

    def prepare_model(self, model):
        # oneDNN (CPU) and cuDNN run convolutions faster on NHWC tensors: ~1.25x per training step of
        # unet-fmnist with LoRA on 1 CPU thread; same arithmetic, in another summation order
        model.to(memory_format=torch.channels_last)
        return "UNet weights in channels-last memory format (faster convolutions)"

    def encode(self, examples, tokenizer, max_length):
        from tunesmith.data.images import read_image
        from tunesmith.objectives.image_classify import to_pixels

        # sizes and kinds were checked from the files' headers when the data loaded (check_images)
        size, items, text = tokenizer.prep.pixel_size, [], tokenizer.text
        tokens = text.tokens([e.caption for e in examples]) if text is not None and examples else None
        for e in self._bar(examples, 2000, desc="reading images", unit="image"):
            condition = None if getattr(e, "condition", None) is None else to_pixels(
                read_image(SimpleNamespace(image=e.condition, where=f"{e.where}: conditioning image")), size)
            items.append(DiffusionItem(to_pixels(read_image(e), size), getattr(e, "label", 0), len(items),
                                       None if tokens is None else tokens[len(items)], condition=condition))
        if tokenizer.vae is not None:
            items = self._with_latents(items, tokenizer)
        return items, {}

    def _with_latents(self, items: list[DiffusionItem], parts) -> list[DiffusionItem]:
        """Each image's VAE latents, computed once (the VAE is frozen and the images are not augmented)."""
        from tunesmith.objectives.denoising import encode_latents

        prep, out = parts.prep, []
        for start in self._bar(range(0, len(items), 32), 8, desc="encoding latents", unit="batch"):
            chunk = items[start : start + 32]
            x = to_model_input([it.pixels for it in chunk], prep.pixel_size, prep.pixel_channels)
            latents = encode_latents(parts.vae, x)
            out += [replace(it, latents=z, pixels=None) for it, z in zip(chunk, latents, strict=True)]  # 1/12 the size
        return out

    def _bar(self, iterable, at_least: int, **labels):
        """A progress bar over `iterable` when it holds at least `at_least` steps and the run shows progress."""
        shown = len(iterable) >= at_least and (self.run is None or self.run.train.progress)
        return tqdm(iterable, leave=False, disable=not shown, **labels)

    def item_length(self, item) -> int | None:
        return None

    def collate(self, items, pad_id, train=False):
        prep = self.parts.prep
        if items and items[0].latents is not None:
            x = torch.stack([it.latents for it in items])
        else:
            x = to_model_input([it.pixels for it in items], prep.size, prep.channels)
        batch = {"pixel_values": x, "labels": torch.tensor([it.label for it in items], dtype=torch.long),
                 "index": torch.tensor([it.index for it in items], dtype=torch.long)}
        if items and items[0].tokens is not None:
            batch["input_ids"] = torch.stack([it.tokens for it in items])
        if items and items[0].condition is not None:
            return batch | {"control": to_model_input([it.condition for it in items], prep.size, prep.channels)}
        control = self.conditions(x)
        return batch if control is None else batch | {"control": control}

    step = 0  # the optimizer step running (StepCounter keeps it)
    stage_number = -1

    def begin_stage(self, start) -> None:
        self.stage_number += 1

    def callbacks(self, stage: str) -> list:
        return [StepCounter(self)]

    def seeds(self, batch) -> list[int]:
        """Each training image's seed at this step (see the module doc)."""
        base = (self.run.train.data_seed * 1_000_003 + self.stage_number) * 1_000_000_007 + self.step
        return [(base * 10_000_019 + index) % 2**63 for index in batch["index"].tolist()]

    def context(self, batch, device, seeds: list[int] | None = None) -> torch.Tensor | None:
        """The text encoder's hidden states of the batch's captions (None: not caption-conditioned); with
        `seeds` (training), a seeded caption_dropout share replaced by the empty caption."""
        text = self.parts.text
        if text is None:
            return None
        ids = batch["input_ids"].to(device)
        if seeds is not None and self.cfg.caption_dropout > 0:
            dropped = torch.tensor([random.Random(s).random() < self.cfg.caption_dropout for s in seeds], device=device)
            ids = torch.where(dropped[:, None], text.tokens([""]).to(device), ids)
        return text.embed(ids)

    def counts(self, batch):
        return {"loss": float(batch["labels"].numel())}

    def loss(self, model, batch):
        scheduler = self.parts.scheduler
        x0, labels, seeds = batch["pixel_values"], batch["labels"], self.seeds(batch)
        noise, t = seeded_draws(seeds, x0.shape[1:], scheduler.config.num_train_timesteps)
        noise, t = noise.to(x0.device), t.to(x0.device)
        per_image = per_image_loss(model, scheduler, x0, labels, noise, t, batch.get("control"),
                                   self.context(batch, x0.device, seeds))
        if self.cfg.min_snr_gamma is not None:
            per_image = per_image * snr_weights(scheduler, t, self.cfg.min_snr_gamma)
        return Loss({"loss": per_image.sum()})

    @no_autograd
    def eval_sums(self, model, items, batch_size, pad_id, device, num_labels):
        scheduler = self.parts.scheduler
        total = torch.zeros((), dtype=torch.float64)
        for start in range(0, len(items), batch_size):
            batch = self.collate(items[start : start + batch_size], pad_id)
            x0 = batch["pixel_values"]
            noise, t = fixed_draws(batch["index"].tolist(), x0.shape[1:], scheduler.config.num_train_timesteps)
            control = batch.get("control")
            loss = per_image_loss(model, scheduler, x0.to(device), batch["labels"].to(device), noise.to(device),
                                  t.to(device), None if control is None else control.to(device),
                                  self.context(batch, device))
            total += loss.sum().double().cpu()
        return {"loss": total, "count": torch.tensor(float(len(items)), dtype=torch.float64)}

    def metrics(self, sums):
        return {"loss": float(sums["loss"] / sums["count"].clamp(min=1))}

    def final_metrics(self, model, tokenizer, data, strategy) -> dict[str, float]:
        if not self.cfg.samples_per_class or self.run_dir is None or not strategy.is_main:
            return {}
        prep, out = tokenizer.prep, self.run_dir / "plots" / "samples.png"
        if self.cfg.control is not None:  # rows: held-out targets, their conditions, the samples drawn from them
            items, _ = self.encode(data.validation[: self.cfg.samples_per_class * 2], tokenizer, 0)
            batch = self.collate(items, None)
            drawn = sample(model, tokenizer.scheduler, batch["labels"], prep.size, prep.channels, self.cfg.sample_steps,
                           self.cfg.sample_seed, self.cfg.sampler, control=batch["control"])
            control = batch["control"].expand(-1, prep.channels, -1, -1)
            save_grid(to_uint8(torch.cat([batch["pixel_values"], control, drawn])), 3, out)
            return {}
        if tokenizer.text is not None:  # a row per held-out caption (the first 8 distinct ones)
            captions = list(dict.fromkeys(e.caption for e in (data.validation or data.train)))[:8]
            images = sample_captions(model, tokenizer, captions, self.cfg.samples_per_class, self.cfg.sample_steps,
                                     self.cfg.sample_seed, self.cfg.sampler, self.cfg.guidance_scale)
            save_grid(to_uint8(decode_latents(tokenizer, images)), len(captions), out)
            (out.parent / "samples.txt").write_text("".join(f"row {i + 1}: {c}\n" for i, c in enumerate(captions)))
            return {}
        names = prep.class_names or ["samples"]
        labels = torch.arange(len(names)).repeat_interleave(self.cfg.samples_per_class)
        images = sample(model, tokenizer.scheduler, labels, prep.size, prep.channels, self.cfg.sample_steps,
                        self.cfg.sample_seed, self.cfg.sampler)
        save_grid(to_uint8(decode_latents(tokenizer, images)), len(names), out)
        return {}

    library = "diffusers"

    def usage_code(self, saved_dir, base, adapter):
        q = lambda value: json.dumps(str(value))  # noqa: E731
        captions = self.parts is not None and self.parts.text is not None
        latent = self.parts is not None and self.parts.vae is not None
        lines = ["import torch", f"from diffusers import {'AutoencoderKL, ' if latent else ''}DDIMScheduler, "
                 "UNet2DConditionModel"]
        lines += ["from transformers import AutoModel, AutoTokenizer"] if captions else []
        root = Path(str(base)) if adapter else Path(saved_dir)
        lines += ["", f"unet = UNet2DConditionModel.from_pretrained({q(root / 'unet')})"]
        if adapter:
            lines += [f"unet.load_lora_adapter({q(saved_dir)}, prefix=\"unet\", weight_name=\"{LORA_WEIGHTS}\")"]
        lines += [f"scheduler = DDIMScheduler.from_pretrained({q(Path(saved_dir) / 'scheduler')})",
                  "scheduler.set_timesteps(50)"]
        if captions:
            lines += [f"tokenizer = AutoTokenizer.from_pretrained({q(root / 'tokenizer')})",
                      f"text_encoder = AutoModel.from_pretrained({q(root / 'text_encoder')})",
                      f"ids = tokenizer([\"a caption\"] * 4, padding=\"max_length\", truncation=True, "
                      f"max_length={self.parts.text.max_length}, return_tensors=\"pt\").input_ids",
                      "with torch.no_grad():", "    context = text_encoder(ids)[0]  # what the UNet attends to",
                      "labels = None"]
        else:
            lines += ["classes = unet.config.num_class_embeds",
                      "labels = torch.arange(4) % classes if classes else None  # the class of each image",
                      "context = None"]
        lines += ["x = torch.randn(4, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)",
                  "with torch.no_grad():", "    for t in scheduler.timesteps:",
                  "        eps = unet(x, t, encoder_hidden_states=context, class_labels=labels).sample",
                  "        x = scheduler.step(eps, t, x).prev_sample"]
        if latent:  # decode the latents
            lines += [f"vae = AutoencoderKL.from_pretrained({q(root / 'vae')})",
                      "with torch.no_grad():",
                      "    x = vae.decode(x / vae.config.scaling_factor + (vae.config.shift_factor or 0)).sample"]
        lines += ["images = ((x.clamp(-1, 1) + 1) * 127.5).round().byte()  # (n, channels, h, w)"]
        return "diffusers", "\n".join(lines) + "\n"

    # -- a finished run ------------------------------------------------------------------------------
    def load_saved(self, model_dir: Path, run) -> SavedRun:
        from tunesmith.models.diffusion import load_parts

        unet, self.parts = load_parts(model_dir)
        return SavedRun(unet.eval(), self.parts, self.parts.prep.class_names)
