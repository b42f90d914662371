"""DoRA (Liu et al. 2024): LoRA with a trained per-output magnitude; the `lora` method with use_dora."""

from tunesmith.methods.lora import Lora


class Dora(Lora):
    name = "dora"
    description = "weight-decomposed LoRA: low-rank direction + trained magnitude (method.lora options)"
    use_dora = True
