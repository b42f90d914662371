"""COSINE self-training (Yu et al., "Fine-Tuning Pre-trained Language Model with Weak Supervision: A
Contrastive-Regularized Self-Training Approach", NAACL 2021): the pieces, as plain functions, and the
callback that relabels.

After a fine-tune on the weak labels, every `update_period` steps the current model predicts every
training text (covered by the labeling functions or not); the predictions are sharpened into soft
pseudo-labels y~; each text's confidence is 1 - H(y~)/log C, and texts above `eps` are selected. Training
then minimises, per batch:

    sum_selected  confidence * KL(pseudo-label || p)                       (self-training)
  + confreg * sum_selected sum_classes (-log p - log C)                    (confidence regulariser)
  + contrastive_weight * mean over selected pairs of d^2 (same pseudo-label)
                                            or max(0, margin - d)^2 (different)   (contrastive)

Names and defaults are the official code's (github.com/yueyu1030/COSINE, run_agnews.sh). Where we differ
from it, deliberately:
- Sharpening divides by the class frequency over *all* training texts (the paper's f_j); the official
  code uses the batch's. Relabeling every text at once makes the whole-set form the natural one.
- The contrastive term uses the student's features (the classifier's input) with gradients, over all
  pairs of selected texts in the batch, paired by pseudo-label (the paper's Eq. 4-5). The official code
  passes the frozen teacher's *logits* as the features, so that term has no gradient there.
- The confidence is 1 - H(y~)/log C of the sharpened pseudo-label y~, as in the paper (Eq. 6). The
  official code takes it from the prediction before sharpening and divides by the log of the *batch
  size* (a slip: `weight.size(-1)` of a per-text vector), which for batches of 32 and a few classes lets
  almost every text pass `eps`. The prediction's confidence with the paper's log C does not work with
  the confidence regulariser: that term holds a binary model near p = 0.9, whose confidence (0.5) is
  below eps = 0.6, so after one period nothing is selected (measured on rotten-tomatoes-weak).
  `confidence_from: prediction` keeps that variant for comparison.
- The confidence regulariser is the official code's gradient made a non-negative quantity:
  C * KL(uniform || p) per selected text (its constant `log C * C` per batch does not change training).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from tunesmith.errors import TrainingError
from tunesmith.train.callbacks import Callback

if TYPE_CHECKING:
    from tunesmith.train.task import TrainerView as Trainer

DISTANCES = ("cos", "l2")


def sharpen(probs: torch.Tensor, power: float = 2.0) -> torch.Tensor:
    """Soft pseudo-labels: p_ij^power / f_j, renormalised per text; f_j = sum_i p_ij over the texts given
    (here all training texts). Raising to a power > 1 sharpens; dividing by f_j keeps a frequent class
    from taking over."""
    frequency = probs.sum(0)
    sharpened = probs.pow(power) / frequency + 1e-10
    return sharpened / sharpened.sum(-1, keepdim=True)


def confidence(probs: torch.Tensor) -> torch.Tensor:
    """1 - H(p)/log C per text: 1 for a one-hot prediction, 0 for a uniform one (the official code's
    `conf='entropy'`)."""
    entropy = -(probs * torch.log(probs + 1e-6)).sum(-1)
    return 1 - entropy / math.log(probs.shape[-1])


CONFIDENCE_FROM = ("pseudo_label", "prediction")


def pseudo_labels(probs: torch.Tensor, power: float, eps: float,
                  confidence_from: str = "pseudo_label") -> tuple[torch.Tensor, torch.Tensor]:
    """(targets, weights): sharpened soft labels, and each text's confidence where it is above `eps`
    (selected), 0 elsewhere. The confidence is the sharpened pseudo-label's (the paper's Eq. 6,
    1 - H(y~)/log C) or, with `confidence_from="prediction"`, the prediction's before sharpening (the
    official code's order)."""
    targets = sharpen(probs, power)
    if confidence_from not in CONFIDENCE_FROM:
        raise ValueError(f"confidence_from {confidence_from!r}: use one of {', '.join(CONFIDENCE_FROM)}")
    weight = confidence(targets if confidence_from == "pseudo_label" else probs)
    return targets, torch.where(weight > eps, weight, torch.zeros_like(weight))


