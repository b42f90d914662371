"""A byte-level BPE ("gpt2") tokenizer as GGUF metadata, the way llama.cpp's convert_hf_to_gguf.py writes it.

llama.cpp re-implements each tokenizer's pre-tokenizer (how text is split before BPE) and picks it by name
(`tokenizer.ggml.pre`). The name is not in the tokenizer's files: llama.cpp identifies it by hashing the
tokenization of a fixed check string, and so do we, with the hashes its converter records for the
tokenizers of Llama-architecture models. An unknown hash is an error, not a guess: a wrong pre-tokenizer
splits text differently and quietly degrades every answer.
"""

from __future__ import annotations

import json
from hashlib import sha256
from typing import Any

from tunesmith.errors import TunesmithError

# llama.cpp convert_hf_to_gguf.py, get_vocab_base_pre: the string whose tokens identify a pre-tokenizer
CHECK_TEXT = ("\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ "
              "🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
              "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
              "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL")

# sha256 of str(tokenizer.encode(CHECK_TEXT)) -> llama.cpp's pre-tokenizer name (from its converter's table;
# only tokenizers that ship with Llama-architecture models)
PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM, SmolLM2
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3, 3.1, 3.2
    "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e": "falcon3",  # Falcon3 (Llama layout)
    "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754": "deepseek-llm",
    "347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821": "deepseek-coder",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
}

# gguf.TokenType values (kept here so this module imports without gguf)
NORMAL, UNUSED, CONTROL, USER_DEFINED = 1, 5, 3, 4


def pre_tokenizer_name(tokenizer: Any) -> str:
    """llama.cpp's name for this tokenizer's pre-tokenizer, or an error saying what to use instead."""
    digest = sha256(str(tokenizer.encode(CHECK_TEXT)).encode()).hexdigest()
    if digest not in PRE_TOKENIZERS:
        raise TunesmithError(
            f"this model's tokenizer splits text in a way tunesmith cannot name for llama.cpp (check hash "
            f"{digest[:16]}...; known: {', '.join(sorted(set(PRE_TOKENIZERS.values())))}), so a GGUF file would "
            "tokenize differently from training; export with --format hf and convert that folder with llama.cpp's "
            "convert_hf_to_gguf.py, which knows more tokenizers")
    return PRE_TOKENIZERS[digest]


def _backend_json(tokenizer: Any) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TunesmithError(f"the tokenizer ({type(tokenizer).__name__}) has no fast (tokenizers) form, which the "
                             "GGUF export reads; use --format hf")
    return json.loads(backend.to_str())


def _byte_level(spec: dict | None) -> dict | None:
    """The ByteLevel step of a pre-tokenizer (alone or in a Sequence), or None."""
    if not spec:
        return None
    if spec.get("type") == "ByteLevel":
        return spec
    return next((s for s in map(_byte_level, spec.get("pretokenizers") or []) if s is not None), None)


def _looks_special(token: str) -> bool:
    """Added tokens some tokenizers forget to mark special (llama.cpp's does_token_look_special)."""
    return (token in ("<pad>", "<mask>") or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<unused") and token.endswith(">")))


def _merges(model: dict) -> list[str]:
    """"a b" strings; tokenizers >= 0.20 store pairs, whose spaces llama.cpp expects as U+0120 + 256."""
    merges = model.get("merges") or []
    if merges and not isinstance(merges[0], str):
        return [" ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part) for part in pair)
                for pair in merges]
    return list(merges)


def _adds(tokenizer: Any, token_id: int | None) -> tuple[bool, bool]:
    """(prepends token_id, appends token_id) when encoding with special tokens: what the tokenizer does,
    read from its behaviour rather than from config flags that disagree across versions."""
    if token_id is None:
        return False, False
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    if full == plain:
        return False, False
    return full[:1] == [token_id] and plain[:1] != [token_id], full[-1:] == [token_id] and plain[-1:] != [token_id]


def gpt2_vocab(tokenizer: Any, vocab_size: int) -> dict[str, Any]:
    """Everything llama.cpp reads of a byte-level BPE tokenizer: tokens, their types, merges, the
    pre-tokenizer's name, special token ids, whether BOS/EOS are added, the chat template."""
    spec = _backend_json(tokenizer)
    model = spec.get("model") or {}
    level = _byte_level(spec.get("pre_tokenizer"))
    if model.get("type") != "BPE" or level is None:
        kind = model.get("type", "?") + ("" if level is not None else ", not byte-level")
        raise TunesmithError(f"the tokenizer is {kind}; tunesmith writes only byte-level BPE (GPT-2 style) "
                             "tokenizers to GGUF (SmolLM2, Llama 3); use --format hf and llama.cpp's "
                             "convert_hf_to_gguf.py for SentencePiece tokenizers")
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise TunesmithError(f"the tokenizer has ids up to {max(vocab.values())} but the model only {vocab_size} "
                             "embeddings; this run's tokenizer and weights do not belong together")
    by_id = {i: t for t, i in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        token = by_id.get(i)
        if token is None:  # embedding rows past the tokenizer (padded vocab), as llama.cpp names them
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added:
            if not added[i].normalized:  # llama.cpp expects added tokens in their normalised form
                token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False))
            types.append(CONTROL if added[i].special or _looks_special(token) else USER_DEFINED)
            tokens.append(token)
        else:
            tokens.append(token)
            types.append(NORMAL)
    add_bos, _ = _adds(tokenizer, tokenizer.bos_token_id)
    _, add_eos = _adds(tokenizer, tokenizer.eos_token_id)
    return {
        "pre": pre_tokenizer_name(tokenizer), "tokens": tokens, "types": types, "merges": _merges(model),
        "special_ids": {k: getattr(tokenizer, f"{k}_token_id", None) for k in ("bos", "eos", "unk", "pad")},
        "add_bos": add_bos, "add_eos": add_eos, "add_space_prefix": bool(level.get("add_prefix_space", False)),
        "chat_template": getattr(tokenizer, "chat_template", None),
    }


def write_vocab(writer: Any, vocab: dict[str, Any]) -> None:
    """Add `gpt2_vocab`'s result to a gguf.GGUFWriter."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab["pre"])
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    writer.add_token_merges(vocab["merges"])
    ids = vocab["special_ids"]
    for kind, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                      ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        if ids[kind] is not None:
            add(ids[kind])
    writer.add_add_bos_token(vocab["add_bos"])
    writer.add_add_eos_token(vocab["add_eos"])
    writer.add_add_space_prefix(vocab["add_space_prefix"])
    template = vocab["chat_template"]
    if isinstance(template, dict):  # named templates (transformers keeps them as a dict)
        template = [{"name": name, "template": text} for name, text in template.items()]
    if template:
        writer.add_chat_template(template)
