"""Parallelism as a strategy: one file with a Strategy subclass + one line here (see base.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunesmith.errors import ConfigError
from tunesmith.train.distributed import DistInfo
from tunesmith.train.parallel.base import Strategy
from tunesmith.train.parallel.ddp import DDP
from tunesmith.train.parallel.fsdp import FSDP

STRATEGIES: dict[str, type[Strategy]] = {
    "none": Strategy,
    "ddp": DDP,
    "fsdp": FSDP,
}
CHOICES = ("auto", *STRATEGIES)


def make_strategy(name: str, info: DistInfo, options: TrainConfig | None = None) -> Strategy:
    """`auto`: DDP when launched as several processes (torchrun), else one process. FSDP runs under
    torchrun on any number of processes (one included: a sharded run resumes on fewer)."""
    if name == "auto":
        name = "ddp" if info.world_size > 1 else "none"
    cls = STRATEGIES[name]
    if cls.shards and not info.launched:
        raise ConfigError(f"train.parallelism: {name}: launch it with torchrun --nproc_per_node=N -m tunesmith "
                          "train ...")
    if not cls.shards and cls.multi_process != (info.world_size > 1):
        launch = (f"it runs as {info.world_size} processes; use a multi-process strategy ("
                  + ", ".join(n for n, c in STRATEGIES.items() if c.multi_process) + ")" if info.world_size > 1
                  else "launch it with torchrun --nproc_per_node=N")
        raise ConfigError(f"train.parallelism: {name}: {launch}")
    return cls(info, options)


if TYPE_CHECKING:
    from tunesmith.schema import TrainConfig

__all__ = ["CHOICES", "STRATEGIES", "Strategy", "make_strategy"]
