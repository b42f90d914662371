"""Use a finished run: evaluate it on a labelled file, predict with it, or merge its adapter.

How a run's saved model is read, what its inputs are and how its predictions look belong to its
objective; how a saved adapter is put on the base model belongs to the method that wrote it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from tunesmith.config import RunConfig
from tunesmith.errors import TunesmithError
from tunesmith.methods import method_for_adapter
from tunesmith.objectives import Objective, build_objective
from tunesmith.rundir import read_run_config


@dataclass
class OpenedRun:
    cfg: RunConfig
    objective: Objective
    model: torch.nn.Module
    tokenizer: Any
    label_names: list[str] | None
    loaded: Any = None  # the LoadedModel, for an adapter run (base + adapter)
    method: Any = None  # the adapter's method class, for an adapter run


# what reading a truncated or corrupted saved model raises
_DAMAGED = (OSError, ValueError, RuntimeError, KeyError, EOFError, json.JSONDecodeError)


def open_saved(run_dir: str | Path, device: str = "cpu") -> OpenedRun:
    """A finished run's model in eval mode: its saved model, or its base with the saved adapter on.
    A damaged file is an error naming it (the run's final checkpoint can write it again)."""
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    try:
        return _open(run_dir, cfg, device)
    except _DAMAGED as e:
        raise TunesmithError(f"{run_dir}: the saved model cannot be read ({type(e).__name__}: {str(e)[:200]}); "
                             f"write it again from the run's final checkpoint: tunesmith train --resume {run_dir}"
                             ) from None


def _open(run_dir: Path, cfg: RunConfig, device: str) -> OpenedRun:
    objective = build_objective(cfg)
    adapter_dir = run_dir / "adapter"
    if not (adapter_dir / "adapter_config.json").exists():
        if not (run_dir / "model").is_dir():
            raise TunesmithError(f"{run_dir} holds no model/ or adapter/: the run has not finished (continue it "
                                 f"with: tunesmith train --resume {run_dir})")
        saved = objective.load_saved(run_dir / "model", cfg)
        return OpenedRun(cfg, objective, saved.model.to(device).eval(), saved.tokenizer, saved.label_names)
    meta = json.loads((adapter_dir / "tunesmith.json").read_text())
    peft_type = json.loads((adapter_dir / "adapter_config.json").read_text()).get("peft_type")
    method = method_for_adapter(peft_type)
    if method is None:
        raise TunesmithError(f"{adapter_dir / 'adapter_config.json'}: peft_type {peft_type!r} is not one tunesmith "
                             "reads (LORA, PROMPT_TUNING)")
    loaded = objective.load_model(cfg, SimpleNamespace(label_names=meta["label_names"]))
    method.load(loaded, adapter_dir)
    objective.prepare_model(loaded.model)
    return OpenedRun(cfg, objective, loaded.model.to(device).eval(), loaded.tokenizer, meta["label_names"],
                     loaded, method)


def open_run(run_dir: str | Path, device: str = "cpu"):
    """(config, model in eval mode, tokenizer, label names) of a finished run."""
    opened = open_saved(run_dir, device)
    return opened.cfg, opened.model, opened.tokenizer, opened.label_names


def merge_run(run_dir: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Fold a LoRA run's adapter into its base: a plain model that needs no tunesmith."""
    from tunesmith.artifacts import save_model

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not (run_dir / "adapter" / "adapter_config.json").exists():
        raise TunesmithError(f"{run_dir}: no adapter/ to merge (only LoRA/DoRA runs have one)")
    if out_dir.exists() and not overwrite and any(out_dir.iterdir()):
        raise TunesmithError(f"{out_dir} already exists and is not empty; pass --overwrite to replace it")
    opened = open_saved(run_dir)
    save_model(opened.method().merged(opened.model), opened.loaded, out_dir)
    return out_dir


def _labelled_run(run_dir: str | Path) -> OpenedRun:
    opened = open_saved(run_dir)
    if not opened.objective.has_labels:
        raise TunesmithError(f"{run_dir} is a {opened.objective.name} run, which has no classes; "
                             f"use `tunesmith {opened.objective.command}`")
    return opened


def score(run_dir: str | Path, texts: list[str], prompt: str | None = None) -> list[float]:
    """A reward run's score of each text (each a completion of `prompt`, when given)."""
    opened = open_saved(run_dir)
    if not hasattr(opened.objective, "score"):
        raise TunesmithError(f"{run_dir} is a {opened.objective.name} run, not a reward model; use "
                             f"`tunesmith {opened.objective.command}`")
    from tunesmith.objectives import SavedRun

    saved = SavedRun(opened.model, opened.tokenizer, None)
    return opened.objective.score(saved, texts, prompt, opened.cfg)


def evaluate_file(run_dir: str | Path, data: str | Path, text_field: str | None = None,
                  label_field: str | None = None, batch_size: int = 64, skip_bad_rows: bool = False,
                  out: str | Path | None = None) -> dict[str, Any]:
    """Metrics of a finished run on a labelled file (image runs: also an image folder); with `out`,
    every example's prediction as JSON lines (where it came from, its label, the prediction)."""
    opened = _labelled_run(run_dir)
    objective, labels = opened.objective, opened.label_names
    examples, report = objective.load_labelled(data, labels, text_field, label_field, opened.cfg,
                                               skip_bad_rows=skip_bad_rows)
    items, stats = objective.encode(examples, opened.tokenizer, opened.cfg.model.max_length)
    sums = objective.eval_sums(opened.model, items, batch_size, getattr(opened.tokenizer, "pad_token_id", None),
                               torch.device("cpu"), len(labels))
    details = objective.details(sums, labels)
    result = {"data": str(data), "examples": len(items), **stats, "skipped": report.skipped,
              **objective.metrics(sums), "per_class": details["per_class"],
              "per_class_accuracy": details["accuracy"]}
    if out is not None:
        from tunesmith.atomic import write_text_atomic
        from tunesmith.objectives import SavedRun

        saved = SavedRun(opened.model, opened.tokenizer, labels)
        rows = objective.predict(saved, [objective.example_input(e) for e in examples], opened.cfg)
        lines = [json.dumps({"where": e.where, "label": labels[e.label], "predicted": row["label"],
                             "correct": row["label"] == labels[e.label], **row})
                 for e, row in zip(examples, rows, strict=True)]
        write_text_atomic(Path(out), "".join(line + "\n" for line in lines))
        result["predictions"] = str(out)
    return result


def read_inputs(run_dir: str | Path, path: str, field: str | None = None) -> list[str]:
    """Inputs to predict from a file: a .txt file line by line; a .jsonl/.csv/.tsv/.parquet file's
    `field` (default: the run's text or image-path column), each row checked."""
    from tunesmith.data.sources import detect_format, read_rows
    from tunesmith.errors import DataError

    try:
        detect_format(path)
        tabular = True
    except DataError:
        tabular = False
    if not tabular:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise TunesmithError(f"{path}: cannot read: {e}") from None
        return [line for line in lines if line.strip()]
    cfg = read_run_config(Path(run_dir))
    objective = build_objective(cfg)
    field = field or objective.input_field(cfg)
    out = []
    for row in read_rows(path, "auto"):
        value = row.values.get(field)
        if not isinstance(value, str) or not value.strip():
            have = ", ".join(map(repr, row.values)) or "no fields"
            raise TunesmithError(f"{row.where}: no text in field {field!r} (the row has {have}); pass --field")
        out.append(objective.resolve_input(value, Path(path)))
    return out


def predict(run_dir: str | Path, inputs: list[str], top_k: int = 3) -> tuple[list[dict[str, Any]], Objective]:
    """Predictions for texts (image runs: image files), and the objective that describes them."""
    opened = _labelled_run(run_dir)
    from tunesmith.objectives import SavedRun

    saved = SavedRun(opened.model, opened.tokenizer, opened.label_names)
    return opened.objective.predict(saved, inputs, opened.cfg, top_k), opened.objective
