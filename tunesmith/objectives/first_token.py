"""Run the last encoder layer for the first position only, when the classification head reads nothing else.

A BERT-style sequence classifier reads one final hidden state: position 0 ([CLS] / <s>), through the
pooler (BERT) or directly (RoBERTa, ELECTRA). The last encoder layer still computes its queries,
attention output and feed-forward at every position, and all but one row is thrown away: for
MiniLM-L6 about a sixth of the encoder's forward and backward. The classification analogue of the
causal-LM objective's target-only logits.

The last layer's keys and values still need every position; its queries, attention output and
feed-forward need position 0 only. We replace the forward of the last layer's attention module, on
that instance only (an instance attribute), with one that computes the query for position 0, attends
over every key with the model's own attention function and mask, and returns one row; the layer's
feed-forward then runs on that row. No parameter moves or is renamed, so state dicts, adapters, LoRA
wrappers, gradient checkpointing and checkpoints are untouched. It is installed only after a check on
a padded batch (eval mode) that the logits equal the full forward's, so a head that pools over every
position, or an attention module of another shape, keeps the model's own forward.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable

import torch
from torch import nn

from tunesmith.errors import ConfigError
from tunesmith.fastpath import same_result
from tunesmith.methods.common import find_blocks

_INSTALLED = "_tunesmith_first_token"


def _attention_of(model: nn.Module) -> nn.Module | None:
    """The last block's self-attention wrapper if it has the BERT shape (.self with query/key/value,
    .output taking (attention, residual)), else None."""
    try:
        name, n = find_blocks(model)
    except ConfigError:
        return None
    attention = getattr(model.get_submodule(name)[n - 1], "attention", None)
    inner = getattr(attention, "self", None)
    if attention is None or getattr(attention, "is_cross_attention", False) or \
            not isinstance(getattr(attention, "output", None), nn.Module):
        return None
    if not all(isinstance(getattr(inner, p, None), nn.Module) for p in ("query", "key", "value")):
        return None
    if not all(hasattr(inner, a) for a in ("attention_head_size", "scaling", "config", "dropout")):
        return None
    return attention


def _attention_function(inner: nn.Module) -> Callable | None:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    eager = getattr(sys.modules.get(type(inner).__module__), "eager_attention_forward", None)
    if eager is None:
        return None
    return ALL_ATTENTION_FUNCTIONS.get_interface(inner.config._attn_implementation, eager)


def _first_position_forward(self: nn.Module, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                            *args, **kwargs):
    """The attention wrapper's forward for position 0 only; bound to the instance (a bound method, not a
    closure, so copy.deepcopy and pickle rebind it to the copy)."""
    if args or kwargs.get("cache") is not None or kwargs.get("encoder_hidden_states") is not None:
        return type(self).forward(self, hidden_states, attention_mask, *args, **kwargs)  # decoding: not ours
    for unused in ("cache", "encoder_hidden_states", "encoder_attention_mask"):
        kwargs.pop(unused, None)
    inner = self.self
    batch, length = hidden_states.shape[:2]
    first = hidden_states[:, :1]
    size = inner.attention_head_size
    query = inner.query(first).view(batch, 1, -1, size).transpose(1, 2)
    key = inner.key(hidden_states).view(batch, length, -1, size).transpose(1, 2)
    value = inner.value(hidden_states).view(batch, length, -1, size).transpose(1, 2)
    if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[-2] > 1:
        attention_mask = attention_mask[:, :, :1]  # the mask row of the one query left
    output, weights = _attention_function(inner)(
        inner, query, key, value, attention_mask,
        dropout=inner.dropout.p if inner.training else 0.0, scaling=inner.scaling, **kwargs)
    return self.output(output.reshape(batch, 1, -1), first), weights


def _logits(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, attention_mask=mask).logits.float()


def install_first_token_only(model: nn.Module) -> bool:
    """Make the last encoder layer of `model` (a sequence classifier) compute position 0 only, if that
    leaves its logits unchanged; True when it is (or already was) installed."""
    attention = _attention_of(model)
    if attention is None or _attention_function(attention.self) is None:
        return False
    if _INSTALLED in attention.__dict__:
        return True
    config = getattr(model, "config", None)
    vocab = max(int(getattr(config, "vocab_size", 0) or 0), 8)
    device = next(model.parameters()).device
    ids = (torch.arange(1, 19, device=device).view(2, 9) * 37) % vocab  # 2 x 9, the second row padded
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0

    def position_zero_only() -> torch.Tensor:
        attention.forward = types.MethodType(_first_position_forward, attention)
        return _logits(model, ids, mask)

    ok = same_result(model, lambda: _logits(model, ids, mask), position_zero_only, rtol=1e-4, atol=1e-5)
    if ok:
        attention.__dict__[_INSTALLED] = True
    else:
        attention.__dict__.pop("forward", None)
    return ok


def remove_first_token_only(model: nn.Module) -> None:
    """Restore the model's own forward (a no-op where nothing was installed)."""
    attention = _attention_of(model)
    if attention is not None and attention.__dict__.pop(_INSTALLED, None):
        attention.__dict__.pop("forward", None)
