"""A parallelism strategy: how the model is wrapped, how gradients are synchronised and clipped, how
the training state is saved and loaded (collectively, after wrapping), how the finished model is
gathered for export, and how loops whose length differs between processes stay in lockstep. The
training loop asks its strategy and never knows which one it has. This base class is the
single-process strategy (`none`); others override what differs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from tunesmith.errors import TrainingError
from tunesmith.train.distributed import DistInfo

if TYPE_CHECKING:
    from tunesmith.schema import TrainConfig


class Strategy:
    name: ClassVar[str] = "none"
    multi_process: ClassVar[bool] = False  # needs a torchrun launch (WORLD_SIZE > 1)
    # parameters are split over processes: the whole model exists nowhere until it is gathered
    shards: ClassVar[bool] = False
    # every forward is a collective (FSDP's all-gathers): all processes run the same number of them
    collective_forward: ClassVar[bool] = False

    def __init__(self, info: DistInfo, options: TrainConfig | None = None) -> None:
        self.info = info
        self.options = options  # the run's train section (precision, offload), where a strategy needs it

    # -- who this process is -----------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return self.info.rank

    @property
    def world_size(self) -> int:
        return self.info.world_size

    @property
    def device(self) -> torch.device:
        return self.info.device

    @property
    def is_main(self) -> bool:
        """The process that writes files (run dir, checkpoints, logs)."""
        return self.info.rank == 0

    # -- collectives: identities in one process ----------------------------------------------------
    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def barrier(self) -> None:
        return None

    def gather_objects(self, obj: Any) -> list[Any]:
        return [obj]

    # -- the model ---------------------------------------------------------------------------------
    def wrap(self, model: nn.Module) -> nn.Module:
        """What the loop calls forward on; the optimizer is built after wrapping, over `model`'s
        parameters as the strategy left them."""
        return model

    def sync_gradients(self, wrapped: nn.Module, sync: bool) -> AbstractContextManager:
        """Around one micro-batch's forward and backward: `sync` is False for all but the step's last."""
        return nullcontext()

    def clip_grad_norm_(self, params: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
        """Scale the gradients to a total norm of at most `max_norm`; returns the norm before."""
        return torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], max_norm)

    def grad_norm(self, params: Iterable[torch.Tensor]) -> torch.Tensor:
        grads = [p.grad for p in params if p.grad is not None]
        return torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())

    # -- the training state: what a checkpoint holds --------------------------------------------
    def save_state(self, folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                   shared: dict[str, Any], own: dict[str, Any]) -> None:
        """Write into `folder` (empty, seen by every process): the model's trained tensors and buffers
        (model.safetensors) and the optimizer's state with `shared`, the state every process has alike
        (state.pt), by the main process, since the replicas are identical; and `own`, this process's
        state (RNG, per-process buffers), by each process into its own rank file."""
        from safetensors.torch import save_file

        from tunesmith.train.checkpoint import changing_state, rank_file

        if self.is_main:
            save_file(changing_state(model), str(folder / "model.safetensors"))
            state = {"optimizer": optimizer.state_dict() if optimizer is not None else None, **shared}
            torch.save(state, folder / "state.pt")
        torch.save(own, folder / rank_file(self.rank))

    def verify_state(self, folder: Path) -> None:
        """Raise TrainingError naming a damaged or missing file of a checkpoint, before anything is loaded."""
        from safetensors.torch import load_file

        from tunesmith.train.checkpoint import read_file, read_torch

        read_file(folder / "model.safetensors", lambda f: load_file(str(f)))
        read_file(folder / "state.pt", lambda f: read_torch(f) if f.exists() else {})

    def load_state(self, folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                   world_size: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Put the model's tensors and (when `optimizer` is given and the checkpoint kept it) the
        optimizer's state back; returns (shared, own). `own` is this process's state when the checkpoint
        was written by as many processes (`world_size`) as now, else the main process's (the state
        objectives and steps keep alike on every process) with no RNG; None in old checkpoints that kept
        no own files (their shared state then holds "rng" and "states")."""
        from safetensors.torch import load_file

        from tunesmith.train.checkpoint import load_changing_state, read_file, read_torch

        tensors = read_file(folder / "model.safetensors", lambda f: load_file(str(f)))
        try:
            load_changing_state(model, tensors)
        except (ValueError, RuntimeError) as e:  # other names or shapes: another model's checkpoint
            raise TrainingError(f"{folder}: does not fit this model ({str(e)[:160]}); it was written by a run of "
                                "another model or method") from None
        shared = read_file(folder / "state.pt", lambda f: read_torch(f) if f.exists() else {})
        shared["optimizer_restored"] = optimizer is not None and shared.get("optimizer") is not None
        if shared["optimizer_restored"]:
            optimizer.load_state_dict(shared["optimizer"])
        return shared, self._own_state(folder, world_size)

    def _own_state(self, folder: Path, world_size: int) -> dict[str, Any] | None:
        from tunesmith.train.checkpoint import rank_file, read_file, read_torch

        same = world_size == self.world_size
        path = folder / rank_file(self.rank if same else 0)
        if not path.exists():
            return None
        own = read_file(path, read_torch)
        return own if same else {k: v for k, v in own.items() if k != "rng"}

    def load_model_state(self, folder: Path, model: nn.Module) -> None:
        """The model's tensors only (the best checkpoint, restored at the end of a stage)."""
        self.load_state(folder, model, None, self.world_size)

    def full_model_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The whole model's state dict on the main process (CPU), for export; {} elsewhere. Only
        sharding strategies need it: the others export the model itself."""
        return {k: v.detach().cpu() for k, v in model.state_dict().items()} if self.is_main else {}

    # -- loops whose length differs between processes -------------------------------------------
    def my_batches(self, batches: Sequence[Any]) -> Iterator[tuple[Any, bool]]:
        """This process's share of `batches` (round-robin), as (batch, real). Where every forward is a
        collective, each process runs the same number of rounds: a process without a batch in the
        last round gets (batches[0], False), to forward and discard."""
        if not self.collective_forward:
            for batch in batches[self.rank :: self.world_size]:
                yield batch, True
            return
        for round_ in range(math.ceil(len(batches) / self.world_size)):
            i = round_ * self.world_size + self.rank
            yield (batches[i], True) if i < len(batches) else (batches[0], False)

    def agree_max(self, value: int) -> int:
        """The largest `value` over the processes."""
        return value

    def any_true(self, flag: bool) -> bool:
        """Whether `flag` holds on any process (a loop runs on until it is false everywhere)."""
        return flag
