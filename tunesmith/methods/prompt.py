"""Prompt tuning (Lester et al. 2021): N trainable virtual-token embeddings prepended to every input;
the whole language model stays frozen. Saved in PEFT's PROMPT_TUNING format (`prompt_embeddings`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tunesmith.atomic import atomic_dir
from tunesmith.errors import ConfigError, TunesmithError
from tunesmith.methods.base import Method
from tunesmith.methods.common import set_trainable

if TYPE_CHECKING:
    from tunesmith.models.hf import LoadedModel
    from tunesmith.schema import MethodConfig


class PromptTuningModel(nn.Module):
    """Wraps a causal LM; its outputs cover the real tokens only (the virtual ones are cut off)."""

    def __init__(self, base_model: nn.Module, init: torch.Tensor) -> None:
        super().__init__()
        self.base_model = base_model
        self.prompt_embeddings = nn.Embedding(init.shape[0], init.shape[1])
        with torch.no_grad():
            self.prompt_embeddings.weight.copy_(init)

    @property
    def config(self):
        return self.base_model.config

    @property
    def generation_config(self):
        return getattr(self.base_model, "generation_config", None)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                use_cache: bool | None = None, **kwargs: Any):
        if kwargs.get("position_ids") is not None:
            raise ValueError("prompt tuning does not support packed batches (train.packing)")
        # the KV cache is `cache` in transformers 5, `past_key_values` before
        cache = {k: v for k, v in kwargs.items() if k in ("cache", "past_key_values") and v is not None}
        if cache and next(iter(cache.values())).get_seq_length() > 0:  # later generation steps: prompt is cached
            return self.base_model(input_ids=input_ids, use_cache=use_cache, **cache)
        n, b = self.prompt_embeddings.num_embeddings, input_ids.shape[0]
        embeds = self.base_model.get_input_embeddings()(input_ids)
        prompts = self.prompt_embeddings.weight.unsqueeze(0).expand(b, -1, -1).to(embeds.dtype)
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask.new_ones(b, n), attention_mask], dim=1)
        out = self.base_model(inputs_embeds=torch.cat([prompts, embeds], dim=1), attention_mask=attention_mask,
                              use_cache=use_cache, **cache)
        out.logits = out.logits[:, n:]
        return out


def initial_prompt(loaded: LoadedModel, n: int, init: str, text: str | None, seed: int) -> torch.Tensor:
    table = loaded.model.get_input_embeddings().weight.detach()
    if init == "text":
        if not text:
            raise ConfigError("method.prompt.init_text: give the text to initialise the virtual tokens from")
        ids = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
        ids = (ids * (n // max(1, len(ids)) + 1))[:n]  # repeated to fill N tokens, as PEFT does
    else:  # embeddings of random vocabulary tokens: already on the scale the model expects
        ids = torch.randint(0, table.shape[0], (n,), generator=torch.Generator().manual_seed(seed)).tolist()
    return table[torch.tensor(ids)].clone().float()


class Prompt(Method):
    name = "prompt"
    free_reference = True
    description = "prompt tuning: trainable virtual tokens before the input (method.prompt); model frozen"
    trains_base = False
    adapter = True
    peft_type = "PROMPT_TUNING"
    model_kinds = ("causal-lm",)
    exclusive = True

    def check(self, cfg, run, where, at) -> None:
        p = cfg.prompt
        if p.init not in ("vocab", "text"):
            raise ConfigError(f"{where(at + '.prompt.init')}: {p.init!r} is not one of vocab, text")
        if p.init == "text" and not p.init_text:
            raise ConfigError(f"{where(at + '.prompt.init_text')}: give the text to initialise the virtual tokens from")
        if getattr(run.objective, "packing", False):
            raise ConfigError(f"{where('objective.packing')}: prompt tuning cannot pack samples (each needs its "
                              "own prompt)")

    def apply(self, loaded: LoadedModel, cfg: MethodConfig) -> None:
        p = cfg.prompt
        if p.num_virtual_tokens <= 0:
            raise ConfigError(f"method.prompt.num_virtual_tokens: must be > 0, got {p.num_virtual_tokens}")
        if not hasattr(loaded.model, "get_input_embeddings") or getattr(loaded.model.config, "is_encoder_decoder", False):
            raise ConfigError("method prompt: needs a decoder-only language model (objective: causal_lm)")
        init = initial_prompt(loaded, p.num_virtual_tokens, p.init, p.init_text, seed=torch.initial_seed())
        loaded.model = PromptTuningModel(loaded.model, init)
        set_trainable(loaded.model, ["prompt_embeddings.weight"])
        self.n, self.init, self.text = p.num_virtual_tokens, p.init, p.init_text

    def save(self, model: PromptTuningModel, out_dir: Path, base: str, extra_files: dict | None = None) -> Path:
        """PEFT's adapter_config.json + adapter_model.safetensors."""
        cfg = model.config
        config = {
            "peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "base_model_name_or_path": base,
            "num_virtual_tokens": self.n, "token_dim": model.prompt_embeddings.embedding_dim,
            "num_transformer_submodules": 1, "num_attention_heads": cfg.num_attention_heads,
            "num_layers": cfg.num_hidden_layers, "prompt_tuning_init": "TEXT" if self.init == "text" else "SAMPLE_VOCAB",
            "prompt_tuning_init_text": self.text, "tokenizer_name_or_path": base if self.init == "text" else None,
            "inference_mode": True, "revision": None,
        }
        with atomic_dir(out_dir) as tmp:
            save_file({"prompt_embeddings": model.prompt_embeddings.weight.detach().cpu().contiguous()},
                      str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
            (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2))
            for name, data in (extra_files or {}).items():
                (tmp / name).write_text(json.dumps(data, indent=2))
        return out_dir

    @classmethod
    def load(cls, loaded: LoadedModel, adapter_dir: Path) -> None:
        load_prompt(loaded, adapter_dir)

    def merged(self, model: nn.Module) -> nn.Module:
        raise TunesmithError("prompt tuning's virtual tokens are inputs, not weights: they cannot be merged into "
                             "the model; load the adapter with PEFT or tunesmith instead")

    @contextmanager
    def reference(self, model: nn.Module) -> Iterator[nn.Module]:
        """The language model without the virtual tokens."""
        yield model.base_model if isinstance(model, PromptTuningModel) else model


def load_prompt(loaded: LoadedModel, adapter_dir: Path) -> None:
    """Wrap `loaded.model` with the virtual tokens of a PEFT PROMPT_TUNING directory (ours or PEFT's)."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    if "prompt_embeddings" not in weights:
        raise TunesmithError(f"{adapter_dir}/adapter_model.safetensors has no 'prompt_embeddings'")
    table = weights["prompt_embeddings"]
    if table.shape[0] != config["num_virtual_tokens"]:
        raise TunesmithError(f"{adapter_dir}: {table.shape[0]} prompt embeddings for "
                             f"num_virtual_tokens={config['num_virtual_tokens']}")
    loaded.model = PromptTuningModel(loaded.model, table.float())
    loaded.model.eval()
