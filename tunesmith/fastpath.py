"""The one rule for speed-ups that replace a model's own computation: check once against the slow path.

Target-only logits, the position-0 last layer, masked `logits_to_keep` under DDP and the frozen-prefix
cache all compute what the model's own forward would, by another route. None of them is trusted on
the strength of an architecture's name: each is run once, side by side with the model's own path, on a
small input in eval mode, and used only when the two agree. The verdict is remembered on the module
(outside its state dict), so the check costs one extra forward per model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

T = TypeVar("T")
# what a fast path that does not fit this model raises: it then simply is not used
FAST_PATH_ERRORS = (TypeError, AttributeError, RuntimeError, IndexError, ValueError, KeyError)


def same_result(model: nn.Module, slow: Callable[[], Any], fast: Callable[[], Any], rtol: float = 1e-4,
                atol: float = 1e-4) -> bool:
    """Run `slow`, then `fast`, with `model` in eval mode (no dropout) and no autograd, and say whether
    they return the same tensor (shape and values within tolerance). The fast path failing counts as
    a difference; the model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            want = slow()
            try:
                got = fast()
            except FAST_PATH_ERRORS:
                return False
        return (isinstance(got, torch.Tensor) and got.shape == want.shape
                and torch.allclose(got.float(), want.float(), rtol=rtol, atol=atol))
    finally:
        model.train(was_training)


def is_sharded(model: nn.Module) -> bool:
    """Whether FSDP shards the module: its parts cannot then be called on their own (the root's forward
    gathers what the blocks share, e.g. the embeddings), so fast paths that call the body and the head
    apart are not used; the model's own forward runs."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch without FSDP2
        return False
    return isinstance(model, FSDPModule)


def checked_once(owner: nn.Module, key: str, check: Callable[[], T]) -> T:
    """`check()`'s verdict for `owner`, computed on first use and remembered on the instance."""
    attribute = f"_tunesmith_{key}"
    if attribute not in owner.__dict__:
        owner.__dict__[attribute] = check()
    return owner.__dict__[attribute]


def no_autograd(fn: Callable[..., T]) -> Callable[..., T]:
    """`fn` under torch.inference_mode, or torch.no_grad where the model it is given (its first
    nn.Module argument) is sharded: FSDP may keep the parameters it gathers for a forward into the next
    one, and tensors made in inference mode cannot take part in a later backward."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        model = next((a for a in (*args, *kwargs.values()) if isinstance(a, nn.Module)), None)
        with torch.no_grad() if model is not None and is_sharded(model) else torch.inference_mode():
            return fn(*args, **kwargs)
    return wrapper

