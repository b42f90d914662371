"""What the preference objectives share: a pair's tokens, its batch, and the log-probability a causal LM
gives each completion.

Tokens. A completion's tokens are cut from the tokens of the joined text (prompt + completion, or the
whole conversation through the chat template), never tokenized apart from its prompt: a tokenizer may
merge characters across the boundary, and a completion tokenized alone would then not be what the model
reads (off-by-one masks). The prompt is the tokens that lie wholly inside it; they must be the same for
chosen and rejected (checked), so the prompt can be computed once for both.

Log-probabilities, two ways (the same numbers; tested against each other):
- `joint`: chosen and rejected sequences (prompt + completion each) in one forward of 2B rows;
- `shared`: the prompt once (B rows, left-padded), then both completions (2B short rows) against its
  key/value cache, with gradients flowing through the cache. With short answers after long prompts it
  does about half the work. It needs a plain `*ForCausalLM` (body + output layer), one process and no
  gradient checkpointing; elsewhere `joint` runs.
Either way the output layer runs on completion positions only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.errors import DataError
from tunesmith.objectives.causal_lm import IGNORE, LMItem, _body_and_head, chat_prefix, target_logits
from tunesmith.objectives.causal_lm import collate as lm_collate


@dataclass(frozen=True, slots=True)
class PairItem:
    where: str
    prompt_ids: list[int]
    chosen_ids: list[int]  # the completion's tokens (the turn's end / EOS included)
    rejected_ids: list[int]

    @property
    def input_ids(self) -> list[int]:  # for length-grouped batches: the longer sequence
        return self.prompt_ids + max(self.chosen_ids, self.rejected_ids, key=len)

    @property
    def token_count(self) -> int:
        """The pair's distinct tokens: the prompt once, both completions."""
        return len(self.prompt_ids) + len(self.chosen_ids) + len(self.rejected_ids)


def _ids(result) -> list[int]:
    if hasattr(result, "keys") and "input_ids" in result:
        result = result["input_ids"]
    return list(result)


def split_tokens(tokenizer, prompt, completion, where: str) -> tuple[list[int], list[int]]:
    """(prompt tokens, completion tokens), both cut from the joined text's tokens."""
    eos = tokenizer.eos_token_id
    if not isinstance(prompt, str):  # a conversation: the template renders prompt and answer together
        if not getattr(tokenizer, "chat_template", None):
            raise DataError(f"{where}: conversational rows need a tokenizer with a chat template; this model has none")
        head = chat_prefix(tokenizer, list(prompt))
        full = _ids(tokenizer.apply_chat_template(list(prompt) + list(completion), tokenize=True))
        if full[: len(head)] != head:
            raise DataError(f"{where}: the chat template renders the prompt differently once the answer follows, "
                            "so the answer's tokens cannot be cut from the conversation; check the template")
        tail = full[len(head):]
        if eos not in tail:  # a template that closes turns without EOS: add it, so the model learns to stop
            tail = tail + [eos]
        return head, tail
    text = prompt + completion
    encoded = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    cut = len(prompt)
    # the prompt is every token that ends inside it (special tokens have empty offsets at the start)
    n = next((i for i, (start, end) in enumerate(offsets) if end > cut or (start >= cut and end > start)), len(ids))
    return list(ids[:n]), list(ids[n:]) + [eos]


def truncate(prompt: list[int], chosen: list[int], rejected: list[int], max_length: int
             ) -> tuple[list[int], list[int], list[int], bool]:
    """Fit prompt + the longer completion into max_length: completions keep at most half of it (their
    start), then the prompt keeps its end (the part next to the answer). Returns whether anything went."""
    longest = max(len(chosen), len(rejected))
    if len(prompt) + longest <= max_length:
        return prompt, chosen, rejected, False
    room = max(max_length // 2, max_length - len(prompt))
    chosen, rejected = chosen[:room], rejected[:room]
    keep = max_length - max(len(chosen), len(rejected))
    return (prompt[-keep:] if keep > 0 else []), chosen, rejected, True


def encode_pairs(examples: Sequence, tokenizer, max_length: int) -> tuple[list[PairItem], dict[str, int]]:
    """Tokenize every pair once; a pair that keeps no prompt after truncation is dropped and counted."""
    items, truncated, dropped = [], 0, 0
    for e in examples:
        prompt, chosen = split_tokens(tokenizer, e.prompt, e.chosen, e.where)
        prompt_r, rejected = split_tokens(tokenizer, e.prompt, e.rejected, e.where)
        if prompt_r != prompt:  # rare: the answer changed how the prompt's last characters tokenize
            same = [a == b for a, b in zip(prompt, prompt_r, strict=False)]
            common = same.index(False) if False in same else len(same)
            chosen, rejected, prompt = prompt[common:] + chosen, prompt_r[common:] + rejected, prompt[:common]
        prompt, chosen, rejected, cut = truncate(prompt, chosen, rejected, max_length)
        truncated += cut
        if not prompt or not chosen or not rejected:
            dropped += 1
            continue
        items.append(PairItem(e.where, prompt, chosen, rejected))
    if examples and not items:
        raise DataError(f"all {len(examples)} pairs lost their prompt or completion to truncation at "
                        f"model.max_length={max_length}; raise it")
    return items, {"truncated": truncated, "dropped_prompt_or_completion_truncated": dropped}


# -- batches ---------------------------------------------------------------------------------------


def collate_pairs(items: Sequence[PairItem], pad_id: int) -> dict[str, torch.Tensor]:
    """Both layouts of a batch: `joint` (input_ids / labels of 2B rows, chosen i at row 2i, rejected i at
    2i + 1) and `shared` (prompt_ids left-padded, completion_ids right-padded, rows as above)."""
    lm_items = [LMItem(it.prompt_ids + c, [IGNORE] * len(it.prompt_ids) + c)
                for it in items for c in (it.chosen_ids, it.rejected_ids)]
    batch = lm_collate(lm_items, pad_id)
    return batch | shared_prompt_batch([it.prompt_ids for it in items],
                                       [c for it in items for c in (it.chosen_ids, it.rejected_ids)], pad_id)


def shared_prompt_batch(prompts: Sequence[list[int]], completions: Sequence[list[int]], pad_id: int
                        ) -> dict[str, torch.Tensor]:
    """The `shared` layout `prompt_then_completions` reads: prompts left-padded (one row per pair), their
    completions right-padded (two rows per pair, chosen i at row 2i)."""
    width = max(len(ids) for ids in prompts)
    prompt_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, ids in enumerate(prompts):
        prompt_ids[i, width - len(ids):] = torch.tensor(ids)
        prompt_mask[i, width - len(ids):] = 1
    cwidth = max(len(c) for c in completions)
    completion_ids = torch.full((len(completions), cwidth), pad_id, dtype=torch.long)
    completion_mask = torch.zeros((len(completions), cwidth), dtype=torch.long)
    for i, c in enumerate(completions):
        completion_ids[i, : len(c)] = torch.tensor(c)
        completion_mask[i, : len(c)] = 1
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
            "completion_mask": completion_mask}


