"""Shared test helpers: run the CLI in a subprocess, read saved weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def cli(*args: str, env: dict | None = None, timeout: int = 300, cwd: Path | None = None,
        module: str = "tunesmith") -> subprocess.CompletedProcess:
    full_env = os.environ | {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"} | (env or {})
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=full_env,
                          timeout=timeout, cwd=cwd)


def model_weights(run_dir: Path) -> dict:
    return load_file(str(run_dir / "model" / "model.safetensors"))
