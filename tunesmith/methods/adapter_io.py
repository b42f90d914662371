"""PEFT's on-disk adapter format, both directions: adapter_config.json + adapter_model.safetensors.

In memory an adapter lives at `<path>.lora_A.<adapter>.weight` (the layout PEFT uses too); on disk the
adapter name is dropped and PEFT's prefix added: `base_model.model.<path>.lora_A.weight`. DoRA's
magnitude is `<path>.lora_magnitude_vector`, embedding factors `<path>.lora_embedding_A/B`, and the
fully trained modules (the task head) `base_model.model.<path>.weight`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tunesmith.atomic import atomic_dir
from tunesmith.errors import TunesmithError
from tunesmith.methods.lora_model import inject, lora_layers
from tunesmith.schema import LoraConfig

PREFIX = "base_model.model."
CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
_LORA_KEY = re.compile(r"^(?P<path>.+)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)"
                       r"\.(?P<adapter>[^.]+)(?P<rest>\.weight)?$")

TASK_TYPES = {"ForSequenceClassification": "SEQ_CLS", "ForCausalLM": "CAUSAL_LM",
              "ForTokenClassification": "TOKEN_CLS", "ForQuestionAnswering": "QUESTION_ANS"}


def _task_type(model: nn.Module) -> str | None:
    name = type(model).__name__
    return next((t for suffix, t in TASK_TYPES.items() if name.endswith(suffix)), None)


def adapter_state(model: nn.Module, adapter: str, modules_to_save: list[str], bias: str) -> dict[str, torch.Tensor]:
    """The tensors PEFT saves for `adapter`, under PEFT's on-disk names."""
    out: dict[str, torch.Tensor] = {}
    saved = tuple(m + "." for m in modules_to_save)
    for name, param in model.named_parameters():
        m = _LORA_KEY.match(name)
        if m:
            if m["adapter"] == adapter:
                out[f"{PREFIX}{m['path']}.{m['kind']}" + (".weight" if m["kind"] in ("lora_A", "lora_B") else "")] = param
        elif name.startswith(saved):
            out[PREFIX + name] = param
        elif name.endswith(".bias") and (bias == "all" or (bias == "lora_only" and ".base_layer." in name)):
            out[PREFIX + name] = param
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def _suffix(path: str) -> str:
    """The name PEFT matches a module by: its last part, or its last two when the last is an index
    (diffusers' `to_out.0`: a bare "0" would match every first child)."""
    parts = path.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1]


def peft_config(settings: LoraConfig, targets: list[str], modules_to_save: list[str], base: str,
                task_type: str | None, fan_in_fan_out: bool) -> dict[str, Any]:
    target_modules: str | list[str] | None = settings.target_modules
    if target_modules is None or target_modules == "all-linear":  # store what was resolved, as PEFT does
        target_modules = sorted({_suffix(t) for t in targets})
    return {
        "peft_type": "LORA", "task_type": task_type, "base_model_name_or_path": base,
        "r": settings.r, "lora_alpha": settings.alpha, "lora_dropout": settings.dropout,
        "target_modules": target_modules, "bias": settings.bias, "use_rslora": settings.use_rslora,
        "use_dora": settings.use_dora, "modules_to_save": modules_to_save or None,
        "fan_in_fan_out": fan_in_fan_out, "init_lora_weights": True if settings.init == "kaiming" else settings.init,
        "inference_mode": True, "layers_to_transform": None, "layers_pattern": None,
        "rank_pattern": {}, "alpha_pattern": {}, "revision": None,
    }


def save_adapter(model: nn.Module, out_dir: Path, settings: LoraConfig, targets: list[str],
                 modules_to_save: list[str], base: str, adapter: str = "default",
                 extra_files: dict[str, Any] | None = None) -> Path:
    """Write a PEFT-loadable adapter directory atomically (temp dir + rename)."""
    fan_in_fan_out = any(getattr(layer, "fan_in_fan_out", False) for _, layer in lora_layers(model))
    config = peft_config(settings, targets, modules_to_save, base, _task_type(model), fan_in_fan_out)
    with atomic_dir(out_dir) as tmp:
        save_file(adapter_state(model, adapter, modules_to_save, settings.bias), str(tmp / WEIGHTS),
                  metadata={"format": "pt"})
        (tmp / CONFIG).write_text(json.dumps(config, indent=2))
        for name, data in (extra_files or {}).items():
            (tmp / name).write_text(json.dumps(data, indent=2))
    return out_dir


def read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    path = Path(adapter_dir) / CONFIG
    if not path.exists():
        raise TunesmithError(f"{adapter_dir}: no {CONFIG}; is it a PEFT adapter directory?")
    config = json.loads(path.read_text())
    if config.get("peft_type") != "LORA":
        raise TunesmithError(f"{path}: peft_type {config.get('peft_type')!r} is not supported (LORA only)")
    return config


def settings_from_peft(config: dict[str, Any]) -> LoraConfig:
    init = config.get("init_lora_weights", True)
    return LoraConfig(r=config["r"], alpha=float(config.get("lora_alpha", 8)),
                      dropout=float(config.get("lora_dropout", 0.0)), target_modules=config.get("target_modules"),
                      init="gaussian" if init == "gaussian" else "kaiming", bias=config.get("bias", "none"),
                      modules_to_save=list(config.get("modules_to_save") or []),
                      use_rslora=bool(config.get("use_rslora")), use_dora=bool(config.get("use_dora")))


def load_adapter(model: nn.Module, adapter_dir: Path, adapter: str = "default") -> LoraConfig:
    """Inject and fill adapter `adapter` from a PEFT directory (made by tunesmith or by PEFT).

    Every tensor in the file must land somewhere and every adapter tensor must be filled: a mismatch is
    an error naming the key, never a silently random layer.
    """
    adapter_dir = Path(adapter_dir)
    config = read_adapter_config(adapter_dir)
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise TunesmithError(f"{adapter_dir / CONFIG}: rank_pattern / alpha_pattern are not supported yet")
    settings = settings_from_peft(config)
    tensors = load_file(str(adapter_dir / WEIGHTS))
    paths = sorted({k.removeprefix(PREFIX).split(".lora_")[0] for k in tensors if ".lora_" in k})
    inject(model, settings, adapter, targets=paths)
    own = dict(model.named_parameters())
    filled: set[str] = set()
    with torch.no_grad():
        for key, tensor in tensors.items():
            if ".original_module." in key:  # PEFT (bias="all") also saves the untouched copy of a saved module
                continue
            name = _memory_name(key.removeprefix(PREFIX).replace(".modules_to_save.", "."), adapter)
            if name not in own:
                raise TunesmithError(f"{adapter_dir / WEIGHTS}: {key} matches no parameter of the model")
            if own[name].shape != tensor.shape:
                raise TunesmithError(f"{adapter_dir / WEIGHTS}: {key} has shape {tuple(tensor.shape)}, "
                                     f"the model expects {tuple(own[name].shape)}")
            own[name].copy_(tensor)
            filled.add(name)
    missing = [n for n in own if (m := _LORA_KEY.match(n)) and m["adapter"] == adapter and n not in filled]
    if missing:
        raise TunesmithError(f"{adapter_dir / WEIGHTS}: no tensor for {missing[0]} ({len(missing)} missing)")
    return settings


def _memory_name(key: str, adapter: str) -> str:
    for kind in ("lora_A", "lora_B"):
        if f".{kind}.weight" in key:
            return key.replace(f".{kind}.weight", f".{kind}.{adapter}.weight")
    for kind in ("lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector"):
        if key.endswith("." + kind):
            return f"{key}.{adapter}"
    return key
