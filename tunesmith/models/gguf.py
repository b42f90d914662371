"""Models that ship only as GGUF: dequantise once into a plain Hugging Face folder kept in a user cache.

Training needs ordinary float weights in the HF layout; transformers can read GGUF but dequantises on every
load (~30 s) and marks the model as quantised. Converting once and reusing the folder makes later loads ~1 s.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from tunesmith.atomic import atomic_dir, leftovers
from tunesmith.errors import TunesmithError
from tunesmith.models.assets import packaged_path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; a single process is still safe (the rename is atomic)
    fcntl = None

SOURCE_FILE = "tunesmith_source.json"
CONVERTER_VERSION = 1  # bump when the conversion changes, so old cache folders are rebuilt
DTYPES = ("float32", "bfloat16", "float16")


def cache_root() -> Path:
    """$TUNESMITH_CACHE, else ~/.cache/tunesmith: converted models live under <root>/models/<name>."""
    return Path(os.environ.get("TUNESMITH_CACHE") or Path.home() / ".cache" / "tunesmith").expanduser()


def _source_record(gguf_path: Path, dtype: str) -> dict:
    st = gguf_path.stat()
    return {"source": str(gguf_path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "dtype": dtype,
            "converter": CONVERTER_VERSION}


def _say(message: str) -> None:
    print(f"tunesmith: {message}", file=sys.stderr, flush=True)


def is_current(out_dir: Path, gguf_path: Path, dtype: str = "float32") -> bool:
    """True when out_dir is a finished conversion of this very file (same path, size, mtime) in `dtype`."""
    try:
        recorded = json.loads((out_dir / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return False
    has_weights = any(out_dir.glob("*.safetensors"))
    return has_weights and (out_dir / "config.json").exists() and recorded == _source_record(gguf_path, dtype)


def convert_gguf_to_hf(gguf_path: Path, out_dir: Path, dtype: str = "float32") -> Path:
    """Dequantise `gguf_path` into out_dir (config, safetensors, tokenizer), atomically.

    Everything is written to a temp dir beside out_dir and renamed into place, so a killed conversion leaves
    no half model; a leftover temp dir is removed first. Not safe against a concurrent call for the same
    out_dir: cached_conversion holds a lock around it.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise TunesmithError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise TunesmithError(f"GGUF file {gguf_path} does not exist")
    record = _source_record(gguf_path, dtype)  # before reading, so a file changed meanwhile is redone next time
    torch_dtype = getattr(torch, dtype)
    where, name = gguf_path.parent, gguf_path.name
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    _say(f"converting {name} to a plain Hugging Face folder {out_dir} "
         "(once, under a minute on 2 CPU cores; later loads reuse it)")

    _say("[1/3] reading GGUF metadata and tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name, local_files_only=True)
    if tokenizer.pad_token is None:  # causal LMs often define none; eos is the usual stand-in
        tokenizer.pad_token = tokenizer.eos_token

    _say(f"[2/3] dequantising weights to {dtype} ({time.perf_counter() - start:.0f} s so far)")
    try:
        loaded = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch_dtype, local_files_only=True)
    except (OSError, ValueError) as e:
        raise TunesmithError(f"cannot read {gguf_path} as a causal LM: {e}") from None
    # The GGUF-loaded model remembers it came from a quantised file; a fresh model built from the cleaned
    # config saves and trains like any other HF checkpoint. strict=True proves no weight was lost on the way.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.pad_token_id = tokenizer.pad_token_id
    model = AutoModelForCausalLM.from_config(config).to(torch_dtype)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.tie_weights()
    model.generation_config = loaded.generation_config
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    del loaded

    _say(f"[3/3] writing safetensors and tokenizer to {out_dir} ({time.perf_counter() - start:.0f} s so far)")
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)  # safetensors (the default since transformers 4.35)
        # chat template inside tokenizer_config.json (not v5's chat_template.jinja): older transformers read it too
        tokenizer.save_pretrained(tmp, save_jinja_files=False)
        (tmp / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    _say(f"converted in {time.perf_counter() - start:.1f} s")
    return out_dir


@contextmanager
def _locked(lock_path: Path):
    """Exclusive lock across processes (e.g. torchrun ranks), released when the holder dies."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_UN)


def cached_conversion(gguf_path: Path, name: str, dtype: str = "float32") -> Path:
    """<cache>/models/<name>, converted from gguf_path on first use and whenever the source file changes."""
    gguf_path = Path(gguf_path)
    out_dir = cache_root() / "models" / name
    stale = leftovers(out_dir)  # from a killed conversion
    if is_current(out_dir, gguf_path, dtype) and not any(p.exists() for p in stale):
        return out_dir  # the folder only appears complete (by rename): no lock needed to read it
    with _locked(out_dir.with_name(name + ".lock")):
        if not is_current(out_dir, gguf_path, dtype):  # another process may have converted while we waited
            convert_gguf_to_hf(gguf_path, out_dir, dtype)
        for path in stale:  # nobody else converts while we hold the lock
            shutil.rmtree(path, ignore_errors=True)
    return out_dir


def packaged_gguf(distribution: str, relative: str, install_hint: str, name: str) -> Callable[[], Path]:
    """A registry `locate` for a GGUF file shipped inside a package: its converted folder in the cache."""
    return lambda: cached_conversion(packaged_path(distribution, relative, install_hint), name)
