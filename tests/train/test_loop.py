"""The training loop: accumulation equals the large batch, seeds, early stopping, NaN, schedules."""

import json
import math

import pytest
import torch
from tiny import tiny_config

from tunesmith.config import TrainConfig, config_from_dict
from tunesmith.errors import TrainingError
from tunesmith.objectives import Loss, Objective
from tunesmith.run import run
from tunesmith.train.distributed import DistInfo
from tunesmith.train.loop import TrainTask, train
from tunesmith.train.optim import build_optimizer, build_scheduler
from tunesmith.train.parallel import Strategy
from tunesmith.train.step import epoch_order


def weights(run_dir):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model" / "model.safetensors"))


def max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_grad_accumulation_equals_large_batch(tiny_bert_nodrop, tmp_path):
    # 90 examples, batch 16: the last step has 10 items, split unevenly over 4 micro-batches
    common = dict(epochs=2, lr=1e-2, max_grad_norm=None)
    big = tiny_config(tiny_bert_nodrop, tmp_path / "d", n_train=90, **common)
    acc = tiny_config(tiny_bert_nodrop, tmp_path / "d", n_train=90, grad_accum=4, **common)
    run(config_from_dict(big), tmp_path / "big")
    run(config_from_dict(acc), tmp_path / "acc")
    a, b = weights(tmp_path / "big"), weights(tmp_path / "acc")
    assert max_diff(a, b) < 2e-5
    la = [json.loads(x)["train_loss"] for x in (tmp_path / "big/metrics.jsonl").read_text().splitlines() if "train_loss" in x]
    lb = [json.loads(x)["train_loss"] for x in (tmp_path / "acc/metrics.jsonl").read_text().splitlines() if "train_loss" in x]
    assert la == pytest.approx(lb, rel=1e-5)


def test_init_seed_and_data_seed_are_separate(tiny_bert, tmp_path):
    from tunesmith.models import load_text_classifier

    h0 = load_text_classifier(str(tiny_bert), ["a", "b"], init_seed=0).model.classifier.weight
    h0b = load_text_classifier(str(tiny_bert), ["a", "b"], init_seed=0).model.classifier.weight
    h1 = load_text_classifier(str(tiny_bert), ["a", "b"], init_seed=1).model.classifier.weight
    assert torch.equal(h0, h0b) and not torch.equal(h0, h1)
    assert epoch_order(50, 0, 0) == epoch_order(50, 0, 0)
    assert epoch_order(50, 0, 0) != epoch_order(50, 1, 0)
    assert epoch_order(50, 0, 0) != epoch_order(50, 0, 1)
    assert sorted(epoch_order(50, 3, 2)) == list(range(50))


def test_same_seeds_reproduce_and_data_seed_changes_result(tiny_bert, tmp_path):
    cfgs = [tiny_config(tiny_bert, tmp_path / "d", epochs=1, data_seed=s) for s in (0, 0, 1)]
    for i, c in enumerate(cfgs):
        run(config_from_dict(c), tmp_path / f"r{i}")
    w = [weights(tmp_path / f"r{i}") for i in range(3)]
    assert max_diff(w[0], w[1]) == 0.0
    assert max_diff(w[0], w[2]) > 0.0


def test_early_stopping_with_patience_restores_best(tiny_bert, tmp_path):
    cfg = tiny_config(tiny_bert, tmp_path / "d", epochs=30, lr=1e-2, eval_every=3,
                      early_stopping={"metric": "val_loss", "patience": 2, "min_delta": 0.5})
    summary = run(config_from_dict(cfg), tmp_path / "r")
    assert summary["stopped_early"] and summary["steps"] < summary["total_steps"]
    best = summary["best"]
    assert best["metric"] == "val_loss" and best.get("restored")
    # the final evaluation is of the restored best weights
    assert summary["final"]["val_loss"] == pytest.approx(best["value"], rel=1e-5)
    evals = [json.loads(x) for x in (tmp_path / "r/metrics.jsonl").read_text().splitlines() if "val_loss" in x]
    assert len(evals) == best["step"] // 3 + 2  # two evaluations without improvement, then stop
    again = run(None, tmp_path / "r", resume=True)  # resuming a stopped run must not train on
    assert again["steps"] == summary["steps"] and again["stopped_early"]
    assert again["final"]["val_loss"] == pytest.approx(summary["final"]["val_loss"], rel=1e-6)


class Linear(Objective):
    """A bare objective on a linear model: the loss is `scale` times the sum of its outputs."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def collate(self, items, pad_id, train=False):
        return {"x": torch.tensor([[float(i + 1), 1.0] for i in items])}

    def counts(self, batch):
        return {"loss": float(batch["x"].shape[0])}

    def loss(self, model, batch):
        return Loss({"loss": model(batch["x"]).sum() * self.scale})


def linear_task(objective: Objective, n: int = 4) -> TrainTask:
    return TrainTask(items=list(range(n)), collate=lambda items: objective.collate(items, None, train=True),
                     objective=objective)


def test_nan_loss_is_a_clear_error(tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=2, progress=False)
    with pytest.raises(TrainingError, match=r"loss became nan at step 1 \(epoch 1\); lower train.lr"):
        train(torch.nn.Linear(2, 2), linear_task(Linear(float("nan"))), cfg, tmp_path, Strategy(DistInfo()))


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
def test_warmup_then_schedule(schedule):
    model = torch.nn.Linear(2, 2)
    cfg = TrainConfig(lr=1.0, warmup_steps=4, schedule=schedule)
    opt = build_optimizer(model, cfg, set())
    sched = build_scheduler(opt, cfg, total_steps=20)
    lrs = []
    for _ in range(20):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    end = {"linear": 1 / 16, "cosine": 0.5 * (1 + math.cos(math.pi * 15 / 16)), "constant": 1.0}[schedule]
    assert lrs[-1] == pytest.approx(end)


def test_weight_decay_groups_skip_biases_and_norms(tiny_bert):
    from tunesmith.models import load_text_classifier

    m = load_text_classifier(str(tiny_bert), ["a", "b"], init_seed=0)
    opt = build_optimizer(m.model, TrainConfig(weight_decay=0.1, head_lr=1e-3), set(m.head_params))
    ids = {id(p): n for n, p in m.model.named_parameters()}
    for group in opt.param_groups:
        names = [ids[id(p)] for p in group["params"]]
        if group["weight_decay"]:
            assert all(not n.endswith("bias") and "LayerNorm" not in n for n in names)
        if "classifier.weight" in names:
            assert group["lr"] == 1e-3
