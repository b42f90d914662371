"""Early stopping on a chosen evaluation metric, with patience, and the rule for which evaluation is best.

The rule, the same for every objective: an evaluation is a new best when its metric improves by more
than `min_delta`; when the metric *ties* the best exactly (an accuracy that has saturated, e.g. 1.0 on a
small validation set, or stays at 0.95 for several evaluations), the tie-breaker decides: by default the
loss of the same split (`val_accuracy` -> `val_loss`), so a model whose loss keeps falling at equal
accuracy is the later, better trained one. A metric that is itself a loss has no tie-breaker.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tunesmith.schema import EarlyStopConfig


def default_tie_breaker(metric: str) -> str | None:
    """The loss of the metric's own split (val_accuracy -> val_loss, ood-subpop_macro_f1 ->
    ood-subpop_loss: split and eval-set names hold no underscore); None for a loss."""
    if metric.endswith("loss"):
        return None
    split, _, name = metric.partition("_")
    return f"{split}_loss" if name else "loss"


def mode_of(metric: str) -> str:
    return "min" if metric.endswith("loss") else "max"


@dataclass
class EarlyStopper:
    metric: str
    mode: str  # min | max
    patience: int | None
    min_delta: float = 0.0
    tie_metric: str | None = None  # decides between evaluations whose metric ties exactly (min for a loss)
    best: float | None = None
    best_step: int | None = None
    best_tie: float | None = None  # the tie-breaker's value at the best evaluation
    bad_evals: int = 0
    # the loss of the metric's split (val_loss for val_accuracy) at the best evaluation, tie-breaker or
    # not: a warning compares it with the last evaluation's (see loop.Trainer)
    watch_metric: str | None = None
    best_watch: float | None = None

    @classmethod
    def from_config(cls, cfg: EarlyStopConfig, default_metric: str = "val_loss") -> EarlyStopper:
        """`default_metric` (the objective's) where the config names none."""
        metric = cfg.metric or default_metric
        mode = cfg.mode if cfg.mode != "auto" else mode_of(metric)
        tie = getattr(cfg, "tie_breaker", "auto")
        tie_metric = default_tie_breaker(metric) if tie == "auto" else (None if tie in (None, "none") else tie)
        return cls(metric=metric, mode=mode, patience=cfg.patience, min_delta=cfg.min_delta,
                   tie_metric=None if tie_metric == metric else tie_metric, watch_metric=default_tie_breaker(metric))

    def _better(self, value: float, best: float, mode: str, delta: float) -> bool:
        return value < best - delta if mode == "min" else value > best + delta

    def update(self, value: float, step: int, tie_value: float | None = None, watch_value: float | None = None) -> bool:
        """Record an evaluation; True when it is a new best (its metric improved, or tied the best and
        the tie-breaker improved). `watch_value`: the split's loss, kept for the best evaluation."""
        better = self.best is None or self._better(value, self.best, self.mode, self.min_delta)
        if not better and value == self.best and self.tie_metric is not None and tie_value is not None:
            better = self.best_tie is None or self._better(tie_value, self.best_tie, mode_of(self.tie_metric), 0.0)
        if better:
            self.best, self.best_step, self.best_tie, self.bad_evals = value, step, tie_value, 0
            self.best_watch = watch_value
        else:
            self.bad_evals += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_evals >= self.patience

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
