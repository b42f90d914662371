"""Full fine-tuning: every pretrained weight and the new head train."""

from tunesmith.methods.base import Method


class Full(Method):
    name = "full"
    description = "all weights train (best in-distribution accuracy; most memory)"

    def apply(self, loaded, cfg) -> None:
        for param in loaded.model.parameters():
            param.requires_grad_(True)
