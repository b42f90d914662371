"""Where training metrics go besides RUN_DIR/metrics.jsonl (always written): `train.report_to`.

One small module per tracker, registered below by name. A module imports its tracker's package only when
a run starts it, so trackers that are not used cost nothing; whether one is installed is asked at config
time, and a missing one is an error naming the pip extra. Each module has:

    missing() -> str | None            what is not installed (a message), or None
    start(run_dir, config, kept, say)  -> (reporter, what to keep to continue this tracker's run)

and a reporter has `log(metrics, step)`, `close(status)` (finished | failed | killed) and `durable`
(whether what it was sent survives the process being killed; see MetricsLog for why it matters).

Only the main process reports. The ids a tracker needs to continue its run (wandb's run id, MLflow's)
are kept in RUN_DIR/report_to.json, so a resumed run continues the same tracker run instead of opening a
new one. A tracker failing while training does not stop the run: it is said once and that tracker is
dropped; metrics.jsonl has every line.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from tunesmith.atomic import write_json_atomic
from tunesmith.errors import Interrupted, TunesmithError

# name -> the module in this package that reports to it (imported only when used)
REPORTERS: dict[str, str] = {
    "tensorboard": "tensorboard_log",
    "wandb": "wandb_log",
    "mlflow": "mlflow_log",
}
KEPT_FILE = "report_to.json"


class Reporter(Protocol):
    # what it was sent is kept even when the process is killed (written at once): a resumed run does not
    # send again the lines the killed attempt had sent
    durable: bool

    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def close(self, status: str) -> None: ...


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"{__name__}.{REPORTERS[name]}")


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def report_to_problem(name: str) -> str | None:
    """Why `name` cannot be reported to here: unknown, or its package is not installed."""
    if name not in REPORTERS:
        return f"{name!r} is not one of {', '.join(REPORTERS)}"
    return _module(name).missing()


def numbers(record: dict[str, Any]) -> dict[str, float]:
    """What a tracker can plot: the numbers of a metrics line, without its step."""
    return {k: float(v) for k, v in record.items()
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)}


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """train.lr-style keys, as trackers with flat parameters (MLflow) want them."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out |= flat_config(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


class Reporting:
    """The run's trackers: started once per run (on the main process), fed every metrics line with its
    step counted across stages, closed when the run ends however it ends (use it as a context manager)."""

    def __init__(self, names: list[str], run_dir: Path, say: Callable[[str], None]) -> None:
        self.names, self.run_dir, self.say = list(names), run_dir, say
        self.active: dict[str, Reporter] = {}

    def start(self, config: dict[str, Any], continuing: bool) -> None:
        """`continuing`: the run resumes from a checkpoint, so each tracker continues its own run."""
        kept_path = self.run_dir / KEPT_FILE
        kept: dict[str, Any] = {}
        if continuing and kept_path.exists():
            try:
                kept = json.loads(kept_path.read_text())
            except ValueError:
                kept = {}
        for name in self.names:
            try:
                reporter, keep = _module(name).start(self.run_dir, config, kept.get(name), self.say)
            except Exception as e:  # a server that cannot be reached, a store that cannot be written
                raise TunesmithError(f"train.report_to: {name} could not start its run: {type(e).__name__}: "
                                     f"{str(e)[:500]}") from e
            self.active[name] = reporter
            kept[name] = keep
        if self.names:
            write_json_atomic(kept_path, kept)

    def log(self, record: dict[str, Any], step: int, again: bool = False) -> None:
        """`again`: a line an earlier attempt of this run (killed, or paused) had sent (see MetricsLog)."""
        metrics = numbers(record)
        if not metrics:
            return
        for name, reporter in list(self.active.items()):
            if again and reporter.durable:
                continue
            try:
                reporter.log(metrics, step)
            except Exception as e:  # a tracker's outage must not end hours of training
                self.say(f"warning: train.report_to {name}: logging failed ({type(e).__name__}: {e}); no more "
                         f"metrics go to {name} in this run (metrics.jsonl has them all)")
                self.active.pop(name)

    def at(self, offset: int) -> Callable[[dict[str, Any], bool], None]:
        """What one stage's MetricsLog reports to: its steps counted on from `offset` (the steps of the
        stages before it), so a tracker sees one run whose steps only grow."""
        return lambda line, again: self.log(line, line["step"] + offset, again)

    def close(self, status: str = "finished") -> None:
        for name, reporter in self.active.items():
            try:
                reporter.close(status)
            except Exception as e:
                self.say(f"warning: train.report_to {name}: closing its run failed ({type(e).__name__}: {e})")
        self.active = {}

    def __enter__(self) -> Reporting:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: Any) -> None:
        self.close("finished" if kind is None else "killed" if isinstance(error, Interrupted | KeyboardInterrupt)
                   else "failed")

