"""ORPO (Hong et al., 2024), as TRL's ORPOTrainer gives it: reference-free. The loss has two terms with
different denominators:
- the chosen completion's negative log-likelihood, averaged over its tokens (SFT on the chosen);
- -beta * log sigmoid(log odds(chosen) - log odds(rejected)), averaged over pairs, where
  log odds(y) = p - log(1 - exp(p)) with p the per-token average log-probability of y.
The rewards logged are beta * p of each completion."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tunesmith.objectives.preference import PreferenceConfig, PreferenceObjective
from tunesmith.ranges import option


@dataclass
class ORPOConfig(PreferenceConfig):
    name: str = option("orpo", "the objective")


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate near 0 and far from it."""
    return torch.where(x > -0.693, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


class ORPO(PreferenceObjective):
    name = "orpo"
    description = "ORPO: SFT on the chosen completion plus an odds-ratio preference term; no reference model"
    Config = ORPOConfig
    needs_reference = False
    average_logps = True
    extra_names = ("nll",)

    def counts(self, batch):
        return super().counts(batch) | {"nll": float((batch["predict_rows"] % 2 == 0).sum())}  # chosen tokens

    def pair_loss(self, chosen, rejected, ref, tokens, batch):
        log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))
        losses = -self.cfg.beta * F.logsigmoid(log_odds)
        return losses, self.cfg.beta * chosen, self.cfg.beta * rejected

    def extra_terms(self, chosen, rejected, tokens, batch):
        return {"nll": -(chosen * tokens[0::2]).sum()}  # the chosen tokens' summed log-likelihood, negated
