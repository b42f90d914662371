"""Linear probe: the pretrained model stays frozen; only the new task head trains."""

from tunesmith.config import MethodConfig
from tunesmith.methods.common import frozen_subtrees, keep_in_eval, set_trainable
from tunesmith.models.hf import LoadedModel

DESCRIPTION = "only the new task head trains (pretrained features untouched)"


def apply(loaded: LoadedModel, cfg: MethodConfig) -> None:
    set_trainable(loaded.model, loaded.head_params)
    keep_in_eval(frozen_subtrees(loaded.model))  # fixed features: no dropout, no BatchNorm updates
