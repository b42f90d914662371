"""The jobs `python -m benchmarks.anchor` runs: one setting, run by tunesmith and by an anchor.

A case fixes everything that decides the result (model, data, sizes, batch, sequence length, epochs,
learning rate, schedule, LoRA shape); a *variant* is who runs it: the anchor, tunesmith, or tunesmith
with one optimisation turned off (to measure that optimisation on its own). Every variant returns the
wall time of its training phase and the held-out metric computed by the same tunesmith evaluation
function (`eval_sums`) on the same held-out examples, so metrics are comparable by construction.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Setup:
    """Everything both sides share. Defaults per case in CASES; the CLI may override sizes."""

    model: str
    data: str  # a tunesmith built-in data set
    train: int
    test: int
    epochs: float
    batch_size: int
    lr: float
    max_length: int = 64
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    method: dict = field(default_factory=dict)  # tunesmith's method block (the anchor mirrors it)
    image_size: int = 64
    train_pooler: bool | None = None  # model.train_pooler (None: as the checkpoint declares)


Runner = Callable[..., dict[str, Any]]  # (setup, seed, out dir, step_losses=False) -> outcome


@dataclass(frozen=True)
class Case:
    name: str
    title: str
    objective: str  # classify | causal_lm | image_classify
    metric: str  # the key in tunesmith's evaluation metrics, e.g. accuracy / loss
    higher_is_better: bool
    setup: Setup
    anchor: str  # what the anchor is, for the table
    variants: dict[str, Runner]  # "anchor" and "tunesmith" first, then ablations and A/B checks
    labels: dict[str, str] = field(default_factory=dict)  # variant -> its row's name in the table

    def label(self, variant: str) -> str:
        return self.labels.get(variant, variant)


# -- the data and configs both sides use ------------------------------------------------------------
def data_block(s: Setup) -> dict:
    split = {"validation": 0.0, "test": 0.15, "seed": 0}
    if s.data.startswith("fashion-mnist"):
        split = {"validation": 0.0, "seed": 0}  # the official test set
    return {"builtin": s.data, "split": split, "max_train_samples": s.train, "max_eval_samples": s.test}


def run_config(s: Setup, objective: str, seed: int, overrides: dict | None = None) -> dict:
    train = {"epochs": s.epochs, "batch_size": s.batch_size, "lr": s.lr, "weight_decay": s.weight_decay,
             "warmup_ratio": s.warmup_ratio, "schedule": "linear", "max_grad_norm": 1.0, "init_seed": seed,
             "data_seed": seed, "progress": False, "log_every": 50, "eval_every": "epoch",
             "eval_batch_size": 64}
    model = {"name": s.model, "max_length": s.max_length, "train_pooler": s.train_pooler}
    if objective == "image_classify":
        model = {"name": s.model, "image_size": s.image_size}
    section = {"name": objective}
    if objective in ("causal_lm", "dpo"):
        section["exact_match"] = False  # the shared held-out metric is the loss
    config = {"model": model, "method": s.method, "objective": section, "data": data_block(s), "train": train}
    for key, value in (overrides or {}).items():  # "train.group_by_length": False
        section, name = key.split(".")
        config[section] = {**config[section], name: value}
    return config


def load_data(s: Setup, objective: str):
    """The exact examples tunesmith trains and tests on, for the anchor to use too."""
    from tunesmith.config import config_from_dict
    from tunesmith.objectives import build_objective

    cfg = config_from_dict(run_config(s, objective, 0), source="benchmark")
    return build_objective(cfg).load_data(cfg)


def tunesmith_batches(s: Setup, seed: int, items: list) -> list[list[list[int]]]:
    """The batches tunesmith trains on, epoch by epoch, for an anchor fed the same order."""
    from tunesmith.config import TrainConfig
    from tunesmith.train.step import epoch_batches

    lengths = [len(it.input_ids) for it in items] if items and hasattr(items[0], "input_ids") else None
    if not TrainConfig().group_by_length:
        lengths = None
    return [epoch_batches(len(items), s.batch_size, seed, epoch, lengths) for epoch in range(math.ceil(s.epochs))]


def held_out(objective: str, model, items, pad_id, num_labels: int = 0, reference=None) -> dict[str, float]:
    """The shared yardstick: tunesmith's own evaluation sums on the held-out items (`reference`: a
    preference objective's reference model)."""
    from contextlib import nullcontext

    import torch

    from tunesmith.objectives import OBJECTIVES

    judge = OBJECTIVES[objective]()
    if reference is not None:
        judge._reference = lambda: nullcontext(reference.eval())
    model.eval()
    return judge.metrics(judge.eval_sums(model, items, 64, pad_id, torch.device("cpu"), num_labels))


