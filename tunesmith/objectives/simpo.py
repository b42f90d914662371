"""SimPO (Meng et al., 2024), as TRL's CPOTrainer gives it (loss_type simpo): reference-free, on the
per-token average log-probabilities a and b of chosen and rejected:
    -(1 - e) log sigmoid(beta (a - b) - gamma) - e log sigmoid(-(beta (a - b) - gamma)),
gamma = simpo_gamma, e = label_smoothing. The rewards logged are beta * a and beta * b."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from tunesmith.objectives.preference import PreferenceConfig, PreferenceObjective
from tunesmith.ranges import option, ranged


@dataclass
class SimPOConfig(PreferenceConfig):
    name: str = option("simpo", "the objective")
    simpo_gamma: float = ranged(0.5, ">= 0", "the target reward margin")
    label_smoothing: float = ranged(0.0, "[0, 0.5)", "the share of pairs assumed flipped")


class SimPO(PreferenceObjective):
    name = "simpo"
    description = "SimPO: length-normalised, reference-free preference optimisation with a target margin"
    Config = SimPOConfig
    needs_reference = False
    average_logps = True

    def pair_loss(self, chosen, rejected, ref, tokens, batch):
        beta, e = self.cfg.beta, self.cfg.label_smoothing
        logits = beta * (chosen - rejected) - self.cfg.simpo_gamma
        losses = -(1 - e) * F.logsigmoid(logits) - e * F.logsigmoid(-logits)
        return losses, beta * chosen, beta * rejected
