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


def _run_as_inference(module: nn.Module, args: tuple) -> None:
    if module.training:
        module.eval()


def keep_in_eval(modules: Iterable[nn.Module]) -> int:
    """These modules run as at inference even while the model trains: BatchNorm statistics do not move,
    dropout and stochastic depth are off. Returns how many were newly marked."""
    marked = 0
    for module in modules:
        if not getattr(module, "_tunesmith_keeps_eval", False):
            module._tunesmith_eval_hook = module.register_forward_pre_hook(_run_as_inference)
            module._tunesmith_keeps_eval = True
            marked += 1
    return marked


def frozen_batchnorms(model: nn.Module) -> list[nn.Module]:
    """BatchNorm layers whose affine parameters are all frozen: their running statistics must not move
    either, or a 'frozen' layer would still change (and train/eval outputs would drift apart)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and any(True for _ in m.parameters()) and not any(p.requires_grad for p in m.parameters())]


def frozen_subtrees(model: nn.Module) -> list[nn.Module]:
    """The largest sub-modules that hold parameters, all of them frozen (e.g. a frozen stem and blocks)."""
    found: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            params = list(child.parameters())
            if params and not any(p.requires_grad for p in params):
                found.append(child)
            else:
                visit(child)

    visit(model)
    return found


def release_eval(model: nn.Module) -> None:
    """Undo keep_in_eval everywhere (the next stage of a multi-stage run may train those parts)."""
    for module in model.modules():
        handle = module.__dict__.pop("_tunesmith_eval_hook", None)
        if handle is not None:
            handle.remove()
            module._tunesmith_keeps_eval = False
