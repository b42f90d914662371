"""Export a finished run for use outside tunesmith: one GGUF file (llama.cpp, Ollama, LM Studio) or a plain
Hugging Face folder.

A LoRA/DoRA run is merged into its base first, by the same fold `tunesmith merge` does, so the export
needs neither PEFT nor the base model. Nothing appears at OUT until it is complete: the export is written
under a hidden temp name beside OUT and renamed into place.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tunesmith.atomic import atomic_dir, temp_path
from tunesmith.errors import TunesmithError
from tunesmith.export.gguf_llama import GGUF_DTYPES, unsupported, write_llama_gguf

FORMATS = ("gguf", "hf")

__all__ = ["FORMATS", "GGUF_DTYPES", "export_run"]


def export_run(run_dir: str | Path, out: str | Path, format: str = "gguf", dtype: str | None = None,
               overwrite: bool = False) -> Path:
    """Write a finished run's model to `out`; returns `out`.

    format "gguf": one .gguf file (`out` must end in .gguf) for a Llama-family causal-LM run (full, or LoRA
    merged first); `dtype` f32, f16 (default) or q8_0. Other model families are an error naming them.
    format "hf": a folder from_pretrained reads (safetensors, config, tokenizer, the model card) for any
    run; runs of image models get their model's own saved format. The weights are written as the run holds them, so `dtype`
    must stay None.
    An existing `out` is refused unless `overwrite`.
    """
    run_dir, out = Path(run_dir), Path(out)
    if format not in FORMATS:
        raise TunesmithError(f"format {format!r} is not one tunesmith exports; use one of {', '.join(FORMATS)}")
    if not (run_dir / "config.yaml").is_file():
        raise TunesmithError(f"{run_dir} is not a tunesmith run directory (no config.yaml)")
    _check_out(run_dir, out, format, overwrite)
    if format == "hf":
        if dtype is not None:
            raise TunesmithError(f"--dtype {dtype} applies to --format gguf; --format hf writes the weights as the "
                                 "run holds them")
        _export_hf(run_dir, out)
    else:
        dtype = dtype or "f16"
        if dtype not in GGUF_DTYPES:
            raise TunesmithError(f"--dtype {dtype!r} is not one GGUF export writes; use one of "
                                 f"{', '.join(GGUF_DTYPES)}")
        _export_gguf(run_dir, out, dtype)
    return out


def _check_out(run_dir: Path, out: Path, format: str, overwrite: bool) -> None:
    run, target = run_dir.resolve(), out.resolve()
    if target == run or target in run.parents or any(target.is_relative_to(run / d) for d in ("model", "adapter")):
        raise TunesmithError(f"{out} would replace the run (or what it reads from {run_dir}); export somewhere else")
    if format == "gguf":
        if out.suffix.lower() != ".gguf":
            raise TunesmithError(f"{out}: a GGUF export is one file; name it with .gguf, e.g. {out.name}.gguf "
                                 "(llama.cpp, Ollama and LM Studio find models by that suffix)")
        if out.is_dir():
            raise TunesmithError(f"{out} is a folder; name the .gguf file to write")
        if out.exists() and not overwrite:
            raise TunesmithError(f"{out} already exists; pass --overwrite to replace it")
        return
    if out.exists() and not out.is_dir():
        raise TunesmithError(f"{out} is a file; --format hf writes a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise TunesmithError(f"{out} already exists and is not empty; pass --overwrite to replace it")


def _export_hf(run_dir: Path, out: Path) -> None:
    if (run_dir / "adapter" / "adapter_config.json").exists():
        from tunesmith.infer import merge_run

        merge_run(run_dir, out, overwrite=True)  # `out` was checked above; merge_run writes it atomically
        return
    saved = run_dir / "model"
    if not saved.is_dir():
        raise TunesmithError(f"{run_dir} holds no model/ or adapter/: the run has not finished (continue it with: "
                             f"tunesmith train --resume {run_dir})")
    with atomic_dir(out) as tmp:  # the run's own saved model, in whatever format its family saves
        shutil.copytree(saved, tmp, dirs_exist_ok=True)


def _export_gguf(run_dir: Path, out: Path, dtype: str) -> None:
    from tunesmith.infer import open_saved

    opened = open_saved(run_dir)
    model = opened.model
    if opened.method is not None:
        model = opened.method().merged(model)  # the fold `tunesmith merge` writes
    problem = unsupported(model)
    if problem:
        raise TunesmithError(f"{run_dir}: {problem}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(out)
    try:
        write_llama_gguf(model, opened.tokenizer, tmp, dtype, name=run_dir.resolve().name)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
