"""What the pairwise preference objectives (DPO and its relatives) share: data, batches, the reference
model, evaluation and the metrics TRL logs, under TRL's names.

A subclass gives `pair_loss`: from each pair's summed completion log-probabilities (policy, and the
reference's where it needs one) to its loss and the implicit rewards it logs.

The reference model is never a second copy of the weights. With an adapter method (LoRA, DoRA, prompt
tuning) it is the same model inside `method.reference()` (adapters off, anything else trained in place
restored). With a method that changes the base weights (full, freeze) its log-probabilities are computed
once before training, for every pair of every split, and kept in RUN_DIR/reference_logps.safetensors,
so a resumed run reuses them (`precompute_reference`, on by default there; an adapter run may ask for it
too, to skip the reference forward every epoch).
"""

from __future__ import annotations

import sys
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from tunesmith.errors import ConfigError, TrainingError
from tunesmith.fastpath import no_autograd
from tunesmith.objectives.base import Loss, ObjectiveConfig, StageStart
from tunesmith.objectives.causal_lm import CausalLM
from tunesmith.objectives.pairs import (
    chosen_rejected,
    collate_pairs,
    completion_logps,
    encode_pairs,
    turn_off_dropout,
)
from tunesmith.ranges import option, ranged

REFERENCE_FILE = "reference_logps.safetensors"


@dataclass
class PreferenceConfig(ObjectiveConfig):
    exact_match: bool | None = option(
        None, "at the end: greedy answers to the test prompts vs the chosen answers; unset: only where the "
        "chosen answers are short (most of at most 5 words); free-form answers almost never match exactly")
    beta: float = ranged(0.1, "> 0", "strength of the tie to the reference model (DPO's beta)")
    share_prompt: bool = option(
        True, "the prompt once for chosen and rejected (one packed row per pair); off: each full sequence")
    disable_dropout: bool = option(True, "the model's dropout layers off while training (TRL's default too)")


