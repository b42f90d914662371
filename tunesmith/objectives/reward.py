"""Reward models: a scalar head on an encoder or a causal LM, trained on (prompt, chosen, rejected) pairs
with the Bradley-Terry loss  -log sigmoid(r(chosen) - r(rejected) - margin)  (TRL's RewardTrainer,
`margin` as its optional per-pair margin). Metrics: pairwise accuracy and mean margin. The run saves a
plain Hugging Face sequence-classification model with one output (`AutoModelForSequenceClassification`),
which `tunesmith score RUN ...` and any RLHF code can read.

What the model reads: a conversation through the chat template where the tokenizer has one (a causal
LM), else the prompt and the completion as a text pair ([CLS] prompt [SEP] completion [SEP] for BERT).
Chosen and rejected of a pair go through one forward (rows interleaved). On a causal LM the tokens the
two share (the prompt) run once: a pair is one packed row, prompt then both answers, the rejected answer
masked from the chosen one (`share_prompt`, as in DPO; `pairs.packed_pairs`). The score is read where
the model's own forward reads it (the last token that is not padding), so the rewards are the same
numbers either way (tested). An encoder reads every token in both directions, so
there nothing can be shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.errors import DataError
from tunesmith.fastpath import checked_once, is_sharded, no_autograd, same_result
from tunesmith.objectives.base import Loss, ObjectiveConfig, SavedRun
from tunesmith.objectives.classify import Classify
from tunesmith.objectives.pairs import packed_hidden, packed_pairs, turn_off_dropout
from tunesmith.ranges import option, ranged


@dataclass
class RewardConfig(ObjectiveConfig):
    name: str = option("reward", "the objective")
    margin: float = ranged(
        0.0, ">= 0", "the reward gap below which a pair still costs (0: plain Bradley-Terry)")
    share_prompt: bool = option(
        True, "causal LMs: the tokens chosen and rejected share run once for both (off: each sequence in full)")
    disable_dropout: bool = option(True, "the model's dropout layers off while training (TRL's default too)")


@dataclass(frozen=True, slots=True)
class ScoredPair:
    where: str
    chosen: tuple[list[int], list[int] | None]  # token ids, token type ids (None where the model has none)
    rejected: tuple[list[int], list[int] | None]
    shared: int = 0  # leading tokens chosen and rejected have in common (each keeps at least one of its own)

    @property
    def input_ids(self) -> list[int]:
        return max(self.chosen[0], self.rejected[0], key=len)

    @property
    def token_count(self) -> int:
        return len(self.chosen[0]) + len(self.rejected[0])


def _text(value) -> str:
    return value if isinstance(value, str) else "\n".join(m["content"] for m in value)


def cut_from_the_left(tokenizer, prompt) -> bool:
    """Whether `render` reads the text as one sequence (a causal LM), keeping its end when it is too long."""
    return bool(getattr(tokenizer, "chat_template", None) and not isinstance(prompt, str)) or \
        not getattr(tokenizer, "sep_token", None)


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
    # the Bradley-Terry loss, as TRL's RewardTrainer picks its best model: pairwise accuracy saturates on a
    # small validation set long before the rewards stop separating
    default_metric = "val_loss"
    has_labels = False  # its runs score texts (`tunesmith score`)
    command = "score"
    eval_file = "a file of preference pairs (prompt, chosen, rejected)"

    def load_data(self, run):
        from tunesmith.data.prefs import load_pref_data

        data = load_pref_data(run.data, paired=True)
        data.label_names = ["reward"]  # the model's one output
        return data

    def prepare_model(self, model):
        notes = [turn_off_dropout(model, self.name) if self.cfg.disable_dropout else None,
                 super().prepare_model(model)]
        return "\n".join(n for n in notes if n) or None

    def load_model(self, run, data):
        from tunesmith.data.chat import use_chat_template

        loaded = super().load_model(run, data)
        use_chat_template(loaded.tokenizer, run.data.chat_template, required=self.run_dir is not None)
        return loaded

    def encode(self, examples, tokenizer, max_length):
        items, truncated = [], 0
        for e in examples:
            if cut_from_the_left(tokenizer, e.prompt):  # both cut at one point, so the prompt stays shared
                whole_c = render(tokenizer, e.prompt, e.chosen, 1 << 30)[0]
                whole_r = render(tokenizer, e.prompt, e.rejected, 1 << 30)[0]
                drop = max(0, max(len(whole_c), len(whole_r)) - max_length)
                chosen, rejected = [whole_c[drop:], None], [whole_r[drop:], None]
                cut_c = cut_r = drop > 0
            else:
                *chosen, cut_c = render(tokenizer, e.prompt, e.chosen, max_length)
                *rejected, cut_r = render(tokenizer, e.prompt, e.rejected, max_length)
            truncated += cut_c or cut_r
            if chosen[0] == rejected[0]:
                why = (f"truncation at model.max_length={max_length} cut what differs; raise it" if cut_c or cut_r
                       else "the tokenizer reads both alike (words it does not know?)")
                raise DataError(f"{e.where}: chosen and rejected give the model the same tokens: {why}")
            items.append(ScoredPair(e.where, tuple(chosen), tuple(rejected), common_prefix(chosen[0], rejected[0])))
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
            batch["token_type_ids"] = types  # an encoder: nothing to share
        elif self.cfg.share_prompt:
            batch |= shared_layout(items, pad_id)
        return batch

    def counts(self, batch):
        return {"pairs": float(batch["input_ids"].shape[0] // 2)}

    def rewards(self, model, batch) -> tuple[torch.Tensor, torch.Tensor]:
        route = score_route(model) if "score_at" in batch else None
        if route is not None:
            scores = packed_scores(*route, batch)
        else:
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
            scores = model(**inputs).logits
        scores = scores.float().squeeze(-1)
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

    @no_autograd
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

    def prompt_format(self, data) -> str | None:
        return "chat" if any(e.chat for e in data.train) else "plain"

    def load_saved(self, model_dir: Path, run) -> SavedRun:
        saved = super().load_saved(model_dir, run)
        return SavedRun(saved.model, saved.tokenizer, None)

    def load_labelled(self, path, label_names, input_field, label_field, run, skip_bad_rows=False):
        from tunesmith.data.prefs import load_pref_file

        return load_pref_file(path, paired=True, on_bad_rows="skip" if skip_bad_rows else run.data.on_bad_rows,
                              columns=run.data.columns)

    @no_autograd
    def pair_rewards(self, model, items, pad_id, batch_size: int = 64) -> list[tuple[float, float]]:
        """(chosen reward, rejected reward) of each encoded pair, in order."""
        out = []
        for start in range(0, len(items), batch_size):
            chosen, rejected = self.rewards(model, self.collate(items[start : start + batch_size], pad_id))
            out += list(zip(chosen.tolist(), rejected.tolist(), strict=True))
        return out

    def eval_rows(self, saved, examples, items, run) -> list[dict]:
        return pair_rows(items, self.pair_rewards(saved.model, items, saved.tokenizer.pad_token_id))

    @no_autograd
    def score(self, saved: SavedRun, completions: list[str], prompt: str | None, run) -> list[float]:
        """The reward of each completion (of `prompt`, rendered as the run rendered its prompts: through
        the chat template as a user turn, or as plain text); without a prompt each text is scored whole."""
        from tunesmith.generate import chat_for

        chat = chat_for(saved.prompt_format, saved.tokenizer, None)[0] if prompt is not None else False
        rows = []
        for c in completions:
            if prompt is None:
                ids = saved.tokenizer(c, truncation=True, max_length=run.model.max_length)
                rows.append((list(ids["input_ids"]), list(ids.get("token_type_ids") or []) or None))
            else:
                rendered = [{"role": "user", "content": prompt}] if chat else prompt
                rows.append(tuple(render(saved.tokenizer, rendered, c, run.model.max_length)[:2]))
        pad = saved.tokenizer.pad_token_id
        out = []
        for start in range(0, len(rows), 64):
            chunk = rows[start : start + 64]
            batch = self.collate([ScoredPair("", r, r) for r in chunk], pad)
            out += self.rewards(saved.model, batch)[0].tolist()
        return out


def pair_rows(items, rewards: list[tuple[float, float]]) -> list[dict]:
    """One row per pair: where it came from, both rewards, the margin and whether chosen ranks first."""
    return [{"where": it.where, "chosen_reward": c, "rejected_reward": r, "margin": c - r, "correct": c > r}
            for it, (c, r) in zip(items, rewards, strict=True)]


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens a and b share, leaving each at least one token of its own."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return min(n, len(a) - 1, len(b) - 1)


def shared_layout(items, pad_id: int) -> dict[str, torch.Tensor]:
    """The batch as `packed_hidden` reads it: one row per pair, its shared tokens, then the rest of chosen,
    then the rest of rejected (`pairs.packed_pairs`), and where each side's score is read: its last token
    that is not padding, as the model's own forward picks it. Empty where a pair shares nothing or a
    remainder is all pad tokens (then every sequence runs in full)."""
    if any(it.shared < 1 for it in items):
        return {}
    chosen = [it.chosen[0][it.shared:] for it in items]
    rejected = [it.rejected[0][it.shared:] for it in items]
    score_at = []
    for it, c, r in zip(items, chosen, rejected, strict=True):
        last_c, last_r = (max((j for j, t in enumerate(ids) if t != pad_id), default=-1) for ids in (c, r))
        if min(last_c, last_r) < 0:
            return {}
        score_at.append([it.shared + last_c, it.shared + len(c) + last_r])
    return packed_pairs([it.chosen[0][: it.shared] for it in items], chosen, rejected, pad_id) | {
        "score_at": torch.tensor(score_at)}


def packed_scores(body: nn.Module, score: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(2B, 1) scores, chosen i at row 2i as the joint forward gives them, read from the packed rows."""
    hidden = packed_hidden(body, batch)
    rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
    return score(hidden[rows, batch["score_at"]]).flatten(0, 1)


