"""torchrun with 2 CPU processes (gloo) matches one process with the same global batch: the plain run,
LoRA, a causal LM (target-only logits through DDP), and freeze with the frozen-prefix cache."""

import json

import pytest
from helpers import cli, torchrun, write_config
from safetensors.torch import load_file
from tiny import chat_rows, tiny_config, write_jsonl

pytestmark = pytest.mark.slow


def _lm_config(model, data):
    data.mkdir(parents=True, exist_ok=True)
    return {"model": {"name": str(model), "max_length": 48}, "objective": {"name": "causal_lm", "exact_match": False},
            "method": {"name": "lora", "lora": {"r": 4, "alpha": 8, "target_modules": "all-linear"}},
            "data": {"train": str(write_jsonl(data / "train.jsonl", chat_rows(45, 1))),
                     "validation": str(write_jsonl(data / "val.jsonl", chat_rows(8, 2))),
                     "test": str(write_jsonl(data / "test.jsonl", chat_rows(8, 3)))},
            "train": {"epochs": 2, "batch_size": 8, "grad_accum": 2, "lr": 1e-2, "progress": False,
                      "warmup_ratio": 0.0, "log_every": 1, "eval_every": 3}}


def _case(name, tiny_bert_nodrop, tiny_llama, tmp_path):
    # 90 examples, global batch 16, 2 micro-batches per process: uneven last step included
    common = dict(n_train=90, epochs=2, lr=1e-2, grad_accum=2, eval_every=3, log_every=1)
    if name == "full":
        return tiny_config(tiny_bert_nodrop, tmp_path / "d", **common)
    if name == "lora":
        return tiny_config(tiny_bert_nodrop, tmp_path / "d", **common) | {
            "method": {"name": "lora", "lora": {"r": 4, "alpha": 8, "target_modules": ["query", "value"]}}}
    if name == "freeze-cached":
        return tiny_config(tiny_bert_nodrop, tmp_path / "d", **common) | {
            "method": {"name": "freeze", "freeze_layers": 1}}
    return _lm_config(tiny_llama, tmp_path / "d")


def _weights(run_dir):
    folder = run_dir / ("adapter" if (run_dir / "adapter").exists() else "model")
    return load_file(str(folder / ("adapter_model.safetensors" if folder.name == "adapter" else "model.safetensors")))


@pytest.mark.parametrize("name", ["full", "lora", "causal-lm-lora", "freeze-cached"])
def test_ddp_two_processes_match_single_process(name, tiny_bert_nodrop, tiny_llama, tmp_path):
    path = write_config(tmp_path / "cfg.yaml", _case(name, tiny_bert_nodrop, tiny_llama, tmp_path))
    single = cli("train", str(path), "--out", str(tmp_path / "single"))
    assert single.returncode == 0, single.stderr
    ddp = torchrun(2, "train", str(path), "--out", str(tmp_path / "ddp"))
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = _weights(tmp_path / "single"), _weights(tmp_path / "ddp")
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, worst
    s1 = json.loads((tmp_path / "single" / "summary.json").read_text())
    s2 = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert s2["world_size"] == 2 and s1["steps"] == s2["steps"]
    for key, value in s1["final"].items():
        assert s2["final"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    if name == "freeze-cached":
        assert s1["prefix_cache"][0] and s2["prefix_cache"][0]  # both took the cached path
    # only rank 0 wrote: one metrics line per step, not two; and the logged loss is the same loss
    lines = [[json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
             for run in ("single", "ddp")]
    losses = [{x["step"]: x["train_loss"] for x in run_lines if "train_loss" in x} for run_lines in lines]
    assert list(losses[1]) == sorted(set(losses[1])) == list(losses[0])
    assert list(losses[1].values()) == pytest.approx(list(losses[0].values()), rel=1e-4)
