"""Image classification: cross-entropy on a CNN's new head; accuracy, per-class accuracy, confusion matrix.

Images are decoded once, up front, and kept as uint8 squares no larger than needed: the model's input
size, or the image's own size when it is smaller (28x28 Fashion-MNIST stays 2 KB, not 150 KB at 224),
and scaled up per batch. When even that would exceed TUNESMITH_IMAGE_CACHE_MB (default 4096), images
are decoded per batch instead. Random crops are cut at the stored resolution, then resized; crops and
flips draw from torch's global generator, which checkpoints save, so a resumed run sees the same ones.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.errors import ConfigError, TunesmithError
from tunesmith.fastpath import no_autograd
from tunesmith.models.vision import ImagePrep
from tunesmith.objectives.base import Loss, SavedRun
from tunesmith.objectives.classify import Classify, ClassifyConfig
from tunesmith.ranges import option

_PROGRESS_FROM = 2000  # images; fewer decode in a blink


@dataclass(frozen=True, slots=True)
class ImageItem:
    pixels: torch.Tensor | None  # uint8 (3, s, s) with s <= prep.size; None: decoded per batch from `source`
    label: int
    prep: ImagePrep  # shared by every item of a run: size, normalisation, augmentation
    source: object = None  # the ImageExample, when pixels is None


def to_pixels(image: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (H, W, 3) -> uint8 (3, s, s), s = min(size, H, W): centre square (aspect kept), scaled down
    to `size` when larger; never scaled up (collate does that per batch, after any crop)."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    h, w = x.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = x[:, top : top + side, left : left + side]
    if side > size:
        x = F.interpolate(x.unsqueeze(0).float(), size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True)[0].round().clamp(0, 255).to(torch.uint8)
    return x.contiguous()


def _cache_budget() -> int:
    return int(float(os.environ.get("TUNESMITH_IMAGE_CACHE_MB", "4096")) * 2**20)


def encode(examples: Sequence, prep: ImagePrep, max_length: int | None = None
           ) -> tuple[list[ImageItem], dict[str, int]]:
    """Decode (errors name the file) and size every image once; above the cache budget, check only
    the first image here and decode the rest per batch."""
    from tqdm.auto import tqdm

    from tunesmith.data.images import read_image

    if not examples:
        return [], {}
    first = to_pixels(read_image(examples[0]), prep.size)
    if first.numel() * len(examples) > _cache_budget():
        return [ImageItem(None, e.label, prep, e) for e in examples], {"decoded_per_batch": len(examples)}
    items = [ImageItem(first, examples[0].label, prep)]
    for e in tqdm(examples[1:], desc="decoding images", unit="image", leave=False,
                  disable=len(examples) < _PROGRESS_FROM):
        items.append(ImageItem(to_pixels(read_image(e), prep.size), e.label, prep))
    return items, {}


def _random_crop_box(h: int, w: int, scale: tuple[float, float]) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random crop with area fraction in `scale` and aspect ratio in
    [3/4, 4/3], as torchvision's RandomResizedCrop; the whole image when none fits in 10 tries."""
    for _ in range(10):
        target = h * w * float(torch.empty(1).uniform_(scale[0], scale[1]))
        ratio = math.exp(float(torch.empty(1).uniform_(math.log(3 / 4), math.log(4 / 3))))
        cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            return int(torch.randint(0, h - ch + 1, (1,))), int(torch.randint(0, w - cw + 1, (1,))), ch, cw
    return 0, 0, h, w


def _pixels(item: ImageItem) -> torch.Tensor:
    if item.pixels is not None:
        return item.pixels
    from tunesmith.data.images import read_image

    return to_pixels(read_image(item.source), item.prep.size)


def collate(items: Sequence[ImageItem], pad_id: int | None = None, train: bool = False, **_: object
            ) -> dict[str, torch.Tensor]:
    """Scaled to [0, 1], cropped (training, if asked), resized to the model's size, flipped (training,
    if asked), normalised."""
    prep = items[0].prep
    size, crop = prep.size, train and "crop" in prep.augment
    images = [_pixels(it) for it in items]
    if not crop and len({img.shape for img in images}) == 1:  # the usual case: one resize for the batch
        x = torch.stack(images).float().div_(255)
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)
    else:
        resized = []
        for img in images:
            img = img.float().div_(255).unsqueeze(0)
            if crop:
                top, left, ch, cw = _random_crop_box(img.shape[-2], img.shape[-1], prep.crop_scale)
                img = img[..., top : top + ch, left : left + cw]
            if img.shape[-2:] != (size, size):
                img = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False,
                                    antialias=img.shape[-1] > size)
            resized.append(img[0])
        x = torch.stack(resized)
    if train and "flip" in prep.augment:
        flip = torch.rand(len(items)) < 0.5
        x[flip] = x[flip].flip(-1)
    mean = torch.tensor(prep.mean).view(1, -1, 1, 1)
    std = torch.tensor(prep.std).view(1, -1, 1, 1)
    return {"pixel_values": (x - mean) / std, "labels": torch.tensor([it.label for it in items], dtype=torch.long)}


def count(batch: dict[str, torch.Tensor]) -> int:
    return int(batch["labels"].numel())