class PreferenceObjective(CausalLM):
    """A causal LM trained on (prompt, chosen, rejected) pairs."""

    Config = PreferenceConfig
    metric_names = ("loss", "accuracy", "margin", "likelihood_accuracy")
    default_metric = "val_loss"
    eval_file = "a file of preference pairs (prompt, chosen, rejected)"
    needs_reference: ClassVar[bool] = True
    paired: ClassVar[bool] = True  # learns from pairs (else from unpaired judgements, KTO)
    average_logps: ClassVar[bool] = False  # per-token average instead of the sum (SimPO, ORPO)
    extra_names: ClassVar[tuple[str, ...]] = ()  # the names of extra_terms (and of their counts)

    def __init__(self, run=None) -> None:
        super().__init__(run)
        self.reference_logps: dict[str, tuple[float, float]] | None = None
        self._reference: Any = None  # () -> context manager giving the reference model

    def check(self, run, where) -> None:
        super().check(run, where)
        from tunesmith.methods import METHODS
        from tunesmith.schema import stage_methods

        if not self.needs_reference or getattr(self.cfg, "precompute_reference", None) is not False:
            return
        for at, method in stage_methods(run):
            if not METHODS[method.name].free_reference:
                raise ConfigError(f"{where('objective.precompute_reference')}: false, but {at} {method.name} changes "
                                  "the base weights in place, so only precomputed reference log-probs can stand for "
                                  "the reference model; drop it (or use lora)")

    def load_data(self, run):
        from tunesmith.data.prefs import load_pref_data

        return load_pref_data(run.data, paired=self.paired)

    def prepare_model(self, model):
        return turn_off_dropout(model, self.name) if self.cfg.disable_dropout else None

    def encode(self, examples, tokenizer, max_length):
        return encode_pairs(examples, tokenizer, max_length)

    def collate(self, items, pad_id, train=False):
        batch = collate_pairs(items, pad_id)
        if self.reference_logps is not None:
            batch["reference"] = torch.tensor([self.reference_logps[it.where] for it in items], dtype=torch.float32)
        return batch

    def counts(self, batch):
        return {"pairs": float(batch["packed_ids"].shape[0])}

    # -- the reference ---------------------------------------------------------------------------
    def begin_stage(self, start: StageStart) -> None:
        if not self.needs_reference or self.reference_logps is not None or self._reference is not None:
            return  # the reference is the model the first stage started from
        wanted = getattr(self.cfg, "precompute_reference", None)
        if wanted is None:
            wanted = not start.method.free_reference
        if not wanted:
            self._reference = lambda: start.method.reference(start.model)
            start.say(f"{self.name}: the reference model is the model with {start.method.name}'s changes off "
                      "(no second copy of the weights)")
            return
        self.reference_logps = precomputed_reference(self, start)

    def reference(self) -> AbstractContextManager:
        if self._reference is None:
            raise TrainingError(f"{self.name}: no reference model; precomputed log-probs are missing for this pair")
        return self._reference()

    # -- the loss ---------------------------------------------------------------------------------
    def sequence_logps(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed or averaged completion log-probs, completion tokens), rows chosen / rejected interleaved."""
        logps, tokens = completion_logps(model, batch, self.cfg.share_prompt)
        return (logps / tokens.clamp(min=1) if self.average_logps else logps), tokens

    def reference_of(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not self.needs_reference:
            return None
        if "reference" in batch:
            return batch["reference"][:, 0], batch["reference"][:, 1]
        with torch.no_grad(), self.reference() as reference:
            return chosen_rejected(self.sequence_logps(reference, batch)[0])

    def pair_loss(self, chosen: torch.Tensor, rejected: torch.Tensor, ref: tuple | None, tokens: torch.Tensor,
                  batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(per-pair loss, chosen rewards, rejected rewards)."""
        raise NotImplementedError

    def extra_terms(self, chosen, rejected, tokens, batch) -> dict[str, torch.Tensor]:
        """More loss terms beside the pairs' (ORPO's NLL): sums, each averaged over the count of the same
        name that `counts` gives."""
        return {}

    def loss(self, model, batch):
        logps, tokens = self.sequence_logps(model, batch)
        chosen, rejected = chosen_rejected(logps)
        ref = self.reference_of(model, batch)
        losses, reward_c, reward_r = self.pair_loss(chosen, rejected, ref, tokens, batch)
        d = {k: v.detach() for k, v in (("c", reward_c), ("r", reward_r), ("lc", chosen), ("lr", rejected))}
        logs = {"rewards/chosen": (d["c"].sum(), "pairs"), "rewards/rejected": (d["r"].sum(), "pairs"),
                "rewards/accuracies": ((d["c"] > d["r"]).float().sum(), "pairs"),
                "rewards/margins": ((d["c"] - d["r"]).sum(), "pairs"),
                "logps/chosen": (d["lc"].sum(), "pairs"), "logps/rejected": (d["lr"].sum(), "pairs")}
        return Loss({"pairs": losses.sum(), **self.extra_terms(chosen, rejected, tokens, batch)}, logs)

    # -- evaluation -------------------------------------------------------------------------------
    @no_autograd
    def eval_sums(self, model, items, batch_size, pad_id, device, num_labels):
        sums = {k: torch.zeros((), dtype=torch.float64) for k in ("loss", "pairs", "correct", "margin", "likely",
                                                                    *self.extra_names,
                                                                    *(f"{n}_count" for n in self.extra_names))}
        order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))
        for start in range(0, len(order), batch_size):
            batch = self.collate([items[i] for i in order[start : start + batch_size]], pad_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            logps, tokens = self.sequence_logps(model, batch)
            chosen, rejected = chosen_rejected(logps)
            losses, reward_c, reward_r = self.pair_loss(chosen, rejected, self.reference_of(model, batch), tokens, batch)
            counts = self.counts(batch)
            for name, value in self.extra_terms(chosen, rejected, tokens, batch).items():
                sums[name] += value.double().cpu()
                sums[f"{name}_count"] += counts[name]
            sums["loss"] += losses.sum().double().cpu()
            sums["pairs"] += chosen.numel()
            sums["correct"] += (reward_c > reward_r).sum().double().cpu()
            sums["margin"] += (reward_c - reward_r).sum().double().cpu()
            sums["likely"] += (chosen > rejected).sum().double().cpu()
        return sums

    def metrics(self, sums):
        n = sums["pairs"].item()
        if not n:
            return {}
        extra = sum(sums[k].item() / max(sums[f"{k}_count"].item(), 1) for k in sums if f"{k}_count" in sums)
        return {"loss": sums["loss"].item() / n + extra, "accuracy": sums["correct"].item() / n,
                "margin": sums["margin"].item() / n, "likelihood_accuracy": sums["likely"].item() / n}

    def details(self, sums, label_names):
        return {"pairs": int(sums["pairs"].item())}

    # -- a finished run ---------------------------------------------------------------------------
    def load_labelled(self, path, label_names, input_field, label_field, run, skip_bad_rows=False):
        from tunesmith.data.prefs import load_pref_file

        return load_pref_file(path, paired=self.paired, on_bad_rows="skip" if skip_bad_rows else run.data.on_bad_rows,
                              columns=run.data.columns)

    def begin_eval(self, saved, items, run) -> None:
        """The reference log-probs of the file's pairs, from the model the run started from (model.name),
        loaded beside the run's own and released once they are computed."""
        if not self.needs_reference:
            return
        from types import SimpleNamespace

        base = self.load_model(run, SimpleNamespace(label_names=None)).model.eval()
        print(f"{self.name}: reference log-probs of {len(items):,} pairs from {run.model.name}, the model the run "
              "started from", file=sys.stderr, flush=True)
        self.reference_logps = reference_logps(self, base, items, 16, saved.tokenizer.pad_token_id,
                                               torch.device("cpu"))

    @no_autograd
    def eval_rows(self, saved, examples, items, run) -> list[dict]:
        """Per pair: the implicit rewards (beta times the log-ratio to the reference, where there is one)
        and the policy's own log-probabilities."""
        rows = []
        for start in range(0, len(items), 16):
            chunk = items[start : start + 16]
            batch = self.collate(chunk, saved.tokenizer.pad_token_id)
            logps, tokens = self.sequence_logps(saved.model, batch)
            chosen, rejected = chosen_rejected(logps)
            _, reward_c, reward_r = self.pair_loss(chosen, rejected, self.reference_of(saved.model, batch), tokens,
                                                   batch)
            for it, c, r, lc, lr in zip(chunk, reward_c.tolist(), reward_r.tolist(), chosen.tolist(),
                                        rejected.tolist(), strict=True):
                rows.append({"where": it.where, "chosen_reward": c, "rejected_reward": r, "margin": c - r,
                             "correct": c > r, "logps_chosen": lc, "logps_rejected": lr, "likelier": lc > lr})
        return rows


def precomputed_reference(objective: PreferenceObjective, start: StageStart) -> dict[str, tuple[float, float]]:
    """Every pair's reference log-probs (chosen, rejected), from the model as this stage starts: read from
    the run dir when a run resumes, else computed (sharded over processes) and written there."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    from tunesmith.atomic import temp_path

    items = [it for split in start.encoded.values() for it in split]
    keys = sorted({it.where for it in items})
    path = start.run_dir / REFERENCE_FILE
    if path.exists():
        try:
            stored = load_file(str(path))
            found = dict(zip(stored_keys(stored), stored["logps"].tolist(), strict=True))
        except (OSError, ValueError, KeyError, SafetensorError) as e:
            start.say(f"warning: {path} cannot be read ({e}); computing the reference log-probs again")
            found = {}
        if all(k in found for k in keys):
            start.say(f"{objective.name}: reference log-probs of {len(keys):,} pairs read from {path}")
            return {k: tuple(found[k]) for k in keys}
    strategy, model = start.strategy, start.model
    mine = items[strategy.rank :: strategy.world_size]
    computed = reference_logps(objective, model, mine, start.batch_size, start.pad_id, strategy.device)
    for part in strategy.gather_objects(computed):
        computed |= part
    if strategy.is_main:
        tmp = temp_path(path)
        save_file({"logps": torch.tensor([computed[k] for k in keys], dtype=torch.float32),
                   "keys": torch.tensor(list("\n".join(keys).encode()), dtype=torch.uint8)}, str(tmp))
        tmp.replace(path)
    start.say(f"{objective.name}: reference log-probs of {len(keys):,} pairs computed once and kept in {path}")
    return computed


def reference_logps(objective: PreferenceObjective, model: nn.Module, items: list, batch_size: int, pad_id: int,
                    device: torch.device) -> dict[str, tuple[float, float]]:
    """Each item's (chosen, rejected) log-probs under `model`, in eval mode, by the item's `where`."""
    computed: dict[str, tuple[float, float]] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for i in range(0, len(items), batch_size):
                chunk = items[i : i + batch_size]
                batch = {k: v.to(device) for k, v in collate_pairs(chunk, pad_id).items()}
                chosen, rejected = chosen_rejected(objective.sequence_logps(model, batch)[0])
                for it, c, r in zip(chunk, chosen.tolist(), rejected.tolist(), strict=True):
                    computed[it.where] = (c, r)
    finally:
        model.train(was_training)
    return computed


def stored_keys(stored: dict[str, torch.Tensor]) -> list[str]:
    return bytes(stored["keys"].tolist()).decode().split("\n")
