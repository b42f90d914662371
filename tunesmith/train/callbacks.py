"""Callbacks: code a recipe runs at fixed points of the loop, with state that checkpoints carry.

A callback that changes what training sees (relabeling every T steps, a KL controller, running reward
statistics) must resume exactly: whatever it keeps goes in `state_dict()`, which every checkpoint saves
(torch-saved, read back with weights_only=True: tensors, numbers, strings, lists and dicts), and
`load_state_dict()` gets it back before the first resumed step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunesmith.train.step import StepOutput
    from tunesmith.train.task import TrainerView as Trainer


class Callback:
    @property
    def key(self) -> str:
        """Its name in a checkpoint; two callbacks of one class need distinct keys."""
        return type(self).__name__

    def on_train_start(self, trainer: Trainer) -> None:
        """After the optimizer is built and any checkpoint restored, before the first step."""

    def on_step_end(self, trainer: Trainer, output: StepOutput) -> dict[str, float] | None:
        """After each optimizer step (trainer.step already counts it); metrics returned are logged."""
        return None

    def on_evaluate(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """After each evaluation during training."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
