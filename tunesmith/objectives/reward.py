"""Reward models: a scalar head on an encoder or a causal LM, trained on (prompt, chosen, rejected) pairs
with the Bradley-Terry loss  -log sigmoid(r(chosen) - r(rejected) - margin)  (TRL's RewardTrainer,
`margin` as its optional per-pair margin). Metrics: pairwise accuracy and mean margin. The run saves a
plain Hugging Face sequence-classification model with one output (`AutoModelForSequenceClassification`),
which `tunesmith score RUN ...` and any RLHF code can read.

What the model reads: a conversation through the chat template where the tokenizer has one (a causal
LM), else the prompt and the completion as a text pair ([CLS] prompt [SEP] completion [SEP] for BERT).
Chosen and rejected of a pair go through one forward (rows interleaved).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from tunesmith.errors import DataError
from tunesmith.objectives.base import Loss, ObjectiveConfig, SavedRun
from tunesmith.objectives.classify import Classify
from tunesmith.ranges import ranged


@dataclass
class RewardConfig(ObjectiveConfig):
    name: str = "reward"
    margin: float = ranged(0.0, ">= 0")  # the reward gap below which a pair still costs (0: plain Bradley-Terry)


@dataclass(frozen=True, slots=True)
class ScoredPair:
    where: str
    chosen: tuple[list[int], list[int] | None]  # token ids, token type ids (None where the model has none)
    rejected: tuple[list[int], list[int] | None]

    @property
    def input_ids(self) -> list[int]:
        return max(self.chosen[0], self.rejected[0], key=len)

    @property
    def token_count(self) -> int:
        return len(self.chosen[0]) + len(self.rejected[0])


def _text(value) -> str:
    return value if isinstance(value, str) else "\n".join(m["content"] for m in value)


def render(tokenizer, prompt, completion, max_length: int) -> tuple[list[int], list[int] | None, bool]:
    """(token ids, token type ids, truncated) of one completion as the reward model reads it."""
    if getattr(tokenizer, "chat_template", None) and not isinstance(prompt, str):
        messages = list(prompt) + (list(completion) if not isinstance(completion, str)
                                   else [{"role": "assistant", "content": completion}])
        ids = tokenizer.apply_chat_template(messages, tokenize=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        cut = len(ids) > max_length
        return ids[-max_length:], None, cut  # the end holds the answer
    if getattr(tokenizer, "sep_token", None):  # an encoder: prompt and completion as a text pair
        encoded = tokenizer(_text(prompt), _text(completion), truncation="only_first", max_length=max_length,
                            return_overflowing_tokens=False)
        full = tokenizer(_text(prompt), _text(completion))
        return (list(encoded["input_ids"]), list(encoded.get("token_type_ids") or []) or None,
                len(full["input_ids"]) > max_length)
    ids = tokenizer(_text(prompt) + _text(completion), add_special_tokens=True)["input_ids"]
    return list(ids[-max_length:]), None, len(ids) > max_length


class Reward(Classify):
    """Classify's model, head and fast paths, with one output and a pairwise loss."""

    name = "reward"
    description = "reward model: Bradley-Terry loss on (prompt, chosen, rejected); pairwise accuracy, margin"
    Config = RewardConfig
    metric_names = ("loss", "accuracy", "margin")
    default_metric = "val_accuracy"
    has_labels = False  # its runs score texts (`tunesmith score`)
    command = "score"

    def load_data(self, run):
        from tunesmith.data.prefs import load_pref_data

        data = load_pref_data(run.data, paired=True)
        data.label_names = ["reward"]  # the model's one output
        return data

    def encode(self, examples, tokenizer, max_length):
        items, truncated = [], 0
        for e in examples:
            *chosen, cut_c = render(tokenizer, e.prompt, e.chosen, max_length)
            *rejected, cut_r = render(tokenizer, e.prompt, e.rejected, max_length)
            truncated += cut_c or cut_r
            if chosen[0] == rejected[0]:
                why = (f"truncation at model.max_length={max_length} cut what differs; raise it" if cut_c or cut_r
                       else "the tokenizer reads both alike (words it does not know?)")
                raise DataError(f"{e.where}: chosen and rejected give the model the same tokens: {why}")
            items.append(ScoredPair(e.where, tuple(chosen), tuple(rejected)))
        return items, {"truncated": truncated}

    def collate(self, items, pad_id, train=False):
        rows = [side for it in items for side in (it.chosen, it.rejected)]  # chosen i at 2i, rejected at 2i + 1
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        types = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (ids, type_ids) in enumerate(rows):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            mask[i, : len(ids)] = 1
            if type_ids:
                types[i, : len(type_ids)] = torch.tensor(type_ids)
        batch = {"input_ids": input_ids, "attention_mask": mask}
        if any(type_ids for _, type_ids in rows):
            batch["token_type_ids"] = types
        return batch

    def counts(self, batch):
        return {"pairs": float(batch["input_ids"].shape[0] // 2)}

    def rewards(self, model, batch) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        scores = model(**inputs).logits.float().squeeze(-1)
        return scores[0::2], scores[1::2]

    def loss(self, model, batch):
        chosen, rejected = self.rewards(model, batch)
        gap = (chosen - rejected).detach()
        return Loss({"pairs": -F.logsigmoid(chosen - rejected - self.cfg.margin).sum()},
                    logs={"accuracy": ((gap > 0).float().sum(), "pairs"), "margin": (gap.sum(), "pairs"),
                          "rewards/chosen": (chosen.detach().sum(), "pairs"),
                          "rewards/rejected": (rejected.detach().sum(), "pairs")})

    def prefix_cache_mb(self, run):
        return None  # pairs are not single examples: the cache keys one input per example

    @torch.inference_mode()
    def eval_sums(self, model, items, batch_size, pad_id, device, num_labels):
        sums = {k: torch.zeros((), dtype=torch.float64) for k in ("loss", "pairs", "correct", "margin")}
        order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))
        for start in range(0, len(order), batch_size):
            batch = self.collate([items[i] for i in order[start : start + batch_size]], pad_id)
            chosen, rejected = self.rewards(model, {k: v.to(device) for k, v in batch.items()})
            gap = chosen - rejected
            sums["loss"] += (-F.logsigmoid(gap - self.cfg.margin)).sum().double().cpu()
            sums["pairs"] += gap.numel()
            sums["correct"] += (gap > 0).sum().double().cpu()
            sums["margin"] += gap.sum().double().cpu()
        return sums

    def metrics(self, sums):
        n = sums["pairs"].item()
        return {} if not n else {"loss": sums["loss"].item() / n, "accuracy": sums["correct"].item() / n,
                                 "margin": sums["margin"].item() / n}

    def details(self, sums, label_names):
        return {"pairs": int(sums["pairs"].item())}

    def plots(self, details_by_split, label_names, plot_dir):
        return None

    def load_saved(self, model_dir: Path, run) -> SavedRun:
        saved = super().load_saved(model_dir, run)
        return SavedRun(saved.model, saved.tokenizer, None)

    @torch.inference_mode()
    def score(self, saved: SavedRun, completions: list[str], prompt: str | None, run) -> list[float]:
        """The reward of each completion (of `prompt`, rendered as in training); without a prompt each
        text is scored whole."""
        rows = []
        for c in completions:
            if prompt is None:
                ids = saved.tokenizer(c, truncation=True, max_length=run.model.max_length)
                rows.append((list(ids["input_ids"]), list(ids.get("token_type_ids") or []) or None))
            else:
                chat = [{"role": "user", "content": prompt}] if getattr(saved.tokenizer, "chat_template", None) else prompt
                rows.append(tuple(render(saved.tokenizer, chat, c, run.model.max_length)[:2]))
        pad = saved.tokenizer.pad_token_id
        out = []
        for start in range(0, len(rows), 64):
            chunk = rows[start : start + 64]
            batch = self.collate([ScoredPair("", r, r) for r in chunk], pad)
            out += self.rewards(saved.model, batch)[0].tolist()
        return out
