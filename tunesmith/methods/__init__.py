"""What learns. A method marks parameters trainable (or wraps modules); one file with a Method subclass +
one line here. See methods/base.py and docs/architecture.md."""

from __future__ import annotations

from tunesmith.methods.base import Method
from tunesmith.methods.bitfit import BitFit
from tunesmith.methods.common import count_parameters
from tunesmith.methods.dora import Dora
from tunesmith.methods.freeze import Freeze
from tunesmith.methods.full import Full
from tunesmith.methods.linear_probe import LinearProbe
from tunesmith.methods.lora import Lora
from tunesmith.methods.prompt import Prompt

METHODS: dict[str, type[Method]] = {
    "full": Full,
    "freeze": Freeze,
    "linear_probe": LinearProbe,
    "bitfit": BitFit,
    "lora": Lora,
    "dora": Dora,
    "prompt": Prompt,
}


def method_for_adapter(peft_type: str | None) -> type[Method] | None:
    """The method whose saved adapters have this adapter_config.json peft_type."""
    return next((m for m in METHODS.values() if m.peft_type is not None and m.peft_type == peft_type), None)


__all__ = ["METHODS", "Method", "count_parameters", "method_for_adapter"]
