"""A day of real use: SIGTERM and Ctrl-C cost at most a step, damaged checkpoints are named and skipped,
two trainers never share a run dir, and no model is saved from non-finite weights."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from helpers import ROOT, cli, model_weights, write_config
from tiny import tiny_config

from tunesmith.config import TrainConfig
from tunesmith.errors import TrainingError
from tunesmith.objectives import Loss
from tunesmith.rundir import RunLock
from tunesmith.train.distributed import DistInfo
from tunesmith.train.loop import train
from tunesmith.train.parallel import Strategy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(tiny_bert, tmp_path_factory):
    """An uninterrupted run (18 steps, dropout on) and its config file, for runs that are interrupted."""
    tmp = tmp_path_factory.mktemp("reliability")
    cfg = tiny_config(tiny_bert, tmp / "d", epochs=3, lr=1e-2, checkpoint_every=2, eval_every=5,
                      checkpoint_minutes=None)
    path = write_config(tmp / "cfg.yaml", cfg)
    out = cli("train", str(path), "--out", str(tmp / "whole"))
    assert out.returncode == 0, out.stderr
    return path, tmp / "whole"


def same_weights(a, b) -> bool:
    wa, wb = model_weights(a), model_weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("name,code", [("TERM", 128 + signal.SIGTERM), ("INT", 128 + signal.SIGINT)])
def test_sigterm_and_ctrl_c_checkpoint_the_step_and_resume_exactly(reference, tmp_path, name, code):
    path, whole = reference
    stopped = cli("train", str(path), "--out", str(tmp_path / "r"), env={"TUNESMITH_KILL_AT_STEP": f"7:{name}"})
    assert stopped.returncode == code, stopped.stderr
    assert f"\nstopped by SIG{name} after step 7 of 18; a checkpoint was written" in stopped.stderr
    assert f"continue with: tunesmith train --resume {tmp_path / 'r'}" in stopped.stderr
    assert "Traceback" not in stopped.stderr and "error:" not in stopped.stderr  # asked for: not an error
    assert json.loads((tmp_path / "r" / "checkpoints" / "latest.json").read_text())["step"] == 7  # nothing lost
    resumed = cli("train", "--resume", str(tmp_path / "r"))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from step 7 of 18 ({tmp_path / 'r' / 'checkpoints' / 'step-00000007'})" in resumed.stderr
    assert same_weights(whole, tmp_path / "r")


def test_a_real_sigterm_from_outside(tiny_bert, tmp_path):
    cfg = tiny_config(tiny_bert, tmp_path / "d", epochs=400, log_every=1, checkpoint_minutes=None)
    path = write_config(tmp_path / "cfg.yaml", cfg)
    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    import os

    child = subprocess.Popen([sys.executable, "-m", "tunesmith", "train", str(path), "--out", str(tmp_path / "r")],
                             stderr=subprocess.PIPE, text=True, env=os.environ | env)
    metrics = tmp_path / "r" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        time.sleep(0.1)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 128 + signal.SIGTERM, err
    step = json.loads((tmp_path / "r" / "checkpoints" / "latest.json").read_text())["step"]
    assert f"stopped by SIGTERM after step {step} of" in err
    assert not (tmp_path / "r" / "model").exists()


def test_time_based_checkpoints_lose_little_to_a_kill(reference, tmp_path):
    path, _ = reference
    out = cli("train", str(path), "--out", str(tmp_path / "r"), "--set", "train.checkpoint_every=null",
              "--set", "train.checkpoint_minutes=0.00001", env={"TUNESMITH_KILL_AT_STEP": "9"})
    assert out.returncode == -signal.SIGKILL
    assert json.loads((tmp_path / "r" / "checkpoints" / "latest.json").read_text())["step"] == 8


@pytest.mark.parametrize("damage", ["model.safetensors", "state.pt", "meta.json", "latest.json"])
def test_a_damaged_checkpoint_is_named_and_an_older_one_used(reference, tmp_path, damage):
    path, whole = reference
    killed = cli("train", str(path), "--out", str(tmp_path / "r"), env={"TUNESMITH_KILL_AT_STEP": "11"})
    assert killed.returncode == -signal.SIGKILL
    checkpoints = tmp_path / "r" / "checkpoints"
    target = checkpoints / "latest.json" if damage == "latest.json" else checkpoints / "step-00000010" / damage
    target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])  # truncated mid-write
    (checkpoints / ".step-00000012.tmp").mkdir()  # a checkpoint write killed half-way
    resumed = cli("train", "--resume", str(tmp_path / "r"))
    assert resumed.returncode == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr and "removed" in resumed.stderr
    if damage == "latest.json":
        assert "latest.json is missing or unreadable; resuming from step-00000010" in resumed.stderr
    else:
        assert f"step-00000010/{damage}: cannot be read" in resumed.stderr
        assert "resuming from the newest complete checkpoint instead, step-00000008" in resumed.stderr
    assert not (checkpoints / ".step-00000012.tmp").exists()
    taken = "10" if damage == "latest.json" else "08"
    assert f"resumed from step {int(taken)} of 18 ({checkpoints / f'step-000000{taken}'})" in resumed.stderr
    assert same_weights(whole, tmp_path / "r")  # the older checkpoint resumes exactly too


def test_a_deleted_newest_checkpoint_is_named_and_the_one_taken_said(reference, tmp_path):
    import shutil

    path, whole = reference
    assert cli("train", str(path), "--out", str(tmp_path / "r"), env={"TUNESMITH_KILL_AT_STEP": "11"}).returncode
    checkpoints = tmp_path / "r" / "checkpoints"
    shutil.rmtree(checkpoints / "step-00000010")
    resumed = cli("train", "--resume", str(tmp_path / "r"))
    assert resumed.returncode == 0, resumed.stderr
    assert f"{checkpoints / 'latest.json'} names step-00000010, which is gone; resuming from step-00000008" in \
        resumed.stderr
    assert f"resumed from step 8 of 18 ({checkpoints / 'step-00000008'})" in resumed.stderr
    assert same_weights(whole, tmp_path / "r")


@pytest.mark.parametrize("command", ["predict", "eval"])
def test_a_damaged_saved_model_is_one_error_naming_the_file(reference, tmp_path, command):
    import shutil

    _, whole = reference
    shutil.copytree(whole, tmp_path / "r")
    weights = tmp_path / "r" / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    data = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["data"]["test"]
    args = ["the film was great"] if command == "predict" else ["--data", data]
    out = cli(command, str(tmp_path / "r"), *args)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(f"error: {weights}: cannot be read (SafetensorError") and "the saved model is damaged" in line
    assert f"tunesmith train --resume {tmp_path / 'r'}" in line


def test_every_checkpoint_damaged_is_one_clear_error(reference, tmp_path):
    path, _ = reference
    assert cli("train", str(path), "--out", str(tmp_path / "r"), env={"TUNESMITH_KILL_AT_STEP": "5"}).returncode
    for meta in (tmp_path / "r" / "checkpoints").glob("step-*/meta.json"):
        meta.write_text("{")
    resumed = cli("train", "--resume", str(tmp_path / "r"))
    assert resumed.returncode == 2 and "Traceback" not in resumed.stderr
    assert "no checkpoint can be read" in resumed.stderr and "meta.json: cannot be read" in resumed.stderr


def test_a_run_dir_in_use_is_refused_with_the_holders_pid(reference, tmp_path):
    path, _ = reference
    assert cli("train", str(path), "--out", str(tmp_path / "r"), env={"TUNESMITH_KILL_AT_STEP": "5"}).returncode
    lock = RunLock(tmp_path / "r")
    lock.acquire()  # as a trainer still running there would hold it
    try:
        for args in (("train", "--resume", str(tmp_path / "r")), ("train", str(path), "--out", str(tmp_path / "r"))):
            out = cli(*args)
            assert out.returncode == 2, out.stderr
            import os

            assert f"process {os.getpid()} is training there" in out.stderr
    finally:
        lock.release()
    assert cli("train", "--resume", str(tmp_path / "r")).returncode == 0  # free again: resumes


def test_two_trainers_started_together_do_not_mix(tiny_bert, tmp_path):
    cfg = tiny_config(tiny_bert, tmp_path / "d", epochs=30)
    path = write_config(tmp_path / "cfg.yaml", cfg)
    import os

    env = os.environ | {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, "-m", "tunesmith", "train", str(path), "--out", str(tmp_path / "r")]
    first = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env)
    lock_file = tmp_path / "r" / ".lock"
    deadline = time.time() + 120
    while time.time() < deadline and not (lock_file.exists() and lock_file.read_text().strip()):
        time.sleep(0.05)
    second = subprocess.run(args, capture_output=True, text=True, env=env)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert second.returncode == 2 and f"process {first.pid} is training there" in second.stderr
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    steps = [x["step"] for x in lines if "train_loss" in x]
    assert steps == sorted(set(steps))  # one writer


def test_a_failed_start_does_not_block_a_plain_retry(tiny_bert, tmp_path):
    cfg = tiny_config(tiny_bert, tmp_path / "d")
    (tmp_path / "d" / "test.jsonl").write_text('{"text": "x"}\n')  # no label: the data check fails
    path = write_config(tmp_path / "cfg.yaml", cfg)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.yaml").write_text("model: {}\n")  # what an older failed start left behind
    failed = cli("train", str(path), "--out", str(tmp_path / "r"))
    assert failed.returncode == 2 and "test.jsonl:1" in failed.stderr
    (tmp_path / "d" / "test.jsonl").write_text('{"text": "good film", "label": "pos"}\n')
    retry = cli("train", str(path), "--out", str(tmp_path / "r"))  # no --overwrite, no --resume needed
    assert retry.returncode == 0, retry.stderr


class Sqrt:
    """A loss that is finite (0) while its gradient is not (d sqrt / dz = inf at 0)."""

    default_metric = "val_loss"

    def collate(self, items, pad_id, train=False):
        return {"x": torch.ones(len(items), 2)}

    def counts(self, batch):
        return {"loss": float(batch["x"].shape[0])}

    def loss(self, model, batch):
        out = model(batch["x"])
        return Loss({"loss": torch.sqrt((out - out.detach()) ** 2).sum()})

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_non_finite_gradients_stop_before_the_update(tmp_path):
    from tunesmith.train.loop import TrainTask

    model = torch.nn.Linear(2, 2)
    before = [p.detach().clone() for p in model.parameters()]
    objective = Sqrt()
    task = TrainTask(items=[0, 1, 2, 3], collate=lambda items: objective.collate(items, None), objective=objective)
    with pytest.raises(TrainingError, match=r"the gradients became nan at step 1 \(epoch 1\), so the step was not applied"):
        train(model, task, TrainConfig(epochs=1, batch_size=2, progress=False), tmp_path, Strategy(DistInfo()))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_no_model_is_saved_from_non_finite_weights(reference, tmp_path):
    from safetensors.torch import load_file, save_file

    path, _ = reference
    assert cli("train", str(path), "--out", str(tmp_path / "r")).returncode == 0
    kept = sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir() if p.is_dir())
    assert [name for name in kept if name.startswith("step-")] == ["step-00000018"]  # a finished run keeps one
    assert torch.load(tmp_path / "r" / "checkpoints" / "step-00000018" / "state.pt",
                      weights_only=True)["optimizer"] is None  # and no optimizer state unless asked
    for name in kept:  # the last and the best weights, both poisoned
        file = tmp_path / "r" / "checkpoints" / name / "model.safetensors"
        tensors = load_file(str(file))
        tensors["classifier.weight"][0, 0] = float("nan")
        save_file(tensors, str(file))
    import shutil

    shutil.rmtree(tmp_path / "r" / "model")
    again = cli("train", "--resume", str(tmp_path / "r"))
    assert again.returncode == 2 and "the trained weights hold nan or inf (classifier.weight)" in again.stderr
    assert not (tmp_path / "r" / "model").exists()
