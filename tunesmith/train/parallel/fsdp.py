"""FSDP2: each process holds 1/N of every parameter, gradient and AdamW state (`fully_shard` on every
transformer block, then the root); a block's weights are gathered for its forward and backward and
freed after. Checkpoints are Distributed Checkpoint shards (each process writes its own), so a run
saved on N processes resumes on M. The finished model is gathered to the main process for export.

Every forward is a collective here (the all-gathers), so every process must run the same number:
evaluation, generation and relabeling go through `my_batches` / `agree_max` / `any_true`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunesmith.errors import TrainingError
from tunesmith.fastpath import is_sharded
from tunesmith.train.parallel.ddp import DDP


class FSDP(DDP):  # the collectives are DDP's; what differs is how the model and its state live
    name = "fsdp"
    multi_process = True
    shards = True
    collective_forward = True

    def wrap(self, model: nn.Module) -> nn.Module:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

        from tunesmith.methods.common import find_blocks
        from tunesmith.train.precision import DTYPES

        if is_sharded(model):
            return model  # already wrapped (a resumed trainer of the same model)
        mesh = init_device_mesh(self.device.type, (self.world_size,))
        options: dict[str, Any] = {"mesh": mesh}
        precision = self.options.precision if self.options is not None else "fp32"
        dtypes = {p.dtype for p in model.parameters()}
        if DTYPES.get(precision) is not None:  # compute in bf16, reduce gradients in fp32
            options["mp_policy"] = MixedPrecisionPolicy(param_dtype=DTYPES[precision], reduce_dtype=torch.float32)
        elif len(dtypes) > 1:  # e.g. fp32 adapters on a bf16 model: one dtype per all-gather
            options["mp_policy"] = MixedPrecisionPolicy(param_dtype=max(dtypes, key=lambda d: d.itemsize))
        if self.options is not None and self.options.fsdp_cpu_offload:
            options["offload_policy"] = CPUOffloadPolicy(pin_memory=self.device.type == "cuda")
        prefix, count = find_blocks(model)
        blocks = model.get_submodule(prefix)
        for block in blocks:
            fully_shard(block, **options)
        fully_shard(model, **options)
        return model

    def sync_gradients(self, wrapped: nn.Module, sync: bool) -> AbstractContextManager:
        return _gradient_sync(wrapped, sync)

    def clip_grad_norm_(self, params: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
        norm = torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], max_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def grad_norm(self, params: Iterable[torch.Tensor]) -> torch.Tensor:
        grads = [p.grad for p in params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    # -- the training state: Distributed Checkpoint shards --------------------------------------------
    def save_state(self, folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                   shared: dict[str, Any], own: dict[str, Any]) -> None:
        """model/ and optimizer/: each process's shards of what trains (Distributed Checkpoint, which
        reshards on load); state.pt: `shared` (main process); rank-NNNNN.pt: each process's `own`."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        from tunesmith.train.checkpoint import rank_file

        dcp.save(_changing(model, get_model_state_dict(model)), checkpoint_id=str(folder / "model"))
        if optimizer is not None:
            dcp.save(get_optimizer_state_dict(model, optimizer), checkpoint_id=str(folder / "optimizer"))
        if self.is_main:
            torch.save(shared, folder / "state.pt")
        torch.save(own, folder / rank_file(self.rank))

    def verify_state(self, folder: Path) -> None:
        from torch.distributed.checkpoint import FileSystemReader

        from tunesmith.train.checkpoint import read_file, read_torch

        if not (folder / "model").is_dir():
            raise TrainingError(f"{folder}: holds no Distributed Checkpoint shards (model/); it was not written by "
                                "an fsdp run")
        read_file(folder / "model" / ".metadata", lambda f: FileSystemReader(str(f.parent)).read_metadata())
        read_file(folder / "state.pt", lambda f: read_torch(f) if f.exists() else {})

    def load_state(self, folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                   world_size: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        from tunesmith.train.checkpoint import read_file, read_torch

        state = _changing(model, get_model_state_dict(model))
        self._collectively(folder / "model", lambda: dcp.load(state, checkpoint_id=str(folder / "model")))
        set_model_state_dict(model, state, options=StateDictOptions(strict=False))
        shared = read_file(folder / "state.pt", lambda f: read_torch(f) if f.exists() else {})
        shared["optimizer_restored"] = optimizer is not None and (folder / "optimizer").is_dir()
        if shared["optimizer_restored"]:
            optim_state = get_optimizer_state_dict(model, optimizer)
            self._collectively(folder / "optimizer",
                               lambda: dcp.load(optim_state, checkpoint_id=str(folder / "optimizer")))
            set_optimizer_state_dict(model, optimizer, optim_state)
        return shared, self._own_state(folder, world_size)

    def _collectively(self, where: Path, load) -> None:
        """A Distributed Checkpoint read; a failure on any process is one error on all of them."""
        try:
            load()
            failed = ""
        except Exception as e:  # noqa: BLE001 - reported as a damaged checkpoint, on every process
            failed = f"{type(e).__name__}: {str(e)[:160]}"
        if self.any_true(bool(failed)):
            raise TrainingError(f"{where}: cannot be read ({failed or 'on another process'}); the checkpoint is damaged")

    def full_model_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _changing(model: nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """The entries of `state` that training changes: trainable parameters and buffers (frozen weights
    come back from the pretrained model)."""
    keep = {name for name, p in model.named_parameters() if p.requires_grad} | {n for n, _ in model.named_buffers()}
    return {k: v for k, v in state.items() if k in keep}


@contextmanager
def _gradient_sync(model: nn.Module, sync: bool) -> Iterator[None]:
    """Micro-batches before a step's last accumulate their gradients unsharded, without the
    reduce-scatter; the last one reduces them all at once."""
    model.set_requires_gradient_sync(sync)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)
