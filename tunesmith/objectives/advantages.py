"""How good each sampled completion was compared with what the policy usually does: the advantages of
the online RL objectives (GRPO, RLOO, PPO).

Completions come in groups of `k` per prompt, laid out consecutively (prompt 0's k, then prompt 1's ...).
GRPO and RLOO need no critic: the group is the baseline. GRPO (Shao et al., 2024) subtracts the group
mean and divides by the group's standard deviation; RLOO (Ahmadian et al., 2024) subtracts the mean of
the other k - 1 completions, an unbiased baseline. PPO's critic gives a value per token and GAE
(Schulman et al., 2016) turns the per-token rewards and values into advantages and returns.

Standard deviations are Bessel-corrected and `1e-4` keeps a group whose completions all scored the same
at advantage 0, as TRL does (its `nanstd`, its `+ 1e-4`), so the same rewards give the same advantages.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

SCALES = ("group", "batch", "none")
EPS = 1e-4


def _groups(rewards: torch.Tensor, k: int) -> torch.Tensor:
    if rewards.dim() != 1 or k < 1 or rewards.numel() % k:
        raise ValueError(f"rewards of shape {tuple(rewards.shape)} do not split into groups of {k}")
    return rewards.view(-1, k)


def group_relative(rewards: torch.Tensor, k: int, scale: str = "group") -> torch.Tensor:
    """GRPO: reward minus its group's mean, divided by the std of the group (`group`), of the whole batch
    (`batch`, Dr. GRPO's advice against the per-group bias) or not at all (`none`)."""
    grouped = _groups(rewards, k)
    centred = (grouped - grouped.mean(1, keepdim=True)).view(-1)
    if scale == "none":
        return centred
    if scale == "group":
        std = grouped.std(1, keepdim=True).expand_as(grouped).reshape(-1) if k > 1 else torch.zeros_like(rewards)
    elif scale == "batch":
        std = rewards.std().expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
    else:
        raise ValueError(f"scale {scale!r} is not one of {', '.join(SCALES)}")
    return centred / (std + EPS)


def leave_one_out(rewards: torch.Tensor, k: int, normalize: bool = False) -> torch.Tensor:
    """RLOO: reward minus the mean reward of the other completions of its prompt (0 for k = 1); with
    `normalize`, then whitened over the batch (TRL's `normalize_advantages`)."""
    grouped = _groups(rewards, k)
    if k == 1:
        return torch.zeros_like(rewards)
    baseline = (grouped.sum(1, keepdim=True) - grouped) / (k - 1)
    advantages = (grouped - baseline).view(-1)
    if normalize:
        advantages = (advantages - advantages.mean()) / (advantages.std() + EPS)
    return advantages


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp_min(1)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
           reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """x standardised over the positions `mask` keeps (Bessel-corrected variance); positions outside
    the mask come out as they went in. `reduce` sums the (count, sum, sum of squares) over processes
    (a strategy's all_reduce_sum), so every process standardises by the same moments."""
    mask = mask.to(x.dtype)
    wide, weights = x.double(), mask.double()  # squares - n mean^2 needs the precision
    moments = torch.stack([weights.sum(), (wide * weights).sum(), (wide * wide * weights).sum()])
    n, total, squares = (reduce(moments) if reduce else moments).tolist()
    mean = total / max(n, 1.0)
    var = max(squares - n * mean * mean, 0.0) / max(n - 1, 1.0)
    out = (x - mean) * (var + 1e-8) ** -0.5
    if not shift_mean:
        out = out + mean
    return torch.where(mask.bool(), out, x)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns), each (B, T), of per-token rewards and the critic's values over the completion
    tokens `mask` keeps (1 up to and including the last token, 0 after): delta_t = r_t + gamma V_{t+1}
    - V_t, A_t = delta_t + gamma lam A_{t+1}, nothing flowing back from beyond a completion's end;
    returns = A + V, the critic's target."""
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        following = values[:, t + 1] if t + 1 < values.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * following - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask
