"""BitFit (Ben Zaken et al. 2022): only bias terms and the new head train."""

from tunesmith.methods.base import Method
from tunesmith.methods.common import set_trainable


class BitFit(Method):
    name = "bitfit"
    free_reference = True
    description = "only bias terms and the new task head train"

    def apply(self, loaded, cfg) -> None:
        biases = [n for n, _ in loaded.model.named_parameters() if n.endswith(".bias")]
        set_trainable(loaded.model, biases + loaded.head_params)
        self.keep_originals(loaded.model)  # biases are small: keeping them makes reference() possible
