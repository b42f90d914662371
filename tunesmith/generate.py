"""Text generation for causal LMs: greedy or sampled (temperature, top-p), stops at EOS, KV-cached.

A small loop of our own rather than `model.generate`, so the same code serves plain models, LoRA
models and prompt-tuned models (whose virtual tokens only exist on the first forward).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tunesmith.data.chat import chat_prefix
from tunesmith.errors import TunesmithError
from tunesmith.fastpath import no_autograd


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0


def prompt_ids(tokenizer, prompt: str, chat: bool | None = None, system: str | None = None) -> list[int]:
    """The prompt as token ids; chat models get their chat template (after `system`, if given) with the
    assistant header."""
    use_chat = bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat
    if use_chat:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        return chat_prefix(tokenizer, messages)
    if system:
        raise TunesmithError("a system message needs the chat template (drop --no-chat, or put it in the prompt)")
    return tokenizer(prompt, add_special_tokens=True)["input_ids"]


PROMPT_FORMATS = ("chat", "plain")


def describe_prompt_format(prompt_format: str, why: str, then: str = "") -> str:
    """One line saying how prompts are rendered, and why (for the log)."""
    how = ("the chat template (user turn, then the assistant header)" if prompt_format == "chat"
           else "plain text, without the chat template")
    return f"prompts: {how}, as {why}" + (f"; {then}" if then else "")


def chat_for(prompt_format: str | None, tokenizer, chat: bool | None) -> tuple[bool, str]:
    """Whether to apply the chat template, and why: the caller's choice (`chat`), else the run's
    recorded format, else the tokenizer's template where it has one."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chat is not None:
        if chat and not has_template:
            raise TunesmithError("--chat: this model's tokenizer has no chat template")
        return chat, ("asked (the run trained on " + prompt_format + " prompts)" if prompt_format
                      and (prompt_format == "chat") != chat else "asked")
    if prompt_format is not None:
        return prompt_format == "chat" and has_template, "the run was trained (--chat / --no-chat to change it)"
    return has_template, ("the tokenizer has one (--no-chat for plain text)" if has_template
                          else "the tokenizer has no chat template")


