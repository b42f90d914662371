"""TensorBoard event files in RUN_DIR/tensorboard: `tensorboard --logdir RUN_DIR/tensorboard`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunesmith.train.reporters import installed


def missing() -> str | None:
    if installed("tensorboard"):
        return None
    return "needs the tensorboard package, which is not installed: pip install 'tunesmith[tensorboard]'"


class TensorBoard:
    durable = True  # flushed after each line
    def __init__(self, run_dir: Path, config: dict[str, Any], fresh: bool) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        if fresh:
            import yaml

            self.writer.add_text("config", "```yaml\n" + yaml.safe_dump(config, sort_keys=False) + "```", 0)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()  # at once, not every 2 minutes: a killed run keeps what it logged

    def close(self, status: str) -> None:
        self.writer.close()


def start(run_dir: Path, config: dict[str, Any], kept: dict[str, Any] | None,
          say: Callable[[str], None]) -> tuple[TensorBoard, dict[str, Any]]:
    return TensorBoard(run_dir, config, fresh=kept is None), {}
