"""How a text classifier turns its last hidden states into the one vector its head reads (`model.pooling`).

BERT's classification head reads the [CLS] pooler (dense + tanh on position 0). A sentence-transformers
checkpoint such as all-MiniLM-L6-v2 was trained through mean pooling instead, so its [CLS] state and
pooler carry little of what it learned. With `mean`, `max` or `last`, the model stays a plain
BertForSequenceClassification whose `bert.pooler` is replaced by a module with no parameters that
pools over the real (unpadded) tokens; the head (dropout + linear) then reads that vector, exactly as
sentence-transformers computes its embedding (before normalisation). The choice is written into the
saved config.json (`tunesmith_pooling`) so a reload installs the same pooling.

BertModel hands its pooler the hidden states only, not the attention mask: a forward pre-hook on the
encoder model (a bound method of the pooling module, so deepcopy rebinds it to the copy) keeps the
mask of the current call for the pooler to read.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from tunesmith.errors import TunesmithError

POOLINGS = ("auto", "cls", "mean", "max", "last")
CONFIG_KEY = "tunesmith_pooling"  # in a saved classifier's config.json


def saved_pooling(path: Path) -> str | None:
    """The pooling of a classifier a tunesmith run saved (its config.json), else None."""
    try:
        saved = json.loads((path / "config.json").read_text()).get(CONFIG_KEY)
    except (OSError, ValueError, AttributeError):
        return None
    return saved if saved in POOLINGS[1:] else None


def declared_pooling(path: Path) -> str | None:
    """The pooling a checkpoint declares: a tunesmith classifier's own (config.json), or a
    sentence-transformers model's 1_Pooling/config.json; None where it declares none."""
    saved = saved_pooling(path)
    if saved:
        return saved
    try:
        st = json.loads((path / "1_Pooling" / "config.json").read_text())
    except (OSError, ValueError):
        return None
    for key, mode in (("pooling_mode_cls_token", "cls"), ("pooling_mode_mean_tokens", "mean"),
                      ("pooling_mode_max_tokens", "max"), ("pooling_mode_lasttoken", "last")):
        if st.get(key):
            return mode
    return None


def resolve_pooling(pooling: str, path: Path) -> str:
    """`auto` -> what the checkpoint declares, else `cls` (the architecture's own head). A classifier saved
    by a run that pooled otherwise keeps its pooling under `cls` too: its [CLS] pooler weights were never
    saved, so reading [CLS] would go through a random pooler."""
    saved = saved_pooling(path)
    if pooling == "cls" and saved and saved != "cls":
        return saved
    if pooling != "auto":
        return pooling
    return declared_pooling(path) or "cls"


def pool(hidden: torch.Tensor, mask: torch.Tensor | None, mode: str) -> torch.Tensor:
    """(batch, length, width) -> (batch, width) over the tokens where `mask` is 1, as
    sentence-transformers' Pooling does (mean: sum / count, clamped; max: padding set to -1e9)."""
    if mask is None:
        mask = hidden.new_ones(hidden.shape[:2])
    mask = mask[:, : hidden.shape[1]].to(hidden.dtype)
    if mode == "mean":
        weights = mask.unsqueeze(-1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    if mode == "max":
        return hidden.masked_fill(mask.unsqueeze(-1) == 0, -1e9).max(1).values
    if mode == "last":  # the last real token (works for left or right padding)
        positions = torch.arange(hidden.shape[1], device=hidden.device).expand_as(mask)
        last = (positions * mask.long()).argmax(1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling {mode!r}")


class TokenPooling(nn.Module):
    """Stands in for BERT's pooler: no parameters, pools over the real tokens of the current call."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.mask: torch.Tensor | None = None

    def capture_mask(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        self.mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        mask, self.mask = self.mask, None  # read once: no stale mask, no tensor kept after the call
        return pool(hidden_states, mask, self.mode)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


def install_pooling(model: nn.Module, mode: str, source: str = "the model") -> None:
    """Make `model` (a BERT-style sequence classifier) pool by `mode`; `cls` leaves it as it is."""
    if mode == "cls":
        return
    body = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if not isinstance(getattr(body, "pooler", None), nn.Module):
        raise TunesmithError(f"model.pooling: {mode} needs a BERT-style classifier (an encoder with a .pooler "
                             f"module); {source} is a {type(model).__name__}")
    if isinstance(body.pooler, TokenPooling):
        body.pooler.mode = mode
    else:
        body.pooler = TokenPooling(mode)
        body.register_forward_pre_hook(body.pooler.capture_mask, with_kwargs=True)
    setattr(model.config, CONFIG_KEY, mode)


def pooling_of(model: nn.Module) -> str:
    """The pooling a loaded classifier uses (`cls` unless tunesmith installed another)."""
    return getattr(getattr(model, "config", None), CONFIG_KEY, None) or "cls"
