"""Use a finished run: evaluate it on a labelled file, predict with it, or merge its adapter.

How a run's saved model is read, what its inputs are and how its predictions look belong to its
objective; how a saved adapter is put on the base model belongs to the method that wrote it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from safetensors import SafetensorError

from tunesmith.errors import TunesmithError
from tunesmith.methods import method_for_adapter
from tunesmith.objectives import Objective, build_objective
from tunesmith.rundir import read_run_config
from tunesmith.schema import RunConfig


@dataclass
class OpenedRun:
    cfg: RunConfig
    objective: Objective
    model: torch.nn.Module
    tokenizer: Any
    label_names: list[str] | None
    loaded: Any = None  # the LoadedModel, for an adapter run (base + adapter)
    method: Any = None  # the adapter's method class, for an adapter run
    prompt_format: str | None = None  # how its prompts were rendered in training (summary.json); None: unknown

    @property
    def saved(self):
        from tunesmith.objectives import SavedRun

        return SavedRun(self.model, self.tokenizer, self.label_names, self.prompt_format)


# what reading a truncated or corrupted saved model raises
_DAMAGED = (OSError, ValueError, RuntimeError, KeyError, EOFError, json.JSONDecodeError, SafetensorError)


def open_saved(run_dir: str | Path, device: str = "cpu") -> OpenedRun:
    """A finished run's model in eval mode: its saved model, or its base with the saved adapter on.
    A damaged file is an error naming it (the run's final checkpoint can write it again)."""
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir, for_training=False)
    try:
        opened = _open(run_dir, cfg, device)
    except _DAMAGED as e:
        where = _damaged_file(run_dir, e)
        raise TunesmithError(f"{where}: cannot be read ({type(e).__name__}: {str(e)[:200]}); the saved model is "
                             f"damaged; write it again from the run's final checkpoint: tunesmith train --resume "
                             f"{run_dir}") from None
    opened.prompt_format = recorded_prompt_format(run_dir)
    return opened


def _damaged_file(run_dir: Path, error: BaseException) -> Path:
    """The saved file a read failed on: the one the error names, else the run's weights file."""
    text = str(error)
    folder = run_dir / ("adapter" if (run_dir / "adapter" / "adapter_config.json").exists() else "model")
    files = sorted(p for p in folder.glob("*") if p.is_file()) if folder.is_dir() else []
    named = [p for p in files if str(p) in text or p.name in text]
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".pth")]
    return (named or weights or [folder])[0]


def recorded_prompt_format(run_dir: Path) -> str | None:
    """How a finished run rendered its prompts (summary.json), None for runs from before it was kept."""
    try:
        return json.loads((run_dir / "summary.json").read_text()).get("prompt_format")
    except (OSError, ValueError, AttributeError):
        return None


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
    _keep_saved_template(loaded.tokenizer, adapter_dir)
    method.load(loaded, adapter_dir)
    objective.prepare_model(loaded.model)
    return OpenedRun(cfg, objective, loaded.model.to(device).eval(), loaded.tokenizer, meta["label_names"],
                     loaded, method)


def _keep_saved_template(tokenizer: Any, adapter_dir: Path) -> None:
    """The chat template the run trained with, as its saved tokenizer holds it (data.chat_template's file
    may be gone, or relative to another working directory)."""
    from tunesmith.data.chat import saved_template

    template = saved_template(adapter_dir)
    if template is not None and hasattr(tokenizer, "chat_template"):
        tokenizer.chat_template = template


def open_generator(name: str | Path, option: str = "model") -> tuple[torch.nn.Module, Any, str | None]:
    """(model in eval mode, tokenizer, the prompt format it was trained with) of a run that generates,
    a built-in causal LM's name or a local HF directory (whose prompt format is not known: None)."""
    if (Path(name) / "config.yaml").exists():
        opened = open_saved(name)
        if not opened.objective.generates:
            raise TunesmithError(f"{option} {name}: a {opened.objective.name} run does not generate text; use "
                                 f"`tunesmith {opened.objective.command}`")
        return opened.model, opened.tokenizer, opened.prompt_format
    from tunesmith.models import load_causal_lm

    loaded = load_causal_lm(str(name), 0)
    return loaded.model.eval(), loaded.tokenizer, None


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
    from tunesmith.card import write_model_card

    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else None
    write_model_card(out_dir, opened.cfg, opened.objective, summary, merged_from=run_dir)
    return out_dir


def _labelled_run(run_dir: str | Path) -> OpenedRun:
    opened = open_saved(run_dir)
    if not opened.objective.has_labels:
        raise TunesmithError(f"{run_dir} is a {opened.objective.name} run, which has no classes; "
                             f"use `tunesmith {opened.objective.command}`")
    return opened


