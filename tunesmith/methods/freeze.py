"""Partial fine-tuning: freeze the embeddings, the first N blocks and/or parameters matched by globs.

Shallow layers hold general features that transfer; freezing them saves memory and compute and
protects them from being distorted by small data. Frozen parts run as at inference (BatchNorm
statistics fixed, dropout and stochastic depth off), so they really do not change.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

from tunesmith.errors import ConfigError
from tunesmith.methods.base import Method
from tunesmith.methods.common import find_blocks, frozen_subtrees, keep_in_eval

if TYPE_CHECKING:
    from tunesmith.models.hf import LoadedModel
    from tunesmith.schema import MethodConfig


def frozen_names(loaded: LoadedModel, cfg: MethodConfig) -> list[str]:
    names = [n for n, _ in loaded.model.named_parameters()]
    head = set(loaded.head_params)
    frozen: set[str] = set()
    if cfg.freeze_layers or cfg.freeze_embeddings:
        prefix, n_blocks = find_blocks(loaded.model)
        if cfg.freeze_layers > n_blocks:
            raise ConfigError(f"method.freeze_layers: {cfg.freeze_layers} > the model's {n_blocks} blocks ({prefix})")
        blocks = tuple(f"{prefix}.{i}." for i in range(cfg.freeze_layers))
        frozen |= {n for n in names if n.startswith(blocks)}
        if cfg.freeze_embeddings:
            # everything registered before the first block (and not head) is the embedding stage
            first_block = next(i for i, n in enumerate(names) if n.startswith(f"{prefix}.0."))
            frozen |= {n for n in names[:first_block] if n not in head}
    for pattern in cfg.freeze_patterns:
        matched = {n for n in names if fnmatchcase(n, pattern)}
        if not matched:
            raise ConfigError(f"method.freeze_patterns: {pattern!r} matches no parameter; names look like {names[0]!r}")
        frozen |= matched
    if frozen & head:
        raise ConfigError(f"method: the new task head cannot be frozen ({sorted(frozen & head)[0]})")
    return sorted(frozen)


class Freeze(Method):
    name = "freeze"
    description = ("freeze the embeddings / CNN stem, the first N blocks (method.freeze_layers) and/or glob "
                   "patterns; frozen parts run in eval mode (BatchNorm statistics fixed)")

    def apply(self, loaded: LoadedModel, cfg: MethodConfig) -> None:
        frozen = set(frozen_names(loaded, cfg))
        for name, param in loaded.model.named_parameters():
            param.requires_grad_(name not in frozen)
        keep_in_eval(frozen_subtrees(loaded.model))