def logits_of(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    out = model(pixel_values)
    return (out.logits if hasattr(out, "logits") else out).float()


def loss_sum(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(logits_of(model, batch["pixel_values"]), batch["labels"], reduction="sum")


@no_autograd
def eval_sums(model: nn.Module, items: Sequence[ImageItem], batch_size: int, pad_id: int | None,
              device: torch.device, num_labels: int) -> dict[str, torch.Tensor]:
    confusion = torch.zeros((num_labels, num_labels), dtype=torch.long)
    loss = torch.zeros((), dtype=torch.float64)
    for start in range(0, len(items), batch_size):
        batch = collate(items[start : start + batch_size])
        logits = logits_of(model, batch["pixel_values"].to(device)).cpu()
        loss += F.cross_entropy(logits, batch["labels"], reduction="sum").double()
        pred = logits.argmax(-1)
        confusion.index_put_((batch["labels"], pred), torch.ones_like(pred), accumulate=True)
    return {"loss": loss, "confusion": confusion}


# -- the objective ---------------------------------------------------------------------------------


@dataclass
class ImageClassifyConfig(ClassifyConfig):
    name: str = option("image_classify", "the objective")


class ImageClassify(Classify):
    """Classify's metrics, details, plots and prefix cache, on images."""

    name = "image_classify"
    description = "cross-entropy on an image classifier's new head; accuracy, per-class accuracy, confusion matrix"
    Config = ImageClassifyConfig
    model_kind = "image-classifier"
    checks_text_model = False

    def check(self, run, where) -> None:
        from tunesmith.models.vision import is_vision_model

        if not is_vision_model(run.model.name):
            raise ConfigError(f"{where('objective')}: image_classify, but model.name {run.model.name!r} is not an "
                              "image model (image_classify needs e.g. efficientnet-lite0 or a module:factory model)")
        if run.model.train_pooler is not None:
            raise ConfigError(f"{where('model.train_pooler')}: is for text classifiers (objective classify), not image_classify")
        if run.model.pooling != "cls":
            raise ConfigError(f"{where('model.pooling')}: {run.model.pooling}: is for text classifiers (objectives "
                              f"classify, reward, weak), not {self.name}")
        if run.model.dtype != "float32":
            raise ConfigError(f"{where('model.dtype')}: {run.model.dtype}: image models keep float32 weights (their "
                              "pixels come in float32); compute in lower precision with train.precision: bf16")

    def load_data(self, run):
        from tunesmith.data.images import load_image_classification

        return load_image_classification(run.data)

    def load_model(self, run, data):
        from tunesmith.models.hf import LoadedModel
        from tunesmith.models.vision import build_classifier, save_vision_model

        model, head, prep, source, targets = build_classifier(run.model, len(data.label_names), run.train.init_seed)
        prep = replace(prep, augment=tuple(run.data.augment), crop_scale=tuple(run.data.crop_scale))
        meta = {"model": run.model.name, "objective": self.name, "label_names": list(data.label_names),
                "head": head[0].rsplit(".", 1)[0]}
        return LoadedModel(model=model, tokenizer=prep, head_params=head, source=source, lora_targets=targets,
                           save=lambda m, out_dir: save_vision_model(m, prep, out_dir, meta))

    def prepare_model(self, model):
        return None

    def encode(self, examples, tokenizer, max_length):
        return encode(examples, tokenizer)

    def collate(self, items, pad_id, train=False):
        return collate(items, train=train)

    def loss(self, model, batch):
        return Loss({"loss": loss_sum(model, batch)})

    def prefix_cache_mb(self, run) -> float | None:
        if run.data.augment:
            return None  # augmented inputs differ every epoch
        return super().prefix_cache_mb(run)

    def eval_sums(self, model, items, batch_size, pad_id, device, num_labels):
        return eval_sums(model, items, batch_size, pad_id, device, num_labels)

    def load_saved(self, model_dir: Path, run) -> SavedRun:
        from tunesmith.models.vision import load_saved_vision

        model, prep, labels = load_saved_vision(model_dir, run.model)
        return SavedRun(model.eval(), prep, labels)

    def load_labelled(self, path, label_names, input_field, label_field, run, skip_bad_rows=False):
        from tunesmith.data.images import load_labelled_images

        return load_labelled_images(path, label_names, input_field or run.data.image_field,
                                    label_field or run.data.label_field, "skip" if skip_bad_rows else run.data.on_bad_rows)

    def input_field(self, run) -> str:
        from tunesmith.data.images import DEFAULT_IMAGE_FIELD

        return run.data.image_field or DEFAULT_IMAGE_FIELD

    def resolve_input(self, value: str, file: Path) -> str:
        return str(file.parent / value)  # an absolute path stays as it is

    def example_input(self, example) -> str:
        return str(example.image) if isinstance(example.image, Path) else example.where

    @no_autograd
    def predict(self, saved: SavedRun, inputs: list[str], run, top_k: int = 3) -> list[dict]:
        """Top-k classes with probabilities for each image file."""
        from tunesmith.data.images import ImageExample

        for p in inputs:
            if not Path(p).is_file():
                raise TunesmithError(f"{p}: no such image file")
        items, _ = encode([ImageExample(Path(p), 0, p) for p in inputs], saved.tokenizer)
        labels, out = saved.label_names, []
        for start in range(0, len(items), 64):
            batch = collate(items[start : start + 64])
            probs = logits_of(saved.model, batch["pixel_values"]).softmax(-1)
            for path, p in zip(inputs[start : start + 64], probs, strict=True):
                top = p.topk(min(top_k, len(labels)))
                ranked = {labels[i]: v for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)}
                out.append({"image": path, "label": next(iter(ranked)), "top": ranked})
        return out

    def describe_prediction(self, row: dict) -> str:
        return f"{row['image']}\t" + "  ".join(f"{k}={v:.3f}" for k, v in row["top"].items())
