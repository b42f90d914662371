"""The step hook is real: an objective hands its own step to the loop through run.py, and a step built
from step.py's parts (two optimizer updates per loop step, the schedule stepped once) trains, logs and
resumes exactly."""

import pytest
import torch
from tiny import tiny_config

from tunesmith.config import TrainConfig, config_from_dict
from tunesmith.objectives.classify import Classify
from tunesmith.run import run
from tunesmith.train.distributed import DistInfo
from tunesmith.train.loop import TrainTask, train
from tunesmith.train.parallel import Strategy
from tunesmith.train.step import StepOutput, accumulate, apply_update, micro_batches, step_counts


class TwoUpdates:
    """Each loop step's items in two halves, one optimizer update each; the schedule advances once."""

    def __init__(self) -> None:
        self.updates = 0

    def __call__(self, trainer) -> StepOutput:
        indices = trainer.step_indices(trainer.step)
        halves = [indices[: len(indices) // 2], indices[len(indices) // 2 :]]
        sums, counts = {}, {}
        for i, half in enumerate(halves):
            batches = micro_batches(trainer, half)
            part_counts = step_counts(trainer, batches)
            part_sums, _ = accumulate(trainer, batches, part_counts)
            apply_update(trainer, schedule=i == len(halves) - 1)
            self.updates += 1
            for name in part_sums:
                sums[name] = sums.get(name, 0.0) + part_sums[name]
                counts[name] = counts.get(name, 0.0) + part_counts[name]
        return StepOutput(sums, counts, samples=len(indices))

    def state_dict(self):
        return {"updates": self.updates}

    def load_state_dict(self, state):
        self.updates = state.get("updates", 0)


class Squares(Classify):
    """A linear model's squared output, as a loss with one term."""

    def __init__(self):
        super().__init__()

    def collate(self, items, pad_id, train=False):
        return {"x": torch.tensor([[float(i % 5) + 1.0, 1.0] for i in items])}

    def counts(self, batch):
        return {"loss": float(batch["x"].shape[0])}

    def loss(self, model, batch):
        from tunesmith.objectives import Loss

        return Loss({"loss": (model(batch["x"]) ** 2).sum()})


def test_a_step_built_from_the_parts_updates_twice_and_schedules_once(tmp_path):
    objective, step = Squares(), TwoUpdates()
    task = TrainTask(items=list(range(16)), collate=lambda items: objective.collate(items, None, True),
                     objective=objective)
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    cfg = TrainConfig(max_steps=4, batch_size=8, lr=1e-2, warmup_steps=0, schedule="linear", progress=False,
                      fused_optimizer=False, checkpoint_every=2)
    seen = {}
    result = train(model, task, cfg, tmp_path / "a", Strategy(DistInfo()), step=step)
    assert result.steps == 4 and step.updates == 8
    from tunesmith.train.checkpoint import load_checkpoint

    _, extra, meta = load_checkpoint(tmp_path / "a" / "checkpoints" / "step-00000004")
    state = extra["optimizer"]["state"]
    assert all(float(s["step"]) == 8 for s in state.values())  # AdamW took 8 updates
    assert extra["scheduler"]["last_epoch"] == 4  # the schedule advanced once per loop step
    assert extra["states"]["step"] == {"updates": 8}  # the step's own state is in the checkpoint
    seen["final"] = {k: v.clone() for k, v in model.state_dict().items()}
    # resumed from step 2: the same weights as the uninterrupted run
    torch.manual_seed(0)
    again = torch.nn.Linear(2, 1)
    resumed_step = TwoUpdates()
    train(again, task, cfg, tmp_path / "a", Strategy(DistInfo()), step=resumed_step,
          resume_from=tmp_path / "a" / "checkpoints" / "step-00000002")
    assert resumed_step.updates == 8
    for name, value in again.state_dict().items():
        torch.testing.assert_close(value, seen["final"][name], rtol=0, atol=0)


def test_run_trains_with_the_step_the_objective_hands_it(tiny_bert, tmp_path, monkeypatch):
    used = []

    def training_step(self, stage):
        used.append(stage)
        return TwoUpdates()

    monkeypatch.setattr(Classify, "training_step", training_step)
    summary = run(config_from_dict(tiny_config(tiny_bert, tmp_path / "d", epochs=1)), tmp_path / "r")
    assert used == ["main"]
    from tunesmith.train.checkpoint import latest_checkpoint, load_checkpoint

    _, extra, _ = load_checkpoint(latest_checkpoint(tmp_path / "r" / "checkpoints"))
    assert extra["states"]["step"] == {"updates": 2 * summary["steps"]}


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_lower_precision_trains_like_fp32_and_keeps_fp32_weights(tiny_bert, tmp_path, precision):
    results = {}
    for name in ("fp32", precision):
        results[name] = run(config_from_dict(tiny_config(tiny_bert, tmp_path / "d", epochs=12, lr=1e-2,
                                                         precision=name)), tmp_path / name)["final"]
    assert results[precision]["test_accuracy"] == results["fp32"]["test_accuracy"] == 1.0
    assert results[precision]["val_loss"] == pytest.approx(results["fp32"]["val_loss"], rel=0.2)
    assert results[precision]["val_loss"] != results["fp32"]["val_loss"]  # it did compute in lower precision
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / precision / "model" / "model.safetensors"))
    assert {w.dtype for w in weights.values()} == {torch.float32}


def test_a_precision_the_device_cannot_run_is_a_config_error(tiny_bert, tmp_path, monkeypatch):
    from tunesmith.errors import ConfigError

    real = torch.autocast

    def refuse(device, dtype=None, **kw):
        if dtype == torch.float16:
            raise RuntimeError("CPU autocast does not support float16 here")
        return real(device, dtype=dtype, **kw)

    monkeypatch.setattr(torch, "autocast", refuse)
    with pytest.raises(ConfigError, match="train.precision: fp16: autocast to fp16 does not run on this cpu"):
        config_from_dict(tiny_config(tiny_bert, tmp_path / "d", precision="fp16"))
    config_from_dict(tiny_config(tiny_bert, tmp_path / "d", precision="bf16"))  # bf16 still runs


def test_model_dtype_bfloat16_trains_and_saves_bf16_weights(tiny_llama, tmp_path):
    from tiny import chat_rows, write_jsonl

    data = tmp_path / "d"
    data.mkdir()
    cfg = {"model": {"name": str(tiny_llama), "max_length": 48, "dtype": "bfloat16"},
           "objective": {"name": "causal_lm", "exact_match": False}, "method": {"name": "full"},
           "data": {"train": str(write_jsonl(data / "t.jsonl", chat_rows(32, 1))), "split": {"test": 0.0}},
           "train": {"epochs": 3, "batch_size": 8, "lr": 1e-2, "progress": False}}
    summary = run(config_from_dict(cfg), tmp_path / "r")
    lines = [x for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines() if "train_loss" in x]
    import json

    assert json.loads(lines[-1])["train_loss"] < json.loads(lines[0])["train_loss"]
    assert summary["final"]["val_loss"] < 3.0
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "r" / "model" / "model.safetensors"))
    assert {w.dtype for w in weights.values()} == {torch.bfloat16}
