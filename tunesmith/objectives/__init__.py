"""What is learned: an objective turns a batch into a loss. One file + one line here."""

from types import ModuleType

from tunesmith.objectives import classify

# Each objective module provides: DESCRIPTION, encode, collate, count, loss_sum, eval_sums, metrics.
OBJECTIVES: dict[str, ModuleType] = {
    "classify": classify,
}

__all__ = ["OBJECTIVES"]