def score_route(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(the transformer body, the score layer) of a plain transformers `*ForSequenceClassification`
    causal LM whose pair scores the packed route reproduces; None for anything else (an encoder, a
    wrapped model, an attention that ignores custom masks), where every sequence runs in full. Checked
    once per model on a short pair of made-up tokens."""
    if is_sharded(model):
        return None
    prefix = getattr(model, "base_model_prefix", None)
    body = getattr(model, prefix, None) if prefix else None
    score = getattr(model, "score", None)
    pad = getattr(getattr(model, "config", None), "pad_token_id", None)
    if not (isinstance(body, nn.Module) and isinstance(score, nn.Linear) and pad is not None
            and type(model).__name__.endswith("ForSequenceClassification")):
        return None

    def check() -> tuple[nn.Module, nn.Module] | tuple[()]:
        tokens = [t for t in range(1, 12) if t != pad][:9]
        pairs = [ScoredPair("check", (tokens[:7], None), (tokens[:5] + tokens[7:9], None), 5),
                 ScoredPair("check", (tokens[:3] + tokens[4:5], None), (tokens[:3] + tokens[5:6], None), 3)]
        batch = {k: v.to(score.weight.device) for k, v in Reward().collate(pairs, pad).items()}
        joint = {k: batch[k] for k in ("input_ids", "attention_mask")}
        same = same_result(model, lambda: model(**joint).logits, lambda: packed_scores(body, score, batch))
        return (body, score) if same else ()

    return checked_once(model, "body_score", check) or None
