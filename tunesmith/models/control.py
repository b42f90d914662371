"""ControlLoRA-style conditioning: a small trainable encoder turns a conditioning image (a coarse
downsample or an edge map of the target, or an image each row names: a depth map, a pose, a mask) into
features added to the UNet's first convolution's output, while the UNet itself trains only LoRA.

The encoder's last convolution starts at zero (ControlNet's "zero convolution"), so training starts
from exactly the base model. It lives inside the UNet as `conv_in.control_encoder`, so the optimizer,
checkpoints and PEFT's modules_to_save see it like any trained-from-scratch head; a forward hook on
conv_in adds its features for the condition set by `set_condition` before each UNet call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ENCODER = "conv_in.control_encoder"
CONTROL_FILE = "control_encoder.safetensors"  # beside a saved model's unet/: diffusers' UNet has no place for it
CONTROL_KINDS = ("downsample", "edges", "image")  # image: given per row, not made from the target


class ControlEncoder(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1), nn.SiLU(),
                                 nn.Conv2d(hidden, hidden, 3, padding=1), nn.SiLU(),
                                 nn.Conv2d(hidden, out_channels, 3, padding=1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self.condition: torch.Tensor | None = None  # set per UNet call; never saved

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        return self.net(condition)


def _add_control(conv_in: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
    encoder = conv_in.control_encoder
    if encoder.condition is None:
        return output
    return output + encoder(encoder.condition.to(output.dtype))


def attach(unet: nn.Module, condition_channels: int, seed: int) -> list[str]:
    """Add a seeded, zero-output control encoder to `unet`; returns its parameter names."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    encoder = ControlEncoder(condition_channels, unet.conv_in.out_channels)
    torch.random.set_rng_state(generator_state)
    unet.conv_in.add_module("control_encoder", encoder)
    unet.conv_in.register_forward_hook(_add_control)
    return [f"{ENCODER}.{name}" for name, _ in encoder.named_parameters()]


def encoder_of(model: nn.Module) -> ControlEncoder | None:
    unet = getattr(model, "module", model)  # DDP
    conv_in = getattr(unet, "conv_in", None)
    return getattr(conv_in, "control_encoder", None)


def set_condition(model: nn.Module, condition: torch.Tensor | None) -> None:
    encoder = encoder_of(model)
    if encoder is not None:
        encoder.condition = condition


def condition_of(x: torch.Tensor, kind: str, factor: int = 4) -> torch.Tensor:
    """The conditioning image of model-space images x (n, c, h, w) in [-1, 1]: `downsample` averages
    factor x factor blocks and scales them back up (a coarse sketch); `edges` is the Sobel gradient
    magnitude of the grey image, mapped to [-1, 1]; `image` is x itself (a conditioning image given as it is)."""
    if kind == "image":
        return x
    if kind == "downsample":
        coarse = F.avg_pool2d(x, factor)
        return F.interpolate(coarse, size=x.shape[-2:], mode="nearest")
    if kind == "edges":
        grey = x.mean(1, keepdim=True)
        sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device)
        gx = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), sobel.view(1, 1, 3, 3))
        gy = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), sobel.t().reshape(1, 1, 3, 3))
        magnitude = (gx.pow(2) + gy.pow(2)).sqrt() / 8  # at most ~1 for inputs in [-1, 1]
        return magnitude.clamp(0, 1) * 2 - 1
    raise ValueError(f"unknown control kind {kind!r}; one of {', '.join(CONTROL_KINDS)}")