def _scoring_run(run_dir: str | Path) -> OpenedRun:
    opened = open_saved(run_dir)
    if not hasattr(opened.objective, "score"):
        raise TunesmithError(f"{run_dir} is a {opened.objective.name} run, not a reward model; use "
                             f"`tunesmith {opened.objective.command}`")
    return opened


def score(run_dir: str | Path, texts: list[str], prompt: str | None = None) -> list[float]:
    """A reward run's score of each text (each a completion of `prompt`, when given)."""
    opened = _scoring_run(run_dir)
    return opened.objective.score(opened.saved, texts, prompt, opened.cfg)


def score_file(run_dir: str | Path, path: str | Path, field: str | None = None) -> tuple[list[dict], dict]:
    """`score --file` on a table (.jsonl/.csv/.tsv/.parquet), read by its columns: preference pairs
    (prompt, chosen, rejected) get both rewards, the margin and, over the file, the pairwise accuracy;
    other rows get the reward of their `field` (default: text; or completion, of its row's prompt)."""
    from tunesmith.data.sources import read_rows

    opened = _scoring_run(run_dir)
    rows = read_rows(path, "auto")
    if field is None and any("chosen" in r.values or "rejected" in r.values for r in rows):
        from tunesmith.data.prefs import load_pref_file

        examples, _ = load_pref_file(str(path), paired=True)
        items, stats = opened.objective.encode(examples, opened.tokenizer, opened.cfg.model.max_length)
        scored = opened.objective.eval_rows(opened.saved, examples, items, opened.cfg)
        for row, e in zip(scored, examples, strict=True):
            row["prompt"] = e.prompt
        n = len(scored)
        return scored, {"file": str(path), "pairs": n, "accuracy": sum(r["correct"] for r in scored) / n,
                        "mean_margin": sum(r["margin"] for r in scored) / n, **stats}
    name = field or ("text" if all("text" in r.values for r in rows) else "completion")
    out = []
    for row in rows:
        value, prompt = row.values.get(name), row.values.get("prompt") if name == "completion" else None
        if not isinstance(value, str) or not value.strip():
            have = ", ".join(map(repr, row.values)) or "no fields"
            raise TunesmithError(f"{row.where}: no text in field {name!r} (the row has {have}); pass --field, or give "
                                 "rows with prompt, chosen, rejected")
        if prompt is not None and not isinstance(prompt, str):
            raise TunesmithError(f"{row.where}: field 'prompt' must be text to score a completion of it")
        reward = opened.objective.score(opened.saved, [value], prompt, opened.cfg)[0]
        out.append({"where": row.where, **({"prompt": prompt} if prompt is not None else {}), "text": value,
                    "reward": reward})
    return out, {"file": str(path), "texts": len(out)}


def evaluate_file(run_dir: str | Path, data: str | Path, text_field: str | None = None,
                  label_field: str | None = None, batch_size: int = 64, skip_bad_rows: bool = False,
                  out: str | Path | None = None) -> dict[str, Any]:
    """Metrics of a finished run on a file of what its objective evaluates on (a labelled file, image
    folder, or preference pairs); with `out`, one JSON line per example (where it came from and what the
    run made of it)."""
    opened = open_saved(run_dir)
    objective, labels = opened.objective, opened.label_names
    if not objective.eval_file:
        raise TunesmithError(f"{run_dir} is a {objective.name} run, which `eval` does not evaluate; use "
                             f"`tunesmith {objective.command}`")
    examples, report = objective.load_labelled(data, labels, text_field, label_field, opened.cfg,
                                               skip_bad_rows=skip_bad_rows)
    fmt = objective.prompt_format(SimpleNamespace(train=examples))
    if fmt and opened.prompt_format and fmt != opened.prompt_format:
        print(f"warning: {data}: its prompts are {fmt} but the run trained on {opened.prompt_format} prompts, so "
              "these metrics measure a format the model never saw", file=sys.stderr, flush=True)
    items, stats = objective.encode(examples, opened.tokenizer, opened.cfg.model.max_length)
    objective.begin_eval(opened.saved, items, opened.cfg)
    sums = objective.eval_sums(opened.model, items, batch_size, getattr(opened.tokenizer, "pad_token_id", None),
                               torch.device("cpu"), len(labels or []))
    details = objective.details(sums, labels)
    result = {"data": str(data), "examples": len(items), **stats, "skipped": report.skipped, **objective.metrics(sums)}
    if "per_class" in details:
        result |= {"per_class": details["per_class"], "per_class_accuracy": details["accuracy"]}
    if out is not None:
        from tunesmith.atomic import write_text_atomic

        rows = objective.eval_rows(opened.saved, examples, items, opened.cfg)
        write_text_atomic(Path(out), "".join(json.dumps(row) + "\n" for row in rows))
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
    return opened.objective.predict(opened.saved, inputs, opened.cfg, top_k), opened.objective
