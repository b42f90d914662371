"""Full fine-tuning: every pretrained weight and the new head train."""

from tunesmith.config import MethodConfig
from tunesmith.models.hf import LoadedModel

DESCRIPTION = "all weights train (best in-distribution accuracy; most memory)"


def apply(loaded: LoadedModel, cfg: MethodConfig) -> None:
    for param in loaded.model.parameters():
        param.requires_grad_(True)
