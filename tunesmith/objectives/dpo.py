"""DPO (Rafailov et al., 2023) and the losses TRL's DPOTrainer gives it, with TRL's names and defaults.

With d = beta * ((log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected))), summed
log-probabilities of the completion tokens:
- sigmoid:  -log sigmoid(d)                        (the paper's loss)
- robust:   (-(1 - e) log sigmoid(d) + e log sigmoid(-d)) / (1 - 2e),  e = label_smoothing (Chowdhury et al.)
- hinge:    relu(1 - d)                            (SLiC)
- ipo:      (d' / beta - 1 / (2 beta))^2, d' from per-token average log-probs (IPO; TRL's normalisation)
The implicit rewards logged are beta * (log pi - log ref) of each completion.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tunesmith.errors import ConfigError
from tunesmith.objectives.preference import PreferenceConfig, PreferenceObjective
from tunesmith.ranges import option, ranged

LOSSES = ("sigmoid", "robust", "hinge", "ipo")


@dataclass
class DPOConfig(PreferenceConfig):
    name: str = option("dpo", "the objective")
    loss_type: str = option("sigmoid", "sigmoid | robust | hinge | ipo")
    label_smoothing: float = ranged(0.0, "[0, 0.5)", "robust: the share of pairs assumed flipped")
    precompute_reference: bool | None = option(
        None, "reference log-probs computed once before training; unset: where the method changes the base "
        "weights")


def dpo_losses(delta: torch.Tensor, loss_type: str, beta: float, label_smoothing: float) -> torch.Tensor:
    """Per-pair loss from delta = log-ratio(chosen) - log-ratio(rejected) (un-scaled by beta)."""
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * delta)
    if loss_type == "robust":
        e = label_smoothing
        return (-(1 - e) * F.logsigmoid(beta * delta) + e * F.logsigmoid(-beta * delta)) / (1 - 2 * e)
    if loss_type == "hinge":
        return torch.relu(1 - beta * delta)
    if loss_type == "ipo":
        return (delta - 1 / (2 * beta)) ** 2
    raise ValueError(f"unknown loss_type {loss_type!r}")


class DPO(PreferenceObjective):
    name = "dpo"
    description = "direct preference optimisation on (prompt, chosen, rejected): sigmoid, robust, hinge, ipo"
    Config = DPOConfig

    def check(self, run, where) -> None:
        super().check(run, where)
        if self.cfg.loss_type not in LOSSES:
            raise ConfigError(f"{where('objective.loss_type')}: {self.cfg.loss_type!r} is not one of {', '.join(LOSSES)}")
        if self.cfg.label_smoothing and self.cfg.loss_type != "robust":
            raise ConfigError(f"{where('objective.label_smoothing')}: is for loss_type robust")

    def pair_loss(self, chosen, rejected, ref, tokens, batch):
        ref_c, ref_r = ref
        ratio_c, ratio_r = chosen - ref_c, rejected - ref_r
        delta = ratio_c - ratio_r
        if self.cfg.loss_type == "ipo":  # per-token averages, as TRL (and the IPO authors) normalise
            tokens_c, tokens_r = tokens[0::2].clamp(min=1), tokens[1::2].clamp(min=1)
            delta = ratio_c / tokens_c - ratio_r / tokens_r
        losses = dpo_losses(delta, self.cfg.loss_type, self.cfg.beta, self.cfg.label_smoothing)
        return losses, self.cfg.beta * ratio_c, self.cfg.beta * ratio_r
