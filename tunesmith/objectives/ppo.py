"""PPO with a critic (Schulman et al., 2017; as InstructGPT fine-tuned language models, Ouyang et al., 2022).

Each loop step samples `num_generations` completions for each of `train.batch_size` prompts (the same
sampling as grpo, tunesmith/objectives/grpo.py), scores them, and then:

- one forward without gradients gives the sampling policy's log-probabilities and the critic's value
  of every completion token; with `beta` > 0 the reference model's log-probabilities too;
- per-token rewards: -beta (log pi_old - log pi_ref) at every token (the KL penalty, TRL's default
  `k1` estimate), plus the reward at the completion's last token;
- GAE (`gamma`, `lam`) turns rewards and values into advantages (whitened over the step's tokens, on all
  processes) and returns, the critic's targets;
- `num_ppo_epochs` passes over the completions in `num_mini_batches` shuffled minibatches, each an
  optimizer update of the clipped surrogate plus `vf_coef` times the clipped value loss. The learning
  rate schedule advances once per loop step, however many updates the step takes.

The critic is a linear value head on the policy's last hidden states (the shared-backbone design TRL used
with PEFT): the value loss trains the adapter too, but the head is the step's own module with its own
AdamW, saved in checkpoints (a killed run resumes exactly) and never in the policy's weights or adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tunesmith.errors import ConfigError, TrainingError
from tunesmith.objectives.advantages import gae, whiten
from tunesmith.objectives.causal_lm import target_logits_and_hidden
from tunesmith.objectives.grpo import GRPO, OnlineRLConfig, check_finite, rollout_logs, sample, token_logps
from tunesmith.objectives.policy_loss import grpo_loss, value_loss
from tunesmith.ranges import option, ranged


@dataclass
class PPOConfig(OnlineRLConfig):
    """ppo's: the shared online RL options (its `beta` is TRL's `kl_coef`, `epsilon` its `cliprange`)
    and the critic's."""

    name: str = option("ppo", "the objective")
    num_generations: int = ranged(1, ">= 1", "completions sampled per prompt")
    beta: float = ranged(0.05, ">= 0", "weight of the per-token KL penalty in the reward (TRL's kl_coef)")
    num_ppo_epochs: int = ranged(4, ">= 1", "passes over each step's completions")
    num_mini_batches: int = ranged(1, ">= 1", "optimizer updates per pass (the completions split into this many)")
    vf_coef: float = ranged(0.1, ">= 0", "weight of the value loss")
    cliprange_value: float = ranged(0.2, "> 0", "clip range of the value updates")
    gamma: float = ranged(1.0, "(0, 1]", "discount of later tokens' rewards")
    lam: float = ranged(0.95, "(0, 1]", "GAE's lambda: bias (low) against variance (high) of the advantages")
    value_lr: float | None = ranged(None, "> 0", "learning rate of the value head (constant); unset: train.lr")


class PPO(GRPO):
    name = "ppo"
    description = "online RL: sample completions, score them, PPO updates with a value head (GAE advantages)"
    Config = PPOConfig

    def check(self, run, where) -> None:
        from tunesmith.schema import stage_methods

        super(GRPO, self).check(run, where)
        self.check_sampling(run, where)
        cfg = run.objective
        if cfg.num_mini_batches * run.train.grad_accum > run.train.batch_size * cfg.num_generations:
            raise ConfigError(f"{where('objective.num_mini_batches')}: {cfg.num_mini_batches} minibatches of "
                              f"{run.train.grad_accum} micro-batches need more than the "
                              f"{run.train.batch_size * cfg.num_generations} completions a step samples")
        if run.train.precision == "fp16":
            raise ConfigError(f"{where('train.precision')}: fp16's loss scaling would scale the value head's "
                              "gradients too; use bf16")
        for at, method in stage_methods(run):
            if method.name == "prompt":
                raise ConfigError(f"{at}: ppo's value head reads the hidden states of the completion tokens, "
                                  "which prompt tuning's virtual tokens shift; use lora")

    def training_step(self, stage: str):
        return PPOStep(self)


