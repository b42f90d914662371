"""The training loop: accumulation equals the large batch, seeds, early stopping, NaN, schedules."""

import copy
import json
import math

import pytest
import torch
from tiny import tiny_config

from tunesmith.config import TrainConfig, config_from_dict
from tunesmith.errors import TrainingError
from tunesmith.objectives import Loss, Objective
from tunesmith.run import run
from tunesmith.train.callbacks import Callback
from tunesmith.train.checkpoint import latest_checkpoint
from tunesmith.train.distributed import DistInfo
from tunesmith.train.loop import TrainTask, train
from tunesmith.train.optim import build_optimizer, build_scheduler
from tunesmith.train.parallel import Strategy
from tunesmith.train.step import epoch_batches, epoch_order


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
    opt = build_optimizer(m.model, TrainConfig(lr=5e-5, weight_decay=0.1, head_lr=1e-3), set(m.head_params))
    params = dict(m.model.named_parameters())
    names = {id(p): n for n, p in params.items()}
    group_of = {names[id(p)]: g for g in opt.param_groups for p in g["params"]}
    assert group_of.keys() == params.keys()  # every parameter trains, in exactly one group
    decayed = {n for n, g in group_of.items() if g["weight_decay"] == 0.1}
    assert decayed == {n for n, p in params.items() if p.ndim >= 2}  # matrices only
    assert {n for n, g in group_of.items() if g["weight_decay"] == 0.0} == params.keys() - decayed
    assert any(n.endswith("LayerNorm.weight") for n in params.keys() - decayed)
    assert all(not n.endswith("bias") and "LayerNorm" not in n for n in decayed)
    assert {n for n, g in group_of.items() if g["lr"] == 1e-3} == set(m.head_params)
    assert all(g["lr"] == 5e-5 for n, g in group_of.items() if n not in m.head_params)


def test_max_grad_norm_clips_every_step(tmp_path):
    norms: list[float] = []

    def record(optimizer, args, kwargs):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())

    from torch.optim.optimizer import register_optimizer_step_pre_hook

    handle = register_optimizer_step_pre_hook(record)
    try:
        for clip in (0.5, None):
            cfg = TrainConfig(epochs=1, batch_size=2, progress=False, max_grad_norm=clip, fused_optimizer=False)
            train(torch.nn.Linear(2, 2), linear_task(Linear(100.0), 8), cfg, tmp_path / str(clip), Strategy(DistInfo()))
    finally:
        handle.remove()
    clipped, free = norms[:4], norms[4:]
    assert len(free) == 4 and all(n <= 0.5 + 1e-5 for n in clipped)
    assert min(free) > 10  # the same steps unclipped: the hook saw the real norms


def test_keep_checkpoints_prunes_older_ones(tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=2, progress=False, checkpoint_every=1, keep_checkpoints=2)
    train(torch.nn.Linear(2, 2), linear_task(Linear(), 12), cfg, tmp_path, Strategy(DistInfo()))
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir())
    assert kept == ["step-00000005", "step-00000006"]
    assert json.loads((tmp_path / "checkpoints" / "latest.json").read_text())["name"] == "step-00000006"


class TwoTerms(Linear):
    """Item i has i % 3 + 1 "tokens": term a is averaged over items, term b over tokens."""

    def collate(self, items, pad_id, train=False):
        return {"x": torch.tensor([[float(i + 1), 1.0] for i in items]),
                "tokens": torch.tensor([float(i % 3 + 1) for i in items])}

    def counts(self, batch):
        return {"a": float(batch["x"].shape[0]), "b": float(batch["tokens"].sum())}

    def loss(self, model, batch):
        out = model(batch["x"])
        return Loss({"a": (out[:, 0] ** 2).sum(), "b": (out[:, 1].abs() * batch["tokens"]).sum()},
                    logs={"b_per_item": (out[:, 1].sum().detach(), "a")})


