"""Supervised fine-tuning runs end to end on a tiny Llama: full, LoRA under gradient checkpointing, prompt."""

import json

import pytest
import torch
from helpers import cli
from safetensors.torch import load_file
from tiny import chat_rows, write_jsonl

from tunesmith.config import config_from_dict
from tunesmith.run import run

pytestmark = pytest.mark.slow


def sft_config(model, tmp, method, objective=None, **train):
    data = tmp / "data"
    data.mkdir(parents=True, exist_ok=True)
    return {
        "model": {"name": str(model), "max_length": 48},
        "method": method,
        "objective": {"name": "causal_lm"} | (objective or {}),
        "data": {"train": str(write_jsonl(data / "train.jsonl", chat_rows(96, 1))),
                 "validation": str(write_jsonl(data / "val.jsonl", chat_rows(16, 2))),
                 "test": str(write_jsonl(data / "test.jsonl", chat_rows(24, 3)))},
        "train": {"epochs": 40, "batch_size": 16, "lr": 1e-2, "progress": False, "warmup_ratio": 0.0,
                  "early_stopping": {"metric": "val_loss"}} | train,
    }


def test_full_sft_learns_the_answers_and_generates(tiny_llama, tmp_path):
    s = run(config_from_dict(sft_config(tiny_llama, tmp_path, {"name": "full"}, {"packing": True})), tmp_path / "r")
    assert s["final"]["test_exact_match"] >= 0.9  # answers "fresh"/"rotten" and stops (EOS learned)
    assert s["final"]["val_perplexity"] < 2.0
    out = cli("generate", str(tmp_path / "r"), "review the film was great", "--max-new-tokens", "5")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[1].strip() == "fresh"


def test_lora_under_gradient_checkpointing_still_trains(tiny_llama, tmp_path):
    method = {"name": "lora", "lora": {"r": 4, "alpha": 8, "target_modules": "all-linear"}}
    cfg = sft_config(tiny_llama, tmp_path, method, gradient_checkpointing=True, epochs=4)
    s = run(config_from_dict(cfg), tmp_path / "r")
    tensors = load_file(str(tmp_path / "r" / "adapter" / "adapter_model.safetensors"))
    b = [v for k, v in tensors.items() if k.endswith("lora_B.weight")]
    assert b and all(v.abs().sum() > 0 for v in b)  # every B moved away from its zero init
    assert json.loads((tmp_path / "r" / "adapter" / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    assert s["final"]["val_loss"] < 1.5


def test_prompt_tuning_run_trains_only_the_prompt(tiny_llama, tmp_path):
    method = {"name": "prompt", "prompt": {"num_virtual_tokens": 4}}
    s = run(config_from_dict(sft_config(tiny_llama, tmp_path, method, epochs=3, lr=5e-2)), tmp_path / "r")
    assert s["trainable_params"] == 4 * 32
    weights = load_file(str(tmp_path / "r" / "adapter" / "adapter_model.safetensors"))
    assert list(weights) == ["prompt_embeddings"] and weights["prompt_embeddings"].shape == (4, 32)
    from tunesmith.infer import open_run

    _, model, tok, _ = open_run(tmp_path / "r")
    assert torch.equal(model.prompt_embeddings.weight, weights["prompt_embeddings"])
    # it learned: the prompt moved away from its initial tokens' embeddings, and the loss fell
    from tunesmith.methods.prompt import initial_prompt
    from tunesmith.models import load_causal_lm

    start = initial_prompt(load_causal_lm(str(tiny_llama), 0), 4, "vocab", None, seed=0)
    assert (weights["prompt_embeddings"] - start).abs().max().item() > 1e-2
    losses = [json.loads(x)["train_loss"] for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
              if "train_loss" in x]
    assert losses[-1] < losses[0]
