"""The online RL objectives' advantages and losses: by hand, and against TRL's trainers on the same tensors."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from tunesmith.objectives.advantages import gae, group_relative, leave_one_out, whiten
from tunesmith.objectives.policy_loss import grpo_loss, rloo_loss, sequence_kl, token_kl, value_loss


def test_group_relative_advantages_by_hand():
    rewards = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    out = group_relative(rewards, 3)
    # group 1: mean 2, Bessel std 1; group 2: every completion scored the same, so no signal
    assert torch.allclose(out, torch.tensor([-1, 0, 1, 0, 0, 0]) / (1 + 1e-4))
    assert torch.allclose(group_relative(rewards, 3, "none"), torch.tensor([-1.0, 0, 1, 0, 0, 0]))
    batch_std = rewards.std()
    assert torch.allclose(group_relative(rewards, 3, "batch"), torch.tensor([-1.0, 0, 1, 0, 0, 0]) / (batch_std + 1e-4))
    with pytest.raises(ValueError, match="groups of 4"):
        group_relative(rewards, 4)


def test_leave_one_out_advantages_by_hand():
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 0.0, 2.0])
    # baselines: the other two's mean: [2.5, 2, 1.5], [1, 3, 2]
    assert torch.allclose(leave_one_out(rewards, 3), torch.tensor([-1.5, 0.0, 1.5, 3.0, -3.0, 0.0]))
    assert torch.equal(leave_one_out(rewards, 1), torch.zeros(6))
    normed = leave_one_out(rewards, 3, normalize=True)
    assert abs(float(normed.mean())) < 1e-6 and abs(float(normed.std()) - 1) < 1e-3


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 9.0]])  # the 9 is past the end: never counted
    values = torch.tensor([[0.5, 0.2, 0.4, 7.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    d2 = 1.0 - 0.4
    d1 = 0.0 + 0.9 * 0.4 - 0.2
    d0 = 0.0 + 0.9 * 0.2 - 0.5
    a2 = d2
    a1 = d1 + 0.45 * a2
    a0 = d0 + 0.45 * a1
    assert torch.allclose(adv, torch.tensor([[a0, a1, a2, 0.0]]))
    assert torch.allclose(ret, torch.tensor([[a0 + 0.5, a1 + 0.2, a2 + 0.4, 0.0]]))
    # gamma = lam = 1: the advantage is the reward still to come minus the value
    adv, _ = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert torch.allclose(adv, torch.tensor([[0.5, 0.8, 0.6, 0.0]]))


def test_whiten_keeps_padding_and_standardises_the_rest():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    out = whiten(x, mask)
    assert torch.allclose(out[0, :3], torch.tensor([-1.0, 0.0, 1.0]), atol=1e-4) and out[0, 3] == 100.0


def test_whiten_across_processes_uses_everyones_moments():
    """Two processes' halves, each summing the other's moments in: the whole batch's standardisation."""
    x, mask = torch.tensor([[1.0, 2.0], [3.0, 7.0]]), torch.tensor([[1, 1], [1, 0]])
    whole = whiten(x, mask)
    halves = [(x[:1], mask[:1]), (x[1:], mask[1:])]
    moments = [torch.stack([m.sum(), (v * m).sum(), (v * v * m).sum()]).double() for v, m in halves]
    for i, (v, m) in enumerate(halves):
        out = whiten(v, m, reduce=lambda own, i=i: own + moments[1 - i])
        assert torch.allclose(out, whole[i : i + 1])


def test_kl_estimates_and_value_loss_by_hand():
    logps, ref = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]])
    assert torch.allclose(token_kl(logps, ref), torch.exp(ref - logps) - (ref - logps) - 1)
    assert (token_kl(logps, ref) >= 0).all() and token_kl(ref, ref).abs().max() == 0
    assert torch.allclose(sequence_kl(logps, ref, torch.tensor([[1, 0]])), torch.tensor([0.5]))
    values, old, returns = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.0]]), torch.tensor([[2.0, 1.0]])
    loss, clipped = value_loss(values, old, returns, torch.tensor([[1, 1]]), clip=0.2)
    # token 0: plain (1-2)^2 = 1, clipped V 0.7 -> 1.69 (decides); token 1: both 1
    assert loss.item() == pytest.approx(0.5 * (1.69 + 1.0) / 2) and clipped == 0.5


class _Accelerator:
    process_index, num_processes, sync_gradients = 0, 1, True

    def reduce(self, x, reduction="sum"):
        return x

    def gather(self, x):
        return x

    gather_for_metrics = gather


