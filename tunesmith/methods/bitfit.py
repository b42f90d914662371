"""BitFit (Ben Zaken et al. 2022): only bias terms and the new head train."""

from tunesmith.config import MethodConfig
from tunesmith.methods.common import set_trainable
from tunesmith.models.hf import LoadedModel

DESCRIPTION = "only bias terms and the new task head train"


def apply(loaded: LoadedModel, cfg: MethodConfig) -> None:
    biases = [n for n, _ in loaded.model.named_parameters() if n.endswith(".bias")]
    set_trainable(loaded.model, biases + loaded.head_params)
