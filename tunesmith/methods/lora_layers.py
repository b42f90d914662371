"""LoRA layers (Hu et al. 2021) with rsLoRA and DoRA, for Linear, GPT-2 Conv1D, Embedding and Conv1d/2d.

A frozen weight W (out x in) gets a low-rank update:   W' = W + s * B @ A,   A: r x in,  B: out x r,
with s = alpha / r (or alpha / sqrt(r) for rsLoRA, Kalajdzievski 2023). B starts at zero, so training
starts from the pretrained function. Only A and B train.

DoRA (Liu et al. 2024) splits W' into a magnitude m (one per output unit, trained) and a direction:
W' = m * (W + s B A) / ||W + s B A||_row, where the norm is treated as a constant in backprop (paper sec. 4.3).

Each wrapper keeps PEFT's in-memory layout (`base_layer`, `lora_A[name]`, `lora_B[name]`,
`lora_embedding_A[name]`, `lora_magnitude_vector[name]`), so PEFT's on-disk keys map one to one, and
holds any number of named adapters, of which a list is active.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _is_conv1d_gpt2(module: nn.Module) -> bool:
    """transformers' GPT-2 `Conv1D`: a linear layer whose weight is stored (in, out)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


class LoraLayer(nn.Module):
    """Base wrapper: bookkeeping shared by every layer type."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_embedding_A = nn.ParameterDict()
        self.lora_embedding_B = nn.ParameterDict()
        self.lora_magnitude_vector = nn.ParameterDict()
        self.lora_dropout = nn.ModuleDict()
        self.r: dict[str, int] = {}
        self.alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.use_dora: dict[str, bool] = {}
        self.active_adapters: list[str] = []
        self.merged_adapters: list[str] = []
        self.disabled = False
        self._merge_scales: dict[str, torch.Tensor] = {}

    @property
    def weight(self) -> torch.Tensor:  # code that reads `.weight` of the wrapped layer keeps working
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.base_layer, "bias", None)

    def add_adapter(self, name: str, r: int, alpha: float, dropout: float, use_rslora: bool, use_dora: bool,
                    init: str) -> None:
        if name in self.r:
            raise ValueError(f"adapter {name!r} already exists on this layer")
        self.r[name], self.alpha[name] = r, alpha
        self.scaling[name] = alpha / math.sqrt(r) if use_rslora else alpha / r
        self.use_dora[name] = use_dora
        self.lora_dropout[name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self._create(name, r)
        self._init(name, init)
        weight = self.base_layer.weight
        for p in self._adapter_params(name):
            p.data = p.data.to(device=weight.device, dtype=torch.float32 if weight.dtype.is_floating_point else weight.dtype)
        if use_dora:
            with torch.no_grad():
                self.lora_magnitude_vector[name] = nn.Parameter(self._weight_norm(name).clone())
        if not self.active_adapters:
            self.active_adapters = [name]

    def delete_adapter(self, name: str) -> None:
        if name in self.merged_adapters:
            raise ValueError(f"adapter {name!r} is merged; unmerge it before deleting")
        for store in (self.lora_A, self.lora_B, self.lora_embedding_A, self.lora_embedding_B,
                      self.lora_magnitude_vector, self.lora_dropout):
            if name in store:
                del store[name]
        for d in (self.r, self.alpha, self.scaling, self.use_dora):
            d.pop(name, None)
        self.active_adapters = [a for a in self.active_adapters if a != name]

    def _adapter_params(self, name: str) -> list[nn.Parameter]:
        out = []
        for store in (self.lora_A, self.lora_B):
            if name in store:
                out += list(store[name].parameters())
        for store in (self.lora_embedding_A, self.lora_embedding_B, self.lora_magnitude_vector):
            if name in store:
                out.append(store[name])
        return out

    def _init(self, name: str, init: str) -> None:
        A, B = self.lora_A[name].weight, self.lora_B[name].weight
        if init == "gaussian":
            nn.init.normal_(A, std=1 / self.r[name])
        else:  # kaiming: the default init of nn.Linear
            nn.init.kaiming_uniform_(A, a=math.sqrt(5))
        nn.init.zeros_(B)

    # -- the maths every layer type provides ---------------------------------------------------------
    def _create(self, name: str, r: int) -> None:
        raise NotImplementedError

    def delta_weight(self, name: str) -> torch.Tensor:
        """s * B @ A, shaped like the base weight."""
        raise NotImplementedError

    def _oriented(self, weight: torch.Tensor) -> torch.Tensor:
        """The weight as (out, ...) for row norms (GPT-2 Conv1D and Embedding store it transposed)."""
        return weight

    def _weight_norm(self, name: str) -> torch.Tensor:
        """||W + s B A|| per output unit, shaped like the magnitude vector."""
        w = self._oriented(self.base_layer.weight.float() + self.delta_weight(name).float())
        return w.flatten(1).norm(p=2, dim=1)

    def _dora_scale(self, name: str) -> torch.Tensor:
        return self.lora_magnitude_vector[name] / self._weight_norm(name).detach()

    # -- merge -------------------------------------------------------------------------------------
    def merge(self, names: list[str] | None = None) -> None:
        """Fold adapters into the base weight (exact up to float rounding); forward then costs nothing extra."""
        for name in names or self.active_adapters:
            if name in self.merged_adapters:
                continue
            with torch.no_grad():
                weight = self.base_layer.weight
                new = weight.float() + self.delta_weight(name).float()
                if self.use_dora[name]:
                    scale = self._broadcast(self._dora_scale(name), weight)
                    self._merge_scales[name] = scale  # unmerge divides by exactly this
                    new = new * scale
                weight.copy_(new.to(weight.dtype))
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            with torch.no_grad():
                weight = self.base_layer.weight
                merged = weight.float()
                if self.use_dora[name]:
                    merged = merged / self._merge_scales.pop(name)
                weight.copy_((merged - self.delta_weight(name).float()).to(weight.dtype))

    def _broadcast(self, scale: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Per-output-unit scale shaped to multiply the stored weight."""
        shape = [1] * weight.dim()
        shape[self._out_dim] = -1
        return scale.view(shape)

    _out_dim = 0  # where the output units sit in the stored weight

    # -- forward -----------------------------------------------------------------------------------
    def _live(self) -> list[str]:
        if self.disabled:
            return []
        return [a for a in self.active_adapters if a not in self.merged_adapters]

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.disabled and self.merged_adapters:
            raise RuntimeError("adapters are merged into the weights: unmerge them before disabling")
        result = self.base_layer(x, *args, **kwargs)
        for name in self._live():
            result = self._add(name, x, result)
        return result

    def _add(self, name: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """result + this adapter's contribution (LoRA or DoRA); the DoRA form follows PEFT's exactly."""
        A, B = self.lora_A[name], self.lora_B[name]
        drop, s = self.lora_dropout[name], self.scaling[name]
        x = x.to(A.weight.dtype)
        if not self.use_dora[name]:
            return result + B(A(drop(x)) * s).to(result.dtype)  # scaled at rank r: r, not out, values
        scale = self._broadcast_out(self._dora_scale(name), result)
        if isinstance(drop, nn.Identity) or not self.training:
            base = result
            if self.bias is not None:
                base = base - self._broadcast_out(self.bias, result)
        else:
            x = drop(x)
            base = self._base_no_bias(x)
        return result + (scale - 1) * base + scale * B(A(x)) * s

    def _broadcast_out(self, vector: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """A per-output-unit vector shaped to add to this layer's output."""
        return vector.view(-1)

    def _base_no_bias(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class LoraLinear(LoraLayer):
    """nn.Linear, or GPT-2's Conv1D (weight stored as (in, out): `fan_in_fan_out`)."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.fan_in_fan_out = _is_conv1d_gpt2(base_layer)
        w = base_layer.weight
        self.in_features, self.out_features = (w.shape[0], w.shape[1]) if self.fan_in_fan_out else (w.shape[1], w.shape[0])
        self._out_dim = 1 if self.fan_in_fan_out else 0

    def _create(self, name: str, r: int) -> None:
        self.lora_A[name] = nn.Linear(self.in_features, r, bias=False)
        self.lora_B[name] = nn.Linear(r, self.out_features, bias=False)

    def delta_weight(self, name: str) -> torch.Tensor:
        delta = (self.lora_B[name].weight @ self.lora_A[name].weight) * self.scaling[name]
        return delta.T if self.fan_in_fan_out else delta

    def _oriented(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.T if self.fan_in_fan_out else weight

    def _base_no_bias(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self._oriented(self.base_layer.weight))


class LoraEmbedding(LoraLayer):
    """nn.Embedding: A is (r, vocab), B is (dim, r); PEFT starts A at zero and B random (the reverse of Linear)."""

    _out_dim = 1  # the embedding weight is (vocab, dim): the "output units" are the dim columns

    def _create(self, name: str, r: int) -> None:
        vocab, dim = self.base_layer.weight.shape
        self.lora_embedding_A[name] = nn.Parameter(torch.empty(r, vocab))
        self.lora_embedding_B[name] = nn.Parameter(torch.empty(dim, r))

    def _init(self, name: str, init: str) -> None:
        nn.init.zeros_(self.lora_embedding_A[name])
        nn.init.normal_(self.lora_embedding_B[name])

    def delta_weight(self, name: str) -> torch.Tensor:
        return (self.lora_embedding_B[name] @ self.lora_embedding_A[name]).T * self.scaling[name]

    def _oriented(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.T

    def _embed(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        b = self.base_layer
        return F.embedding(x, weight, b.padding_idx, b.max_norm, b.norm_type, b.scale_grad_by_freq, b.sparse)

    def _add(self, name: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        A, B, s = self.lora_embedding_A[name], self.lora_embedding_B[name], self.scaling[name]
        lora = (self._embed(x, A.T) @ B.T) * s
        if not self.use_dora[name]:
            return result + lora.to(result.dtype)
        scale = self._dora_scale(name)
        return scale * result + scale * lora


class LoraConv(LoraLayer):
    """nn.Conv1d / nn.Conv2d: A is a conv with the base kernel, stride, padding and dilation to r channels,
    B a 1x1 conv back to the output channels."""

    def __init__(self, base_layer: nn.Conv1d | nn.Conv2d) -> None:
        super().__init__(base_layer)
        if base_layer.groups != 1:
            raise ValueError(f"LoRA on grouped convolutions (groups={base_layer.groups}) is not supported")
        self.in_features, self.out_features = base_layer.in_channels, base_layer.out_channels

    def _create(self, name: str, r: int) -> None:
        b = self.base_layer
        conv = nn.Conv2d if isinstance(b, nn.Conv2d) else nn.Conv1d  # plain convs, even for a subclassed base
        ones = (1,) * len(b.kernel_size)
        self.lora_A[name] = conv(self.in_features, r, b.kernel_size, b.stride, b.padding, b.dilation, bias=False,
                                 padding_mode=b.padding_mode)
        self.lora_B[name] = conv(r, self.out_features, ones, ones, bias=False)

    def delta_weight(self, name: str) -> torch.Tensor:
        a, b = self.lora_A[name].weight, self.lora_B[name].weight
        r = a.shape[0]
        delta = (b.reshape(b.shape[0], r) @ a.reshape(r, -1)).reshape(self.base_layer.weight.shape)
        return delta * self.scaling[name]

    def _broadcast_out(self, vector: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        return vector.view(1, -1, *([1] * (result.dim() - 2)))

    def _weight_norm(self, name: str) -> torch.Tensor:
        # PEFT keeps a conv's DoRA magnitude as (1, out, 1, ...); the same shape keeps the files compatible
        norm = super()._weight_norm(name)
        return norm.view(1, -1, *([1] * (self.base_layer.weight.dim() - 2)))

    def _base_no_bias(self, x: torch.Tensor) -> torch.Tensor:
        b = self.base_layer
        return b._conv_forward(x, b.weight, None)


def wrap(module: nn.Module) -> LoraLayer:
    """The LoRA wrapper for a module, or a ValueError naming what cannot be wrapped."""
    if isinstance(module, nn.Linear) or _is_conv1d_gpt2(module):
        return LoraLinear(module)
    if isinstance(module, nn.Embedding):
        return LoraEmbedding(module)
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return LoraConv(module)
    raise ValueError(f"{type(module).__name__} is not a layer LoRA can wrap "
                     "(Linear, GPT-2 Conv1D, Embedding, Conv1d, Conv2d)")
