"""DistributedDataParallel: every process holds the whole model and trains on its share of each batch;
gradients are averaged once per optimizer step (not per micro-batch)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from tunesmith.train.parallel.base import Strategy


class DDP(Strategy):
    name = "ddp"
    multi_process = True

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def barrier(self) -> None:
        dist.barrier()

    def gather_objects(self, obj: Any) -> list[Any]:
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def wrap(self, model: nn.Module) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def sync_gradients(self, wrapped: nn.Module, sync: bool) -> AbstractContextManager:
        return nullcontext() if sync else wrapped.no_sync()

    def agree_max(self, value: int) -> int:
        found = torch.tensor([float(value)], device=self.device)
        dist.all_reduce(found, op=dist.ReduceOp.MAX)
        return int(found.item())

    def any_true(self, flag: bool) -> bool:
        return self.agree_max(int(flag)) > 0
    # the replicas are identical: the single-process state methods serve as they are (the main process
    # writes the model and the optimizer, each process its own state)
