"""Sequence classification: cross-entropy on the head's logits; accuracy and macro-F1 at evaluation.

The loss is returned as a *sum* over examples: the training loop divides by the number of examples
in the whole optimizer step, so gradient accumulation and DDP give exactly the large-batch loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

DESCRIPTION = "cross-entropy on a classification head; accuracy, macro-F1, confusion matrix"
# Run the last encoder layer at position 0 only where the head reads nothing else (see first_token);
# False keeps the model's own forward, which benchmarks/anchor.py uses to measure what this saves.
FIRST_TOKEN_ONLY = True


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    label: int


def load_data(cfg):
    """Rows -> validated, labelled, split examples (see tunesmith.data.text)."""
    from tunesmith.data import load_text_classification

    return load_text_classification(cfg.data)


def load_model(cfg, data):
    from tunesmith.models import load_text_classifier

    return load_text_classifier(cfg.model.name, data.label_names, cfg.train.init_seed)


def prepare_model(model: nn.Module) -> str | None:
    """Speed-ups that leave the logits unchanged, installed once the model is set up; a line to report."""
    from tunesmith.objectives.first_token import install_first_token_only

    if FIRST_TOKEN_ONLY and install_first_token_only(model):
        return ("classify: the head reads position 0 only, so the last encoder layer computes that position "
                "alone (its keys and values still see every token)")
    return None


def encode(examples: Sequence, tokenizer, max_length: int) -> tuple[list[Encoded], dict[str, int]]:
    """Tokenize once up front; returns the items and counts worth reporting (truncated texts)."""
    if not examples:
        return [], {"truncated": 0}
    ids = tokenizer([e.text for e in examples], truncation=False, add_special_tokens=True)["input_ids"]
    items, truncated = [], 0
    for example, row in zip(examples, ids, strict=True):
        if len(row) > max_length:
            truncated += 1
            row = row[: max_length - 1] + row[-1:]  # keep the closing special token ([SEP] / </s>)
        items.append(Encoded(row, example.label))
    return items, {"truncated": truncated}


def collate(items: Sequence[Encoded], pad_id: int, **_: object) -> dict[str, torch.Tensor]:
    """Pad to the longest item of this batch only (dynamic padding)."""
    width = max(len(it.input_ids) for it in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(items), width), dtype=torch.long)
    for i, it in enumerate(items):
        input_ids[i, : len(it.input_ids)] = torch.tensor(it.input_ids)
        attention_mask[i, : len(it.input_ids)] = 1
    labels = torch.tensor([it.label for it in items], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def count(batch: dict[str, torch.Tensor]) -> int:
    return int(batch["labels"].numel())


def loss_sum(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(logits.float(), batch["labels"], reduction="sum")


@torch.inference_mode()
def eval_sums(model: nn.Module, items: Sequence[Encoded], batch_size: int, pad_id: int, device: torch.device,
              num_labels: int) -> dict[str, torch.Tensor]:
    """Sums that add up across processes: loss, count and the confusion matrix (true x predicted)."""
    confusion = torch.zeros((num_labels, num_labels), dtype=torch.long)
    loss = torch.zeros((), dtype=torch.float64)
    order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))  # less padding
    for start in range(0, len(order), batch_size):
        batch = collate([items[i] for i in order[start : start + batch_size]], pad_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        loss += F.cross_entropy(logits, batch["labels"], reduction="sum").double().cpu()
        pred = logits.argmax(-1).cpu()
        confusion.index_put_((batch["labels"].cpu(), pred), torch.ones_like(pred), accumulate=True)
    return {"loss": loss, "confusion": confusion}


def metrics(sums: dict[str, torch.Tensor]) -> dict[str, float]:
    confusion = sums["confusion"].double()
    n = confusion.sum().item()
    if n == 0:
        return {}
    tp = confusion.diag()
    precision = tp / confusion.sum(0).clamp(min=1)
    recall = tp / confusion.sum(1).clamp(min=1)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), torch.zeros_like(tp))
    present = confusion.sum(1) > 0
    return {
        "loss": sums["loss"].item() / n,
        "accuracy": tp.sum().item() / n,
        "macro_f1": f1[present].mean().item(),
    }


def details(sums: dict[str, torch.Tensor], label_names: list[str]) -> dict:
    """Per-class accuracy and the confusion matrix (true x predicted) for summary.json."""
    confusion = sums["confusion"]
    totals = confusion.sum(1)
    accuracy = {name: (confusion[i, i].item() / totals[i].item() if totals[i] else None)
                for i, name in enumerate(label_names)}
    return {"accuracy": accuracy, "confusion": confusion.tolist()}


def plots(details_by_split: dict[str, dict], label_names: list[str], plot_dir) -> None:
    from tunesmith.report.plots import plot_confusion

    if "test" in details_by_split:
        plot_confusion(details_by_split["test"]["confusion"], label_names, plot_dir / "confusion_test.png")
