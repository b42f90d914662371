"""Frozen-prefix caching: compute the frozen bottom of a model once per training example, reuse it every epoch.

Under `freeze` (embeddings / stem + the first N blocks) and `linear_probe` (everything but the head), the
frozen prefix runs in eval mode, so its output for an example never changes: recomputing it each epoch
is pure waste. Before training we run the prefix once over the training set (no autograd, fixed batches,
so a resumed run gets bitwise the same cache) and store each example's output, keyed by the bytes of the
example's own model input (its real tokens, or its pixels). During training, a batch whose every example
is cached skips the prefix: the module that receives the model input returns the cached tensor and the
other modules on the data path up to the last frozen block pass it through.

Nothing here knows an architecture. One probe forward records which modules run, in which order, and
which feeds which, up to the end of the last frozen block; the cached path is then checked against the
real one on a batch (eval mode) and caching is dropped, with the reason, if they differ. It is off
where the prefix is not deterministic: data augmentation, a trainable or train-mode module on the path.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tunesmith.errors import ConfigError
from tunesmith.fastpath import same_result
from tunesmith.methods.common import find_blocks

_STOCHASTIC = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)


class _Stop(Exception):
    """Raised at the end of the prefix: nothing after it needs to run while probing or filling."""


@dataclass
class _Call:
    module: nn.Module
    parent: int | None  # index of the enclosing call
    source: int | None = None  # id() of its first tensor input
    output: Any = None
    done: bool = False


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value
    return None


def _main_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def _arity(output: Any) -> int | None:
    """None for a tensor output, else the length of the tuple it leads."""
    return len(output) if isinstance(output, (tuple, list)) else None


def _shaped_like(arity: int | None, tensor: torch.Tensor) -> Any:
    """`tensor` in the structure a module returned during the probe (a tensor, or a tuple led by it)."""
    return tensor if arity is None else (tensor,) + (None,) * (arity - 1)


@dataclass
class PrefixCache:
    """A prefix cache attached to a model; `detach()` restores the model exactly."""

    model: nn.Module
    frozen_blocks: int
    chain: list[nn.Module]
    arities: list[int | None]
    store: dict[bytes, torch.Tensor] = field(default_factory=dict)
    nbytes: int = 0
    examples: int = 0  # cached when filled (the store is emptied on detach)
    megabytes: float = 0.0
    fill_seconds: float = 0.0
    hits: int = 0  # forwards that took the cached path (the self-check needs one)
    _rows: tuple[torch.Tensor, torch.Tensor | None] | None = None  # the current forward's input (+ mask)
    _pending: torch.Tensor | None = None  # cached prefix output for the current forward
    _handles: list = field(default_factory=list)  # modules whose forward is wrapped
    _hooks: list = field(default_factory=list)
    _filling: bool = False
    force: bool = False  # use the cache in eval mode too (the self-check)

    # -- keys ------------------------------------------------------------------------------------
    def keys(self) -> list[tuple[bytes, int | None]]:
        """(key, real length) per row of the current model input."""
        assert self._rows is not None
        inputs, mask = self._rows
        out = []
        for i in range(inputs.shape[0]):
            row, n = inputs[i], None
            if mask is not None:
                n = int(mask[i].sum())
                row = row[:n]
            data = row.detach().cpu().contiguous().numpy().tobytes()
            out.append((hashlib.blake2b(data, digest_size=16).digest() + str(tuple(row.shape)).encode(), n))
        return out

    def _capture(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        inputs = _first_tensor(args, kwargs)
        mask = kwargs.get("attention_mask")
        self._rows = (inputs, mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None)
        self._pending = None
        if (module.training or self.force) and inputs is not None and self.store:
            self._pending = self._lookup()

    def _lookup(self) -> torch.Tensor | None:
        keys = self.keys()
        found = [self.store.get(key) for key, _ in keys]
        if any(t is None for t in found):
            return None
        self.hits += 1
        width = self._rows[0].shape[1] if self._rows[1] is not None else None
        if width is None or all(t.shape == found[0].shape and t.shape[0] == 1 for t in found):
            # one row per example: an image, or a last block that computes position 0 only (first_token)
            return torch.stack(found)
        out = found[0].new_zeros((len(found), width, *found[0].shape[1:]))
        for i, t in enumerate(found):
            out[i, : t.shape[0]] = t
        return out

    def _store(self, output: torch.Tensor) -> None:
        inputs, mask = self._rows
        for (key, n), row in zip(self.keys(), output, strict=True):
            if key in self.store:
                continue
            value = (row[:n] if n is not None and row.dim() >= 1 and output.shape[1] == inputs.shape[1] else row)
            value = value.detach().clone()
            self.store[key] = value
            self.nbytes += value.numel() * value.element_size()

    # -- the forwards of the modules on the data path ----------------------------------------------
    def _wrap(self, position: int, module: nn.Module) -> None:
        original = module.forward
        last = position == len(self.chain) - 1
        arity = self.arities[position]

        def forward(*args, **kwargs):
            pending = self._pending
            if pending is None:
                return original(*args, **kwargs)
            if position == 0:
                value = pending
            else:
                value = _first_tensor(args, kwargs)
            if last:
                self._pending = None  # later calls of a shared module (e.g. an activation) run for real
            return _shaped_like(arity, value)

        module.forward = forward  # an instance attribute shadows the class's forward
        self._handles.append(module)

    def detach(self) -> None:
        for module in self._handles:
            module.__dict__.pop("forward", None)
        for handle in self._hooks:
            handle.remove()
        self._handles.clear()
        self._hooks.clear()
        self.store.clear()
        self.nbytes = 0


def _deterministic(module: nn.Module, in_eval: set[int]) -> bool:
    """Frozen, and either kept in eval mode by the method or free of train-mode behaviour we know of."""
    if any(p.requires_grad for p in module.parameters()):
        return False
    if id(module) in in_eval:
        return True
    return not any(isinstance(m, _STOCHASTIC) for m in module.modules())


def _leading_frozen_blocks(model: nn.Module) -> tuple[nn.ModuleList, int]:
    name, n = find_blocks(model)
    blocks = model.get_submodule(name)
    k = 0
    while k < n and all(not p.requires_grad for p in blocks[k].parameters()):
        k += 1
    return blocks, k


def _probe(model: nn.Module, batch: dict, loss_sum: Callable, last: nn.Module) -> tuple[list[_Call], int]:
    """Run until `last` (the last frozen block) returns, recording every module call."""
    calls: list[_Call] = []
    stack: list[int] = []
    model_input: list[int] = []
    handles = []

    def pre(module, args, kwargs):
        parent = stack[-1] if stack else None
        first = _first_tensor(args, kwargs)
        calls.append(_Call(module, parent, id(first) if first is not None else None))
        stack.append(len(calls) - 1)
        if module is model:
            model_input.append(id(first))

    def post(module, args, kwargs, output):
        call = calls[stack.pop()]
        call.output, call.done = output, True
        if module is last:
            raise _Stop

    for module in model.modules():
        handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(module.register_forward_hook(post, with_kwargs=True))
    try:
        loss_sum(model, batch)
    except _Stop:
        pass
    finally:
        for handle in handles:
            handle.remove()
    if not model_input:
        raise ConfigError("the model was not called with its input as a tensor")
    return calls, model_input[0]


def _data_path(calls: list[_Call], model_input: int, last: nn.Module) -> list[_Call]:
    """The calls that carry the model input to the end of `last`, outermost only (their parent call was
    still running when the prefix ended)."""
    open_calls = {i for i, c in enumerate(calls) if not c.done}
    outer = [c for c in calls if c.done and c.parent in open_calls]
    produced: dict[int, int] = {}  # id of a call's main output -> its position in `outer`
    for position, c in enumerate(outer):
        main = _main_tensor(c.output)
        if main is not None:
            produced[id(main)] = position
    path: list[_Call] = []
    position = next((i for i in range(len(outer) - 1, -1, -1) if outer[i].module is last), None)
    while position is not None:
        current = outer[position]
        path.append(current)
        if current.source == model_input:
            return path[::-1]
        producer = produced.get(current.source)  # only an earlier call can have fed this one
        position = producer if producer is not None and producer < position else None
    raise ConfigError("the frozen blocks are not fed by the model input through a chain of modules")


def attach_prefix_cache(model: nn.Module, items: Sequence, collate: Callable[[list], dict],
                        loss_sum: Callable[[nn.Module, dict], torch.Tensor], device: torch.device,
                        batch_size: int = 64, budget_mb: float = 2048.0,
                        say: Callable[[str], None] = print, progress: bool = False) -> PrefixCache | None:
    """Cache the frozen prefix of `model` for `items`; None (and a line saying why) when it cannot."""
    try:
        blocks, k = _leading_frozen_blocks(model)
    except ConfigError:
        return None
    if k == 0 or not items:
        return None
    started = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            probe_batch = {key: v.to(device) for key, v in collate(list(items[:2])).items()}
            calls, model_input = _probe(model, probe_batch, loss_sum, blocks[k - 1])
            path = _data_path(calls, model_input, blocks[k - 1])
    except ConfigError as e:
        say(f"frozen-prefix cache: off ({e})")
        model.train(was_training)
        return None
    in_eval = {id(m) for top in model.modules() if getattr(top, "_tunesmith_keeps_eval", False)
               for m in top.modules()}
    window = [c for c in calls if c.done and c.parent in {i for i, x in enumerate(calls) if not x.done}]
    unsafe = [type(c.module).__name__ for c in window if not _deterministic(c.module, in_eval)]
    if unsafe:
        say(f"frozen-prefix cache: off ({unsafe[0]} before the last frozen block trains or is random in training)")
        model.train(was_training)
        return None
    cache = PrefixCache(model, k, [c.module for c in path], [_arity(c.output) for c in path])
    del calls, window
    cache._hooks.append(model.register_forward_pre_hook(cache._capture, with_kwargs=True))
    last = blocks[k - 1]

    def keep(module, args, output):
        if cache._pending is None and cache._filling:
            cache._store(_main_tensor(output))
            raise _Stop

    cache._filling = True
    fill_hook = last.register_forward_hook(keep)
    budget = budget_mb * 2**20
    order = sorted(range(len(items)), key=lambda i: len(getattr(items[i], "input_ids", ())))
    try:
        from tqdm.auto import tqdm

        with torch.no_grad():
            for start in tqdm(range(0, len(order), batch_size), desc="cache frozen prefix", unit="batch",
                              disable=not progress):
                batch = collate([items[i] for i in order[start : start + batch_size]])
                try:
                    loss_sum(model, {key: v.to(device) for key, v in batch.items()})
                except _Stop:
                    pass
                if cache.nbytes > budget:
                    say(f"frozen-prefix cache: off (it would exceed train.prefix_cache_mb={budget_mb:g} MB)")
                    cache.detach()
                    return None
            problem = _self_check(cache, model, items, collate, loss_sum, device)
    finally:
        fill_hook.remove()
        cache._filling = False
        model.train(was_training)
    if problem:
        say(f"frozen-prefix cache: off ({problem})")
        cache.detach()
        return None
    for position, module in enumerate(cache.chain):
        cache._wrap(position, module)
    cache.examples, cache.megabytes = len(cache.store), cache.nbytes / 2**20
    cache.fill_seconds = time.perf_counter() - started
    say(f"frozen-prefix cache: {k} frozen block{'s' if k != 1 else ''} computed once for {len(cache.store):,} "
        f"training examples ({cache.megabytes:.0f} MB, {cache.fill_seconds:.1f} s); training runs only what "
        "comes after them")
    return cache


def _self_check(cache: PrefixCache, model: nn.Module, items: Sequence, collate: Callable,
                loss_sum: Callable, device: torch.device) -> str | None:
    """The cached path must give the real path's loss on a batch of mixed lengths (eval mode)."""
    picks = list(items[:: max(1, len(items) // 8)][:8])
    batch = {key: v.to(device) for key, v in collate(picks).items()}
    cache._filling = False
    found: dict[str, float] = {}

    def real() -> torch.Tensor:
        value = loss_sum(model, batch)
        found["real"] = value.item()
        return value

    def cached() -> torch.Tensor:
        for position, module in enumerate(cache.chain):
            cache._wrap(position, module)
        cache.force = True
        try:
            value = loss_sum(model, batch)
        finally:
            cache.force = False
            for module in cache._handles:
                module.__dict__.pop("forward", None)
            cache._handles.clear()
        found["cached"] = value.item()
        if cache.hits == 0:
            raise RuntimeError("the cached path was not taken on the check batch")
        return value

    same = same_result(model, real, cached, rtol=1e-4, atol=1e-4 * max(1, len(picks)))
    if cache.hits == 0:
        return "the cached path was not taken on the check batch"
    cache.hits = 0
    if not same:
        return f"the cached path gives loss {found.get('cached', float('nan')):.6g}, the real one {found['real']:.6g}"
    return None
