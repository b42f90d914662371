"""LoRA as a method: inject adapters into the chosen layers and train only them (+ the head).

Targets, injection and named-adapter management are in lora_model.py; the layer maths in
lora_layers.py; the PEFT on-disk format in adapter_io.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING

from torch import nn

from tunesmith.errors import ConfigError
from tunesmith.methods.adapter_io import load_adapter, save_adapter
from tunesmith.methods.base import Method
from tunesmith.methods.common import set_trainable
from tunesmith.methods.lora_model import (  # noqa: F401  (re-exported: the LoRA API in one place)
    DEFAULT_TARGETS,
    _under,
    adapters_disabled,
    add_weighted_adapter,
    delete_adapter,
    inject,
    lora_layers,
    merge,
    resolve_targets,
    set_active,
    unload,
    unmerge,
)

if TYPE_CHECKING:
    from tunesmith.models.hf import LoadedModel
    from tunesmith.schema import LoraConfig, MethodConfig


def head_modules(loaded: LoadedModel) -> list[str]:
    """Module paths holding the new head's parameters (PEFT's modules_to_save)."""
    return sorted({p.rsplit(".", 1)[0] for p in loaded.head_params})


def trainable_names(model: nn.Module, cfg: LoraConfig, save_modules: list[str], adapter: str = "default") -> list[str]:
    names = []
    for name, _ in model.named_parameters():
        lora = f".{adapter}" in name and any(f".{k}.{adapter}" in name for k in (
            "lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector"))
        bias = name.endswith(".bias") and (cfg.bias == "all" or (cfg.bias == "lora_only" and ".base_layer." in name))
        if lora or bias or _under(name.rsplit(".", 1)[0], set(save_modules)):
            names.append(name)
    return names


class Lora(Method):
    """Adapters in the chosen layers train (+ the head and method.lora.modules_to_save); the base stays.

    Anything else it trains in place (the head, modules_to_save, biases) is kept as it was when the
    method was applied, so reference() (adapters off, those tensors put back) is the model it started
    from, as PEFT's ModulesToSaveWrapper keeps `original_module`."""

    name = "lora"
    free_reference = True
    description = "low-rank adapters (method.lora: r, alpha, target_modules, use_rslora); base weights frozen"
    trains_base = False
    adapter = True
    peft_type = "LORA"
    use_dora = False

    def check(self, cfg, run, where, at) -> None:
        lora = cfg.lora
        for key, value, allowed in (("init", lora.init, ("kaiming", "gaussian")),
                                    ("bias", lora.bias, ("none", "all", "lora_only"))):
            if value not in allowed:
                raise ConfigError(f"{where(f'{at}.lora.{key}')}: {value!r} is not one of {', '.join(allowed)}")

    def apply(self, loaded: LoadedModel, cfg: MethodConfig) -> None:
        settings = replace(cfg.lora, use_dora=True) if self.use_dora else cfg.lora
        save_modules = sorted(set(head_modules(loaded)) | set(settings.modules_to_save))
        paths = inject(loaded.model, settings, exclude=set(save_modules), default_targets=loaded.lora_targets)
        set_trainable(loaded.model, trainable_names(loaded.model, settings, save_modules))
        self.settings, self.targets, self.modules_to_save = settings, paths, save_modules
        adapters = {id(p) for _, layer in lora_layers(loaded.model) for p in layer._adapter_params("default")}
        self.keep_originals(loaded.model, skip=adapters)

    def save(self, model: nn.Module, out_dir, base: str, extra_files: dict | None = None):
        return save_adapter(model, out_dir, self.settings, self.targets, self.modules_to_save, base,
                            extra_files=extra_files)

    @classmethod
    def load(cls, loaded: LoadedModel, adapter_dir) -> None:
        load_adapter(loaded.model, adapter_dir)

    def merged(self, model: nn.Module) -> nn.Module:
        return unload(model)

    @contextmanager
    def reference(self, model: nn.Module) -> Iterator[nn.Module]:
        with adapters_disabled(model), self._originals_restored(model):
            yield model


# -- adapters on a model ------------------------------------------------------------------------------
