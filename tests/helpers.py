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


def torchrun(n: int, *args: str, env: dict | None = None, script: str | None = None,
             timeout: int = 300) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=n` of `python -m tunesmith ARGS` (or of `script ARGS`), one
    thread per process."""
    head = ["--standalone", f"--nproc_per_node={n}"] + ([script] if script else ["-m", "tunesmith"])
    return cli(*head, *args, module="torch.distributed.run",
               env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)} | (env or {}), timeout=timeout)


def model_weights(run_dir: Path) -> dict:
    return load_file(str(run_dir / "model" / "model.safetensors"))
