"""MLflow: one MLflow run per tunesmith run, with the config as its parameters.

It logs to MLFLOW_TRACKING_URI when that is set (a server, a database, Databricks); else to a SQLite
store in the run directory, RUN_DIR/mlflow.db (MLflow's own default is a mlflow.db in the working
directory; the file-system store is deprecated by MLflow 3): `mlflow ui --backend-store-uri
sqlite:///RUN_DIR/mlflow.db`. MLFLOW_EXPERIMENT_NAME (default tunesmith) or MLFLOW_EXPERIMENT_ID picks
the experiment. A resumed tunesmith run continues the same MLflow run (its id is kept in
RUN_DIR/report_to.json).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunesmith.train.reporters import flat_config, installed

STATUS = {"finished": "FINISHED", "failed": "FAILED", "killed": "KILLED"}
PARAM_CHARS = 500  # the longest parameter value every MLflow server takes


def missing() -> str | None:
    if not installed("mlflow"):
        return "needs mlflow, which is not installed: pip install 'tunesmith[mlflow]'"
    if not os.environ.get("MLFLOW_TRACKING_URI") and not (installed("sqlalchemy") and installed("alembic")):
        return ("with MLFLOW_TRACKING_URI unset it logs to RUN_DIR/mlflow.db, which needs sqlalchemy and alembic: "
                "pip install 'tunesmith[mlflow]' (or set MLFLOW_TRACKING_URI)")
    return None


def _params(config: dict[str, Any]) -> dict[str, str]:
    out = {}
    for key, value in flat_config(config).items():
        text = "" if value is None else str(value)
        out[key] = text if len(text) <= PARAM_CHARS else text[: PARAM_CHARS - 3] + "..."
    return out


class MlflowRun:
    durable = True  # each line is one request, stored when it returns
    def __init__(self, client: Any, run_id: str) -> None:
        self.client, self.run_id = client, run_id

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, STATUS.get(status, "FAILED"))


def _experiment(client: Any, local: Path | None) -> str:
    if os.environ.get("MLFLOW_EXPERIMENT_ID"):
        return os.environ["MLFLOW_EXPERIMENT_ID"]
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "tunesmith"
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    # a local store keeps its (unused) artifact folder beside it, not in the working directory
    return client.create_experiment(name, artifact_location=None if local is None else (local / "mlartifacts").as_uri())


def start(run_dir: Path, config: dict[str, Any], kept: dict[str, Any] | None,
          say: Callable[[str], None]) -> tuple[MlflowRun, dict[str, Any]]:
    from mlflow import MlflowClient
    from mlflow.entities import Param

    local = None if os.environ.get("MLFLOW_TRACKING_URI") else run_dir.resolve()
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{local / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    if kept and kept.get("tracking_uri") == uri:
        client.update_run(kept["run_id"], status="RUNNING")
        return MlflowRun(client, kept["run_id"]), kept
    if kept:
        say(f"mlflow: MLFLOW_TRACKING_URI is now {uri} (the run began at {kept.get('tracking_uri')}), so the resumed "
            "run is a new MLflow run there")
    run = client.create_run(_experiment(client, local), run_name=run_dir.resolve().name,
                            tags={"tunesmith.run_dir": str(run_dir.resolve())})
    params = [Param(k, v) for k, v in _params(config).items()]
    for at in range(0, len(params), 100):  # MLflow takes at most 100 parameters per request
        client.log_batch(run.info.run_id, params=params[at : at + 100])
    return MlflowRun(client, run.info.run_id), {"run_id": run.info.run_id, "tracking_uri": uri}
