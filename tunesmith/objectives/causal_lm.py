"""Causal language modelling (supervised fine-tuning): next-token cross-entropy on the target tokens.

Targets are the completion (prompt/completion rows), the assistant turns (chat rows, via the chat
template) or every token (text rows); objective.train_on_inputs makes every token of prompt/completion
and chat rows a target too (the prompt, the user turns and the template's own tokens). EOS is appended
and *trained* even when pad == eos: masks come from the labels, never from the pad id. The loss is
summed over target tokens; the loop divides by the target tokens of the whole step, so accumulation and
DDP equal the large batch exactly.

Packing puts several samples in one row; position ids restart at each sample, which makes transformers
build a block-diagonal causal mask (no attention across samples), and the first token of every sample
is never a target of the sample before it. A test proves per-sample losses equal the unpacked ones.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.data.chat import chat_prefix, no_template_error, template_ids, use_chat_template
from tunesmith.errors import ConfigError, DataError
from tunesmith.fastpath import checked_once, is_sharded, no_autograd, same_result
from tunesmith.objectives.base import Loss, Objective, ObjectiveConfig, SavedRun
from tunesmith.ranges import option

IGNORE = -100
# answers longer than this (in words) are free-form: exact match is skipped by default where most are
FREE_FORM_WORDS = 5
# Run the output layer on target positions only (see target_logits); False restores the model's own
# forward over every position, which benchmarks/anchor.py uses to measure what this saves.
TARGET_ONLY_LOGITS = True


@dataclass(frozen=True)
class LMItem:
    input_ids: list[int]
    labels: list[int]  # IGNORE where the token is context, not target


def tokenize_example(example, tokenizer, train_on_inputs: bool = False) -> tuple[list[int], list[int]]:
    """(token ids, labels); `train_on_inputs`: the prompt (user turns, template tokens) is a target too."""
    eos = tokenizer.eos_token_id
    if example.kind == "text":
        ids = tokenizer(example.text, add_special_tokens=True)["input_ids"] + [eos]
        return ids, list(ids)
    if example.kind == "prompt":
        prompt = tokenizer(example.prompt, add_special_tokens=True)["input_ids"]
        completion = tokenizer(example.completion, add_special_tokens=False)["input_ids"] + [eos]
        return prompt + completion, (prompt if train_on_inputs else [IGNORE] * len(prompt)) + completion
    if not getattr(tokenizer, "chat_template", None):
        raise no_template_error(example.where)
    messages = list(example.messages)
    ids = template_ids(tokenizer.apply_chat_template(messages, tokenize=True))
    labels = [IGNORE] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(chat_prefix(tokenizer, messages[:i]))
        end = len(template_ids(tokenizer.apply_chat_template(messages[: i + 1], tokenize=True)))
        turn = ids[start:end]
        if eos not in turn:  # a template that closes turns without EOS: add it, so the model learns to stop
            ids = ids[:end] + [eos] + ids[end:]
            labels = labels[:end] + [IGNORE] + labels[end:]
            end += 1
        labels[start:end] = ids[start:end]
    return ids, (list(ids) if train_on_inputs else labels)


def encode(examples: Sequence, tokenizer, max_length: int, train_on_inputs: bool = False
           ) -> tuple[list[LMItem], dict[str, int]]:
    """Tokenize once; items whose targets are all cut off by truncation are dropped and counted."""
    items, truncated, all_masked = [], 0, 0
    for example in examples:
        ids, labels = tokenize_example(example, tokenizer, train_on_inputs)
        if len(ids) > max_length:
            truncated += 1
            ids, labels = ids[:max_length], labels[:max_length]
        if all(label == IGNORE for label in labels[1:]):  # position 0 is never a target after the shift
            all_masked += 1
            continue
        items.append(LMItem(ids, labels))
    if examples and not items:
        raise DataError(f"all {len(examples)} examples lost every target token to truncation at "
                        f"model.max_length={max_length}; raise it or shorten the prompts")
    return items, {"truncated": truncated, "dropped_all_targets_truncated": all_masked}


def collate(items: Sequence[LMItem], pad_id: int, pack: bool = False, max_length: int | None = None,
            **_: object) -> dict[str, torch.Tensor]:
    if pack:
        return _packed(items, pad_id, max_length or max(len(it.input_ids) for it in items))
    width = max(len(it.input_ids) for it in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((len(items), width), dtype=torch.long)
    for i, it in enumerate(items):
        n = len(it.input_ids)
        input_ids[i, :n] = torch.tensor(it.input_ids)
        labels[i, :n] = torch.tensor(it.labels)
        attention_mask[i, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _packed(items: Sequence[LMItem], pad_id: int, capacity: int) -> dict[str, torch.Tensor]:
    """First-fit-decreasing into rows of `capacity` tokens; positions restart per sample."""
    rows: list[list[LMItem]] = []
    space: list[int] = []
    for it in sorted(items, key=lambda x: -len(x.input_ids)):
        n = len(it.input_ids)
        slot = next((r for r, free in enumerate(space) if free >= n), None)
        if slot is None:
            rows.append([])
            space.append(max(capacity, n))
            slot = len(rows) - 1
        rows[slot].append(it)
        space[slot] -= n
    width = max(sum(len(it.input_ids) for it in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for it in row:
            n = len(it.input_ids)
            input_ids[r, at : at + n] = torch.tensor(it.input_ids)
            labels[r, at + 1 : at + n] = torch.tensor(it.labels[1:])  # never predict a sample from the last one
            position_ids[r, at : at + n] = torch.arange(n)
            at += n
        position_ids[r, at:] = torch.arange(width - at)  # padding is a "sample" of its own
    return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels}


def count(batch: dict[str, torch.Tensor]) -> int:
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def target_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits at the target positions (n, vocab), their targets (n,), where they are (batch, length - 1))."""
    logits, targets, wanted, _ = _target_outputs(model, batch, with_hidden=False)
    return logits, targets, wanted


