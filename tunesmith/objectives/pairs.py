"""What the preference objectives share: a pair's tokens, its batch, and the log-probability a causal LM
gives each completion.

Tokens. A completion's tokens are cut from the tokens of the joined text (prompt + completion, or the
whole conversation through the chat template), never tokenized apart from its prompt: a tokenizer may
merge characters across the boundary, and a completion tokenized alone would then not be what the model
reads (off-by-one masks). The prompt is the tokens that lie wholly inside it; they must be the same for
chosen and rejected (checked), so the prompt can be computed once for both.

Log-probabilities, two ways (the same numbers; tested against each other):
- `joint`: chosen and rejected sequences (prompt + completion each) in one forward of 2B rows;
- `shared`: one row per pair, packed as prompt, chosen completion, rejected completion, with an
  attention mask that keeps the rejected tokens from seeing the chosen ones and positions that restart
  after the prompt for each completion (`packed_pairs`, `pair_mask`). The prompt runs once, in the same
  forward as both answers (so the matrix products stay large); with short answers after long prompts it
  does about half the work. It needs a plain `*ForCausalLM` (body + output layer) with SDPA or eager
  attention, and is checked once per model against `joint` on a made-up pair; elsewhere `joint` runs.
Either way the output layer runs on completion positions only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.data.chat import chat_prefix, no_template_error, template_ids
from tunesmith.errors import DataError
from tunesmith.fastpath import checked_once, same_result
from tunesmith.objectives.causal_lm import IGNORE, LMItem, _body_and_head, target_logits
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


def split_tokens(tokenizer, prompt, completion, where: str) -> tuple[list[int], list[int]]:
    """(prompt tokens, completion tokens), both cut from the joined text's tokens."""
    eos = tokenizer.eos_token_id
    if not isinstance(prompt, str):  # a conversation: the template renders prompt and answer together
        if not getattr(tokenizer, "chat_template", None):
            raise no_template_error(where, "conversational rows")
        head = chat_prefix(tokenizer, list(prompt))
        full = template_ids(tokenizer.apply_chat_template(list(prompt) + list(completion), tokenize=True))
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
    2i + 1) and `shared` (one packed row per pair, see `packed_pairs`)."""
    lm_items = [LMItem(it.prompt_ids + c, [IGNORE] * len(it.prompt_ids) + c)
                for it in items for c in (it.chosen_ids, it.rejected_ids)]
    batch = lm_collate(lm_items, pad_id)
    packed = packed_pairs([it.prompt_ids for it in items], [it.chosen_ids for it in items],
                          [it.rejected_ids for it in items], pad_id)
    # completion token j of a side is predicted one position before it; the first by the prompt's last
    at, targets, rows = [], [], []
    width = packed["packed_ids"].shape[1]
    for i, it in enumerate(items):
        p, c = len(it.prompt_ids), len(it.chosen_ids)
        for side, (ids, first) in enumerate(((it.chosen_ids, p), (it.rejected_ids, p + c))):
            at += [i * width + (p - 1 if j == 0 else first + j - 1) for j in range(len(ids))]
            targets += ids
            rows += [2 * i + side] * len(ids)
    return batch | packed | {"predict_at": torch.tensor(at), "predict_targets": torch.tensor(targets),
                             "predict_rows": torch.tensor(rows)}


PROMPT, CHOSEN, REJECTED, PAD = 0, 1, 2, 3  # what each position of a packed row holds


def packed_pairs(prompts: Sequence[list[int]], chosen: Sequence[list[int]], rejected: Sequence[list[int]],
                 pad_id: int) -> dict[str, torch.Tensor]:
    """The `shared` layout: one row per pair, its prompt, then the chosen completion, then the rejected one,
    right-padded. Each completion's positions continue from the prompt's end, and `pair_mask` lets the
    rejected tokens see the prompt but not the chosen ones: every token sees what it would see in its own
    sequence, and the prompt runs once."""
    rows = [p + c + r for p, c, r in zip(prompts, chosen, rejected, strict=True)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    segments = torch.full((len(rows), width), PAD, dtype=torch.long)
    for i, (p, c, r) in enumerate(zip(prompts, chosen, rejected, strict=True)):
        ids[i, : len(rows[i])] = torch.tensor(rows[i])
        positions[i, : len(rows[i])] = torch.tensor([*range(len(p) + len(c)), *range(len(p), len(p) + len(r))])
        segments[i, : len(rows[i])] = torch.tensor([PROMPT] * len(p) + [CHOSEN] * len(c) + [REJECTED] * len(r))
    return {"packed_ids": ids, "packed_positions": positions, "packed_segments": segments}


def pair_mask(segments: torch.Tensor, attention: str, dtype: torch.dtype) -> torch.Tensor:
    """The (B, 1, W, W) attention mask of packed rows in the form the model's attention reads: causal, no
    padding, and no rejected token seeing a chosen one. A padding row sees itself (a row with no key at all
    gives NaN in SDPA, and NaN times a zero gradient is still NaN)."""
    width = segments.shape[1]
    query, key = segments[:, :, None], segments[:, None, :]
    allowed = torch.ones(width, width, dtype=torch.bool, device=segments.device).tril() & (key != PAD)
    allowed &= ~((query == REJECTED) & (key == CHOSEN))
    allowed |= torch.eye(width, dtype=torch.bool, device=segments.device)
    allowed = allowed[:, None]
    if attention == "sdpa":
        return allowed
    if attention == "eager":  # an additive mask
        return torch.zeros(allowed.shape, dtype=dtype, device=segments.device).masked_fill_(~allowed, torch.finfo(dtype).min)
    raise ValueError(f"packed pairs need sdpa or eager attention, not {attention}")


def packed_hidden(body: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The final hidden states (B, W, H) of the packed rows: one forward, the prompt computed once."""
    config = getattr(body, "config", None)
    attention = getattr(config, "_attn_implementation", None) or "eager"
    dtype = next(body.parameters()).dtype
    mask = pair_mask(batch["packed_segments"], attention, dtype)
    return body(input_ids=batch["packed_ids"], attention_mask=mask, position_ids=batch["packed_positions"],
                use_cache=False).last_hidden_state


