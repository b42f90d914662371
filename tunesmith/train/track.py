"""metrics.jsonl (one JSON object per log step and evaluation), each line also handed to the run's
trackers (`train.report_to`, train/reporters/) when it has any."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    return value


def _key(record: dict[str, Any]) -> tuple[Any, tuple[str, ...]]:
    return record.get("step"), tuple(sorted(record))


class MetricsLog:
    """Append-only metrics file. On resume it is cut back to the checkpoint's step, so a killed run
    leaves no lines for steps that are about to be trained again.

    `report(line, again)` gets every line, before it is written (a line a killed run wrote was reported).
    `again`: an earlier attempt of the run sent the line already: on resume, the lines kept are sent
    again at once, and the lines cut are trained again with the same values (resuming is exact). A
    tracker that keeps what it was sent skips them, so its history has each step once; one whose unsent
    lines died with a killed process (wandb's service) takes them and skips the steps it has."""

    def __init__(self, run_dir: Path, enabled: bool = True, resume_step: int | None = None,
                 report: Callable[[dict[str, Any], bool], None] | None = None) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.report = report
        self._reported: set[tuple[Any, tuple[str, ...]]] = set()
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            lines = [(line, json.loads(line)) for line in self.path.read_text().splitlines() if line.strip()]
            self._reported = {_key(r) for _, r in lines if r.get("step", 0) > resume_step}
            self.path.write_text("".join(line + "\n" for line, r in lines if r.get("step", 0) <= resume_step))
            for _, r in lines:
                if report is not None and r.get("step", 0) <= resume_step:
                    report(r, True)
        elif resume_step is None:
            self.path.write_text("")

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self.report is not None:
            key = _key(record)
            again = key in self._reported
            self._reported.discard(key)
            self.report(record, again)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")

    def close(self) -> None:
        """Nothing to release: trackers belong to the run (train/reporters), not to one stage's log."""


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
