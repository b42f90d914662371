"""KTO (Ethayarajh et al., 2024), as TRL's KTOTrainer gives it: unpaired judgements (prompt, completion,
desirable or not) against a reference point z, the policy's KL from the reference on mismatched
(prompt, completion) pairs:
    desirable:   desirable_weight   * (1 - sigmoid(beta * (r - z)))
    undesirable: undesirable_weight * (1 - sigmoid(beta * (z - r)))
with r = log pi(y|x) - log ref(y|x) and z = max(0, mean over the batch of the same ratio on mismatched
pairs), not back-propagated. TRL pairs each prompt with the next completion *in its batch*; here the
partner is the next completion *in its split*, fixed when the data is tokenized, so the reference's
log-probabilities of the mismatched pairs can be computed once, like the others. Pairs from a paired
file count as one desirable and one undesirable judgement each.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunesmith.fastpath import no_autograd
from tunesmith.objectives.base import Loss
from tunesmith.objectives.pairs import PairItem, chosen_rejected, split_tokens, truncate
from tunesmith.objectives.preference import PreferenceConfig, PreferenceObjective
from tunesmith.ranges import option, ranged


@dataclass(frozen=True, slots=True)
class JudgedItem(PairItem):
    """chosen_ids: the judged completion; rejected_ids: the next judgement's completion (the KL pair)."""

    label: bool = True


@dataclass
class KTOConfig(PreferenceConfig):
    name: str = option("kto", "the objective")
    desirable_weight: float = ranged(1.0, "> 0", "weight of the loss on desirable answers")
    undesirable_weight: float = ranged(1.0, "> 0", "weight of the loss on undesirable answers")
    precompute_reference: bool | None = option(None, "reference log-probs computed once before training; unset: where the method "
                                             "changes the base weights")


class KTO(PreferenceObjective):
    name = "kto"
    description = "KTO: unpaired desirable / undesirable judgements against a KL reference point"
    Config = KTOConfig
    metric_names = ("loss", "kl", "accuracy")  # accuracy: judgements whose reward sign agrees with them
    paired = False


    def encode(self, examples, tokenizer, max_length):
        cut = [split_tokens(tokenizer, e.prompt, e.completion, e.where) for e in examples]
        items, truncated = [], 0
        for i, (e, (prompt, completion)) in enumerate(zip(examples, cut, strict=True)):
            partner = cut[(i + 1) % len(cut)][1]
            prompt, completion, partner, was_cut = truncate(prompt, completion, partner, max_length)
            truncated += was_cut
            if prompt and completion and partner:
                items.append(JudgedItem(e.where, prompt, completion, partner, label=bool(e.label)))
        return items, {"truncated": truncated, "dropped_prompt_or_completion_truncated": len(examples) - len(items)}

    def collate(self, items, pad_id, train=False):
        return super().collate(items, pad_id, train) | {"label": torch.tensor([it.label for it in items])}

    def counts(self, batch):
        label = batch["label"]
        return {"pairs": float(label.numel()), "desirable": float(label.sum()), "undesirable": float((~label).sum())}

    def _parts(self, model, batch):
        logps, _ = self.sequence_logps(model, batch)
        ref = self.reference_of(model, batch)
        ratio, kl_ratio = (p - r for p, r in zip(chosen_rejected(logps), ref, strict=True))
        z = kl_ratio.detach().mean().clamp(min=0)
        label = batch["label"]
        beta, cfg = self.cfg.beta, self.cfg
        losses = torch.where(label, cfg.desirable_weight * (1 - torch.sigmoid(beta * (ratio - z))),
                             cfg.undesirable_weight * (1 - torch.sigmoid(beta * (z - ratio))))
        return losses, beta * ratio.detach(), z, label

    def loss(self, model, batch):
        losses, rewards, z, label = self._parts(model, batch)
        logs = {"rewards/chosen": ((rewards * label).sum(), "desirable"),
                "rewards/rejected": ((rewards * ~label).sum(), "undesirable"),
                "kl": (z * label.numel(), "pairs")}
        return Loss({"pairs": losses.sum()}, logs)

    @no_autograd
    def eval_sums(self, model, items, batch_size, pad_id, device, num_labels):
        sums = {k: torch.zeros((), dtype=torch.float64) for k in ("loss", "pairs", "kl", "agree")}
        for start in range(0, len(items), batch_size):
            batch = {k: v.to(device) for k, v in self.collate(items[start : start + batch_size], pad_id).items()}
            losses, rewards, z, label = self._parts(model, batch)
            sums["loss"] += losses.sum().double().cpu()
            sums["pairs"] += label.numel()
            sums["kl"] += float(z) * label.numel()
            sums["agree"] += ((rewards > 0) == label).sum().double().cpu()
        return sums

    @no_autograd
    def eval_rows(self, saved, examples, items, run) -> list[dict]:
        """Per judgement: its implicit reward and whether its sign agrees with the judgement."""
        rows = []
        for start in range(0, len(items), 16):
            batch = self.collate(items[start : start + 16], saved.tokenizer.pad_token_id)
            _, rewards, _, label = self._parts(saved.model, batch)
            for it, reward, good in zip(items[start : start + 16], rewards.tolist(), label.tolist(), strict=True):
                rows.append({"where": it.where, "desirable": good, "reward": reward, "correct": (reward > 0) == good})
        return rows

    def metrics(self, sums):
        n = sums["pairs"].item()
        return {} if not n else {"loss": sums["loss"].item() / n, "kl": sums["kl"].item() / n,
                                 "accuracy": sums["agree"].item() / n}