# -- tunesmith --------------------------------------------------------------------------------------
def tunesmith_runner(objective: str, overrides: dict | None = None, setup: Callable[[], None] | None = None
                     ) -> Runner:
    def run_tunesmith(s: Setup, seed: int, out: Path, step_losses: bool = False) -> dict[str, Any]:
        import json

        from tunesmith.config import config_from_dict
        from tunesmith.run import run

        if setup is not None:
            setup()
        logging = {"train.log_every": 1} if step_losses else {}
        cfg = config_from_dict(run_config(s, objective, seed, {**(overrides or {}), **logging}), source="benchmark")
        summary = run(cfg, out, overwrite=True)
        metrics = {k.removeprefix("test_"): v for k, v in summary["final"].items() if k.startswith("test_")}
        cache = [c for c in summary.get("prefix_cache", []) if c]
        lines = (out / "metrics.jsonl").read_text().splitlines() if step_losses else []
        return {"train_seconds": summary["stage_wall_seconds"], "metrics": metrics,
                "notes": f"frozen prefix cached ({cache[0]['mb']:.0f} MB)" if cache else "",
                "step_losses": [row["train_loss"] for row in map(json.loads, lines) if "train_loss" in row]}

    return run_tunesmith


def _full_logits() -> None:
    from tunesmith.objectives import causal_lm

    causal_lm.TARGET_ONLY_LOGITS = False


def _full_last_layer() -> None:
    from tunesmith.objectives import classify

    classify.FIRST_TOKEN_ONLY = False


