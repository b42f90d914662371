"""Early stopping on a chosen evaluation metric, with patience."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tunesmith.config import EarlyStopConfig


@dataclass
class EarlyStopper:
    metric: str
    mode: str  # min | max
    patience: int | None
    min_delta: float = 0.0
    best: float | None = None
    best_step: int | None = None
    bad_evals: int = 0

    @classmethod
    def from_config(cls, cfg: EarlyStopConfig, default_metric: str = "val_loss") -> EarlyStopper:
        """`default_metric` (the objective's) where the config names none."""
        metric = cfg.metric or default_metric
        mode = cfg.mode if cfg.mode != "auto" else ("min" if metric.endswith("loss") else "max")
        return cls(metric=metric, mode=mode, patience=cfg.patience, min_delta=cfg.min_delta)

    def update(self, value: float, step: int) -> bool:
        """Record an evaluation; True when it is a new best."""
        better = self.best is None or (
            value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta
        )
        if better:
            self.best, self.best_step, self.bad_evals = value, step, 0
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
