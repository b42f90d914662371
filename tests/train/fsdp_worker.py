"""Run under torchrun by tests/train/test_fsdp.py: checks that need the model inside one process group.

    torchrun --nproc_per_node=N tests/train/fsdp_worker.py reference MODEL_DIR OUT.json
    torchrun --nproc_per_node=N tests/train/fsdp_worker.py memory MODEL_DIR OUT.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tunesmith.config import TrainConfig  # noqa: E402
from tunesmith.methods.lora import Lora  # noqa: E402
from tunesmith.models import load_causal_lm  # noqa: E402
from tunesmith.schema import LoraConfig, MethodConfig  # noqa: E402
from tunesmith.train.distributed import setup, teardown  # noqa: E402
from tunesmith.train.optim import build_optimizer  # noqa: E402
from tunesmith.train.parallel import make_strategy  # noqa: E402


def logps(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1).sum(-1)


def reference(model_dir: str, out: Path) -> None:
    """LoRA with trained biases under fsdp: after an update (adapters and biases moved), the method's
    reference (adapters off, biases put back, looked up by name on the sharded model) gives the base
    model's log-probs; the policy's differ."""
    info = setup("cpu")
    strategy = make_strategy("fsdp", info, TrainConfig())
    ids = torch.tensor([[1, 5, 7, 9, 11, 13, 4, 6]])
    base = load_causal_lm(model_dir, 0).model.eval()
    want = logps(base, ids)
    loaded = load_causal_lm(model_dir, 0)
    method = Lora()
    method.apply(loaded, MethodConfig(name="lora", lora=LoraConfig(r=4, alpha=8, target_modules="all-linear",
                                                                   bias="all")))
    model = strategy.wrap(loaded.model)
    optimizer = build_optimizer(model, TrainConfig(lr=0.5), set())
    loss = -logps_train(model, ids)
    loss.backward()
    optimizer.step()
    model.eval()
    with method.reference(model) as ref:
        got = logps(ref, ids)
    policy = logps(model, ids)
    again = logps(model, ids)  # the trained values are back after the block
    if info.rank == 0:
        out.write_text(json.dumps({"base": want.tolist(), "reference": got.tolist(), "policy": policy.tolist(),
                                   "after": again.tolist()}))
    teardown()


def logps_train(model, ids):
    logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1).sum()


def memory(model_dir: str, out: Path) -> None:
    """Bytes this process holds of the parameters, gradients and AdamW state after a full fine-tuning
    step under fsdp, and what one process would hold unsharded."""
    info = setup("cpu")
    strategy = make_strategy("fsdp", info, TrainConfig())
    model = load_causal_lm(model_dir, 0).model
    whole = sum(p.numel() * p.element_size() for p in model.parameters())
    model = strategy.wrap(model)
    optimizer = build_optimizer(model, TrainConfig(lr=1e-4, fused_optimizer=False), set())
    ids = torch.tensor([[1, 5, 7, 9, 11, 13, 4, 6]])
    (-logps_train(model, ids)).backward()
    optimizer.step()

    def local(t: torch.Tensor) -> int:
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()

    params = sum(local(p) for p in model.parameters())
    grads = sum(local(p.grad) for p in model.parameters() if p.grad is not None)
    states = sum(local(v) for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim())
    found = [None] * info.world_size
    dist.all_gather_object(found, {"params": params, "grads": grads, "optimizer": states})
    if info.rank == 0:
        out.write_text(json.dumps({"whole": whole, "processes": found}))
    teardown()


if __name__ == "__main__":
    {"reference": reference, "memory": memory}[sys.argv[1]](sys.argv[2], Path(sys.argv[3]))
