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
  `class_frequency: batch` keeps the relabeling's predictions and sharpens (and selects) per training
  batch in `collate`, the official code's order; the relabeling then reports the whole-set selection.
- The contrastive term uses the student's features (the classifier's input) with gradients, over all
  pairs of selected texts in the batch, paired by pseudo-label (the paper's Eq. 4-5). The official code
  passes the frozen teacher's *logits* as the features, so that term has no gradient there.
  `contrastive_features: teacher` takes the teacher's features (its classifier input, not its logits),
  worked out for every text at the relabeling, when that model is the teacher: no gradient, as there.
- The official code (and WRENCH) pair each selected text with one random partner, agreeing by the
  student's predicted class, and average over the texts; `contrastive_pairs: random` samples the same
  way but agrees by pseudo-label, as every pair of ours does.
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


PAIRS = ("all", "random")
FEATURES = ("student", "teacher")
CLASS_FREQUENCY = ("all", "batch")


def pair_count(selected: torch.Tensor, pairs: str = "all") -> int:
    """How many pairs the contrastive term sums over: every pair of selected texts (all), or one per
    selected text (random: each is paired with one drawn at random, as the official code and WRENCH do)."""
    n = int(selected.sum())
    return n * (n - 1) // 2 if pairs == "all" else n


def _distance(a: torch.Tensor, b: torch.Tensor, distmetric: str) -> torch.Tensor:
    """Row-wise distance between a and b (broadcast): 1 - cosine similarity, or the RMS of the difference."""
    if distmetric == "cos":
        return 1 - (nn.functional.normalize(a, dim=-1) * nn.functional.normalize(b, dim=-1)).sum(-1)
    if distmetric == "l2":
        return ((a - b).pow(2).sum(-1) / a.shape[-1] + 1e-12).sqrt()
    raise ValueError(f"distmetric {distmetric!r}: use one of {', '.join(DISTANCES)}")


def contrastive_sum(features: torch.Tensor, labels: torch.Tensor, selected: torch.Tensor, margin: float = 1.0,
                    distmetric: str = "cos", pairs: str = "all",
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Sum over pairs of selected texts: d^2 when their pseudo-labels agree, max(0, margin - d)^2 when
    they differ; halved, as the official loss is. d: 1 - cosine similarity (cos) or the RMS of the
    difference (l2, the official code's sqrt(sum diff^2 / dim); its square is WRENCH's mean squared
    difference). Pairs: all i < j (all), or i with perm[i] for one random permutation of the selected
    texts (random: the official code's and WRENCH's sampling; a text drawn with itself adds 0)."""
    if pairs not in PAIRS:
        raise ValueError(f"pairs {pairs!r}: use one of {', '.join(PAIRS)}")
    x = features[selected].float()
    y = labels[selected]
    if len(x) < 2:
        return features.sum() * 0.0  # keeps the graph (and DDP's gradient hooks) connected
    if pairs == "all":
        dist = _distance(x[:, None, :], x[None, :, :], distmetric)
        same = (y[:, None] == y[None, :]).to(dist.dtype)
        upper = torch.triu(torch.ones_like(dist, dtype=torch.bool), diagonal=1)
        dist, same = dist[upper], same[upper]
    else:
        perm = torch.randperm(len(x), generator=generator).to(x.device)
        dist = _distance(x, x[perm], distmetric)
        same = (y == y[perm]).to(dist.dtype)
    per_pair = same * dist.pow(2) + (1 - same) * torch.clamp(margin - dist, min=0).pow(2)
    return per_pair.sum() / 2


GROUPS = ("covered_selected", "covered_unselected", "uncovered_selected", "uncovered_unselected")


def pseudo_label_accuracy(predicted: torch.Tensor, gold: torch.Tensor, covered: torch.Tensor,
                          selected: torch.Tensor) -> dict[str, float]:
    """Accuracy of the pseudo-labels against gold labels, per group of texts (covered by an LF or not x
    selected or not) and over all; texts without a gold label (-1) are left out, and so is an empty
    group. A diagnostic only: nothing here reaches training."""
    known = gold >= 0
    right = (predicted == gold) & known
    out: dict[str, float] = {}
    if known.any():
        out["pseudo_accuracy"] = int(right.sum()) / int(known.sum())
    for name in GROUPS:
        cov = covered if name.startswith("covered") else ~covered
        sel = selected if name.endswith("_selected") else ~selected
        mask = known & cov & sel
        if mask.any():
            out[f"pseudo_accuracy_{name}"] = int(right[mask].sum()) / int(mask.sum())
    return out


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
        self.pending: dict[str, float] = {}

    def on_train_start(self, trainer: Trainer) -> None:
        self.pending = {}
        if self.objective.pseudo is None:  # a resumed run has them from its checkpoint
            # the loop logs nothing before the first step: these go out with its metrics
            self.pending = self._relabel(trainer)

    def on_step_end(self, trainer: Trainer, output) -> dict[str, float] | None:
        pending, self.pending = self.pending, {}
        if trainer.step % self.every or trainer.step >= trainer.total_steps:
            return pending or None
        return pending | self._relabel(trainer)

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
        return {"relabel_seconds": seconds, "selected_fraction": self.objective.selected_fraction(),
                **self.objective.relabel_metrics}