# -- log-probabilities ------------------------------------------------------------------------------


def _token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -F.cross_entropy(logits.float(), targets, reduction="none")


def joint_logps(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of each row's completion log-probs (2B,), its completion tokens (2B,)) from full sequences."""
    logits, targets, wanted = target_logits(model, {k: batch[k] for k in ("input_ids", "attention_mask", "labels")})
    rows = wanted.nonzero()[:, 0]
    sums = torch.zeros(wanted.shape[0], dtype=torch.float32, device=logits.device)
    return sums.index_add(0, rows, _token_logps(logits, targets)), wanted.sum(1).float()


def prompt_then_completions(body: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(each pair's last prompt hidden state, repeated for its two completions (2B, H); the completions'
    hidden states (2B, T, H)): the prompt runs once (B rows, left-padded), then both completions against
    its key/value cache, with gradients flowing through the cache."""
    from tunesmith.generate import cache_kwarg, output_cache

    prompt_mask = batch["prompt_mask"]
    positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    out = body(input_ids=batch["prompt_ids"], attention_mask=prompt_mask, position_ids=positions, use_cache=True)
    cache = output_cache(out)
    cache.batch_repeat_interleave(2)  # each prompt's keys and values, for its chosen and its rejected
    comp_ids, comp_mask = batch["completion_ids"], batch["completion_mask"]
    lengths = prompt_mask.sum(-1).repeat_interleave(2)
    comp_positions = lengths[:, None] + torch.arange(comp_ids.shape[1], device=comp_ids.device)
    mask = torch.cat([prompt_mask.repeat_interleave(2, 0), comp_mask], dim=1)
    hidden = body(input_ids=comp_ids, attention_mask=mask, position_ids=comp_positions, use_cache=True,
                  **{cache_kwarg(body): cache}).last_hidden_state
    return out.last_hidden_state[:, -1].repeat_interleave(2, 0), hidden


def shared_logps(body: nn.Module, head: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The same as joint_logps, with the prompt computed once for both completions of a pair."""
    last_prompt, hidden = prompt_then_completions(body, batch)
    comp_ids, comp_mask = batch["completion_ids"], batch["completion_mask"]
    # completion token j is predicted at position j - 1; token 0 by the prompt's last position
    predictors = torch.cat([last_prompt.unsqueeze(1), hidden[:, :-1]], dim=1)
    wanted = comp_mask.bool()
    logps = _token_logps(head(predictors[wanted]), comp_ids[wanted])
    rows = wanted.nonzero()[:, 0]
    sums = torch.zeros(wanted.shape[0], dtype=torch.float32, device=logps.device)
    return sums.index_add(0, rows, logps), wanted.sum(1).float()


def without_checkpointing(model: nn.Module) -> bool:
    """Activation checkpointing turns the key/value cache off, so the prompt cannot be shared under it."""
    checkpointing = getattr(model, "is_activation_checkpointing", None)  # transformers 5; 4.x: the old name
    if checkpointing is None:
        checkpointing = getattr(model, "is_gradient_checkpointing", False)
    return not checkpointing


def can_share_prompt(model: nn.Module) -> bool:
    """The cache route needs the body and output layer apart, and no activation checkpointing."""
    return without_checkpointing(model) and _body_and_head(model) is not None


def completion_logps(model: nn.Module, batch: dict[str, torch.Tensor], share_prompt: bool
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed completion log-probs, completion tokens), rows interleaved chosen / rejected."""
    if share_prompt and can_share_prompt(model):
        body, head = _body_and_head(model)
        return shared_logps(body, head, batch)
    return joint_logps(model, batch)


def chosen_rejected(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return values[0::2], values[1::2]
