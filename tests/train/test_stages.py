"""Multi-stage runs (LP-FT) and paused runs: each stage starts from what the previous one left, frozen
parts come back to life in the next stage, and kill / pause + resume stay bitwise exact."""

import json
import signal

import pytest
import torch
from helpers import cli, model_weights, write_config
from safetensors.torch import load_file
from tiny import tiny_config

from tunesmith.config import config_from_dict
from tunesmith.run import run

pytestmark = pytest.mark.slow

LP_FT = [{"name": "probe", "method": {"name": "linear_probe"}, "epochs": 2, "lr": 5e-2},
         {"name": "finetune", "method": {"name": "full"}, "epochs": 2, "lr": 1e-3}]


def test_lp_ft_fine_tunes_from_the_probed_head(tiny_bert, tmp_path):
    cfg = tiny_config(tiny_bert, tmp_path / "d", eval_every="epoch") | {"stages": LP_FT}
    s = run(config_from_dict(cfg), tmp_path / "r")
    assert [st["name"] for st in s["stages"]] == ["probe", "finetune"]
    assert s["stages"][0]["trainable_params"] < s["stages"][1]["trainable_params"] == s["total_params"]
    probe_dir = tmp_path / "r" / "stages" / "1-probe" / "checkpoints"
    probe_final = load_file(str(sorted(probe_dir.glob("step-*"))[-1] / "model.safetensors"))
    buffers = {"bert.embeddings.position_ids", "bert.embeddings.token_type_ids"}  # checkpoints keep buffers
    assert set(probe_final) - buffers == {"classifier.weight", "classifier.bias"}  # only the head trained
    # stage 2 started from the probed head: re-running stage 2 alone from a fresh head ends elsewhere
    alone = run(config_from_dict(tiny_config(tiny_bert, tmp_path / "d", eval_every="epoch")
                                 | {"stages": LP_FT[1:]}), tmp_path / "alone")
    assert not torch.equal(model_weights(tmp_path / "r")["classifier.weight"],
                           model_weights(tmp_path / "alone")["classifier.weight"])
    assert alone["final"] != s["final"]
    # the probe stage ran the frozen encoder in eval mode; fine-tuning trained all of it (dropout back on)
    records = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in records} == {"probe", "finetune"}
    steps = [r["step"] for r in records if "train_loss" in r]
    assert steps == sorted(steps) and steps[-1] == sum(st["total_steps"] for st in s["stages"])
    assert (tmp_path / "r" / "plots" / "loss.png").exists()


def test_killed_second_stage_resumes_bitwise(tiny_bert, tmp_path):
    short_probe = [LP_FT[0] | {"epochs": 1}, LP_FT[1]]  # 6 probe steps, 12 fine-tuning steps
    cfg = tiny_config(tiny_bert, tmp_path / "d", checkpoint_every=2) | {"stages": short_probe}
    path = write_config(tmp_path / "cfg.yaml", cfg)
    assert cli("train", str(path), "--out", str(tmp_path / "full")).returncode == 0
    killed = cli("train", str(path), "--out", str(tmp_path / "k"), env={"TUNESMITH_KILL_AT_STEP": "11"})
    assert killed.returncode == -signal.SIGKILL
    # the kill hook counts a stage's own steps: step 11 only exists in the fine-tuning stage
    assert (tmp_path / "k" / "stages" / "2-finetune" / "checkpoints").exists()
    assert cli("train", "--resume", str(tmp_path / "k")).returncode == 0
    a, b = model_weights(tmp_path / "full"), model_weights(tmp_path / "k")
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_paused_run_resumes_to_the_same_end(tiny_bert, tmp_path):
    cfg = tiny_config(tiny_bert, tmp_path / "d", epochs=3)
    whole = run(config_from_dict(cfg), tmp_path / "whole")
    cfg["train"]["pause_at_fraction"] = 0.4
    paused = run(config_from_dict(cfg), tmp_path / "p")
    assert paused["paused"] and paused["step"] == 8 and paused["total_steps"] == 18  # ceil(0.4 * 18)
    assert "val_accuracy" in paused["last_eval"]  # evaluated at the pause, for triage
    assert (tmp_path / "p" / "paused.json").exists() and not (tmp_path / "p" / "model").exists()
    done = run(None, tmp_path / "p", resume=True)  # the saved config still says pause: resuming goes on
    assert done["steps"] == 18 and not (tmp_path / "p" / "paused.json").exists()
    a, b = model_weights(tmp_path / "whole"), model_weights(tmp_path / "p")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert done["final"] == whole["final"]


@pytest.mark.parametrize("order", [("full", "lora"), ("lora", "full")])
def test_adapter_and_full_stages_save_everything_that_trained(tiny_bert_nodrop, tmp_path, order):
    """An adapter alone would lose the base weights the full stage trained: the run saves the whole model
    (adapter folded in), and that saved model gives the run's own final test metrics."""
    lora = {"name": "lora", "lora": {"r": 4, "alpha": 8, "target_modules": ["query", "value"]}}
    methods = {"full": {"name": "full"}, "lora": lora}
    stages = [{"name": f"s{i}-{m}", "method": methods[m], "epochs": 2, "lr": 1e-2} for i, m in enumerate(order)]
    cfg = tiny_config(tiny_bert_nodrop, tmp_path / "d") | {"stages": stages}
    s = run(config_from_dict(cfg), tmp_path / "r")
    assert (tmp_path / "r" / "model" / "model.safetensors").exists() and not (tmp_path / "r" / "adapter").exists()
    assert not any("lora" in k for k in model_weights(tmp_path / "r"))  # a plain model
    out = cli("eval", str(tmp_path / "r"), "--data", str(tmp_path / "d" / "test.jsonl"))
    assert out.returncode == 0, out.stderr
    again = json.loads(out.stdout)
    assert again["loss"] == pytest.approx(s["final"]["test_loss"], rel=1e-5)
    assert again["accuracy"] == s["final"]["test_accuracy"]


def test_probe_then_lora_saves_the_adapter_with_the_probed_head(tiny_bert_nodrop, tmp_path):
    lora = {"name": "lora", "lora": {"r": 4, "alpha": 8, "target_modules": ["query", "value"]}}
    stages = [{"name": "probe", "method": {"name": "linear_probe"}, "epochs": 1, "lr": 5e-2},
              {"name": "lora", "method": lora, "epochs": 2, "lr": 1e-2}]
    s = run(config_from_dict(tiny_config(tiny_bert_nodrop, tmp_path / "d") | {"stages": stages}), tmp_path / "r")
    assert (tmp_path / "r" / "adapter" / "adapter_model.safetensors").exists()
    out = cli("eval", str(tmp_path / "r"), "--data", str(tmp_path / "d" / "test.jsonl"))
    assert json.loads(out.stdout)["loss"] == pytest.approx(s["final"]["test_loss"], rel=1e-5)
