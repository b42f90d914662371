"""The text side of a caption-conditioned diffusion pipeline: its tokenizer and frozen text encoder, as
Stable Diffusion's training scripts use them (captions padded to the tokenizer's length, the encoder's
last hidden states as the UNet's cross-attention input, the empty caption as the unconditional one).

A pipeline folder holds them in text_encoder/ (a transformers model, safetensors weights) and tokenizer/.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunesmith.errors import ConfigError

_NO_LIMIT = 100_000  # tokenizers without a model_max_length report ~1e30


def caption_folders(root: Path, unet_config: dict[str, Any]) -> tuple[Path, Path]:
    """(text_encoder/, tokenizer/) of a pipeline folder whose UNet reads text; ConfigError naming what is
    missing, or a text encoder whose width is not the UNet's cross-attention width. Weights not read."""
    encoder, tokenizer = root / "text_encoder", root / "tokenizer"
    missing = [f"{p.name}/" for p in (encoder, tokenizer) if not p.is_dir()]
    if missing:
        raise ConfigError(f"model.name: {root}'s UNet reads captions through cross-attention, but the folder has no "
                          f"{' or '.join(missing)} to encode them (a diffusers pipeline folder has unet/, scheduler/, "
                          "text_encoder/ and tokenizer/)")
    try:
        config = json.loads((encoder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.name: {encoder / 'config.json'}: cannot read it ({e})") from None
    if not any(encoder.glob("*.safetensors")):
        raise ConfigError(f"model.name: {encoder} has no .safetensors weights (pickled weights can run code when "
                          "read; convert them once where you trust them)")
    width, wanted = config.get("hidden_size"), unet_config.get("cross_attention_dim")
    if isinstance(wanted, int) and width is not None and width != wanted:
        raise ConfigError(f"model.name: {encoder / 'config.json'}: hidden_size {width}, but the UNet's "
                          f"cross_attention_dim is {wanted}: they are not one pipeline")
    return encoder, tokenizer


@dataclass
class CaptionEncoder:
    """Captions -> the UNet's cross-attention input (frozen; never trained)."""

    encoder: nn.Module
    tokenizer: Any
    max_length: int

    def tokens(self, captions: list[str]) -> torch.Tensor:
        """Token ids (n, max_length), padded and cut as Stable Diffusion's scripts do."""
        return self.tokenizer(captions, padding="max_length", truncation=True, max_length=self.max_length,
                              return_tensors="pt").input_ids

    @torch.no_grad()
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids -> (n, max_length, width) hidden states, on the ids' device."""
        if next(self.encoder.parameters()).device != ids.device:
            self.encoder.to(ids.device)
        return self.encoder(ids).last_hidden_state.float()

    def save_pretrained(self, out_dir: Path) -> None:
        self.encoder.save_pretrained(out_dir / "text_encoder", safe_serialization=True)
        self.tokenizer.save_pretrained(out_dir / "tokenizer")


def load_caption_encoder(encoder_dir: Path, tokenizer_dir: Path) -> CaptionEncoder:
    import transformers

    from tunesmith.models.hf import _quiet_transformers

    _quiet_transformers()
    config = json.loads((encoder_dir / "config.json").read_text())
    cls = next((getattr(transformers, a) for a in config.get("architectures") or () if hasattr(transformers, a)),
               transformers.AutoModel)
    encoder = cls.from_pretrained(encoder_dir, use_safetensors=True, torch_dtype=torch.float32).eval()
    encoder.requires_grad_(False)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    if tokenizer.pad_token is None:  # padding to a fixed length needs one; the end-of-text token is CLIP's
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    limit = int(getattr(tokenizer, "model_max_length", _NO_LIMIT) or _NO_LIMIT)
    positions = getattr(encoder.config, "max_position_embeddings", None) or 77
    return CaptionEncoder(encoder, tokenizer, min(limit, positions))
