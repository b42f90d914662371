"""diffusers' LoRA file, written beside a PEFT adapter folder's files (same tensors, other names).

It is what diffusers' training scripts write and `pipe.load_lora_weights(dir)` /
`unet.load_lora_adapter(dir, prefix="unet")` read: pytorch_lora_weights.safetensors with PEFT's keys under
"unet." instead of "base_model.model.", and the LoRA settings in the safetensors header
(`lora_adapter_metadata`, a JSON object whose keys carry the same prefix).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tunesmith.atomic import temp_path
from tunesmith.methods.adapter_io import CONFIG, PREFIX, WEIGHTS

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
LORA_METADATA_KEY = "lora_adapter_metadata"
LORA_PREFIX = "unet"
# the adapter_config.json entries diffusers builds its LoraConfig from
_SETTINGS = ("r", "lora_alpha", "lora_dropout", "target_modules", "bias", "use_rslora", "use_dora",
             "init_lora_weights", "rank_pattern", "alpha_pattern", "fan_in_fan_out")


def diffusers_lora_state(peft_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PEFT's on-disk keys (base_model.model.<path>.lora_A.weight) as diffusers' (unet.<path>.lora_A.weight).
    Only the LoRA tensors: diffusers' LoRA loader has no place for fully trained modules (a control
    encoder), which stay in the PEFT file beside it."""
    return {f"{LORA_PREFIX}.{k.removeprefix(PREFIX)}": v for k, v in peft_state.items() if ".lora_" in k}


def write_diffusers_lora(peft_dir: Path) -> Path:
    """Beside a PEFT adapter folder's files, the same adapter as diffusers' LoRA file."""
    config = json.loads((peft_dir / CONFIG).read_text())
    metadata = {f"{LORA_PREFIX}.{k}": config[k] for k in _SETTINGS if k in config}
    state = diffusers_lora_state(load_file(str(peft_dir / WEIGHTS)))
    tmp = temp_path(peft_dir / LORA_WEIGHTS)
    save_file(state, str(tmp), metadata={"format": "pt", LORA_METADATA_KEY: json.dumps(metadata, sort_keys=True)})
    os.replace(tmp, peft_dir / LORA_WEIGHTS)
    return peft_dir / LORA_WEIGHTS