def self_training_sum(log_probs: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_i w_i * KL(target_i || p_i): the confidence-weighted loss (w_i = 0 for texts not selected)."""
    kl = (targets * (torch.log(targets) - log_probs)).sum(-1)
    return (weights * kl).sum()


def confidence_sum(log_probs: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """sum over selected texts of sum_j (-log p_ij - log C) = C * KL(uniform || p_i) >= 0: keeps the
    model from growing over-confident on its own pseudo-labels."""
    classes = log_probs.shape[-1]
    per_text = (-log_probs - math.log(classes)).sum(-1)
    return (per_text * selected.to(per_text.dtype)).sum()


def pair_count(selected: torch.Tensor) -> int:
    n = int(selected.sum())
    return n * (n - 1) // 2


def contrastive_sum(features: torch.Tensor, labels: torch.Tensor, selected: torch.Tensor, margin: float = 1.0,
                    distmetric: str = "cos") -> torch.Tensor:
    """sum over pairs i < j of selected texts: d^2 when their pseudo-labels agree, max(0, margin - d)^2
    when they differ; halved, as the official loss is. d: 1 - cosine similarity (cos) or the RMS of the
    difference (l2, the official code's sqrt(sum diff^2 / dim))."""
    x = features[selected].float()
    y = labels[selected]
    if len(x) < 2:
        return features.sum() * 0.0  # keeps the graph (and DDP's gradient hooks) connected
    if distmetric == "cos":
        unit = nn.functional.normalize(x, dim=-1)
        dist = 1 - unit @ unit.T
    elif distmetric == "l2":
        diff = x[:, None, :] - x[None, :, :]
        dist = (diff.pow(2).sum(-1) / x.shape[-1] + 1e-12).sqrt()
    else:
        raise ValueError(f"distmetric {distmetric!r}: use one of {', '.join(DISTANCES)}")
    same = (y[:, None] == y[None, :]).to(dist.dtype)
    per_pair = same * dist.pow(2) + (1 - same) * torch.clamp(margin - dist, min=0).pow(2)
    upper = torch.triu(torch.ones_like(per_pair, dtype=torch.bool), diagonal=1)
    return per_pair[upper].sum() / 2


def feature_module(model: nn.Module, num_labels: int) -> nn.Module:
    """The layer that turns features into logits (its input is what the contrastive term compares): the
    last linear layer with one output per class."""
    found = None
    for _, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.out_features == num_labels:
            found = module
    if found is None:
        raise TrainingError(f"COSINE: found no linear layer with {num_labels} outputs (the classification head) "
                            f"in {type(model).__name__}")
    return found


@contextmanager
def capture_input(module: nn.Module):
    """Records the first input of `module`'s forward (position 0 of a sequence, for a head that reads
    a whole sequence); yields a list that holds it after the forward."""
    held: list[torch.Tensor] = []

    def hook(_module, args):
        x = args[0]
        held.append(x[:, 0] if x.dim() == 3 else x)

    handle = module.register_forward_pre_hook(hook)
    try:
        yield held
    finally:
        handle.remove()


class Relabel(Callback):
    """Recomputes the pseudo-labels at the start of the self-training stage and every `every` steps
    after. The objective keeps them (its state, so checkpoints carry them); relabeling runs in inference
    mode, batched, and its time counts as training time."""

    key = "cosine_relabel"

    def __init__(self, objective: Any, every: int) -> None:
        self.objective = objective
        self.every = every

    def on_train_start(self, trainer: Trainer) -> None:
        if self.objective.pseudo is None:  # a resumed run has them from its checkpoint
            self._relabel(trainer)

    def on_step_end(self, trainer: Trainer, output) -> dict[str, float] | None:
        if trainer.step % self.every or trainer.step >= trainer.total_steps:
            return None
        return self._relabel(trainer)

    def _relabel(self, trainer: Trainer) -> dict[str, float]:
        started = time.perf_counter()
        trainer.model.eval()
        try:
            line = self.objective.relabel(trainer.model)
        finally:
            trainer.model.train()
        seconds = time.perf_counter() - started
        trainer.train_seconds += seconds
        self.objective.pseudo["seconds"] += seconds
        trainer.say(f"step {trainer.step}: {line} in {seconds:.1f} s")
        return {"relabel_seconds": seconds, "selected_fraction": self.objective.selected_fraction()}