def _pick(logits: torch.Tensor, cfg: GenerationConfig, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Next token per row of `logits` (rows, vocab); a sampled row draws from its own generator."""
    if cfg.temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / cfg.temperature, dim=-1)
    if cfg.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < cfg.top_p  # always keeps the most likely token
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs * keep)
    # inverse-CDF sampling: one uniform in (0, 1] per row from its own generator (a multinomial per row
    # draws a number per vocabulary entry: a tenth of a small model's decoding time)
    cdf = probs.double().cumsum(-1)
    if not bool(torch.isfinite(cdf[:, -1]).all()):
        raise TunesmithError("the model's next-token probabilities are not finite numbers (NaN or inf logits); "
                             "the weights may have diverged")
    u = 1.0 - torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in generators])
    picked = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1)).squeeze(1)
    return picked.clamp_max(probs.shape[-1] - 1)


def sample_seed(seed: int, index: int) -> int:
    """The seed of the index-th prompt of a call: every prompt (and every copy of one prompt) draws its
    own tokens, and which other prompts share its batch changes nothing (up to float rounding: a padded
    batch computes the same logits in another order)."""
    return seed * 1_000_003 + index


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode (no dropout) for the block, then the mode the model had: generating in the middle of
    training must not leave dropout off."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def cache_kwarg(model: nn.Module) -> str:
    """transformers 5 calls the KV cache `cache`; 4.x called it `past_key_values`."""
    forward = getattr(model, "base_model", model).forward if hasattr(model, "prompt_embeddings") else model.forward
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def output_cache(out):
    return getattr(out, "cache", None) if getattr(out, "cache", None) is not None else getattr(out, "past_key_values", None)


def pads_left(model: nn.Module) -> bool:
    """Whether prompts of different lengths can share a batch, left-padded: the model takes an attention
    mask and position ids (a prompt-tuned model, whose virtual tokens come first, cannot)."""
    if hasattr(model, "prompt_embeddings"):
        return False
    config = getattr(model, "config", None)
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return False  # the window would count the pads: a padded row would see fewer of its own tokens
    names = inspect.signature(model.forward).parameters
    return "attention_mask" in names and "position_ids" in names


@no_autograd
def generate_batch(model: nn.Module, batch: Sequence[Sequence[int]], eos_ids: set[int], cfg: GenerationConfig,
                   device: torch.device | str = "cpu", seeds: Sequence[int] | None = None,
                   strategy: Any = None) -> list[list[int]]:
    """New tokens for several prompts at once.

    Prompts of different lengths are left-padded (masked, with each row's own positions), which needs
    `pads_left(model)`; otherwise they must share a length (see `generate_many`). Either way a row gets
    the tokens it would get alone, up to float rounding. Sampling: row i draws from a generator seeded with
    seeds[i] (default: cfg.seed). With a `strategy` whose forwards are collectives (fsdp), decoding goes
    on until every process's rows are done (lockstep), not only this one's.
    """
    lockstep = strategy is not None and strategy.collective_forward
    lengths = [len(ids) for ids in batch]
    padded = len(set(lengths)) > 1
    if padded and not pads_left(model):
        raise ValueError("generate_batch needs prompts of equal length for this model; use generate_many")
    generators = [torch.Generator().manual_seed(s) for s in (seeds or [cfg.seed] * len(batch))]
    kw = cache_kwarg(model)
    width = max(lengths)
    ids = torch.full((len(batch), width), min(eos_ids) if eos_ids else 0, dtype=torch.long)
    for i, row in enumerate(batch):
        ids[i, width - len(row):] = torch.tensor(list(row), dtype=torch.long)
    inputs: dict[str, torch.Tensor] = {}
    if padded:
        mask = (torch.arange(width) >= width - torch.tensor(lengths).unsqueeze(1)).long()
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        inputs = {"attention_mask": mask.to(device), "position_ids": positions.to(device)}
    out = model(input_ids=ids.to(device), use_cache=True, **inputs)
    new: list[list[int]] = [[] for _ in batch]
    done = torch.zeros(len(batch), dtype=torch.bool)
    eos = torch.tensor(sorted(eos_ids))
    for _ in range(cfg.max_new_tokens):
        tokens = _pick(out.logits[:, -1].float().cpu(), cfg, generators)
        done |= torch.isin(tokens, eos)
        if not (strategy.any_true(not bool(done.all())) if lockstep else not bool(done.all())):
            break
        for row in (~done).nonzero().flatten().tolist():
            new[row].append(int(tokens[row]))
        if padded:
            ones = torch.ones((len(batch), 1), dtype=torch.long, device=device)
            inputs = {"attention_mask": torch.cat([inputs["attention_mask"], ones], dim=1),
                      "position_ids": inputs["position_ids"][:, -1:] + 1}
        # finished rows keep decoding (their output is ignored) so the batch stays rectangular
        out = model(input_ids=tokens.unsqueeze(1).to(device), use_cache=True, **{kw: output_cache(out)}, **inputs)
    return new


def generate_ids(model: nn.Module, ids: Sequence[int], eos_ids: set[int], cfg: GenerationConfig,
                 device: torch.device | str = "cpu") -> list[int]:
    return generate_batch(model, [ids], eos_ids, cfg, device)[0]


def generate_many(model: nn.Module, prompts: Sequence[Sequence[int]], eos_ids: set[int], cfg: GenerationConfig,
                  device: torch.device | str = "cpu", batch_size: int = 16, progress: bool = False,
                  desc: str = "generate", strategy: Any = None, first_index: int = 0) -> list[list[int]]:
    """New tokens for each prompt, in order; prompts of similar length share a batch, left-padded (a
    model that cannot take padding: prompts of equal length). Sampled, the i-th prompt draws with seed sample_seed(cfg.seed, first_index + i) (a process generating
    its share of a larger list passes where its share starts, so the draws do not depend on how the list
    was shared out). With a `strategy` whose
    forwards are collectives (fsdp), every process runs as many batches as the busiest one (extra ones
    repeat a prompt, or EOS where it has none, and are discarded)."""
    from tqdm.auto import tqdm

    if pads_left(model):  # similar lengths together, so little padding
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        chunks = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    else:
        by_length: dict[int, list[int]] = {}
        for i, ids in enumerate(prompts):
            by_length.setdefault(len(ids), []).append(i)
        chunks = [idx[k : k + batch_size] for idx in by_length.values() for k in range(0, len(idx), batch_size)]
    results: list[list[int]] = [[] for _ in prompts]
    extra = 0
    if strategy is not None and strategy.collective_forward:
        extra = strategy.agree_max(len(chunks)) - len(chunks)
    with tqdm(total=len(prompts), desc=desc, unit="prompt", leave=False, disable=not progress) as bar:
        for chunk in chunks:
            seeds = [sample_seed(cfg.seed, first_index + i) for i in chunk]
            for i, new in zip(chunk, generate_batch(model, [prompts[i] for i in chunk], eos_ids, cfg, device, seeds,
                                                    strategy), strict=True):
                results[i] = new
            bar.update(len(chunk))
        filler = [list(prompts[0])] if prompts else [[min(eos_ids)]]
        for _ in range(extra):  # forwards the other processes need this one to take part in
            generate_batch(model, filler, eos_ids, cfg, device, None, strategy)
    return results


def generate(model: nn.Module, tokenizer, prompts: Sequence[str], cfg: GenerationConfig | None = None,
             chat: bool | None = None, device: torch.device | str = "cpu", system: str | None = None) -> list[str]:
    """Completions of `prompts`, greedy or sampled (each prompt with its own seed, see generate_many)."""
    cfg = cfg or GenerationConfig()
    ids = [prompt_ids(tokenizer, p, chat, system) for p in prompts]
    with evaluating(model):
        new = generate_many(model, ids, eos_ids(model, tokenizer), cfg, device)
    return [tokenizer.decode(t, skip_special_tokens=True) for t in new]


def eos_ids(model: nn.Module, tokenizer) -> set[int]:
    """The tokenizer's EOS plus any the model's generation config names (chat models often have two)."""
    ids = {tokenizer.eos_token_id}
    extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(extra) if isinstance(extra, list) else ({extra} if isinstance(extra, int) else set())
    return ids


def normalise(text: str) -> str:
    return " ".join(text.strip().lower().rstrip(".!").split())


def first_answer(text: str, candidates: Sequence[str]) -> str | None:
    """The candidate answer that appears first in `text` as whole words (normalised), if any."""
    words = f" {normalise(text)} "
    for punct in ",.;:!?\"'()":
        words = words.replace(punct, " ")
    found = [(words.find(f" {c} "), c) for c in candidates if f" {c} " in words]
    return min(found)[1] if found else None


def answer_set(examples: Sequence) -> list[str]:
    """The distinct expected answers when they look like labels (at most 20), else []."""
    found = sorted({normalise(e.answer) for e in examples if e.answer is not None})
    return found if len(found) <= 20 else []


def exact_match(model: nn.Module, tokenizer, examples: Sequence, max_new_tokens: int = 16,
                device: torch.device | str = "cpu", progress: bool = True, batch_size: int = 16,
                candidates: Sequence[str] | None = None, answers_out: list | None = None,
                strategy: Any = None) -> dict[str, float]:
    """Greedy answers vs the expected completion / last assistant turn.

    `exact_match`: the whole answer equals the expected one (case-, space- and final-stop-blind).
    `answer_match`: when there are at most 20 distinct expected answers (a labelled task), the first of
    them that the generated text mentions is the expected one; fairer to a model that answers in sentences.
    `candidates` fixes that answer set (sharded callers pass the full set so every shard agrees).
    `answers_out`, when given, receives one row per scored example: where, expected, answer, verdicts.
    """
    scored = [e for e in examples if e.answer is not None]
    lockstep = strategy is not None and strategy.collective_forward
    if not scored and not lockstep:  # in lockstep, a process with nothing to score still takes part
        return {}
    cfg = GenerationConfig(max_new_tokens=max_new_tokens)
    prompts = [chat_prefix(tokenizer, list(e.messages[:-1])) if e.kind == "chat"
               else tokenizer(e.prompt, add_special_tokens=True)["input_ids"] for e in scored]
    with evaluating(model):
        new = generate_many(model, prompts, eos_ids(model, tokenizer), cfg, device, batch_size, progress,
                            "exact match", strategy)
    if not scored:
        return {}
    answers = [tokenizer.decode(t, skip_special_tokens=True) for t in new]
    expected = [normalise(e.answer) for e in scored]
    result = {"exact_match": sum(normalise(a) == x for a, x in zip(answers, expected, strict=True)) / len(scored),
              "exact_match_n": len(scored)}
    candidates = answer_set(scored) if candidates is None else candidates
    if candidates:
        result["answer_match"] = sum(first_answer(a, candidates) == x
                                     for a, x in zip(answers, expected, strict=True)) / len(scored)
    if answers_out is not None:
        for e, a, x in zip(scored, answers, expected, strict=True):
            row = {"where": e.where, "expected": e.answer, "answer": a, "exact_match": normalise(a) == x}
            if candidates:
                row["answer_match"] = first_answer(a, candidates) == x
            answers_out.append(row)
    return result
