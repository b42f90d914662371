"""Every saved model, adapter and merged model gets a README.md model card: the base by its public Hub
id, the metrics, and load code that runs as written (the base swapped for the local copy, offline)."""

import contextlib
import io
import json
import re

import pytest
import torch
import yaml
from tiny import chat_rows, tiny_config, write_jsonl

from tunesmith.config import config_from_dict
from tunesmith.infer import merge_run, open_run
from tunesmith.run import run

pytestmark = pytest.mark.slow

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def card(folder):
    text = (folder / "README.md").read_text()
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


def python_block(body: str) -> str:
    return re.search(r"```python\n(.*?)```", body, re.S).group(1)


def run_snippet(code: str) -> tuple[dict, str]:
    """Exec a card's code; (its variables, what it printed)."""
    scope, out = {}, io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), scope)
    return scope, out.getvalue()


def tunesmith_logits(run_dir, text="a gorgeous, witty film"):
    _, model, tokenizer, _ = open_run(run_dir)
    with torch.no_grad():
        return model(**tokenizer([text], return_tensors="pt", truncation=True)).logits


@pytest.fixture(scope="module")
def minilm_config(tmp_path_factory):
    from tunesmith.models.registry import resolve_model_dir

    try:
        resolve_model_dir("minilm-l6")
    except Exception as e:  # the packaged model is installed by `make`
        pytest.skip(f"built-in minilm-l6 not installed: {e}")
    tmp = tmp_path_factory.mktemp("card-data")
    return lambda method: tiny_config("minilm-l6", tmp / "d", n_train=32, max_steps=2, eval_every=2) | {
        "method": method}


def test_a_classification_run_gets_a_card_that_loads_it(minilm_config, tmp_path):
    summary = run(config_from_dict(minilm_config({"name": "full"})), tmp_path / "r")
    front, body = card(tmp_path / "r" / "model")
    assert front["base_model"] == MINILM and front["library_name"] == "transformers"
    assert front["pipeline_tag"] == "text-classification" and front["license"] == "mit"
    assert f"base_model:finetune:{MINILM}" in front["tags"]
    assert f"| test_accuracy | {summary['final']['test_accuracy']:.4f} |" in body
    assert "train: `train.jsonl`" in body and "train 32" in body.replace(",", "")
    assert f'tunesmith predict {tmp_path / "r"}' in body
    scope, printed = run_snippet(python_block(body))
    assert printed.split()[0] in ("pos", "neg")
    assert torch.allclose(scope["logits"], tunesmith_logits(tmp_path / "r"), atol=1e-5)


def test_a_lora_run_names_its_public_base_and_its_card_code_loads_the_adapter(minilm_config, tmp_path):
    method = {"name": "lora", "lora": {"r": 4, "alpha": 8}}
    run(config_from_dict(minilm_config(method)), tmp_path / "r")
    adapter = tmp_path / "r" / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == MINILM
    local = json.loads((adapter / "tunesmith.json").read_text())["base_source"]
    assert (tmp_path / "r" / "model").exists() is False

    front, body = card(adapter)
    assert front["base_model"] == MINILM and front["library_name"] == "peft"
    assert f"base_model:adapter:{MINILM}" in front["tags"]
    assert "r=4, alpha=8" in body and "targets: query, value" in body
    code = python_block(body)
    assert f'base = "{MINILM}"' in code
    # offline here: the same code with the base pointed at the local copy tunesmith trained on
    scope, _ = run_snippet(code.replace(f'"{MINILM}"', json.dumps(local), 1))
    theirs = scope["logits"]
    assert torch.allclose(theirs, tunesmith_logits(tmp_path / "r"), atol=1e-5)

    merged = merge_run(tmp_path / "r", tmp_path / "merged")
    front, body = card(merged)
    assert front["base_model"] == MINILM and front["library_name"] == "transformers"
    assert "merged into the base weights" in body
    scope, _ = run_snippet(python_block(body))
    assert torch.allclose(scope["logits"], theirs, atol=1e-4)


def test_a_causal_lm_adapter_card_generates(tiny_llama, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    cfg = {"model": {"name": str(tiny_llama), "max_length": 48},
           "method": {"name": "lora", "lora": {"r": 4, "alpha": 8}}, "objective": {"name": "causal_lm"},
           "data": {"train": str(write_jsonl(data / "train.jsonl", chat_rows(32, 1))),
                    "validation": str(write_jsonl(data / "val.jsonl", chat_rows(8, 2))),
                    "test": str(write_jsonl(data / "test.jsonl", chat_rows(8, 3)))},
           "train": {"max_steps": 2, "batch_size": 16, "progress": False}}
    run(config_from_dict(cfg), tmp_path / "r")
    front, body = card(tmp_path / "r" / "adapter")
    assert "base_model" not in front  # a local directory has no public name
    assert front["pipeline_tag"] == "text-generation" and front["library_name"] == "peft"
    assert f'tunesmith generate {tmp_path / "r"}' in body
    code = python_block(body)
    assert "apply_chat_template" in code  # it trained on conversations
    scope, printed = run_snippet(code)
    assert scope["out"].shape[1] > scope["inputs"]["input_ids"].shape[1]
