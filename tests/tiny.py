"""Tiny random-init models and synthetic data, built from configs in a temp dir: no files, fast tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

POSITIVE = ["good", "great", "fine", "lovely", "superb"]
NEGATIVE = ["bad", "awful", "poor", "dull", "weak"]
FILLER = ["the", "a", "film", "movie", "plot", "actor", "was", "is", "very", "quite", "story", "scene"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def make_tiny_bert(path: Path, dropout: float = 0.1, layers: int = 2, seed: int = 0) -> Path:
    """A 2-layer BERT with a word-level tokenizer over a tiny vocabulary, saved in HF format."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIAL + POSITIVE + NEGATIVE + FILLER + ["fresh", "rotten"])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout, pad_token_id=0)
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def sentiment_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.random() < 0.5
        words = rng.choices(FILLER, k=rng.randint(2, 8)) + [rng.choice(POSITIVE if label else NEGATIVE)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": "pos" if label else "neg"})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def tiny_config(model_dir: Path, data_dir: Path, n_train: int = 96, **train) -> dict:
    """A full run config dict over tiny data files it writes into data_dir."""
    data_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "train": write_jsonl(data_dir / "train.jsonl", sentiment_rows(n_train, seed=1)),
        "validation": write_jsonl(data_dir / "val.jsonl", sentiment_rows(32, seed=2)),
        "test": write_jsonl(data_dir / "test.jsonl", sentiment_rows(32, seed=3)),
    }
    return {
        "model": {"name": str(model_dir), "max_length": 16},
        "method": {"name": "full"},
        "data": {k: str(v) for k, v in files.items()},
        "train": {"epochs": 2, "batch_size": 16, "lr": 1e-3, "log_every": 2, "progress": False,
                  "warmup_ratio": 0.0} | train,
    }


CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + ' ' + message['content'] + "
          "'<|im_end|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant ' }}{% endif %}")


def make_tiny_llama(path: Path, layers: int = 2, seed: int = 0) -> Path:
    """A 2-layer Llama with a word-level ChatML tokenizer where pad == eos == <|im_end|> (like SmolLM2)."""
    import torch
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<unk>", "<|im_start|>", "<|im_end|>", "user", "assistant", "system", "review", "answer",
             "fresh", "rotten", "yes", "no"] + POSITIVE + NEGATIVE + FILLER
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken("<|im_start|>", special=True), AddedToken("<|im_end|>", special=True)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", bos_token="<|im_start|>")
    fast.chat_template = CHATML
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=True)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def chat_rows(n: int, seed: int = 0) -> list[dict]:
    """'Is this review fresh or rotten?' conversations over the sentiment words."""
    return [{"messages": [{"role": "user", "content": "review " + r["text"]},
                          {"role": "assistant", "content": "fresh" if r["label"] == "pos" else "rotten"}]}
            for r in sentiment_rows(n, seed)]


def tiny_cnn():
    """A small torchvision-style CNN (stem, repeated blocks with BatchNorm, pooled linear classifier):
    the `module:factory` a user would bring (`model.name: tiny:tiny_cnn`)."""
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c: int):
            super().__init__()
            self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(c)
            self.act = nn.ReLU()

        def forward(self, x):
            return x + self.act(self.bn(self.conv(x)))

    class TinyCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
            self.blocks = nn.ModuleList([Block(8) for _ in range(3)])
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(8, 5)

        def forward(self, x):
            x = self.stem(x)
            for block in self.blocks:
                x = block(x)
            return self.fc(self.pool(x).flatten(1))

    return TinyCNN()


def pref_rows(n, seed, chat=True):
    out = []
    for r in sentiment_rows(n, seed):
        good, bad = ("fresh", "rotten") if r["label"] == "pos" else ("rotten", "fresh")
        if chat:
            out.append({"prompt": [{"role": "user", "content": "review " + r["text"]}],
                        "chosen": [{"role": "assistant", "content": good}],
                        "rejected": [{"role": "assistant", "content": bad}]})
        else:
            out.append({"prompt": r["text"] + " answer", "chosen": " " + good, "rejected": " " + bad})
    return out


def pref_config(model, tmp, objective, method, chat=True, **train):
    data = tmp / "data"
    data.mkdir(parents=True, exist_ok=True)
    return {"model": {"name": str(model), "max_length": 48}, "objective": objective, "method": method,
            "data": {"train": str(write_jsonl(data / "train.jsonl", pref_rows(64, 1, chat))),
                     "validation": str(write_jsonl(data / "val.jsonl", pref_rows(16, 2, chat))),
                     "test": str(write_jsonl(data / "test.jsonl", pref_rows(16, 3, chat)))},
            "train": {"epochs": 6, "batch_size": 16, "lr": 2e-2, "progress": False, "warmup_ratio": 0.0,
                      "log_every": 1, "checkpoint_minutes": None} | train}


LORA = {"name": "lora", "lora": {"r": 4, "alpha": 8, "target_modules": "all-linear"}}
