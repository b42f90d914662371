"""What is learned: an objective turns a batch into a loss. One file with an Objective subclass + one line here.

See objectives/base.py for what an objective provides and docs/architecture.md for a walk-through.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunesmith.objectives.base import Loss, Objective, ObjectiveConfig, SavedRun
from tunesmith.objectives.causal_lm import CausalLM
from tunesmith.objectives.classify import Classify
from tunesmith.objectives.diffusion import Diffusion
from tunesmith.objectives.dpo import DPO
from tunesmith.objectives.grpo import GRPO, RLOO
from tunesmith.objectives.image_classify import ImageClassify
from tunesmith.objectives.kto import KTO
from tunesmith.objectives.orpo import ORPO
from tunesmith.objectives.ppo import PPO
from tunesmith.objectives.reward import Reward
from tunesmith.objectives.simpo import SimPO
from tunesmith.objectives.weak import Weak
from tunesmith.schema import OBJECTIVE_SECTIONS

if TYPE_CHECKING:
    from tunesmith.schema import RunConfig

OBJECTIVES: dict[str, type[Objective]] = {
    "classify": Classify,
    "causal_lm": CausalLM,
    "image_classify": ImageClassify,
    "reward": Reward,
    "dpo": DPO,
    "orpo": ORPO,
    "simpo": SimPO,
    "kto": KTO,
    "grpo": GRPO,
    "rloo": RLOO,
    "ppo": PPO,
    "weak": Weak,
    "diffusion": Diffusion,
}
OBJECTIVE_SECTIONS.update({name: cls.Config for name, cls in OBJECTIVES.items()})  # what the config parser reads


def build_objective(run: RunConfig) -> Objective:
    """The run's objective, with its config section (and the run's, for what it reads beyond it)."""
    return OBJECTIVES[run.objective.name](run)


__all__ = ["OBJECTIVES", "Loss", "Objective", "ObjectiveConfig", "SavedRun", "build_objective"]
