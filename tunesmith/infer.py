"""Use a finished run: evaluate it on a labelled file, or predict labels for new texts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml

from tunesmith.config import config_from_dict
from tunesmith.data import load_labelled_file
from tunesmith.errors import TunesmithError
from tunesmith.models import load_saved_classifier
from tunesmith.objectives import OBJECTIVES


def open_run(run_dir: Path, device: str = "cpu"):
    """(config, model in eval mode, tokenizer, label names) of a finished run: a full model or base + adapter."""
    from types import SimpleNamespace

    run_dir = Path(run_dir)
    saved = run_dir / "config.yaml"
    if not saved.exists():
        raise TunesmithError(f"{run_dir}: no config.yaml; is it a tunesmith run directory?")
    cfg = config_from_dict(yaml.safe_load(saved.read_text()), source=str(saved))
    objective = OBJECTIVES[cfg.objective]
    adapter_dir = run_dir / "adapter"
    if (adapter_dir / "adapter_config.json").exists():
        meta = json.loads((adapter_dir / "tunesmith.json").read_text())
        loaded = objective.load_model(cfg, SimpleNamespace(label_names=meta["label_names"]))
        if json.loads((adapter_dir / "adapter_config.json").read_text())["peft_type"] == "PROMPT_TUNING":
            from tunesmith.methods.prompt import load_prompt

            load_prompt(loaded, adapter_dir)
        else:
            from tunesmith.methods.adapter_io import load_adapter

            load_adapter(loaded.model, adapter_dir)
        if hasattr(objective, "prepare_model"):
            objective.prepare_model(loaded.model)
        return cfg, loaded.model.to(device).eval(), loaded.tokenizer, meta["label_names"]
    if cfg.objective == "image_classify":
        from tunesmith.models.vision import load_saved_vision

        model, prep, labels = load_saved_vision(run_dir / "model", cfg.model)
        return cfg, model.to(device).eval(), prep, labels
    if cfg.objective == "causal_lm":
        from tunesmith.models import load_causal_lm

        loaded = load_causal_lm(str(run_dir / "model"), cfg.train.init_seed)
        return cfg, loaded.model.to(device).eval(), loaded.tokenizer, None
    model, tokenizer = load_saved_classifier(run_dir / "model", device)
    objective.prepare_model(model)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    return cfg, model, tokenizer, labels


def merge_run(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Fold a LoRA run's adapter into its base: a plain Hugging Face model that needs no tunesmith."""
    from tunesmith.methods.lora import unload
    from tunesmith.models import save_hf_model

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not (run_dir / "adapter" / "adapter_config.json").exists():
        raise TunesmithError(f"{run_dir}: no adapter/ to merge (only LoRA/DoRA runs have one)")
    cfg, model, tokenizer, _ = open_run(run_dir)
    if cfg.objective == "image_classify":
        from tunesmith.models.vision import save_vision_model

        meta = json.loads((run_dir / "adapter" / "tunesmith.json").read_text())
        save_vision_model(unload(model), tokenizer, out_dir, meta)
    else:
        save_hf_model(unload(model), tokenizer, out_dir)
    return out_dir


def evaluate_file(run_dir: str | Path, data: str | Path, text_field: str | None = None,
                  label_field: str | None = None, batch_size: int = 64) -> dict[str, Any]:
    """Metrics of a finished run on a labelled file (or, for image runs, an image folder)."""
    run_dir = Path(run_dir)
    cfg, model, tokenizer, labels = open_run(run_dir)
    if labels is None:
        raise TunesmithError(f"{run_dir} is a language-model run; use `tunesmith generate`")
    objective = OBJECTIVES[cfg.objective]
    if cfg.objective == "image_classify":
        from tunesmith.data.images import load_labelled_images

        examples, report = load_labelled_images(data, labels, text_field or cfg.data.image_field,
                                                label_field or cfg.data.label_field, cfg.data.on_bad_rows)
    else:
        examples, report = load_labelled_file(data, text_field or cfg.data.text_field or "text",
                                              label_field or cfg.data.label_field or "label", labels,
                                              on_bad_rows=cfg.data.on_bad_rows)
    items, stats = objective.encode(examples, tokenizer, cfg.model.max_length)
    sums = objective.eval_sums(model, items, batch_size, getattr(tokenizer, "pad_token_id", None),
                               torch.device("cpu"), len(labels))
    result = objective.metrics(sums)
    confusion = sums["confusion"]
    per_class = {name: confusion[i, i].item() / max(1, confusion[i].sum().item()) for i, name in enumerate(labels)}
    return {"data": str(data), "examples": len(items), **stats, "skipped": report.skipped,
            **result, "per_class_accuracy": per_class}


@torch.inference_mode()
def predict_texts(run_dir: str | Path, texts: list[str], batch_size: int = 64) -> list[dict[str, Any]]:
    run_dir = Path(run_dir)
    cfg, model, tokenizer, labels = open_run(run_dir)
    if labels is None:
        raise TunesmithError(f"{run_dir} is a language-model run; use `tunesmith generate`")
    if cfg.objective == "image_classify":
        raise TunesmithError(f"{run_dir} is an image run; give image files (predict_images)")
    out = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        enc = tokenizer(chunk, truncation=True, max_length=cfg.model.max_length, padding=True, return_tensors="pt")
        probs = model(**enc).logits.float().softmax(-1)
        for text, p in zip(chunk, probs, strict=True):
            ranked = sorted(zip(labels, p.tolist(), strict=True), key=lambda x: -x[1])
            out.append({"text": text, "label": ranked[0][0], "probabilities": dict(ranked)})
    return out


@torch.inference_mode()
def predict_images(run_dir: str | Path, paths: list[str], top_k: int = 3, batch_size: int = 64
                   ) -> list[dict[str, Any]]:
    """Top-k classes with probabilities for each image file."""
    from tunesmith.data.images import ImageExample
    from tunesmith.objectives import image_classify

    run_dir = Path(run_dir)
    cfg, model, prep, labels = open_run(run_dir)
    if cfg.objective != "image_classify":
        raise TunesmithError(f"{run_dir} is not an image run (objective {cfg.objective})")
    examples = [ImageExample(Path(p), 0, p) for p in paths]
    for p in paths:
        if not Path(p).is_file():
            raise TunesmithError(f"{p}: no such image file")
    items, _ = image_classify.encode(examples, prep)
    out = []
    for start in range(0, len(items), batch_size):
        batch = image_classify.collate(items[start : start + batch_size])
        probs = image_classify.logits_of(model, batch["pixel_values"]).softmax(-1)
        for path, p in zip(paths[start : start + batch_size], probs, strict=True):
            top = p.topk(min(top_k, len(labels)))
            ranked = {labels[i]: v for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)}
            out.append({"image": path, "label": next(iter(ranked)), "top": ranked})
    return out
