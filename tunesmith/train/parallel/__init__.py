"""Parallelism as a strategy: one file with a Strategy subclass + one line here (see base.py)."""

from __future__ import annotations

from tunesmith.errors import ConfigError
from tunesmith.train.distributed import DistInfo
from tunesmith.train.parallel.base import Strategy
from tunesmith.train.parallel.ddp import DDP

STRATEGIES: dict[str, type[Strategy]] = {
    "none": Strategy,
    "ddp": DDP,
}
CHOICES = ("auto", *STRATEGIES)


def make_strategy(name: str, info: DistInfo) -> Strategy:
    """`auto`: DDP when launched as several processes (torchrun), else one process."""
    if name == "auto":
        name = "ddp" if info.world_size > 1 else "none"
    cls = STRATEGIES[name]
    if cls.multi_process != (info.world_size > 1):
        launch = (f"it runs as {info.world_size} processes; use a multi-process strategy ("
                  + ", ".join(n for n, c in STRATEGIES.items() if c.multi_process) + ")" if info.world_size > 1
                  else "launch it with torchrun --nproc_per_node=N")
        raise ConfigError(f"train.parallelism: {name}: {launch}")
    return cls(info)


__all__ = ["CHOICES", "STRATEGIES", "Strategy", "make_strategy"]
