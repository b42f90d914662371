"""LoRA on a whole model: which layers it targets, injecting adapters, and managing named adapters
(activate, disable, merge, unmerge, delete, combine). The layer maths is in lora_layers.py; the method
that trains them in lora.py; the PEFT on-disk format in adapter_io.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import nn

from tunesmith.errors import ConfigError
from tunesmith.methods.lora_layers import LoraLayer, LoraLinear, _is_conv1d_gpt2, wrap

if TYPE_CHECKING:
    from tunesmith.schema import LoraConfig


# The usual targets when method.lora.target_modules is not given (the same choice as PEFT's defaults).
DEFAULT_TARGETS: dict[str, list[str]] = {
    "bert": ["query", "value"], "roberta": ["query", "value"], "distilbert": ["q_lin", "v_lin"],
    "llama": ["q_proj", "v_proj"], "mistral": ["q_proj", "v_proj"], "qwen2": ["q_proj", "v_proj"],
    "gpt2": ["c_attn"], "opt": ["q_proj", "v_proj"],
}


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoraLayer]]:
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            yield name, module


def _matches(name: str, targets: str | list[str]) -> bool:
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def _wrappable(module: nn.Module) -> bool:
    return isinstance(module, (LoraLayer, nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d)) or _is_conv1d_gpt2(module)


def resolve_targets(model: nn.Module, targets: str | list[str] | None, exclude: set[str],
                    default: list[str] | None = None) -> list[str]:
    """Module paths to wrap. A target that matches nothing, or matches a layer we cannot wrap, is an error."""
    if targets is None and default:
        targets = default
    if targets is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in DEFAULT_TARGETS:
            raise ConfigError(f"method.lora.target_modules: no default for model type {model_type!r}; "
                              "name the layers, e.g. [q_proj, v_proj], a regex, or all-linear")
        targets = DEFAULT_TARGETS[model_type]
    wrapped = {n for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    # a second adapter goes on the wrapper itself, never on its base_layer or its LoRA factors
    modules = {n: m for n, m in model.named_modules() if not any(n.startswith(w + ".") for w in wrapped)}
    if targets == "all-linear":
        found = [n for n, m in modules.items()
                 if (isinstance(m, (nn.Linear, LoraLinear)) or _is_conv1d_gpt2(m)) and not _under(n, exclude)]
    else:
        found = [n for n in modules if n and _matches(n, targets) and not _under(n, exclude)]
        if isinstance(targets, list):
            for t in targets:
                if not any(n == t or n.endswith("." + t) for n in found):
                    raise ConfigError(f"method.lora.target_modules: {t!r} matches no module of "
                                      f"{type(model).__name__}; module names look like {_example(modules)!r}")
    if not found:
        raise ConfigError(f"method.lora.target_modules: {targets!r} matches no module of {type(model).__name__}")
    for n in found:
        if not _wrappable(modules[n]):
            raise ConfigError(f"method.lora.target_modules: {n} is a {type(modules[n]).__name__}, which LoRA "
                              "cannot wrap (Linear, GPT-2 Conv1D, Embedding, Conv1d, Conv2d); target its layers")
        m = modules[n]
        if isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.groups != 1:
            raise ConfigError(f"method.lora.target_modules: {n} is a grouped convolution "
                              f"(groups={m.groups}), which LoRA does not support")
        if isinstance(m, (nn.Conv1d, nn.Conv2d)) and type(m).forward not in (nn.Conv1d.forward, nn.Conv2d.forward) \
                and (set(m.kernel_size) != {1} or set(m.stride) != {1}):
            # e.g. TF-style 'SAME' convs that pad inside forward: LoRA's A would see an unpadded input
            raise ConfigError(f"method.lora.target_modules: {n} is a {type(m).__name__} with its own forward "
                              "(padding logic LoRA cannot copy); only its 1x1, stride-1 convolutions can be wrapped")
    return found


def _under(name: str, prefixes: set[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _example(modules: dict[str, nn.Module]) -> str:
    return next((n for n, m in modules.items() if isinstance(m, nn.Linear)), next(iter(modules)))


def inject(model: nn.Module, cfg: LoraConfig, adapter: str = "default", exclude: set[str] | None = None,
           targets: list[str] | None = None, default_targets: list[str] | None = None) -> list[str]:
    """Add adapter `adapter` to the target layers (wrapping them on first use); returns the wrapped paths."""
    paths = targets if targets is not None else resolve_targets(model, cfg.target_modules, exclude or set(),
                                                                default_targets)
    for path in paths:
        parent_name, _, child = path.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        module = getattr(parent, child)
        if not isinstance(module, LoraLayer):
            module = wrap(module)
            setattr(parent, child, module)
        module.add_adapter(adapter, cfg.r, cfg.alpha, cfg.dropout, cfg.use_rslora, cfg.use_dora, cfg.init)
    return paths


def set_active(model: nn.Module, names: str | list[str]) -> None:
    names = [names] if isinstance(names, str) else list(names)
    for _, layer in lora_layers(model):
        missing = [n for n in names if n not in layer.r]
        if missing:
            raise ValueError(f"no adapter {missing[0]!r}; this model has {', '.join(layer.r)}")
        if layer.merged_adapters:
            raise ValueError("unmerge adapters before switching the active one")
        layer.active_adapters = names


def delete_adapter(model: nn.Module, name: str) -> None:
    for _, layer in lora_layers(model):
        layer.delete_adapter(name)


def merge(model: nn.Module) -> None:
    for _, layer in lora_layers(model):
        layer.merge()


def unmerge(model: nn.Module) -> None:
    for _, layer in lora_layers(model):
        layer.unmerge()


@contextmanager
def adapters_disabled(model: nn.Module):
    """Run the base model: the reference model of preference training, or a before/after comparison."""
    layers = [layer for _, layer in lora_layers(model)]
    if any(layer.merged_adapters for layer in layers):
        raise ValueError("adapters are merged into the weights: unmerge before disabling them")
    previous = [layer.disabled for layer in layers]
    for layer in layers:
        layer.disabled = True
    try:
        yield model
    finally:
        for layer, was in zip(layers, previous, strict=True):
            layer.disabled = was


def unload(model: nn.Module, merge_first: bool = True) -> nn.Module:
    """Replace every LoRA wrapper by its base layer (merged first), leaving a plain model."""
    if merge_first:
        merge(model)
    for path, layer in list(lora_layers(model)):
        parent_name, _, child = path.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.base_layer)
    return model


def add_weighted_adapter(model: nn.Module, adapters: list[str], weights: list[float], new_name: str) -> None:
    """A new adapter whose update is exactly sum_i w_i * (s_i B_i A_i).

    The ranks are concatenated (rank = sum of ranks), so the combination is exact rather than the
    approximate same-rank mix; with equal ranks r, the new adapter has rank len(adapters) * r.
    """
    if len(adapters) != len(weights) or not adapters:
        raise ValueError("give one weight per adapter")
    for _, layer in lora_layers(model):
        if any(layer.use_dora[a] for a in adapters):
            raise ValueError("weighted combination is defined for plain LoRA adapters, not DoRA")
        r = sum(layer.r[a] for a in adapters)
        layer.add_adapter(new_name, r, float(r), 0.0, False, False, "kaiming")  # scaling 1: weights go in A
        with torch.no_grad():
            if new_name in layer.lora_A:
                A = torch.cat([layer.lora_A[a].weight * (w * layer.scaling[a]) for a, w in zip(adapters, weights, strict=True)])
                B = torch.cat([layer.lora_B[a].weight for a in adapters], dim=1)
                layer.lora_A[new_name].weight.copy_(A)
                layer.lora_B[new_name].weight.copy_(B)
            else:
                A = torch.cat([layer.lora_embedding_A[a] * (w * layer.scaling[a]) for a, w in zip(adapters, weights, strict=True)])
                B = torch.cat([layer.lora_embedding_B[a] for a in adapters], dim=1)
                layer.lora_embedding_A[new_name].copy_(A)
                layer.lora_embedding_B[new_name].copy_(B)
