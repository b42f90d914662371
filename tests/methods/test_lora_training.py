"""Training with LoRA: only adapters (+ head) learn, checkpoints are small, resume is exact, the run's
adapter works with predict / eval / merge and with PEFT."""

import json
import signal

import pytest
import torch
from helpers import cli, write_config
from safetensors.torch import load_file
from tiny import sentiment_rows, tiny_config, write_jsonl

from tunesmith.config import config_from_dict
from tunesmith.run import run

pytestmark = pytest.mark.slow

LORA = {"name": "lora", "lora": {"r": 4, "alpha": 8, "target_modules": ["word_embeddings", "query", "value", "dense"]}}


def lora_cfg(model, tmp, **train):
    cfg = tiny_config(model, tmp / "data", epochs=30, lr=1e-2, **train)
    cfg["method"] = LORA
    return cfg


def test_lora_run_trains_only_adapters_and_saves_peft_adapter(tiny_bert, tmp_path):
    summary = run(config_from_dict(lora_cfg(tiny_bert, tmp_path, checkpoint_every=60, keep_optimizer_state=True)),
                  tmp_path / "run")
    run_dir = tmp_path / "run"
    assert not (run_dir / "model").exists() and (run_dir / "adapter" / "adapter_model.safetensors").exists()
    assert summary["trainable_params"] < summary["total_params"] / 2
    assert summary["final"]["test_accuracy"] >= 0.9  # it learned
    tensors = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    assert "base_model.model.classifier.weight" in tensors  # the head is always saved
    assert all("lora_" in k or k.startswith("base_model.model.classifier.") for k in tensors)
    changed = [k for k in tensors if k.endswith("lora_B.weight") and tensors[k].abs().sum() > 0]
    assert changed
    # checkpoints hold only what trains (+ buffers), with optimizer state for those tensors alone
    step = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    ckpt = load_file(str(step / "model.safetensors"))
    assert not any(k.endswith(("base_layer.weight", "word_embeddings.weight")) for k in ckpt)
    assert sum(v.numel() for k, v in ckpt.items() if "lora_" in k or k.startswith("classifier.")) == \
        summary["trainable_params"]
    state = torch.load(step / "state.pt", weights_only=True)
    n_opt = sum(len(v) > 0 for v in state["optimizer"]["state"].values())
    assert n_opt == sum(1 for k in ckpt if "lora_" in k or k.startswith("classifier."))
    # predict / eval read base + adapter
    data = write_jsonl(tmp_path / "more.jsonl", sentiment_rows(20, seed=9))
    out = cli("eval", str(run_dir), "--data", str(data))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["accuracy"] >= 0.9
    pred = cli("predict", str(run_dir), "superb film", "awful film", "--json")
    assert [json.loads(x)["label"] for x in pred.stdout.splitlines()] == ["pos", "neg"]
    # merge: a plain HF model with the adapter model's outputs
    merged = cli("merge", str(run_dir), str(tmp_path / "merged"))
    assert merged.returncode == 0, merged.stderr
    from transformers import AutoModelForSequenceClassification

    from tunesmith.infer import open_run

    _, adapted, tok, _ = open_run(run_dir)
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    batch = tok(["the film was great", "a dull plot", "awful"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert (plain(**batch).logits - adapted(**batch).logits).abs().max().item() <= 1e-5
    assert not any("lora" in k for k in load_file(str(tmp_path / "merged" / "model.safetensors")))


def test_killed_lora_run_resumes_exactly(tiny_bert, tmp_path):
    cfg = lora_cfg(tiny_bert, tmp_path, checkpoint_every=50)
    cfg["method"]["lora"]["dropout"] = 0.1  # the LoRA dropout stream must be restored too
    path = write_config(tmp_path / "cfg.yaml", cfg)
    assert cli("train", str(path), "--out", str(tmp_path / "full")).returncode == 0
    killed = cli("train", str(path), "--out", str(tmp_path / "k"), env={"TUNESMITH_KILL_AT_STEP": "77"})
    assert killed.returncode == -signal.SIGKILL
    resumed = cli("train", "--resume", str(tmp_path / "k"))
    assert resumed.returncode == 0, resumed.stderr
    a = load_file(str(tmp_path / "full" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "k" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