def _rollout(seed: int = 0, b: int = 6, t: int = 5):
    g = torch.Generator().manual_seed(seed)
    logps = (-torch.rand(b, t, generator=g) * 3).requires_grad_()
    old = (logps.detach() + 0.3 * torch.randn(b, t, generator=g))  # far enough for clipping to act
    ref = logps.detach() + 0.2 * torch.randn(b, t, generator=g)
    mask = torch.ones(b, t)
    mask[0, 3:] = 0
    mask[4, 1:] = 0
    advantages = torch.randn(b, generator=g)
    return logps, old, ref, mask, advantages


def _trl_self(trainer_cls, logps, **fields):
    """Just enough of a TRL trainer for its _compute_loss: the per-token log-probs are the given tensor."""
    fake = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None),
        aux_loss_enabled=False, top_entropy_quantile=1.0, off_policy_mask_threshold=None,
        importance_sampling_level="token", use_vllm=False, vllm_importance_sampling_correction=False,
        model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1,
        _entropy_bonus_enabled=False, accelerator=_Accelerator(),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None))
    for key, value in fields.items():
        setattr(fake, key, value)
    return fake


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_grpo_loss_and_gradient_equal_trl(loss_type, beta):
    trl = pytest.importorskip("trl.trainer.grpo_trainer")
    logps, old, ref, mask, advantages = _rollout()
    b, t = logps.shape
    inputs = {"prompt_ids": torch.zeros(b, 2, dtype=torch.long), "prompt_mask": torch.ones(b, 2),
              "completion_ids": torch.zeros(b, t, dtype=torch.long), "completion_mask": mask,
              "advantages": advantages, "old_per_token_logps": old, "ref_per_token_logps": ref}
    fake = _trl_self(trl.GRPOTrainer, logps, beta=beta, loss_type=loss_type, epsilon_low=0.2, epsilon_high=0.28,
                     max_completion_length=t + 3)
    theirs = trl.GRPOTrainer._compute_loss(fake, None, inputs)
    (their_grad,) = torch.autograd.grad(theirs, logps)
    ours = grpo_loss(logps, old, advantages, mask, ref_logps=ref, beta=beta, epsilon=0.2, epsilon_high=0.28,
                     loss_type=loss_type, max_completion_length=t + 3)
    (our_grad,) = torch.autograd.grad(ours.loss, logps)
    assert ours.loss.item() == pytest.approx(theirs.item(), rel=1e-6, abs=1e-7)
    assert torch.allclose(our_grad, their_grad, atol=1e-7)
    metrics = fake._metrics["train"]
    assert ours.clip_low == pytest.approx(metrics["clip_ratio/low_mean"][0])
    assert ours.clip_high == pytest.approx(metrics["clip_ratio/high_mean"][0])
    assert ours.clip_ratio > 0  # the rollout is off-policy enough for clipping to matter
    if beta:
        assert ours.kl == pytest.approx(metrics["kl"][0], rel=1e-6)


def test_rloo_loss_and_gradient_equal_trl():
    trl = pytest.importorskip("trl.trainer.rloo_trainer")
    logps, old, _, mask, advantages = _rollout(seed=1)
    b, t = logps.shape
    old = old * 0.05 + logps.detach() * 0.95  # sequence ratios near 1, some inside the clip range
    old_seq = (old * mask).sum(1)
    inputs = {"prompt_ids": torch.zeros(b, 2, dtype=torch.long), "prompt_mask": torch.ones(b, 2),
              "completion_ids": torch.zeros(b, t, dtype=torch.long), "completion_mask": mask,
              "advantages": advantages, "old_logps": old_seq}
    fake = _trl_self(trl.RLOOTrainer, logps, epsilon_low=0.2, epsilon_high=0.2)
    theirs = trl.RLOOTrainer._compute_loss(fake, None, inputs)
    (their_grad,) = torch.autograd.grad(theirs, logps)
    ours = rloo_loss(logps, old, advantages, mask, epsilon=0.2)
    (our_grad,) = torch.autograd.grad(ours.loss, logps)
    # float32 sums in another order (TRL subtracts summed log-probs; we sum the differences)
    assert ours.loss.item() == pytest.approx(theirs.item(), rel=1e-5)
    assert torch.allclose(our_grad, their_grad, atol=1e-6)
    assert ours.clip_ratio == pytest.approx(fake._metrics["train"]["clip_ratio/region_mean"][0])
