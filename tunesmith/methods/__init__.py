"""What learns. A method marks parameters trainable (or wraps modules); one file + one line here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tunesmith.methods import bitfit, dora, freeze, full, linear_probe, lora, prompt
from tunesmith.methods.common import count_parameters


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    apply: Callable  # apply(loaded: LoadedModel, cfg: MethodConfig) -> None


def _method(name: str, module) -> Method:
    return Method(name=name, description=module.DESCRIPTION, apply=module.apply)


METHODS: dict[str, Method] = {
    "full": _method("full", full),
    "freeze": _method("freeze", freeze),
    "linear_probe": _method("linear_probe", linear_probe),
    "bitfit": _method("bitfit", bitfit),
    "lora": _method("lora", lora),
    "dora": _method("dora", dora),
    "prompt": _method("prompt", prompt),
}

__all__ = ["METHODS", "Method", "count_parameters"]
