"""Linear probe: the pretrained model stays frozen; only the new task head trains."""

from tunesmith.methods.base import Method
from tunesmith.methods.common import frozen_subtrees, keep_in_eval, set_trainable


class LinearProbe(Method):
    name = "linear_probe"
    free_reference = True
    description = "only the new task head trains (pretrained features untouched)"
    trains_base = False
    model_kinds = ("text-classifier", "image-classifier")  # the models with a new head to probe

    def apply(self, loaded, cfg) -> None:
        set_trainable(loaded.model, loaded.head_params)
        keep_in_eval(frozen_subtrees(loaded.model))  # fixed features: no dropout, no BatchNorm updates
        self.keep_originals(loaded.model)
