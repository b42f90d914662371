"""Regional torch.compile: compile each repeated block (transformer layer, CNN block), not the whole model.

The blocks of one model share their code, so one compilation serves them all and compile time stays
small; everything around them (embeddings, heads, LoRA wrappers' bookkeeping, the frozen-prefix cache's
hooks on outer modules) stays eager. `dynamic=True` because length-grouped batches change the sequence
length from step to step, which would otherwise recompile once per new length.
"""

from __future__ import annotations

import torch
from torch import nn


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The children of every ModuleList / Sequential that holds two or more modules of one class."""
    blocks: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and len(module) >= 2:
            kinds = {type(child) for child in module}
            if len(kinds) == 1 and not any(isinstance(b, type(module)) for b in module):
                if not any(child is b or _contains(b, child) for child in module for b in blocks):
                    blocks.extend(module)
    return blocks


def _contains(outer: nn.Module, inner: nn.Module) -> bool:
    return any(m is inner for m in outer.modules())


def compile_blocks(model: nn.Module, dynamic: bool = True) -> int:
    """Compile, in place, every repeated block that trains (parameters and state_dict keys unchanged).
    Frozen blocks stay eager: under freeze they run once, into the frozen-prefix cache, whose hooks
    must not be traced. Returns how many blocks were compiled."""
    blocks = [b for b in repeated_blocks(model) if any(p.requires_grad for p in b.parameters())]
    for block in blocks:
        block.compile(dynamic=dynamic)
    return len(blocks)


def compile_available() -> tuple[bool, str]:
    """torch.compile's CPU backend needs a C++ compiler at run time."""
    import shutil

    if not hasattr(torch, "compile"):
        return False, "this torch has no torch.compile"
    if not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        return False, "no C++ compiler on PATH (inductor generates C++ for CPU)"
    return True, ""