def policy_and_values(model: nn.Module, head: nn.Module, batch: dict[str, torch.Tensor], temperature: float = 1.0
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log-probabilities of the completion tokens at the sampling temperature, the entropy there
    (detached), the value head's values), each (B, L - 1) and 0 off the completion, from one forward;
    logits on completion positions only. The head runs in float32 outside any autocast."""
    logits, targets, wanted, hidden = target_logits_and_hidden(model, batch)
    logps, entropy = token_logps(logits, targets, wanted, temperature)
    with torch.autocast(hidden.device.type, enabled=False):
        values = head(hidden.float()).squeeze(-1)
    zeros = torch.zeros(wanted.shape, dtype=torch.float32, device=wanted.device)
    return logps, entropy, zeros.masked_scatter(wanted, values)


def token_rewards(rewards: torch.Tensor, mask: torch.Tensor, kl: torch.Tensor | None, beta: float) -> torch.Tensor:
    """(B, T): -beta * kl at every completion token, plus each completion's reward at its last token."""
    out = torch.zeros_like(mask) if kl is None else -beta * kl * mask
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = (positions * mask).argmax(-1)
    has_tokens = mask.sum(-1) > 0
    out[torch.arange(mask.shape[0], device=mask.device)[has_tokens], last[has_tokens]] += rewards[has_tokens]
    return out


class PPOStep:
    """Sample, score, GAE, then num_ppo_epochs x num_mini_batches updates of policy and value head.

    Under torchrun every process samples its share, shuffles its own completions and runs the same
    number of micro-batches (an empty one with weight 0); each micro-batch's loss is its token sum over
    the whole minibatch's tokens on all processes, and the value head's gradients are summed over the
    processes as DDP averages the policy's, so the updates equal one process's."""

    def __init__(self, objective: PPO) -> None:
        self.objective = objective
        self.head: nn.Linear | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._saved: dict[str, Any] = {}

    def _build(self, trainer) -> None:
        config = getattr(trainer.model, "config", None)
        hidden = getattr(config, "hidden_size", None)
        if hidden is None:
            raise ConfigError("objective ppo: the model declares no config.hidden_size for its value head")
        head = nn.Linear(hidden, 1).to(trainer.strategy.device)
        nn.init.zeros_(head.weight)  # values start at 0: the first advantages are the rewards' own
        nn.init.zeros_(head.bias)
        group = trainer.optimizer.param_groups[0]
        lr = self.objective.cfg.value_lr or group.get("initial_lr", group["lr"])
        self.head, self.optimizer = head, torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
        if self._saved:
            head.load_state_dict(self._saved["value_head"])
            self.optimizer.load_state_dict(self._saved["value_optimizer"])

    def __call__(self, trainer):
        from tunesmith.train.step import StepOutput, apply_update, chunks

        obj, strategy, cfg = self.objective, trainer.strategy, self.objective.cfg
        r = sample(trainer, obj)
        if self.head is None:
            self._build(trainer)
        head = self.head
        batch = r.batch
        mask = r.mask * (~r.unscored).float().to(r.mask.device).unsqueeze(1)  # nothing learned from the unscored
        with torch.no_grad(), trainer.precision.autocast():  # in train.grad_accum pieces, as the updates
            pieces = [policy_and_values(trainer.wrapped, head, {k: v[part or [0]] for k, v in batch.items()},
                                        cfg.temperature)[: (3 if part else 0)]
                      for part in chunks(list(range(mask.shape[0])), trainer.cfg.grad_accum)]
            old_logps, entropy, old_values = (torch.cat(parts) for parts in zip(*[p for p in pieces if p], strict=True))
            ref = obj.reference_logps(batch) if cfg.beta > 0 else None
        kl = None if ref is None else (old_logps - ref) * mask
        rewards = token_rewards(r.rewards.to(mask.device), mask, kl, cfg.beta)
        advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
        advantages = whiten(advantages, mask, reduce=strategy.all_reduce_sum)

        world = float(strategy.world_size)
        generator = torch.Generator().manual_seed(trainer.cfg.data_seed * 1_000_003 + trainer.step + 104_729)
        n = mask.shape[0]
        # minibatches of the whole step's completions (so they do not depend on the number of processes),
        # each process taking its own of them
        passes = [[[g - r.offset for g in minibatch if r.offset <= g < r.offset + n]
                   for minibatch in chunks(torch.randperm(int(r.completions), generator=generator).tolist(),
                                           cfg.num_mini_batches)]
                  for _ in range(cfg.num_ppo_epochs)]
        local = torch.tensor([[float(mask[mb].sum()) for mb in minibatches] for minibatches in passes],
                             dtype=torch.float64, device=strategy.device)
        minibatch_tokens = strategy.all_reduce_sum(local).cpu().tolist()
        sums = {"loss": 0.0, "value_loss": 0.0, "clip_ratio": 0.0, "value_clip_ratio": 0.0}
        updates = 0
        for e, minibatches in enumerate(passes):
            for m, minibatch in enumerate(minibatches):
                total = max(minibatch_tokens[e][m], 1.0)
                parts = chunks(minibatch, trainer.cfg.grad_accum)
                for j, part in enumerate(parts):
                    weight = world / total if part else 0.0
                    part = part or [0]  # a process with nothing left still takes part in the synchronised backward
                    sub = {k: v[part] for k, v in batch.items()}
                    part_mask = mask[part]
                    tokens = float(part_mask.sum())
                    with strategy.sync_gradients(trainer.wrapped, sync=j == len(parts) - 1):
                        with trainer.precision.autocast():
                            logps, _, values = policy_and_values(trainer.wrapped, head, sub, cfg.temperature)
                            policy = grpo_loss(logps, old_logps[part], advantages[part], part_mask,
                                               epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high, loss_type="bnpo")
                            critic, value_clipped = value_loss(values, old_values[part], returns[part], part_mask,
                                                               clip=cfg.cliprange_value)
                            loss = policy.loss + cfg.vf_coef * critic
                            check_finite(loss, trainer)
                        trainer.precision.backward(loss * tokens * weight)
                    if part and tokens:
                        share = tokens / total  # of the minibatch's mean; the loop sums the processes' shares
                        sums["loss"] += loss.item() * share
                        sums["value_loss"] += critic.item() * share
                        sums["clip_ratio"] += policy.clip_ratio * share
                        sums["value_clip_ratio"] += value_clipped * share
                self._update_head(strategy, trainer)
                last = e == len(passes) - 1 and m == len(minibatches) - 1
                apply_update(trainer, schedule=last)
                updates += 1
        scored_tokens = max(float(strategy.all_reduce_sum(mask.sum().double().reshape(1)).item()), 1.0)
        logs = rollout_logs(obj, strategy, r) | {
            "entropy": (float((entropy * mask).sum()), scored_tokens),
            "value_loss": (sums["value_loss"], float(updates)),
            "clip_ratio": (sums["clip_ratio"], float(updates)),
            "value_clip_ratio": (sums["value_clip_ratio"], float(updates))}
        if kl is not None:
            logs["kl"] = (float(kl.sum()), scored_tokens)
        return StepOutput({"loss": sums["loss"] / updates}, {"loss": 1.0}, logs, samples=int(r.completions))

    def _update_head(self, strategy, trainer) -> None:
        """The value head's gradients averaged over the processes as DDP averages the policy's (each
        process's loss is already its share of the minibatch, times the number of processes), clipped to
        train.max_grad_norm and refused when not finite, as the policy's; then its own AdamW step."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.head.parameters()]
        flat = strategy.all_reduce_sum(torch.cat([g.reshape(-1) for g in grads]).double())
        flat = flat / strategy.world_size
        offset = 0
        for p in self.head.parameters():
            p.grad = flat[offset: offset + p.numel()].view_as(p).to(p.dtype)
            offset += p.numel()
        limit = trainer.cfg.max_grad_norm
        norm = float(nn.utils.clip_grad_norm_(self.head.parameters(), limit if limit is not None else float("inf")))
        if not torch.isfinite(torch.tensor(norm)):
            raise TrainingError(f"the value head's gradients became {norm} at step {trainer.step + 1}; lower "
                                "train.lr or objective.value_lr")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any]:
        if self.head is None:
            return dict(self._saved)
        return {"value_head": self.head.state_dict(), "value_optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._saved = dict(state)
        if self.head is not None and state:
            self.head.load_state_dict(state["value_head"])
            self.optimizer.load_state_dict(state["value_optimizer"])
