"""A run killed with SIGKILL mid-epoch and resumed ends bitwise identical to an uninterrupted run."""

import json
import signal

import pytest
import torch
from helpers import cli, model_weights, write_config
from tiny import tiny_config

pytestmark = pytest.mark.slow


def test_kill_and_resume_is_bitwise_identical(tiny_bert, tmp_path):
    # dropout is on (tiny_bert has 0.1), so the RNG state must be restored too; 3 epochs of 6 steps
    cfg = tiny_config(tiny_bert, tmp_path / "d", epochs=3, lr=1e-2, checkpoint_every=4, eval_every=5)
    path = write_config(tmp_path / "cfg.yaml", cfg)

    full = cli("train", str(path), "--out", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr

    killed = cli("train", str(path), "--out", str(tmp_path / "killed"), env={"TUNESMITH_KILL_AT_STEP": "11"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run_dir = tmp_path / "killed"
    assert not (run_dir / "model").exists()
    latest = json.loads((run_dir / "checkpoints" / "latest.json").read_text())
    assert latest["step"] == 8  # mid-epoch (6 steps per epoch); steps 9-11 are lost and redone

    old_format(run_dir / "checkpoints" / "step-00000008")  # as tunesmith wrote it before per-process files
    resumed = cli("train", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr
    a, b = model_weights(tmp_path / "full"), model_weights(run_dir)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed"] and summary["steps"] == 18
    steps = [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()
             if "train_loss" in x]
    assert steps == sorted(set(steps))  # no duplicated lines from the killed attempt
    full_lines = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    drop = lambda line: {k: v for k, v in json.loads(line).items() if k != "samples_per_s"}  # noqa: E731
    assert [drop(x) for x in full_lines] == [drop(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_resume_refuses_a_different_config(tiny_bert, tmp_path):
    cfg = tiny_config(tiny_bert, tmp_path / "d", epochs=1)
    path = write_config(tmp_path / "cfg.yaml", cfg)
    assert cli("train", str(path), "--out", str(tmp_path / "r")).returncode == 0
    again = cli("train", str(path), "--out", str(tmp_path / "r"))
    assert again.returncode == 2 and "already holds a run" in again.stderr and "Traceback" not in again.stderr
    cfg["train"]["lr"] = 0.5
    other = write_config(tmp_path / "other.yaml", cfg)
    diff = cli("train", str(other), "--resume", str(tmp_path / "r"))
    assert diff.returncode == 2 and "train.lr (0.001 -> 0.5)" in diff.stderr


def old_format(folder):
    """A checkpoint as one process wrote it before each process kept its own file: the RNG states of
    every process as a list and the objective's, step's and callbacks' states in state.pt."""
    state = torch.load(folder / "state.pt", weights_only=True)
    own = torch.load(folder / "rank-00000.pt", weights_only=True)
    state |= {"rng": [own["rng"]], "states": own["states"]}
    torch.save(state, folder / "state.pt")
    (folder / "rank-00000.pt").unlink()


def test_a_checkpoint_of_another_model_is_one_clear_error(tiny_bert, tmp_path):
    import shutil

    from tiny import make_tiny_bert

    cfg = tiny_config(tiny_bert, tmp_path / "d", epochs=2, checkpoint_every=3)
    path = write_config(tmp_path / "cfg.yaml", cfg)
    assert cli("train", str(path), "--out", str(tmp_path / "r"), env={"TUNESMITH_KILL_AT_STEP": "5"}).returncode
    other = make_tiny_bert(tmp_path / "wide", layers=3)
    wide = write_config(tmp_path / "wide.yaml", tiny_config(other, tmp_path / "d", epochs=1, checkpoint_every=3))
    assert cli("train", str(wide), "--out", str(tmp_path / "w"), env={"TUNESMITH_KILL_AT_STEP": "4"}).returncode
    shutil.copy(tmp_path / "w" / "checkpoints" / "step-00000003" / "model.safetensors",
                tmp_path / "r" / "checkpoints" / "step-00000003" / "model.safetensors")
    resumed = cli("train", "--resume", str(tmp_path / "r"))
    assert resumed.returncode == 2 and "Traceback" not in resumed.stderr, resumed.stderr
    assert "step-00000003: does not fit this model" in resumed.stderr
