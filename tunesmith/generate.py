"""Text generation for causal LMs: greedy or sampled (temperature, top-p), stops at EOS, KV-cached.

A small loop of our own rather than `model.generate`, so the same code serves plain models, LoRA
models and prompt-tuned models (whose virtual tokens only exist on the first forward).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0


def prompt_ids(tokenizer, prompt: str, chat: bool | None = None) -> list[int]:
    """The prompt as token ids; chat models get their chat template with the assistant header."""
    use_chat = bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat
    if use_chat:
        from tunesmith.objectives.causal_lm import chat_prefix

        return chat_prefix(tokenizer, [{"role": "user", "content": prompt}])
    return tokenizer(prompt, add_special_tokens=True)["input_ids"]


def _pick(logits: torch.Tensor, cfg: GenerationConfig, generator: torch.Generator) -> int:
    if cfg.temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / cfg.temperature, dim=-1)
    if cfg.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(0) - sorted_probs < cfg.top_p  # always keeps the most likely token
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))


def cache_kwarg(model: nn.Module) -> str:
    """transformers 5 calls the KV cache `cache`; 4.x called it `past_key_values`."""
    forward = getattr(model, "base_model", model).forward if hasattr(model, "prompt_embeddings") else model.forward
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def output_cache(out):
    return getattr(out, "cache", None) if getattr(out, "cache", None) is not None else getattr(out, "past_key_values", None)


@torch.inference_mode()
def generate_ids(model: nn.Module, ids: Sequence[int], eos_ids: set[int], cfg: GenerationConfig,
                 device: torch.device | str = "cpu") -> list[int]:
    generator = torch.Generator().manual_seed(cfg.seed)
    kw = cache_kwarg(model)
    out = model(input_ids=torch.tensor([list(ids)], device=device), use_cache=True)
    new: list[int] = []
    for _ in range(cfg.max_new_tokens):
        token = _pick(out.logits[0, -1].cpu(), cfg, generator)
        if token in eos_ids:
            break
        new.append(token)
        out = model(input_ids=torch.tensor([[token]], device=device), use_cache=True, **{kw: output_cache(out)})
    return new


def generate(model: nn.Module, tokenizer, prompts: Sequence[str], cfg: GenerationConfig | None = None,
             chat: bool | None = None, device: torch.device | str = "cpu") -> list[str]:
    cfg = cfg or GenerationConfig()
    eos = eos_ids(model, tokenizer)
    model.eval()
    return [tokenizer.decode(generate_ids(model, prompt_ids(tokenizer, p, chat), eos, cfg, device),
                             skip_special_tokens=True) for p in prompts]


def eos_ids(model: nn.Module, tokenizer) -> set[int]:
    """The tokenizer's EOS plus any the model's generation config names (chat models often have two)."""
    ids = {tokenizer.eos_token_id}
    extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(extra) if isinstance(extra, list) else ({extra} if isinstance(extra, int) else set())
    return ids


def normalise(text: str) -> str:
    return " ".join(text.strip().lower().rstrip(".!").split())


def exact_match(model: nn.Module, tokenizer, examples: Sequence, max_new_tokens: int = 16,
                device: torch.device | str = "cpu", progress: bool = True) -> dict[str, float]:
    """Greedy answers vs the expected completion / last assistant turn, compared case- and space-blind."""
    from tunesmith.objectives.causal_lm import chat_prefix

    scored = [e for e in examples if e.answer is not None]
    if not scored:
        return {}
    cfg = GenerationConfig(max_new_tokens=max_new_tokens)
    eos = eos_ids(model, tokenizer)
    model.eval()
    hits = 0
    from tqdm.auto import tqdm

    for e in tqdm(scored, desc="exact match", unit="answer", leave=False, disable=not progress):
        ids = (chat_prefix(tokenizer, list(e.messages[:-1])) if e.kind == "chat"
               else tokenizer(e.prompt, add_special_tokens=True)["input_ids"])
        answer = tokenizer.decode(generate_ids(model, ids, eos, cfg, device), skip_special_tokens=True)
        hits += normalise(answer) == normalise(e.answer)
    return {"exact_match": hits / len(scored), "exact_match_n": len(scored)}