def target_logits_and_hidden(model: nn.Module, batch: dict[str, torch.Tensor]
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """target_logits, plus the final hidden states at the target positions (n, hidden) from the same
    forward (what a value head reads)."""
    logits, targets, wanted, hidden = _target_outputs(model, batch, with_hidden=True)
    return logits, targets, wanted, hidden


def _target_outputs(model: nn.Module, batch: dict[str, torch.Tensor], with_hidden: bool):
    targets = batch["labels"][:, 1:]
    wanted = targets != IGNORE
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    split = _body_and_head(model) if TARGET_ONLY_LOGITS else None
    if split is not None:
        # the output layer runs on target positions only: with short answers after long prompts
        # (chat SFT) that skips most of a vocabulary-sized matmul, its softmax and their memory
        body, head = split
        hidden = body(**inputs, use_cache=False).last_hidden_state[:, :-1][wanted]
        return head(hidden).float(), targets[wanted], wanted, hidden
    extra = {"output_hidden_states": True} if with_hidden else {}
    if TARGET_ONLY_LOGITS and _keeps_masked_logits(model):
        # a wrapper (DDP) must run its own forward, so the model slices: transformers' logits_to_keep
        # with a boolean mask gives the logits of the True positions only, flattened
        keep = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
        keep[:, :-1] = wanted
        out = model(**inputs, use_cache=False, logits_to_keep=keep, **extra)
        logits = out.logits.float()
    else:
        out = model(**inputs, use_cache=False, **extra)
        logits = out.logits[:, :-1][wanted].float()
    hidden = out.hidden_states[-1][:, :-1][wanted] if with_hidden else None
    return logits, targets[wanted], wanted, hidden


def token_losses(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-token loss (0 where not a target), shape (batch, length - 1)."""
    logits, targets, wanted = target_logits(model, batch)
    losses = torch.zeros(wanted.shape, dtype=torch.float32, device=wanted.device)
    return losses.masked_scatter(wanted, F.cross_entropy(logits, targets, reduction="none"))


def _keeps_masked_logits(model: nn.Module) -> bool:
    """Whether the model DDP wraps (or FSDP shards) takes a boolean `logits_to_keep` mask (transformers
    >= 5) and returns exactly the full logits at those positions; checked once per model on a short input
    (every process at once: under FSDP the check's forwards are collectives too)."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        inner = model.module
    elif is_sharded(model):
        inner = model
    else:
        return False
    if "logits_to_keep" not in inspect.signature(inner.forward).parameters:
        return False

    def check() -> bool:
        device = next(inner.parameters()).device
        ids = (torch.arange(1, 9, device=device).view(1, -1) * 7) % max(2, getattr(inner.config, "vocab_size", 2))
        keep = torch.tensor([[False, True, True, False, False, True, False, False]], device=device)
        return same_result(inner, lambda: inner(input_ids=ids, use_cache=False).logits[keep],
                           lambda: inner(input_ids=ids, use_cache=False, logits_to_keep=keep).logits)

    return checked_once(inner, "masked_logits", check)


def _body_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(the transformer that gives final hidden states, the output layer) of a plain transformers causal
    LM whose logits are exactly head(hidden); None for anything else (then the model's own forward runs).
    Checked once per model on a short input, so an architecture that scales or caps its logits is caught."""
    if is_sharded(model):
        return None
    prefix = getattr(model, "base_model_prefix", None)
    body = getattr(model, prefix, None) if prefix else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not (isinstance(body, nn.Module) and isinstance(head, nn.Linear)
            and type(model).__name__.endswith("ForCausalLM")):
        return None

    def check() -> tuple[nn.Module, nn.Module] | tuple[()]:
        ids = torch.arange(1, 9, device=head.weight.device).view(1, -1) % head.out_features
        same = same_result(model, lambda: model(input_ids=ids, use_cache=False).logits,
                           lambda: head(body(input_ids=ids, use_cache=False).last_hidden_state))
        return (body, head) if same else ()

    return checked_once(model, "body_head", check) or None


def loss_sum(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return token_losses(model, batch).sum()


@no_autograd
def eval_sums(model: nn.Module, items: Sequence[LMItem], batch_size: int, pad_id: int, device: torch.device,
              num_labels: int = 0) -> dict[str, torch.Tensor]:
    loss = torch.zeros((), dtype=torch.float64)
    tokens = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.float64)
    order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))
    for start in range(0, len(order), batch_size):
        batch = collate([items[i] for i in order[start : start + batch_size]], pad_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        logits, targets, _ = target_logits(model, batch)
        loss += F.cross_entropy(logits, targets, reduction="sum").double().cpu()
        correct += (logits.argmax(-1) == targets).sum().double().cpu()
        tokens += targets.numel()
    return {"loss": loss, "tokens": tokens, "correct": correct}


def metrics(sums: dict[str, torch.Tensor]) -> dict[str, float]:
    n = sums["tokens"].item()
    if not n:
        return {}
    mean = sums["loss"].item() / n
    return {"loss": mean, "perplexity": float(torch.tensor(mean).exp()),
            "token_accuracy": sums["correct"].item() / n}


def details(sums: dict[str, torch.Tensor], label_names) -> dict:
    return {"target_tokens": int(sums["tokens"].item())}


# -- the objective ---------------------------------------------------------------------------------


@dataclass
class CausalLMConfig(ObjectiveConfig):
    name: str = option("causal_lm", "the objective")
    packing: bool = option(False, "put several samples in one row of the batch (no attention across them; "
                                  "positions restart at each)")
    exact_match: bool | None = option(None, "at the end, compare greedy answers on the test split with the "
                                            "expected ones; unset: only where most answers are short (at most 5 "
                                            "words), since free-form answers almost never match exactly")
    train_on_inputs: bool = option(False, "prompt/completion and chat rows: put the loss on the prompt (the user "
                                          "turns and the chat template's tokens) as well as on the answer")


class CausalLM(Objective):
    name = "causal_lm"
    description = "next-token cross-entropy on completions / assistant turns / text; loss, perplexity, token accuracy"
    Config = CausalLMConfig
    metric_names = ("loss", "perplexity", "token_accuracy")
    default_metric = "val_loss"
    model_kind = "causal-lm"
    generates = True
    command = "generate"

    def check(self, run, where) -> None:
        from tunesmith.models.vision import is_vision_model

        if is_vision_model(run.model.name):
            raise ConfigError(f"{where('objective')}: {self.name}, but model.name {run.model.name!r} is an image "
                              "model; set objective: image_classify")
        if run.model.train_pooler is not None:
            raise ConfigError(f"{where('model.train_pooler')}: is for text classifiers (objective classify), "
                              f"not {self.name}")
        if run.model.pooling != "cls":
            raise ConfigError(f"{where('model.pooling')}: {run.model.pooling}: is for text classifiers (objectives "
                              f"classify, reward, weak), not {self.name}")

    def load_data(self, run):
        from tunesmith.data.lm import load_lm_data

        return load_lm_data(run.data)

    def load_model(self, run, data):
        from tunesmith.models import load_causal_lm
        from tunesmith.train.precision import MODEL_DTYPES

        loaded = load_causal_lm(run.model.name, run.train.init_seed, MODEL_DTYPES[run.model.dtype])
        # set once here, so training, preference pairs, generation and the saved tokenizer all use it; outside
        # a run (run_dir None) a template file that is gone is left to the run's saved tokenizer
        use_chat_template(loaded.tokenizer, run.data.chat_template, required=self.run_dir is not None)
        chat = next((e for split in ("train", "validation", "test") for e in getattr(data, split, None) or ()
                     if getattr(e, "kind", None) == "chat"), None)
        if chat is not None and not getattr(loaded.tokenizer, "chat_template", None):
            raise no_template_error(chat.where, "conversations")  # said before anything is tokenized
        return loaded

    def encode(self, examples, tokenizer, max_length):
        return encode(examples, tokenizer, max_length, getattr(self.cfg, "train_on_inputs", False))

    def collate(self, items, pad_id, train=False):
        if train and self.cfg.packing:
            capacity = self.run.model.max_length if self.run is not None else None
            return collate(items, pad_id, pack=True, max_length=capacity)
        return collate(items, pad_id)

    def counts(self, batch):
        return {"loss": float(count(batch))}

    def loss(self, model, batch):
        return Loss({"loss": loss_sum(model, batch)})

    def eval_sums(self, model, items, batch_size, pad_id, device, num_labels):
        return eval_sums(model, items, batch_size, pad_id, device, num_labels)

    def metrics(self, sums):
        return metrics(sums)

    def details(self, sums, label_names):
        return details(sums, label_names)

    def prompt_format(self, data) -> str | None:
        return "chat" if any(e.kind == "chat" for e in data.train) else "plain"

    def final_metrics(self, model, tokenizer, data, strategy) -> dict[str, float]:
        """Greedy answers on the test split vs the expected ones, sharded over processes."""
        from tunesmith.generate import answer_set, exact_match

        if self.cfg.exact_match is False or not data.test:
            return {}
        candidates, rows = answer_set(data.test), []
        answers = [e.answer for e in data.test if e.answer is not None]
        long = sum(len(a.split()) > FREE_FORM_WORDS for a in answers)
        if self.cfg.exact_match is None and 2 * long > len(answers):
            if strategy.is_main:
                print(f"{self.name}: exact match skipped: the test answers are free-form ({long:,} of {len(answers):,} "
                      f"run longer than {FREE_FORM_WORDS} words), so greedy answers would almost never equal them; "
                      "objective.exact_match: true runs it anyway", file=sys.stderr, flush=True)
            return {}
        progress = strategy.is_main and (self.run is None or self.run.train.progress)
        found = exact_match(model, tokenizer, data.test[strategy.rank :: strategy.world_size],
                            device=strategy.device, progress=progress, candidates=candidates, answers_out=rows,
                            strategy=strategy)
        self.outputs["exact_match.jsonl"] = [row for part in strategy.gather_objects(rows) for row in part]
        n = found.get("exact_match_n", 0)
        keys = ["exact_match"] + (["answer_match"] if candidates else [])  # the same on every rank
        totals = strategy.all_reduce_sum(
            torch.tensor([found.get(k, 0.0) * n for k in keys] + [float(n)], dtype=torch.float64))
        if not totals[-1].item():
            return {}
        return {f"test_{k}": totals[i].item() / totals[-1].item() for i, k in enumerate(keys)}

    def load_saved(self, model_dir: Path, run) -> SavedRun:
        from tunesmith.models import load_causal_lm

        loaded = load_causal_lm(str(model_dir), run.train.init_seed)
        return SavedRun(loaded.model.eval(), loaded.tokenizer, None)
