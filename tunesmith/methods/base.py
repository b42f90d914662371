"""What every method is: an object that decides what learns, saves what it trained, and can hand back
the reference model (the model as the method found it).

A method is applied to a loaded model (marking parameters trainable or wrapping modules), and then
knows what it changed: whether pretrained weights change in place (`trains_base`), whether what it
trained is saved as an adapter beside the untouched base (`adapter`, in PEFT's format), and which
tensors it must keep a copy of so that `reference()` really gives the model it started from.
Adding one is a file with a subclass plus a line in methods/__init__.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from tunesmith.errors import TunesmithError

if TYPE_CHECKING:
    from tunesmith.models.hf import LoadedModel
    from tunesmith.schema import MethodConfig, RunConfig


class Method:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    trains_base: ClassVar[bool] = True  # pretrained weights (not only a new head) change in place
    adapter: ClassVar[bool] = False  # saves an adapter directory instead of the whole model
    peft_type: ClassVar[str | None] = None  # adapter_config.json's peft_type of the adapters it saves
    model_kinds: ClassVar[tuple[str, ...] | None] = None  # objectives' model kinds it applies to; None: all
    exclusive: ClassVar[bool] = False  # wraps the model: no other method may share its run (stages)
    # reference() works without a copy of the weights (what it trains in place is small, and kept)
    free_reference: ClassVar[bool] = False

    def __init__(self) -> None:
        # (parameter name, its value when the method was applied); by name, not by Parameter object:
        # a sharding strategy replaces the parameters when it wraps the model
        self._originals: list[tuple[str, torch.Tensor]] = []

    def check(self, cfg: MethodConfig, run: RunConfig, where, at: str) -> None:
        """Config-time checks of this method's options (`at` is the section, e.g. method or stages.1.method)."""

    def apply(self, loaded: LoadedModel, cfg: MethodConfig) -> None:
        raise NotImplementedError

    # -- what it trained -------------------------------------------------------------------------
    def save(self, model: nn.Module, out_dir: Path, base: str, extra_files: dict[str, Any] | None = None) -> Path:
        """Adapter methods: write the adapter directory (PEFT's format)."""
        raise NotImplementedError(f"method {self.name} saves the whole model, not an adapter")

    @classmethod
    def load(cls, loaded: LoadedModel, adapter_dir: Path) -> None:
        """Adapter methods: put a saved adapter (ours or PEFT's) onto `loaded.model`."""
        raise NotImplementedError(f"method {cls.name} has no adapter to load")

    def merged(self, model: nn.Module) -> nn.Module:
        """The model with what this method added folded into plain weights (adapter methods)."""
        return model

    # -- the reference model ---------------------------------------------------------------------
    def keep_originals(self, model: nn.Module, skip: set[int] | None = None) -> None:
        """Copy every trainable parameter (except those in `skip`, by id) as it is now, so reference()
        can put them back: what PEFT does for modules_to_save, applied to anything trained in place."""
        seen = set(skip or ())
        self._originals = []
        for name, param in model.named_parameters():
            if param.requires_grad and id(param) not in seen:
                seen.add(id(param))
                self._originals.append((name, param.detach().clone()))

    @contextmanager
    def reference(self, model: nn.Module) -> Iterator[nn.Module]:
        """The model as this method found it (preference training's reference model), without a second
        copy of the weights. Use it without gradients; the trained state is back when the block ends."""
        if self.trains_base and not self._originals:
            raise TunesmithError(f"method {self.name} changes the pretrained weights in place, so the model it "
                                 "started from is not kept; compute reference outputs before training instead")
        with self._originals_restored(model):
            yield model

    @contextmanager
    def _originals_restored(self, model: nn.Module) -> Iterator[None]:
        """The kept values copied into the model's parameters (looked up by name, as the model is now:
        wrapped or sharded), the trained values copied back after. In-place copies: a sharding
        strategy's own buffers are the parameters' storage."""
        params = dict(model.named_parameters())
        trained = []
        with torch.no_grad():
            for i, (name, original) in enumerate(self._originals):
                param = params[name]
                if _layout(original) != _layout(param):  # once: as the parameter now lives
                    original = _like(original, param)
                    self._originals[i] = (name, original)
                trained.append(param.detach().clone())
                param.copy_(original)
        try:
            yield
        finally:
            with torch.no_grad():
                for (name, _), value in zip(self._originals, trained, strict=True):
                    params[name].copy_(value)


def _layout(t: torch.Tensor) -> tuple:
    return (t.device, t.dtype, type(t), getattr(t, "placements", None))


def _like(original: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """`original` (a whole tensor) on the parameter's device and dtype, sharded as it is (a DTensor)."""
    original = original.to(device=param.device if not hasattr(param, "device_mesh") else original.device,
                           dtype=param.dtype)
    if hasattr(param, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(original.to(param.device), param.device_mesh, param.placements)
    return original
