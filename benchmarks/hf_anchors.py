"""The anchors: the same jobs run the way our users run them today.

- classification: transformers `Trainer` (+ PEFT `get_peft_model` for LoRA; for a linear probe, every
  pretrained weight set to `requires_grad=False`), `DataCollatorWithPadding`;
- chat SFT: TRL `SFTTrainer` with a PEFT `LoraConfig`, prompt/completion conversations (loss on the
  completion only, as tunesmith trains the assistant turn);
- images: a plain PyTorch loop (frozen part in eval mode, AdamW, the same schedule).

With `same_order=True` an anchor is fed tunesmith's own batches (`cases.tunesmith_batches`) instead of
its shuffled ones: the A/B that separates "different result" from "different draw of the data order".

Settings that change the work are pinned to tunesmith's (batch, length, epochs, learning rate, warmup,
schedule, weight decay, grad clipping, fp32, no gradient checkpointing, no evaluation or saving while
training); everything else is the library's default. These imports are benchmark-only dependencies
(`pip install -e ".[bench]"`), never tunesmith's.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.cases import Setup, data_block, held_out, load_data, tunesmith_batches


class FixedOrder(torch.utils.data.Sampler):
    """Yields one fixed order per epoch (tunesmith's batches, flattened), then repeats the last."""

    def __init__(self, epochs: list[list[list[int]]]) -> None:
        self.orders = [[i for batch in batches for i in batch] for batches in epochs]
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.orders[0])

    def __iter__(self):
        order = self.orders[min(self.epoch, len(self.orders) - 1)]
        self.epoch += 1
        return iter(order)


def _fixed_order_trainer(base: type, order: FixedOrder | None) -> type:
    if order is None:
        return base
    return type(f"SameOrder{base.__name__}", (base,), {"_get_train_sampler": lambda self, dataset=None: order})


def warmup_steps(s: Setup, n_train: int) -> int:
    """tunesmith's count (int(ratio * steps)); Trainer would round a ratio up, so it gets the number."""
    return int(s.warmup_ratio * math.ceil(s.epochs * math.ceil(n_train / s.batch_size)))


def _trainer_args(s: Setup, seed: int, out: Path, n_train: int, step_losses: bool = False, **extra: Any) -> dict:
    logging = {"logging_strategy": "steps", "logging_steps": 1} if step_losses else {"logging_strategy": "no"}
    return dict(output_dir=str(out), per_device_train_batch_size=s.batch_size, num_train_epochs=s.epochs,
                learning_rate=s.lr, weight_decay=s.weight_decay, warmup_steps=warmup_steps(s, n_train),
                lr_scheduler_type="linear", max_grad_norm=1.0, seed=seed, data_seed=seed, save_strategy="no",
                eval_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
                dataloader_num_workers=0, **logging, **extra)


def _logged_losses(trainer) -> list[float]:
    return [row["loss"] for row in trainer.state.log_history if "loss" in row]


def trainer_classify(s: Setup, seed: int, out: Path, same_order: bool = False, step_losses: bool = False
                     ) -> dict[str, Any]:
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from tunesmith.models.registry import resolve_model_dir
    from tunesmith.objectives import classify

    data = load_data(s, "classify")
    model_dir = resolve_model_dir(s.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    set_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=len(data.label_names))
    if s.method["name"] == "lora":
        from peft import LoraConfig, get_peft_model

        lora = s.method["lora"]
        model = get_peft_model(model, LoraConfig(
            task_type="SEQ_CLS", r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
            target_modules=lora["target_modules"],
            modules_to_save=[m.split(".")[-1] for m in lora.get("modules_to_save", [])]))
    if s.method["name"] == "linear_probe":  # what a Trainer user writes: freeze all but the new head
        for name, param in model.named_parameters():
            param.requires_grad_(name.split(".")[0] in ("classifier", "score"))
    encoded = tokenizer([e.text for e in data.train], truncation=True, max_length=s.max_length)
    train = [{"input_ids": ids, "attention_mask": mask, "labels": e.label}
             for ids, mask, e in zip(encoded["input_ids"], encoded["attention_mask"], data.train, strict=True)]
    order = None
    if same_order:
        order = FixedOrder(tunesmith_batches(s, seed, classify.encode(data.train, tokenizer, s.max_length)[0]))
    trainer = _fixed_order_trainer(Trainer, order)(
        model=model, args=TrainingArguments(**_trainer_args(s, seed, out, len(train), step_losses)), train_dataset=train,
        data_collator=DataCollatorWithPadding(tokenizer))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    _check_consumed(order)
    test, _ = classify.encode(data.test, tokenizer, s.max_length)
    metrics = held_out("classify", model, test, tokenizer.pad_token_id, len(data.label_names))
    return {"train_seconds": seconds, "metrics": metrics, "step_losses": _logged_losses(trainer)}


