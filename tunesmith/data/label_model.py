"""Label models: from the label matrix (examples x LFs) to soft labels, without gold labels.

- `majority_vote`: each covered example's votes counted; a tie is a uniform soft label over the tied
  labels (never a silent pick); an example no LF covers gets no label (NaN row), and stays apart.
- `dawid_skene` (Dawid & Skene, 1979): learns the class balance and one confusion matrix per LF
  (how often it votes each label given the true one) by EM from the majority vote, abstains ignored;
  the same idea as Snorkel's LabelModel, fitted by EM instead of matrix completion. Compared with
  `snorkel` on the same label matrices in tests/data/test_weak.py.
"""

from __future__ import annotations

import numpy as np

from tunesmith.data.weak import ABSTAIN


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


def dawid_skene(L: np.ndarray, k: int, iterations: int = 100, tol: float = 1e-6,
                smoothing: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(soft labels (N, k) with NaN rows where no LF voted, class prior (k,), confusion (LFs, k, k):
    P(LF votes l | true label c) at [j, c, l])."""
    covered = (L != ABSTAIN).any(axis=1)
    Lc = L[covered]
    m = L.shape[1]
    onehot = np.zeros((len(Lc), m, k))
    voted = Lc != ABSTAIN
    rows, lfs = np.nonzero(voted)
    onehot[rows, lfs, Lc[rows, lfs]] = 1
    T = majority_vote(Lc, k)
    prior = np.full(k, 1 / k)
    confusion = np.full((m, k, k), 1 / k)
    previous = -np.inf
    for _ in range(iterations):
        # M-step: class balance and each LF's confusion matrix from the current soft labels
        prior = (T.sum(axis=0) + smoothing) / (len(T) + k * smoothing)
        # a Dirichlet prior that slightly favours an LF voting the true label (and keeps every entry > 0)
        counts = np.einsum("ic,ijl->jcl", T, onehot) + smoothing * (np.eye(k) + 1.0 / k)[None]
        confusion = counts / counts.sum(axis=2, keepdims=True)
        # E-step: posterior over the true label from the votes (abstains carry no evidence)
        log_post = np.log(prior)[None] + np.einsum("ijl,jcl->ic", onehot, np.log(confusion))
        log_norm = np.logaddexp.reduce(log_post, axis=1, keepdims=True)
        T = np.exp(log_post - log_norm)
        likelihood = float(log_norm.sum())
        if likelihood - previous < tol * max(1.0, abs(likelihood)):
            break
        previous = likelihood
    soft = np.full((len(L), k), np.nan)
    soft[covered] = T
    return soft, prior, confusion


LABEL_MODELS = {"majority": lambda L, k: majority_vote(L, k), "dawid_skene": lambda L, k: dawid_skene(L, k)[0]}
