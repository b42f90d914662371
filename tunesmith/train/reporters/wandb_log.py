"""Weights & Biases: one W&B run per tunesmith run, its files in RUN_DIR/wandb.

The mode is the user's (WANDB_MODE, `wandb online` / `wandb offline`); where it is not set and no API key
is found (WANDB_API_KEY, `wandb login`'s netrc entry), the run logs offline rather than stopping to ask
for one, and says how to upload it. WANDB_PROJECT (default tunesmith), WANDB_ENTITY and WANDB_NAME
(default: the run directory's name) are read as wandb reads them. A resumed tunesmith run continues the
same W&B run (its id is kept in RUN_DIR/report_to.json).
"""

from __future__ import annotations

import netrc
import os
import secrets
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tunesmith.train.reporters import installed


def missing() -> str | None:
    return None if installed("wandb") else "needs wandb, which is not installed: pip install 'tunesmith[wandb]'"


def has_credentials() -> bool:
    """An API key wandb would find without asking: the environment or `wandb login`'s netrc entry."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _new_id() -> str:
    """Eight lower-case letters and digits, as wandb's own ids."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


class WandbRun:
    # wandb's service process dies with a killed run, losing what it had not written yet: a resumed run
    # sends every line again, and the steps the W&B server already has are skipped here (offline, the
    # folders of the attempts overlap, and `wandb sync` keeps each step once)
    durable = False

    def __init__(self, run: Any) -> None:
        self.run = run

    def log(self, metrics: dict[str, float], step: int) -> None:
        if step >= getattr(self.run, "step", 0):  # wandb refuses (and warns about) steps below its own
            self.run.log(metrics, step=step)

    def close(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "finished" else 1)


def start(run_dir: Path, config: dict[str, Any], kept: dict[str, Any] | None,
          say: Callable[[str], None]) -> tuple[WandbRun, dict[str, Any]]:
    import wandb

    mode = None  # wandb's own choice: WANDB_MODE, or its settings
    if not os.environ.get("WANDB_MODE") and not has_credentials():
        mode = "offline"
        say(f"wandb: no W&B API key (WANDB_API_KEY or `wandb login`), so it logs offline to {run_dir / 'wandb'}; "
            f"upload later with: wandb sync {run_dir / 'wandb'}/offline-run-*")
    run_id = (kept or {}).get("id") or os.environ.get("WANDB_RUN_ID") or _new_id()
    run = wandb.init(project=os.environ.get("WANDB_PROJECT") or "tunesmith",
                     name=os.environ.get("WANDB_NAME") or run_dir.resolve().name, id=run_id, resume="allow",
                     dir=str(run_dir), config=config, mode=mode, allow_val_change=True)
    return WandbRun(run), {"id": run.id}
