"""Sequence classification: cross-entropy on the head's logits; accuracy and macro-F1 at evaluation.

The loss is returned as a *sum* over examples: the training loop divides by the number of examples
in the whole optimizer step, so gradient accumulation and DDP give exactly the large-batch loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.errors import ConfigError
from tunesmith.fastpath import no_autograd
from tunesmith.objectives.base import Loss, Objective, ObjectiveConfig, SavedRun
from tunesmith.ranges import choice, option, ranged

# Run the last encoder layer at position 0 only where the head reads nothing else (see first_token);
# False keeps the model's own forward, which benchmarks/anchor.py uses to measure what this saves.
FIRST_TOKEN_ONLY = True


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    label: int


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


@no_autograd
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
    """Per class: accuracy (its recall), precision, recall, F1 and support (its examples); and the
    confusion matrix (true x predicted), for summary.json and `tunesmith eval`."""
    confusion = sums["confusion"].double()
    support, predicted, tp = confusion.sum(1), confusion.sum(0), confusion.diag()
    per_class = {}
    for i, name in enumerate(label_names):
        precision = tp[i].item() / predicted[i].item() if predicted[i] else None
        recall = tp[i].item() / support[i].item() if support[i] else None
        f1 = (2 * precision * recall / (precision + recall) if precision and recall else
              (0.0 if precision is not None or recall is not None else None))
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": int(support[i].item())}
    return {"accuracy": {name: row["recall"] for name, row in per_class.items()}, "per_class": per_class,
            "confusion": sums["confusion"].tolist()}


def plots(details_by_split: dict[str, dict], label_names: list[str], plot_dir) -> None:
    from tunesmith.report.plots import plot_confusion

    if "test" in details_by_split:
        plot_confusion(details_by_split["test"]["confusion"], label_names, plot_dir / "confusion_test.png")


# -- the objective ---------------------------------------------------------------------------------


@dataclass
class ClassifyConfig(ObjectiveConfig):
    name: str = option("classify", "the objective")
    cache_frozen_prefix: bool = option(
        True, "freeze / linear_probe: compute the frozen embeddings (a CNN's stem) and leading blocks once per "
        "training example and reuse them every epoch; exact, since frozen parts run in eval mode")
    prefix_cache_mb: float = ranged(
        2048.0, "> 0", "the cache is dropped (training recomputes) above this size")


class Classify(Objective):
    name = "classify"
    description = "cross-entropy on a classification head; accuracy, macro-F1, confusion matrix"
    Config = ClassifyConfig
    metric_names = ("loss", "accuracy", "macro_f1")
    default_metric = "val_accuracy"
    model_kind = "text-classifier"
    has_labels = True
    eval_file = "a labelled file (text and label columns)"

    def check(self, run, where) -> None:
        from tunesmith.models.vision import is_vision_model

        if is_vision_model(run.model.name):
            raise ConfigError(f"{where('objective')}: {self.name}, but model.name {run.model.name!r} is an image "
                              "model; set objective: image_classify")
        check_pooling(run, where)

    def load_data(self, run):
        """Rows -> validated, labelled, split examples (see tunesmith.data.text)."""
        from tunesmith.data import load_text_classification

        return load_text_classification(run.data)

    def load_model(self, run, data):
        from tunesmith.models import load_text_classifier
        from tunesmith.train.precision import MODEL_DTYPES

        return load_text_classifier(run.model.name, data.label_names, run.train.init_seed, pooler_trains(run),
                                    MODEL_DTYPES[run.model.dtype], run.model.pooling)

    def prepare_model(self, model: nn.Module) -> str | None:
        from tunesmith.models.pooling import pooling_of
        from tunesmith.objectives.first_token import install_first_token_only

        # only a head that reads position 0 alone may skip the other positions in the last layer
        if FIRST_TOKEN_ONLY and pooling_of(model) == "cls" and install_first_token_only(model):
            return ("classify: the head reads position 0 only, so the last encoder layer computes that "
                    "position alone (its keys and values still see every token)")
        return None

    def encode(self, examples, tokenizer, max_length):
        return encode(examples, tokenizer, max_length)

    def collate(self, items, pad_id, train=False):
        return collate(items, pad_id)

    def counts(self, batch):
        return {"loss": float(batch["labels"].numel())}

    def loss(self, model, batch):
        return Loss({"loss": loss_sum(model, batch)})

    def prefix_cache_mb(self, run) -> float | None:
        return self.cfg.prefix_cache_mb if self.cfg.cache_frozen_prefix else None

    def eval_sums(self, model, items, batch_size, pad_id, device, num_labels):
        return eval_sums(model, items, batch_size, pad_id, device, num_labels)

    def metrics(self, sums):
        return metrics(sums)

    def details(self, sums, label_names):
        return details(sums, label_names)

    def plots(self, details_by_split, label_names, plot_dir):
        plots(details_by_split, label_names, plot_dir)

    def load_saved(self, model_dir: Path, run) -> SavedRun:
        from tunesmith.models import load_saved_classifier

        model, tokenizer = load_saved_classifier(model_dir)
        self.prepare_model(model)
        return SavedRun(model, tokenizer, [model.config.id2label[i] for i in range(model.config.num_labels)])

    def load_labelled(self, path, label_names, input_field, label_field, run, skip_bad_rows=False):
        from tunesmith.data import load_labelled_file
        from tunesmith.data.config import field_name

        return load_labelled_file(path, input_field or field_name(run.data, "text") or "text",
                                  label_field or field_name(run.data, "label") or "label", label_names,
                                  on_bad_rows="skip" if skip_bad_rows else run.data.on_bad_rows)

    def eval_rows(self, saved: SavedRun, examples, items, run) -> list[dict]:
        labels = saved.label_names
        rows = self.predict(saved, [self.example_input(e) for e in examples], run)
        return [{"where": e.where, "label": labels[e.label], "predicted": row["label"],
                 "correct": row["label"] == labels[e.label], **row} for e, row in zip(examples, rows, strict=True)]

    @no_autograd
    def predict(self, saved: SavedRun, inputs: list[str], run, top_k: int = 3) -> list[dict]:
        """Every class's probability for each text, most likely first (tokenized as in training)."""
        from tunesmith.data import TextExample

        items, _ = encode([TextExample(t, 0, f"text {i + 1}") for i, t in enumerate(inputs)], saved.tokenizer,
                          run.model.max_length)
        out = []
        for start in range(0, len(items), 64):
            batch = collate(items[start : start + 64], saved.tokenizer.pad_token_id)
            probs = saved.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                                ).logits.float().softmax(-1)
            for text, p in zip(inputs[start : start + 64], probs, strict=True):
                ranked = sorted(zip(saved.label_names, p.tolist(), strict=True), key=lambda x: -x[1])
                out.append({"text": text, "label": ranked[0][0], "probabilities": dict(ranked)})
        return out

    def describe_prediction(self, row: dict) -> str:
        probs = "  ".join(f"{k}={v:.3f}" for k, v in row["probabilities"].items())
        return f"{row['label']}\t{probs}\t{row['text'][:80]}"


