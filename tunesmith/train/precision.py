"""Mixed precision: the forward and backward in bf16 or fp16 under autocast, the weights and AdamW's
state in fp32 (unless model.dtype loads them in lower precision), and fp16's gradient scaler.

bf16 has fp32's range, so it needs no scaling; fp16 does: the loss is scaled up before backward so
small gradients do not underflow, gradients are unscaled before clipping, and a step whose gradients
overflowed is skipped (the scale then shrinks). The scaler's state is part of every checkpoint.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
MODEL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def precision_problem(name: str, device: str) -> str | None:
    """Why `name` cannot run on `device` (cpu | cuda), or None; tried on a tiny matmul."""
    dtype = DTYPES.get(name)
    if dtype is None:
        return None
    if device == "cuda" and name == "bf16" and not torch.cuda.is_bf16_supported():
        return "this GPU has no bf16 support; use fp16 (with its gradient scaler) or fp32"
    try:
        with torch.autocast(device, dtype=dtype):
            a = torch.ones(2, 2, device=device)
            (a @ a).sum().item()
    except (RuntimeError, TypeError) as e:
        return f"autocast to {name} does not run on this {device} ({str(e)[:120]})"
    return None


class Precision:
    """How one run computes: `autocast()` around each forward (and its loss), `backward(loss)`, then
    `unscale_` before clipping and `step` instead of optimizer.step()."""

    def __init__(self, name: str = "fp32", device: torch.device | str = "cpu") -> None:
        self.name = name
        self.device_type = torch.device(device).type
        self.dtype = DTYPES[name]
        self.scaler = torch.amp.GradScaler(self.device_type) if name == "fp16" else None
        self.skipped = 0  # fp16 steps whose gradients overflowed (not applied)

    def autocast(self) -> AbstractContextManager:
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    @property
    def overflow_allowed(self) -> bool:
        """fp16: non-finite gradients are an overflow the scaler handles (the step is skipped)."""
        return self.scaler is not None

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Apply the update; False when fp16's scaler skipped it (the gradients overflowed)."""
        if self.scaler is None:
            optimizer.step()
            return True
        before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        applied = self.scaler.get_scale() >= before
        self.skipped += not applied
        return applied

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"name": self.name, "skipped": self.skipped}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped = int(state.get("skipped", 0))
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
