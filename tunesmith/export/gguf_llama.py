"""A Hugging Face Llama causal LM (weights + tokenizer) written as one GGUF file that llama.cpp runs.

Follows llama.cpp's convert_hf_to_gguf.py (class LlamaModel) so the file is what its own converter would
write: the same metadata keys, tensor names and layouts, and the same dtype rules (norms and other 1-D
tensors stay f32; a matrix whose rows do not split into 32-value blocks falls back from q8_0 to f16).

Two layout details that matter:
- llama.cpp applies rotary embeddings to interleaved pairs (x0, x1), (x2, x3)...; Hugging Face's Llama
  rotates the two halves of each head. The q and k projections' rows are permuted so both compute the same
  thing (`permute_qk`); transformers' GGUF reader undoes exactly this permutation.
- Tied input/output embeddings are written once: llama.cpp uses token_embd.weight as the output layer
  when output.weight is absent.

Tensors are converted one at a time while the file is written, so memory stays at the model plus one tensor.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tunesmith.errors import TunesmithError
from tunesmith.export.gguf_vocab import gpt2_vocab, write_vocab

GGUF_DTYPES = ("f32", "f16", "q8_0")
_BIG = 50_000_000  # parameters above which the tensor loop shows a progress bar (on a terminal)


def unsupported(model: nn.Module) -> str | None:
    """Why this model cannot be written as GGUF here (None: it can). Checked before anything is written."""
    config = getattr(model, "config", None)
    name = type(model).__name__
    if config is None or getattr(config, "model_type", None) != "llama" or name != "LlamaForCausalLM":
        family = getattr(config, "model_type", None) or "not a Hugging Face transformers model"
        return (f"the model is a {name} ({family}); tunesmith writes GGUF only for Llama-family causal language "
                "models (LlamaForCausalLM, e.g. smollm2-135m, Llama 3); --format hf works for every run, and "
                "llama.cpp's convert_hf_to_gguf.py can convert that folder if it supports the family")
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(config, flag, False):
            return f"the Llama config sets {flag}: true, which the GGUF export does not write; use --format hf"
    rope_type = _rope(config)[1]
    if rope_type not in (None, "default"):
        return (f"the model uses {rope_type!r} RoPE scaling, which the GGUF export does not write (only plain RoPE); "
                "use --format hf and llama.cpp's convert_hf_to_gguf.py")
    return None


def _rope(config: Any) -> tuple[float, str | None]:
    """(rope theta, rope type): transformers 5 keeps them in rope_parameters, 4.x in rope_theta/rope_scaling."""
    params = getattr(config, "rope_parameters", None) or {}
    scaling = getattr(config, "rope_scaling", None) or {}
    theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    return float(theta), params.get("rope_type") or scaling.get("rope_type") or scaling.get("type")


def permute_qk(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rows of a q/k projection reordered from HF's half-split RoPE layout to llama.cpp's interleaved one
    (llama.cpp LlamaModel.permute); `n_head` is the number of heads this projection has (kv heads for k)."""
    return (weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def _tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(GGUF name, tensor in the layout llama.cpp expects), in state-dict order."""
    import gguf

    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise TunesmithError(f"the model has a tensor {hf_name!r} that has no place in a llama.cpp Llama "
                                 "file; use --format hf")
        if hf_name.endswith("q_proj.weight"):
            tensor = permute_qk(tensor, config.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            tensor = permute_qk(tensor, config.num_key_value_heads)
        yield name, tensor


def _qtype(name: str, shape: tuple[int, ...], dtype: str):
    """The GGML type one tensor is stored in (llama.cpp's converter's rules)."""
    import gguf

    T = gguf.GGMLQuantizationType
    if dtype == "f32" or len(shape) <= 1 or name.endswith("_norm.weight"):
        return T.F32
    if dtype == "f16":
        return T.F16
    block = gguf.GGML_QUANT_SIZES[T.Q8_0][0]
    return T.Q8_0 if shape[-1] % block == 0 else T.F16  # rows must split into whole blocks


def _encode(tensor: torch.Tensor, qtype) -> np.ndarray:
    import gguf

    return gguf.quants.quantize(tensor.detach().to(torch.float32).cpu().numpy(), qtype)


def _layout(shape: tuple[int, ...], qtype) -> tuple[np.dtype, tuple[int, ...], int]:
    """(numpy dtype, numpy shape, bytes) of a tensor once encoded, known without encoding it."""
    import gguf

    T = gguf.GGMLQuantizationType
    if qtype in (T.F32, T.F16):
        np_dtype = np.dtype(np.float32 if qtype == T.F32 else np.float16)
        return np_dtype, shape, math.prod(shape) * np_dtype.itemsize
    byte_shape = gguf.quant_shape_to_byte_shape(shape, qtype)
    return np.dtype(np.uint8), byte_shape, math.prod(byte_shape)


def write_llama_gguf(model: nn.Module, tokenizer: Any, path: Path, dtype: str = "f16", name: str = "") -> Path:
    """Write `model` (a LlamaForCausalLM, adapters already merged) and its tokenizer to `path` as GGUF."""
    import gguf

    if dtype not in GGUF_DTYPES:
        raise TunesmithError(f"dtype {dtype!r} is not one GGUF export writes; use one of {', '.join(GGUF_DTYPES)}")
    problem = unsupported(model)
    if problem:
        raise TunesmithError(problem)
    config = model.config
    vocab = gpt2_vocab(tokenizer, config.vocab_size)  # before the file exists: tokenizer errors write nothing
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype]
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    theta, _ = _rope(config)

    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_type(gguf.GGUFType.MODEL)
    if name:
        writer.add_name(name)
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(theta)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    write_vocab(writer, vocab)

    plan = []  # header first (it lists every tensor's shape, type and size), then the data tensor by tensor
    for gguf_name, tensor in _tensors(model):
        shape = tuple(tensor.shape)
        qtype = _qtype(gguf_name, shape, dtype)
        np_dtype, np_shape, nbytes = _layout(shape, qtype)
        writer.add_tensor_info(gguf_name, np_shape, np_dtype, nbytes, raw_dtype=qtype)
        plan.append((gguf_name, qtype))
    from tqdm import tqdm

    big = sum(p.numel() for p in model.parameters()) > _BIG
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        bar = tqdm(plan, desc=f"writing {path.name}", unit="tensor", file=sys.stderr, disable=None if big else True)
        for (planned, qtype), (gguf_name, tensor) in zip(bar, _tensors(model), strict=True):
            assert planned == gguf_name  # the same walk over the same state dict
            writer.write_tensor_data(_encode(tensor, qtype))
    finally:
        writer.close()
    return path