# -- the cases --------------------------------------------------------------------------------------
def _cases() -> dict[str, Case]:
    from benchmarks import hf_anchors as hf

    smollm2_lora = {"name": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0,
                                             "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}}
    lora_qv = {"name": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["query", "value"],
                                        "modules_to_save": ["bert.pooler"]}}
    no_grouping = {"train.group_by_length": False}
    no_fused = {"train.fused_optimizer": False}
    same_order = "anchor fed tunesmith's batch order"
    text_labels = {"no-grouping": "tunesmith without length-grouped batches",
                   "plain-adamw": "tunesmith without the fused AdamW kernel",
                   "all-positions": "tunesmith with the last encoder layer at every position", "same-order": same_order}
    return {
        "minilm-lora": Case(
            "minilm-lora", "minilm-l6 + LoRA r=8 (query, value; pooler trained) on rotten-tomatoes",
            "classify", "accuracy", True,
            Setup("minilm-l6", "rotten-tomatoes", train=3000, test=1000, epochs=1, batch_size=32, lr=2e-3,
                  method=lora_qv),
            "PEFT LoRA + transformers Trainer",
            {"anchor": hf.trainer_classify, "tunesmith": tunesmith_runner("classify"),
             "no-grouping": tunesmith_runner("classify", no_grouping),
             "plain-adamw": tunesmith_runner("classify", no_fused),
             "all-positions": tunesmith_runner("classify", setup=_full_last_layer),
             "same-order": partial(hf.trainer_classify, same_order=True)},
            text_labels),
        "minilm-full": Case(
            "minilm-full", "minilm-l6 full fine-tuning on rotten-tomatoes", "classify", "accuracy", True,
            Setup("minilm-l6", "rotten-tomatoes", train=1500, test=1000, epochs=1, batch_size=32, lr=1e-4,
                  method={"name": "full"}),
            "transformers Trainer",
            {"anchor": hf.trainer_classify, "tunesmith": tunesmith_runner("classify"),
             "no-grouping": tunesmith_runner("classify", no_grouping),
             "plain-adamw": tunesmith_runner("classify", no_fused),
             "all-positions": tunesmith_runner("classify", setup=_full_last_layer),
             "same-order": partial(hf.trainer_classify, same_order=True)},
            text_labels),
        "minilm-probe": Case(
            "minilm-probe", "minilm-l6 linear probe (only the new head trains) on rotten-tomatoes",
            "classify", "accuracy", True,
            Setup("minilm-l6", "rotten-tomatoes", train=2000, test=1000, epochs=3, batch_size=32, lr=1e-2,
                  weight_decay=0.0, method={"name": "linear_probe"}, train_pooler=False),  # as the anchor
            "transformers Trainer, pretrained weights frozen",
            {"anchor": hf.trainer_classify, "tunesmith": tunesmith_runner("classify"),
             "no-cache": tunesmith_runner("classify", {"objective.cache_frozen_prefix": False}),
             "same-order": partial(hf.trainer_classify, same_order=True)},
            {"no-cache": "tunesmith without frozen-prefix caching", "same-order": same_order}),
        "smollm2-lora-sft": Case(
            "smollm2-lora-sft", "smollm2-135m + LoRA r=8 (q, k, v, o) SFT on rotten-tomatoes-chat",
            "causal_lm", "loss", False,
            Setup("smollm2-135m", "rotten-tomatoes-chat", train=120, test=200, epochs=1, batch_size=8, lr=1e-3,
                  max_length=128, weight_decay=0.0, warmup_ratio=0.05,
                  method=smollm2_lora),
            "TRL SFTTrainer + PEFT LoRA",
            {"anchor": hf.trl_sft, "tunesmith": tunesmith_runner("causal_lm"),
             "all-logits": tunesmith_runner("causal_lm", setup=_full_logits),
             "no-grouping": tunesmith_runner("causal_lm", no_grouping),
             "same-order": partial(hf.trl_sft, same_order=True)},
            {"all-logits": "tunesmith without the output layer on target positions only",
             "no-grouping": "tunesmith without length-grouped batches", "same-order": same_order}),
        "smollm2-dpo-lora": Case(
            "smollm2-dpo-lora", "smollm2-135m + LoRA r=8 (q, k, v, o) DPO on rotten-tomatoes-prefs",
            "dpo", "loss", False,
            Setup("smollm2-135m", "rotten-tomatoes-prefs", train=120, test=100, epochs=1, batch_size=8, lr=5e-4,
                  max_length=128, weight_decay=0.0, warmup_ratio=0.05,
                  method=smollm2_lora),
            "TRL DPOTrainer + PEFT LoRA (reference: adapters off)",
            {"anchor": hf.trl_dpo, "tunesmith": tunesmith_runner("dpo"),
             "no-shared-prompt": tunesmith_runner("dpo", {"objective.share_prompt": False}),
             "no-shared-prompt-all-logits": tunesmith_runner("dpo", {"objective.share_prompt": False},
                                                             setup=_full_logits)},
            {"no-shared-prompt": "tunesmith without the shared prompt (chosen and rejected each in full)",
             "no-shared-prompt-all-logits": "... and with the output layer at every position"}),
        "minilm-reward": Case(
            "minilm-reward", "minilm-l6 reward model (full fine-tuning) on rotten-tomatoes-prefs",
            "reward", "accuracy", True,
            Setup("minilm-l6", "rotten-tomatoes-prefs", train=1000, test=500, epochs=1, batch_size=16, lr=5e-5,
                  max_length=128, method={"name": "full"}),
            "TRL RewardTrainer",
            {"anchor": hf.trl_reward, "tunesmith": tunesmith_runner("reward"),
             "no-grouping": tunesmith_runner("reward", no_grouping),
             "dropout": tunesmith_runner("reward", {"objective.disable_dropout": False})},
            {"no-grouping": "tunesmith without length-grouped batches",
             "dropout": "tunesmith with the model's dropout on (TRL's RewardTrainer turns it off)"}),
        "smollm2-reward-lora": Case(
            "smollm2-reward-lora", "smollm2-135m + LoRA r=8 (q, k, v, o) reward model on rotten-tomatoes-prefs",
            "reward", "accuracy", True,
            Setup("smollm2-135m", "rotten-tomatoes-prefs", train=240, test=200, epochs=1, batch_size=8, lr=1e-3,
                  max_length=128, weight_decay=0.0, warmup_ratio=0.05, method=smollm2_lora),
            "TRL RewardTrainer + PEFT LoRA",
            {"anchor": hf.trl_reward, "tunesmith": tunesmith_runner("reward"),
             "no-shared-prompt": tunesmith_runner("reward", {"objective.share_prompt": False})},
            {"no-shared-prompt": "tunesmith without the shared prompt (chosen and rejected each in full)"}),
        "efficientnet-freeze": Case(
            "efficientnet-freeze", "efficientnet-lite0, stem + 12 of 16 blocks frozen, on fashion-mnist (64 px)",
            "image_classify", "accuracy", True,
            Setup("efficientnet-lite0", "fashion-mnist", train=2000, test=1000, epochs=3, batch_size=64, lr=1e-3,
                  warmup_ratio=0.05, method={"name": "freeze", "freeze_embeddings": True, "freeze_layers": 12}),
            "plain PyTorch loop",
            {"anchor": hf.plain_image_loop, "tunesmith": tunesmith_runner("image_classify"),
             "no-cache": tunesmith_runner("image_classify", {"objective.cache_frozen_prefix": False}),
             "same-order": partial(hf.plain_image_loop, same_order=True)},
            {"no-cache": "tunesmith without frozen-prefix caching", "same-order": same_order}),
    }


def get_case(name: str, **sizes: Any) -> Case:
    cases = _cases()
    if name not in cases:
        raise SystemExit(f"--case: {name!r} is not one of {', '.join(cases)}")
    case = cases[name]
    changed = {k: v for k, v in sizes.items() if v is not None}
    return replace(case, setup=replace(case.setup, **changed)) if changed else case


CASE_NAMES = ("minilm-lora", "minilm-full", "minilm-probe", "smollm2-lora-sft", "efficientnet-freeze",
              "smollm2-dpo-lora", "minilm-reward", "smollm2-reward-lora")


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
