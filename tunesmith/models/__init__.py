"""Pretrained models: built-in names (registry), local Hugging Face directories, task heads."""

from tunesmith.models.hf import (
    LoadedModel,
    load_causal_lm,
    load_saved_classifier,
    load_text_classifier,
    save_hf_model,
)
from tunesmith.models.registry import MODELS, ModelEntry, resolve_model_dir

__all__ = ["MODELS", "ModelEntry", "LoadedModel", "load_text_classifier", "load_saved_classifier", "load_causal_lm",
           "save_hf_model", "resolve_model_dir"]