# -- log-probabilities ------------------------------------------------------------------------------


def _token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -F.cross_entropy(logits.float(), targets, reduction="none")


def joint_logps(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of each row's completion log-probs (2B,), its completion tokens (2B,)) from full sequences."""
    logits, targets, wanted = target_logits(model, {k: batch[k] for k in ("input_ids", "attention_mask", "labels")})
    rows = wanted.nonzero()[:, 0]
    sums = torch.zeros(wanted.shape[0], dtype=torch.float32, device=logits.device)
    return sums.index_add(0, rows, _token_logps(logits, targets)), wanted.sum(1).float()


def shared_logps(body: nn.Module, head: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The same as joint_logps from the packed rows (the prompt computed once for both completions)."""
    hidden = packed_hidden(body, batch)
    logps = _token_logps(head(hidden.flatten(0, 1)[batch["predict_at"]]), batch["predict_targets"])
    rows, n = batch["predict_rows"], 2 * hidden.shape[0]
    sums = torch.zeros(n, dtype=torch.float32, device=logps.device)
    return sums.index_add(0, rows, logps), torch.bincount(rows, minlength=n).float()


def can_share_prompt(model: nn.Module) -> bool:
    """The packed route needs the body and output layer apart, and gives the joint route's numbers on this
    model (checked once on a made-up pair: an attention that ignores custom masks, or one of another kind,
    keeps the joint route)."""
    parts = _body_and_head(model)
    if parts is None:
        return False
    body, head = parts

    def check() -> bool:
        tokens = [t % head.out_features for t in range(1, 10)]
        items = [PairItem("check", tokens[:4], tokens[4:6], tokens[6:9]), PairItem("check", tokens[:2], tokens[2:5], tokens[5:6])]
        batch = {k: v.to(head.weight.device) for k, v in collate_pairs(items, pad_id=0).items()}
        return same_result(model, lambda: joint_logps(model, batch)[0], lambda: shared_logps(body, head, batch)[0])

    return checked_once(model, "packed_pairs", check)


def completion_logps(model: nn.Module, batch: dict[str, torch.Tensor], share_prompt: bool
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed completion log-probs, completion tokens), rows interleaved chosen / rejected."""
    if share_prompt and can_share_prompt(model):
        body, head = _body_and_head(model)
        return shared_logps(body, head, batch)
    return joint_logps(model, batch)


def turn_off_dropout(model: nn.Module, objective: str) -> str | None:
    """Dropout off in the model's own layers (TRL's `disable_dropout`, on by default there too): chosen and
    rejected, or policy and reference, must be scored by one function, not two noisy draws of it. An
    adapter's dropout stays as configured (`lora.dropout` is 0 unless a user asked for it). Returns the
    line to report (None where nothing changed)."""
    changed = 0
    for name, module in model.named_modules():
        if "lora_dropout" in name:
            continue
        if isinstance(module, nn.Dropout) and module.p > 0:
            module.p, changed = 0.0, changed + 1
        rate = getattr(module, "attention_dropout", None)  # Llama-style attention keeps a float, not a layer
        if isinstance(rate, float) and rate > 0:
            module.attention_dropout, changed = 0.0, changed + 1
    return (f"{objective}: dropout off in {changed} layers, as TRL's disable_dropout "
            "(objective.disable_dropout: false keeps it)") if changed else None


def chosen_rejected(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return values[0::2], values[1::2]
