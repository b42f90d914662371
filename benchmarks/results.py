"""What every result-table benchmark ends with: the machine line printed beside its figures, and the
table and raw rows written to OUT/results.md and OUT/results.json."""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch


def machine_line() -> str:
    return (f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
            f"python {platform.python_version()}")


def save_results(out: Path, table: str, machine: str, args: argparse.Namespace, rows: list[dict],
                 **extra: object) -> None:
    """Prints the table and writes it, with the rows and the settings, under `out`."""
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({"machine": machine, "args": vars(args), "rows": rows} | extra,
                                                 indent=2))
