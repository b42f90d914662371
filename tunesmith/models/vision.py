"""Image classifiers: a pretrained CNN (built-in, or any `module:factory` plus a weights file) whose
classifier is replaced by a new head for k classes, and the preprocessing it expects.

Weights are read with safetensors or `torch.load(weights_only=True)`: a weights file never runs code.
A `module:factory` path does import and run that module, as any Python import would; it is the user's
own code, named in their config.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from tunesmith.errors import ConfigError, TunesmithError
from tunesmith.models.registry import vision_spec
from tunesmith.models.vision_specs import VisionSpec  # noqa: F401  (re-exported)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PREP_FILE = "preprocessor.json"


@dataclass(frozen=True)
class ImagePrep:
    """What a model expects of its input: a square RGB image of `size` pixels, scaled to [0, 1], then
    normalised per channel. `augment` applies to training batches only."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: tuple[str, ...] = ()
    crop_scale: tuple[float, float] = (0.7, 1.0)
    pad_token_id = None  # not a tokenizer: nothing to pad

    def save_pretrained(self, out_dir: str | Path) -> None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / PREP_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")


def is_factory(name: str) -> bool:
    """`package.module:callable` (a bring-your-own torch model) rather than a name or a directory."""
    module, sep, attr = name.partition(":")
    return bool(sep) and bool(module) and attr.isidentifier() and not Path(name).exists()


def is_vision_model(name: str) -> bool:
    return vision_spec(name) is not None or is_factory(name)


def _import_factory(name: str) -> Callable[[], nn.Module]:
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"model.name: cannot import {module_name!r} for {name!r}: {e}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"model.name: {module_name} has no callable {attr!r}")
    return factory


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or from a pickle read with weights_only=True (no code runs)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"model.weights: {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure means the same thing to the user
        raise TunesmithError(f"{path}: cannot read weights ({type(e).__name__}: {e}); .safetensors files, or "
                             ".pth/.pt files holding only tensors (torch.load with weights_only=True), are read"
                             ) from None
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and set(state) == {key} and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TunesmithError(f"{path}: expected a state dict (parameter name -> tensor)")
    return state


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        parts = [f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else ""]
        raise TunesmithError(f"{source}: the weights do not fit {type(model).__name__}: "
                             + "; ".join(p for p in parts if p))


def _last_linear(model: nn.Module) -> str:
    found = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ConfigError(f"model.head: {type(model).__name__} has no nn.Linear classifier; name it with model.head")
    return found[-1]


def replace_head(model: nn.Module, head: str, num_labels: int) -> list[str]:
    """A new Linear(in, num_labels) where `head` was; returns the new head's parameter names."""
    try:
        old = model.get_submodule(head)
    except AttributeError:
        raise ConfigError(f"model.head: {type(model).__name__} has no module {head!r}") from None
    if not isinstance(old, nn.Linear):
        raise ConfigError(f"model.head: {head} is a {type(old).__name__}, not a Linear layer; "
                          "name the Linear layer itself (e.g. classifier.1)")
    parent_name, _, child = head.rpartition(".")
    new = nn.Linear(old.in_features, num_labels, bias=old.bias is not None)
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    return [f"{head}.{n}" for n, _ in new.named_parameters()]


def _channels(values: Sequence[float] | None, default: tuple[float, ...]) -> tuple[float, ...]:
    if values is None:
        return default
    return tuple(float(v) for v in values) * (3 if len(values) == 1 else 1)


def build_classifier(model_cfg, num_labels: int, init_seed: int, pretrained: bool = True
                     ) -> tuple[nn.Module, list[str], ImagePrep, str, list[str]]:
    """(model with a new head, head parameter names, preprocessing, source, default LoRA targets).

    `init_seed` seeds the new head; `pretrained=False` skips reading the weights (a saved run's own
    weights are loaded over it right after).
    """
    name = model_cfg.name
    spec = vision_spec(name)
    if spec is not None:
        size = model_cfg.image_size or spec.image_size
        model = spec.build(size)
        source = str(spec.weights()) if pretrained else name
        if pretrained:
            load_weights(model, read_weights(source), source)
        head, mean, std, targets = model_cfg.head or spec.head, spec.mean, spec.std, spec.lora_targets
    elif is_factory(name):
        model = _import_factory(name)()
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model.name: {name} returned a {type(model).__name__}, not a torch nn.Module")
        source = model_cfg.weights or name
        if pretrained:
            if not model_cfg.weights:
                raise ConfigError(f"model.weights: {name} needs its pretrained weights file "
                                  "(.safetensors, or .pth read with weights_only=True)")
            load_weights(model, read_weights(model_cfg.weights), model_cfg.weights)
        size, head, targets = model_cfg.image_size or 224, model_cfg.head or _last_linear(model), []
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        raise ConfigError(f"model.name: {name!r} is not an image model")
    torch.manual_seed(init_seed)
    head_params = replace_head(model, head, num_labels)
    prep = ImagePrep(size=size, mean=_channels(model_cfg.mean, mean), std=_channels(model_cfg.std, std))
    return model.float(), head_params, prep, source, targets


def save_vision_model(model: nn.Module, prep: ImagePrep, out_dir: Path, meta: dict) -> None:
    """model.safetensors (every weight, head included) + preprocessor.json + tunesmith.json, atomically."""
    from safetensors.torch import save_file

    from tunesmith.atomic import atomic_dir

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_dir(out_dir) as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        prep.save_pretrained(tmp)
        (tmp / "tunesmith.json").write_text(json.dumps(meta, indent=2) + "\n")


def load_saved_vision(model_dir: Path, model_cfg) -> tuple[nn.Module, ImagePrep, list[str]]:
    """(model, preprocessing, label names) written to RUN_DIR/model by an image run."""
    from safetensors.torch import load_file

    weights, meta_file, prep_file = model_dir / "model.safetensors", model_dir / "tunesmith.json", model_dir / PREP_FILE
    for f in (weights, meta_file, prep_file):
        if not f.exists():
            raise TunesmithError(f"{model_dir} holds no saved image model ({f.name} missing); did the run finish?")
    meta = json.loads(meta_file.read_text())
    saved_prep = json.loads(prep_file.read_text())
    prep = ImagePrep(size=saved_prep["size"], mean=tuple(saved_prep["mean"]), std=tuple(saved_prep["std"]))
    model, _, _, _, _ = build_classifier(model_cfg, len(meta["label_names"]), 0, pretrained=False)
    load_weights(model, load_file(str(weights)), weights)
    return model, prep, list(meta["label_names"])
