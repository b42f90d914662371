"""DoRA (Liu et al. 2024): LoRA with a trained per-output magnitude; the `lora` method with use_dora."""

from dataclasses import replace

from tunesmith.config import MethodConfig
from tunesmith.methods import lora
from tunesmith.models.hf import LoadedModel

DESCRIPTION = "weight-decomposed LoRA: low-rank direction + trained magnitude (method.lora options)"


def apply(loaded: LoadedModel, cfg: MethodConfig) -> None:
    lora.apply(loaded, replace(cfg, lora=replace(cfg.lora, use_dora=True)))