def test_terms_with_their_own_denominators_equal_the_large_batch(tmp_path):
    """Micro-batches hold different token counts, so dividing each term per micro-batch would be wrong;
    the loop divides each term by its own count over the whole step."""
    results = {}
    for accum in (1, 4):
        torch.manual_seed(0)
        model = torch.nn.Linear(2, 2)
        start = copy.deepcopy(model)
        cfg = TrainConfig(epochs=1, batch_size=4, grad_accum=accum, progress=False, log_every=1, lr=0.1,
                          warmup_ratio=0.0, max_grad_norm=None)
        train(model, linear_task(TwoTerms(), 12), cfg, tmp_path / str(accum), Strategy(DistInfo()))
        results[accum] = (model, [json.loads(x) for x in (tmp_path / str(accum) / "metrics.jsonl").read_text().splitlines()])
    (big, big_log), (acc, acc_log) = results[1], results[4]
    for a, b in zip(big.parameters(), acc.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # the first step's logged loss is the sum of both terms' means, from the starting weights
    objective, first = TwoTerms(), epoch_batches(12, 4, 0, 0)[0]
    batch = objective.collate(first, None)
    with torch.no_grad():
        terms = objective.loss(start, batch).terms
    counts = objective.counts(batch)
    want = {k: terms[k].item() / counts[k] for k in terms}
    for log in (big_log, acc_log):
        assert log[0]["train_loss"] == pytest.approx(want["a"] + want["b"], rel=1e-6)
        assert log[0]["train_a"] == pytest.approx(want["a"], rel=1e-6)
        assert "train_b_per_item" in log[0]


class Stateful(Linear):
    """An objective whose state changes its loss: forgetting the state on resume changes the result."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def loss(self, model, batch):
        self.calls += 1
        return Loss({"loss": model(batch["x"]).sum() * (1 + 0.1 * self.calls)})

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state.get("calls", 0)


class Draws(Callback):
    """A callback with its own random stream and a running count, logged every step."""

    def __init__(self) -> None:
        self.generator = torch.Generator().manual_seed(1)
        self.seen, self.draws = 0, []

    def on_step_end(self, trainer, output):
        self.seen += output.samples
        self.draws.append(torch.rand(1, generator=self.generator).item())
        return {"seen": self.seen}

    def state_dict(self):
        return {"generator": self.generator.get_state(), "seen": self.seen, "draws": list(self.draws)}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])
        self.seen, self.draws = state["seen"], list(state["draws"])


def test_objective_and_callback_state_survive_a_resume(tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=2, progress=False, log_every=1)

    def attempt(run_dir, resume=False, pause=None):
        torch.manual_seed(0)
        model, objective, callback = torch.nn.Linear(2, 2), Stateful(), Draws()
        latest = latest_checkpoint(run_dir / "checkpoints") if resume else None
        train(model, linear_task(objective, 8), cfg, run_dir, Strategy(DistInfo()), resume_from=latest,
              pause_at_step=pause, callbacks=[callback])
        return model, objective, callback

    whole = attempt(tmp_path / "whole")
    attempt(tmp_path / "split", pause=3)
    resumed = attempt(tmp_path / "split", resume=True)
    for a, b in zip(whole[0].parameters(), resumed[0].parameters(), strict=True):
        assert torch.equal(a, b)
    assert resumed[1].calls == whole[1].calls == 8
    assert resumed[2].draws == whole[2].draws and resumed[2].seen == whole[2].seen == 16
    lines = [json.loads(x) for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [x["seen"] for x in lines if "seen" in x] == [2 * s for s in range(1, 9)]


class EveryThird(Callback):
    """Reports a figure at steps 3 and 6 only, like COSINE's relabelings."""

    def on_step_end(self, trainer, output):
        return {"relabeled_at": float(trainer.step)} if trainer.step % 3 == 0 else None


def test_a_callbacks_figures_between_logging_steps_are_written(tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=2, progress=False, log_every=4)
    train(torch.nn.Linear(2, 2), linear_task(Stateful(), 16), cfg, tmp_path, Strategy(DistInfo()),
          callbacks=[EveryThird()])
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "train_loss" in x] == [4, 8]
    assert [(x["step"], x["relabeled_at"]) for x in lines if "relabeled_at" in x] == [(3, 3.0), (6, 6.0)]
