"""Helpers shared by methods: find the transformer blocks, set what trains, count parameters."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from tunesmith.errors import ConfigError


def find_blocks(model: nn.Module) -> tuple[str, int]:
    """The repeated transformer blocks: the longest ModuleList whose children share one class.

    Works across BERT (`bert.encoder.layer`), Llama (`model.layers`), GPT-2 (`transformer.h`) without
    a per-architecture table.
    """
    best: tuple[str, int] = ("", 0)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > best[1]:
            if len({type(child) for child in module}) == 1:
                best = (name, len(module))
    if not best[1]:
        raise ConfigError(f"method: cannot find the transformer blocks of {type(model).__name__}; "
                          "use method.freeze_patterns instead")
    return best


def set_trainable(model: nn.Module, trainable: Iterable[str]) -> None:
    """Exactly the named parameters train; everything else is frozen."""
    wanted = set(trainable)
    for name, param in model.named_parameters():
        param.requires_grad_(name in wanted)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total), counting shared (tied) tensors once."""
    seen: set[int] = set()
    trainable = total = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return trainable, total
