"""Label models: from the label matrix (examples x LFs) to soft labels, without gold labels.

- `majority_vote`: each covered example's votes counted; a tie is a uniform soft label over the tied
  labels (never a silent pick); an example no LF covers gets no label (NaN row), and stays apart.
- `dawid_skene` (Dawid & Skene, 1979): learns the class balance and one confusion matrix per LF
  (how often it votes each label, or abstains, given the true one) by EM from the majority vote;
  the same idea as Snorkel's LabelModel, fitted by EM instead of matrix completion. Compared with
  `snorkel` on the same label matrices in tests/data/test_weak.py.
"""

from __future__ import annotations

import numpy as np

ABSTAIN = -1  # an LF that does not vote


def _votes(L: np.ndarray, k: int) -> np.ndarray:
    """(examples, labels) vote counts."""
    counts = np.zeros((len(L), k))
    for j in range(L.shape[1]):
        voted = L[:, j] != ABSTAIN
        np.add.at(counts, (np.flatnonzero(voted), L[voted, j]), 1)
    return counts


def majority_vote(L: np.ndarray, k: int) -> np.ndarray:
    """Soft labels (N, k): the most-voted label, ties split evenly; NaN rows where no LF voted."""
    counts = _votes(L, k)
    top = counts.max(axis=1, keepdims=True)
    winners = (counts == top) & (top > 0)
    soft = winners / np.maximum(winners.sum(axis=1, keepdims=True), 1)
    soft[top[:, 0] == 0] = np.nan
    return soft


def _outcomes(L: np.ndarray, k: int) -> np.ndarray:
    """(examples, LFs, k + 1) one-hot of each LF's output: 0 abstain, 1 + l label l."""
    onehot = np.zeros((*L.shape, k + 1))
    rows, lfs = np.indices(L.shape)
    onehot[rows, lfs, np.where(L == ABSTAIN, 0, L + 1)] = 1
    return onehot


def dawid_skene(L: np.ndarray, k: int, iterations: int = 200, tol: float = 1e-7,
                smoothing: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(soft labels (N, k) with NaN rows where no LF voted, class prior (k,), confusion (LFs, k, k + 1):
    P(LF outputs o | true label c) at [j, c, o], o = 0 abstain, 1 + l label l).

    Abstaining is one of an LF's outputs: a keyword LF that only ever votes one label tells the classes
    apart by how often it fires on each, which a model of its votes alone cannot see. Every text is
    fitted (uncovered ones too: they say how often LFs stay silent), starting from the majority vote."""
    onehot = _outcomes(L, k)
    covered = (L != ABSTAIN).any(axis=1)
    start = majority_vote(L, k)
    T = np.where(covered[:, None], np.nan_to_num(start), 1.0 / k)
    # a Dirichlet prior that slightly favours an LF voting the true label (and keeps every entry > 0)
    pseudo = np.full((k, k + 1), smoothing / (k + 1))
    pseudo[:, 1:] += smoothing * np.eye(k)
    previous = -np.inf
    for _ in range(iterations):
        # M-step: class balance and each LF's output distribution per true class, from the soft labels
        prior = (T.sum(axis=0) + smoothing) / (len(T) + k * smoothing)
        counts = np.einsum("ic,ijo->jco", T, onehot) + pseudo[None]
        confusion = counts / counts.sum(axis=2, keepdims=True)
        # E-step: posterior over the true label given every LF's output
        log_post = np.log(prior)[None] + np.einsum("ijo,jco->ic", onehot, np.log(confusion))
        log_norm = np.logaddexp.reduce(log_post, axis=1, keepdims=True)
        T = np.exp(log_post - log_norm)
        likelihood = float(log_norm.sum())
        if likelihood - previous < tol * max(1.0, abs(likelihood)):
            break
        previous = likelihood
    soft = T.copy()
    soft[~covered] = np.nan
    return soft, prior, confusion


LABEL_MODELS = {"majority": lambda L, k: majority_vote(L, k), "dawid_skene": lambda L, k: dawid_skene(L, k)[0]}


class FittedLabelModel:
    """A label model fitted on the training texts' label matrix, applied to any label matrix of the same
    LFs: soft labels (NaN rows where no LF votes) and hard predictions (every row gets one: where no LF
    votes, the class the training votes make most frequent; ties between labels broken at random with a
    fixed seed, as snorkel's `tie_break_policy="random"`)."""

    def __init__(self, name: str, L: np.ndarray, k: int) -> None:
        self.name, self.k = name, k
        if name == "dawid_skene":
            soft, self.prior, self.confusion = dawid_skene(L, k)
        elif name == "majority":
            soft = majority_vote(L, k)
            covered = ~np.isnan(soft).any(axis=1)
            self.prior = soft[covered].mean(axis=0) if covered.any() else np.full(k, 1 / k)
        else:
            raise ValueError(f"unknown label model {name!r}; known: {', '.join(LABEL_MODELS)}")

    def soft_labels(self, L: np.ndarray) -> np.ndarray:
        if self.name == "majority":
            return majority_vote(L, self.k)
        log_post = np.log(self.prior)[None] + np.einsum("ijo,jco->ic", _outcomes(L, self.k), np.log(self.confusion))
        soft = np.exp(log_post - np.logaddexp.reduce(log_post, axis=1, keepdims=True))
        soft[~(L != ABSTAIN).any(axis=1)] = np.nan
        return soft

    def predict(self, L: np.ndarray, seed: int = 0) -> np.ndarray:
        soft = self.soft_labels(L)
        uncovered = np.isnan(soft).any(axis=1)
        soft[uncovered] = self.prior
        best = soft.max(axis=1, keepdims=True)
        tied = np.isclose(soft, best, rtol=0, atol=1e-9)
        noise = np.random.default_rng(seed).random(soft.shape)
        return np.where(tied, noise, -1.0).argmax(axis=1)


def fit_label_model(name: str, L: np.ndarray, k: int) -> FittedLabelModel:
    return FittedLabelModel(name, L, k)
