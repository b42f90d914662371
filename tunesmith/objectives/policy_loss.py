"""The losses of the online RL objectives, on per-token log-probabilities of sampled completions.

All take (B, T) tensors over completion tokens with `mask` 1 on real tokens (0 on padding after a
completion's end). `old_logps` are the log-probabilities under the policy that sampled (detached);
with one update per batch of samples they equal the current ones and the ratio is 1, but its gradient
is still the policy gradient.

- GRPO (TRL's `loss_type`): the PPO-clipped surrogate per token, min(r A, clip(r, 1 - eps_low,
  1 + eps_high) A), plus beta times the k3 estimate of KL(policy || reference) per token,
  exp(ref - logp) - (ref - logp) - 1, which is >= 0 and unbiased; `grpo` averages over each
  completion's tokens and then over completions, `bnpo` over all tokens of the batch, `dr_grpo` divides
  the sum by B x max_completion_length (no length bias).
- RLOO: the same clipping on the ratio of whole-sequence probabilities, averaged over completions;
  its KL is a reward penalty (beta times the sum over tokens of logp_old - logp_ref), applied before
  the baseline.
- PPO's critic: the clipped value loss, 0.5 max((V - R)^2, (clip(V, V_old +- c) - R)^2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunesmith.objectives.advantages import masked_mean

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo")


@dataclass
class PolicyLoss:
    loss: torch.Tensor
    kl: float  # mean per-token KL estimate (0 when beta is 0 and no reference was given)
    clip_low: float  # fraction of tokens whose ratio was clipped below (negative advantage)
    clip_high: float  # ... above (positive advantage)

    @property
    def clip_ratio(self) -> float:
        return self.clip_low + self.clip_high


def token_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """k3 (Schulman): exp(ref - logp) - (ref - logp) - 1 per token."""
    delta = ref_logps - logps
    return torch.exp(delta) - delta - 1


def sequence_kl(old_logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """RLOO's per-completion KL penalty: the summed first-order log ratio of the sampling policy to the
    reference, (B,)."""
    return ((old_logps - ref_logps) * mask).sum(-1)


def _clip_fractions(ratio: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, eps_low: float,
                    eps_high: float) -> tuple[float, float]:
    low = ((ratio < 1 - eps_low) & (advantages < 0)).to(mask.dtype)
    high = ((ratio > 1 + eps_high) & (advantages > 0)).to(mask.dtype)
    return float(masked_mean(low.expand_as(mask), mask)), float(masked_mean(high.expand_as(mask), mask))


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
              ref_logps: torch.Tensor | None = None, beta: float = 0.0, epsilon: float = 0.2,
              epsilon_high: float | None = None, loss_type: str = "grpo",
              max_completion_length: int | None = None) -> PolicyLoss:
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type {loss_type!r} is not one of {', '.join(LOSS_TYPES)}")
    eps_high = epsilon if epsilon_high is None else epsilon_high
    mask = mask.to(logps.dtype)
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    ratio = torch.exp(logps - old_logps)
    per_token = -torch.min(ratio * adv, torch.clamp(ratio, 1 - epsilon, 1 + eps_high) * adv)
    kl = 0.0
    if beta != 0.0:
        if ref_logps is None:
            raise ValueError("beta != 0 needs the reference model's log-probabilities")
        per_token_kl = token_kl(logps, ref_logps)
        per_token = per_token + beta * per_token_kl
        kl = float(masked_mean(per_token_kl.detach(), mask))
    elif ref_logps is not None:
        kl = float(masked_mean(token_kl(logps.detach(), ref_logps), mask))
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp_min(1)).mean()
    elif loss_type == "bnpo":
        loss = (per_token * mask).sum() / mask.sum().clamp_min(1)
    else:
        if max_completion_length is None:
            raise ValueError("loss_type dr_grpo needs max_completion_length")
        loss = (per_token * mask).sum() / (per_token.shape[0] * max_completion_length)
    low, high = _clip_fractions(ratio.detach(), adv, mask, epsilon, eps_high)
    return PolicyLoss(loss, kl, low, high)


def rloo_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
              epsilon: float = 0.2, epsilon_high: float | None = None) -> PolicyLoss:
    eps_high = epsilon if epsilon_high is None else epsilon_high
    mask = mask.to(logps.dtype)
    ratio = torch.exp(((logps - old_logps) * mask).sum(-1))
    loss = -torch.min(ratio * advantages, torch.clamp(ratio, 1 - epsilon, 1 + eps_high) * advantages).mean()
    ones = torch.ones_like(ratio).unsqueeze(1)
    low, high = _clip_fractions(ratio.detach().unsqueeze(1), advantages.unsqueeze(1), ones, epsilon, eps_high)
    return PolicyLoss(loss, 0.0, low, high)


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float = 0.2) -> tuple[torch.Tensor, float]:
    """PPO's clipped critic loss and the fraction of tokens where clipping decided it."""
    mask = mask.to(values.dtype)
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    plain, capped = (values - returns) ** 2, (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(plain, capped), mask)
    return loss, float(masked_mean((capped > plain).to(mask.dtype), mask))