def pooler_trains(run) -> bool | None:
    """`model.train_pooler`, or, unset, None (the loader decides from the checkpoint) where the run's
    first method leaves the pretrained weights as they are (LoRA, DoRA, prompt tuning): there a pooler
    that never learned would stay frozen. False (the pooler is no part of the head) where the run starts
    with a linear probe, or with a method that trains the pretrained weights (full, freeze), where the
    pooler trains with the body at train.lr. Measured (benchmarks/pooler_defaults.py,
    configs/compare-20ng-pooler.yaml): training the pooler with the head helps LoRA (+1.7 points on
    rotten-tomatoes, +10 on 20newsgroups) but costs the probe about a point, and at head_lr it cost full
    fine-tuning and freeze-3 4 to 5.5 points out of distribution on 20newsgroups-subpop. Where
    model.pooling is not cls there is no pooler, and the loader takes unset as False."""
    from tunesmith.methods import METHODS
    from tunesmith.schema import stage_methods

    if run.model.train_pooler is not None:
        return run.model.train_pooler
    first = stage_methods(run)[0][1].name
    return False if first == "linear_probe" or METHODS[first].trains_base else None


def check_pooling(run, where) -> None:
    """`model.pooling` is one of POOLINGS, and `model.train_pooler: true` only where a pooler is left."""
    from tunesmith.errors import TunesmithError
    from tunesmith.models.pooling import POOLINGS, resolve_pooling
    from tunesmith.models.registry import resolve_model_dir

    pooling = run.model.pooling
    choice(pooling, tuple(POOLINGS), where("model.pooling"))
    if not run.model.train_pooler:
        return
    if pooling in ("auto", "cls"):  # what the checkpoint declares (a saved classifier keeps its own)
        try:
            pooling = resolve_pooling(pooling, resolve_model_dir(run.model.name))
        except TunesmithError:
            return  # the model is not there: the loader says so (and checks this again)
    if pooling != "cls":
        raise ConfigError(f"{where('model.train_pooler')}: true, but model.pooling is {pooling} "
                          f"({run.model.pooling}), which has no [CLS] pooler to train; leave train_pooler unset")
