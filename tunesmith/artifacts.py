"""What a finished run leaves for its users: the trained model (or adapter), summary.json and the plots.

The saved artifact holds everything that was trained. A run whose only learning happened in an adapter
(with its head and modules_to_save) saves the adapter in PEFT's format beside the untouched base; once
any stage changed pretrained weights in place (full, freeze, bitfit), an adapter alone would lose them,
so the adapter is folded into the weights and the whole model is saved.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from tunesmith.atomic import write_json_atomic, write_text_atomic
from tunesmith.methods import Method
from tunesmith.models import LoadedModel, save_hf_model
from tunesmith.models.registry import hub_id
from tunesmith.objectives import Objective
from tunesmith.schema import RunConfig


def saved_as_adapter(methods: list[Method]) -> Method | None:
    """The adapter method whose adapter holds all that was trained, or None: save the whole model."""
    adapters = [m for m in methods if m.adapter]
    if adapters and not any(m.trains_base for m in methods):
        return adapters[0]
    return None


def save_trained(model: nn.Module, loaded: LoadedModel, methods: list[Method], run_dir: Path,
                 meta: dict[str, Any]) -> Path:
    """RUN_DIR/adapter (PEFT format + tokenizer + tunesmith.json) or RUN_DIR/model; returns which."""
    adapter = saved_as_adapter(methods)
    if adapter is not None:
        out = run_dir / "adapter"
        # adapter_config.json names the base as others find it (a built-in model's Hub id); the local copy
        # it was trained on stays in tunesmith.json (tunesmith itself loads the base from the run's config)
        adapter.save(model, out, base=hub_id(str(meta.get("model", ""))) or loaded.source,
                     extra_files={"tunesmith.json": meta | {"base_source": loaded.source}})
        loaded.tokenizer.save_pretrained(out)
        for export in loaded.adapter_exports:
            export(out)
        return out
    for method in methods:
        model = method.merged(model)  # adapters trained alongside base weights: folded in
    return save_model(model, loaded, run_dir / "model")


def save_model(model: nn.Module, loaded: LoadedModel, out_dir: Path) -> Path:
    """The whole model in its family's format: Hugging Face, or the image model's own."""
    if loaded.save is not None:
        loaded.save(model, out_dir)
    else:
        save_hf_model(model, loaded.tokenizer, out_dir)
    return out_dir


def write_report(run_dir: Path, summary: dict[str, Any], details: dict[str, Any], objective: Objective,
                 label_names: list[str] | None, cfg: RunConfig | None = None) -> None:
    """summary.json, the objective's outputs, the plots, and the saved model's README.md card (which
    quotes the final metrics, so it is written here rather than when the weights are saved)."""
    from tunesmith.report.plots import plot_final_accuracy, plot_run

    write_json_atomic(run_dir / "summary.json", summary)
    if cfg is not None:
        from tunesmith.card import write_run_card

        write_run_card(run_dir, cfg, summary, objective)
    for name, rows in objective.outputs.items():
        write_text_atomic(run_dir / name, "".join(json.dumps(row) + "\n" for row in rows))
    plot_run(run_dir)
    plot_final_accuracy(summary["final"], run_dir / "plots" / "accuracy.png")
    objective.plots(details, label_names, run_dir / "plots")


def final_line(run_dir: Path, final: dict[str, float]) -> str:
    return f"run written to {run_dir}: " + json.dumps({k: round(v, 4) for k, v in final.items()})
