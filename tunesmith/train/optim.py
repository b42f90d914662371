"""AdamW with weight-decay groups and a warmup + linear/cosine/constant schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from tunesmith.schema import TrainConfig


def param_groups(model: nn.Module, cfg: TrainConfig, head_params: set[str]) -> list[dict]:
    """Decay matrices, not biases or normalisation weights; the new head may get its own learning rate."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue  # frozen weights get no optimizer state at all
        decay = param.ndim >= 2
        is_head = name.removeprefix("module.") in head_params
        groups.setdefault((decay, is_head), []).append(param)
    out = []
    for (decay, is_head), params in sorted(groups.items()):
        lr = cfg.head_lr if (is_head and cfg.head_lr is not None) else cfg.lr
        out.append({"params": params, "weight_decay": cfg.weight_decay if decay else 0.0, "lr": lr})
    return out


def build_optimizer(model: nn.Module, cfg: TrainConfig, head_params: set[str]) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg, head_params)
    if not groups:
        raise ValueError("no trainable parameters: the method froze everything")
    fused = cfg.fused_optimizer and _fused_supported(groups)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, fused=fused or None)


def _fused_supported(groups: list[dict]) -> bool:
    """torch's fused AdamW takes floating-point tensors on CPU or CUDA (not sparse, not complex)."""
    params = [p for g in groups for p in g["params"]]
    return all(p.is_floating_point() and not p.is_sparse and p.device.type in ("cpu", "cuda") for p in params)


def warmup_steps(cfg: TrainConfig, total_steps: int) -> int:
    return cfg.warmup_steps if cfg.warmup_steps is not None else int(cfg.warmup_ratio * total_steps)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    warm = warmup_steps(cfg, total_steps)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - warm) / max(1, total_steps - warm)
        if cfg.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return max(0.0, 1.0 - progress)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