def trl_sft(s: Setup, seed: int, out: Path, same_order: bool = False, step_losses: bool = False) -> dict[str, Any]:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer

    from tunesmith.models.registry import resolve_model_dir
    from tunesmith.objectives import causal_lm

    data = load_data(s, "causal_lm")
    model_dir = resolve_model_dir(s.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    set_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    rows = [{"prompt": list(e.messages[:-1]), "completion": [e.messages[-1]]} for e in data.train]
    lora = s.method["lora"]
    args = SFTConfig(**_trainer_args(s, seed, out, len(rows), step_losses), max_length=s.max_length, gradient_checkpointing=False,
                     bf16=False, fp16=False)
    order = None
    if same_order:
        order = FixedOrder(tunesmith_batches(s, seed, causal_lm.encode(data.train, tokenizer, s.max_length)[0]))
    trainer = _fixed_order_trainer(SFTTrainer, order)(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=LoraConfig(task_type="CAUSAL_LM", r=lora["r"], lora_alpha=lora["alpha"],
                                                lora_dropout=lora["dropout"], target_modules=lora["target_modules"]))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    _check_consumed(order)
    merged = trainer.model.merge_and_unload()
    test, _ = causal_lm.encode(data.test, tokenizer, s.max_length)
    return {"train_seconds": seconds, "metrics": held_out("causal_lm", merged, test, tokenizer.pad_token_id),
            "step_losses": _logged_losses(trainer)}


def trl_dpo(s: Setup, seed: int, out: Path, step_losses: bool = False) -> dict[str, Any]:
    """TRL's DPOTrainer with a PEFT LoRA adapter: its reference is the model with adapters off, as ours."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import DPOConfig, DPOTrainer

    from tunesmith.models.registry import resolve_model_dir
    from tunesmith.objectives.pairs import encode_pairs

    data = load_data(s, "dpo")
    model_dir = resolve_model_dir(s.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    set_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    rows = [{"prompt": list(e.prompt), "chosen": list(e.chosen), "rejected": list(e.rejected)} for e in data.train]
    lora = s.method["lora"]
    args = DPOConfig(**_trainer_args(s, seed, out, len(rows), step_losses), max_length=s.max_length, beta=0.1,
                     loss_type=["sigmoid"], gradient_checkpointing=False, bf16=False, fp16=False,
                     precompute_ref_log_probs=False)
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=LoraConfig(task_type="CAUSAL_LM", r=lora["r"], lora_alpha=lora["alpha"],
                                                lora_dropout=lora["dropout"], target_modules=lora["target_modules"]))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    merged = trainer.model.merge_and_unload()
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    test, _ = encode_pairs(data.test, tokenizer, s.max_length)
    return {"train_seconds": seconds, "step_losses": _logged_losses(trainer),
            "metrics": held_out("dpo", merged, test, tokenizer.pad_token_id, reference=reference)}


class _NoTokenTypes(torch.nn.Module):
    """The anchor's model read as it was trained: TRL's preference collator passes no token type ids."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, **inputs):
        return self.model(**{k: v for k, v in inputs.items() if k != "token_type_ids"})


def trl_reward(s: Setup, seed: int, out: Path, step_losses: bool = False) -> dict[str, Any]:
    """TRL's RewardTrainer fed the very token ids tunesmith trains on (prompt and completion as a pair for
    an encoder, the whole conversation for a causal LM), with a PEFT LoRA adapter when the case has one
    (task SEQ_CLS: the new score layer trains in full, as tunesmith's head)."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed
    from trl import RewardConfig, RewardTrainer

    from tunesmith.models.registry import resolve_model_dir
    from tunesmith.objectives import OBJECTIVES

    data = load_data(s, "reward")
    model_dir = resolve_model_dir(s.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    set_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    reward = OBJECTIVES["reward"]()
    items, _ = reward.encode(data.train, tokenizer, s.max_length)
    rows = [{"chosen_ids": it.chosen[0], "rejected_ids": it.rejected[0]} for it in items]
    args = RewardConfig(**_trainer_args(s, seed, out, len(rows), step_losses), max_length=s.max_length,
                        gradient_checkpointing=False, bf16=False, fp16=False, center_rewards_coefficient=None)
    peft = {}
    if s.method.get("name") == "lora":
        from peft import LoraConfig

        lora = s.method["lora"]
        peft = {"peft_config": LoraConfig(task_type="SEQ_CLS", r=lora["r"], lora_alpha=lora["alpha"],
                                          lora_dropout=lora["dropout"], target_modules=lora["target_modules"])}
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                            **peft)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    trained = trainer.model.merge_and_unload() if peft else trainer.model
    test, _ = reward.encode(data.test, tokenizer, s.max_length)
    return {"train_seconds": seconds, "step_losses": _logged_losses(trainer),
            "metrics": held_out("reward", _NoTokenTypes(trained), test, tokenizer.pad_token_id)}


def plain_image_loop(s: Setup, seed: int, out: Path, same_order: bool = False, step_losses: bool = False
                     ) -> dict[str, Any]:
    """What a careful PyTorch user writes: preprocessed tensors, a DataLoader, the frozen part in eval."""
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from tunesmith.config import ModelConfig
    from tunesmith.models.vision import build_classifier
    from tunesmith.objectives import image_classify

    data = load_data(s, "image_classify")
    model, *_rest = build_classifier(ModelConfig(name=s.model, image_size=s.image_size), len(data.label_names), seed)
    prep = _rest[1]
    items, _ = image_classify.encode(data.train, prep, 0)
    start = time.perf_counter()  # from decoded images, as tunesmith's stage time: inputs are part of the job
    batch = image_classify.collate(items)
    dataset = TensorDataset(batch["pixel_values"], batch["labels"])
    order = FixedOrder(tunesmith_batches(s, seed, items)) if same_order else None
    loader = DataLoader(dataset, batch_size=s.batch_size, shuffle=order is None, sampler=order,
                        generator=None if order else torch.Generator().manual_seed(seed))
    frozen: list[nn.Module] = [model._conv_stem, model._bn0, *model._blocks[: s.method["freeze_layers"]]]
    for module in frozen:
        module.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    total = math.ceil(len(loader) * s.epochs)
    warm = int(s.warmup_ratio * total)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (step + 1) / (warm + 1) if step < warm else max(0.0, 1 - (step - warm) / max(1, total - warm)))
    losses = []
    for _ in range(math.ceil(s.epochs)):
        model.train()
        for module in frozen:
            module.eval()
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(x), y)
            losses.append(loss.item())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
    seconds = time.perf_counter() - start
    _check_consumed(order)
    test, _ = image_classify.encode(data.test, prep, 0)
    return {"train_seconds": seconds, "metrics": held_out("image_classify", model, test, None, len(data.label_names)),
            "step_losses": losses}


def _check_consumed(order: FixedOrder | None) -> None:
    """The same-order A/B means nothing if the anchor did not actually iterate our sampler."""
    if order is not None and order.epoch < len(order.orders):
        raise RuntimeError(f"the anchor drew {order.epoch} of {len(order.orders)} epochs from the fixed order")


__all__ = ["trainer_classify", "trl_sft", "plain_image_loop", "data_block"]
