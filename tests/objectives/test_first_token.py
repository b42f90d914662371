"""The last encoder layer at position 0 only: the same logits and gradients as the full forward on the
encoders it is made for, never installed where the head reads other positions, and a run with it ends
where a run without it does (with gradient checkpointing and the frozen-prefix cache too)."""

import json
from types import SimpleNamespace

import pytest
import torch
from tiny import tiny_config
from torch import nn

from tunesmith.config import config_from_dict
from tunesmith.objectives import classify
from tunesmith.objectives.first_token import install_first_token_only, remove_first_token_only
from tunesmith.run import run


def _classifier(kind: str, impl: str = "sdpa") -> nn.Module:
    import transformers as tf

    shape = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                 max_position_embeddings=64, num_labels=3, hidden_dropout_prob=0.0,
                 attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    if kind == "bert":
        model = tf.BertForSequenceClassification(tf.BertConfig(**shape))
    elif kind == "roberta":
        model = tf.RobertaForSequenceClassification(tf.RobertaConfig(pad_token_id=1, **shape))
    else:
        model = tf.ElectraForSequenceClassification(tf.ElectraConfig(embedding_size=32, **shape))
    model.set_attn_implementation(impl)
    return model


def _batch():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 100, (4, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # padded rows: the mask must be cut to the one query row correctly
    mask[3, 9:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 2, 1])}


def _step(model, batch):
    model.train()
    model.zero_grad()
    loss = classify.loss_sum(model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind,impl", [("bert", "sdpa"), ("bert", "eager"), ("roberta", "sdpa"), ("electra", "eager")])
def test_same_loss_and_gradients_as_the_full_forward(kind, impl):
    model, batch = _classifier(kind, impl), _batch()
    full = _step(model, batch)
    last = model.base_model.encoder.layer[-1]
    seen = []
    hook = last.intermediate.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
    assert install_first_token_only(model)
    ours = _step(model, batch)
    hook.remove()
    assert seen[-1] == (4, 1, 32)  # the last feed-forward ran on one position per example
    assert seen[:2] == [(2, 9, 32), (2, 1, 32)]  # the install check: full forward, then ours
    torch.testing.assert_close(ours[0], full[0], rtol=1e-5, atol=1e-6)
    assert ours[1].keys() == full[1].keys() and len(ours[1]) == len(list(model.parameters()))
    for name in full[1]:
        torch.testing.assert_close(ours[1][name], full[1][name], rtol=1e-4, atol=1e-6)
    remove_first_token_only(model)
    assert "forward" not in last.attention.__dict__
    torch.testing.assert_close(_step(model, batch)[0], full[0], rtol=0, atol=0)


def test_a_deep_copy_runs_on_its_own_weights():
    """The shortcut is a method bound to the module, so a copied model's shortcut uses the copy."""
    import copy

    model, batch = _classifier("bert"), _batch()
    assert install_first_token_only(model)
    twin = copy.deepcopy(model).eval()
    attention = twin.bert.encoder.layer[-1].attention
    assert attention.forward.__self__ is attention
    with torch.no_grad():
        twin.bert.encoder.layer[-1].attention.self.query.weight.mul_(3.0)
        mine = model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        theirs = twin(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        remove_first_token_only(twin)
        reference = twin(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert not torch.allclose(mine, theirs)
    torch.testing.assert_close(theirs, reference, rtol=1e-5, atol=1e-6)


class _MeanPooled(nn.Module):
    """A head that reads every position: the shortcut would change its logits."""

    def __init__(self):
        super().__init__()
        from transformers import BertConfig, BertModel

        torch.manual_seed(0)
        self.config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=64)
        self.bert = BertModel(self.config, add_pooling_layer=False)
        self.score = nn.Linear(32, 2)

    def forward(self, input_ids, attention_mask):
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return SimpleNamespace(logits=self.score(hidden.mean(1)))


def test_not_installed_where_the_head_reads_other_positions():
    model = _MeanPooled()
    assert not install_first_token_only(model)
    assert "forward" not in model.bert.encoder.layer[-1].attention.__dict__  # the model's own forward is back
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    distil = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=4,
                                                                  hidden_dim=64))
    assert not install_first_token_only(distil)  # another attention shape: left alone


@pytest.mark.parametrize("method,train", [("lora", {"gradient_checkpointing": True}), ("linear_probe", {})])
def test_a_run_ends_where_the_full_forward_run_ends(tiny_bert_nodrop, tmp_path, monkeypatch, capsys, method, train):
    """Same final metrics with and without; under linear_probe the frozen-prefix cache then keeps one
    row per example, and under gradient checkpointing the recomputed layer takes the same shortcut."""
    cfg = tiny_config(tiny_bert_nodrop, tmp_path / "data", n_train=64, **train)
    cfg["method"] = {"name": method} | ({"lora": {"r": 4, "target_modules": ["query", "value"]}}
                                        if method == "lora" else {})
    cfg["train"] |= {"lr": 5e-2 if method == "linear_probe" else 2e-2, "epochs": 3}
    ours = run(config_from_dict(cfg), tmp_path / "ours")
    said = capsys.readouterr().err
    assert "last encoder layer computes that position alone" in said
    monkeypatch.setattr(classify, "FIRST_TOKEN_ONLY", False)
    full = run(config_from_dict(cfg), tmp_path / "full")
    assert "last encoder layer" not in capsys.readouterr().err
    losses = [[row["train_loss"] for row in map(json.loads, (tmp_path / name / "metrics.jsonl").read_text().splitlines())
               if "train_loss" in row] for name in ("ours", "full")]
    assert len(losses[0]) >= 4 and len(set(losses[0])) > 1
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)  # step by step
    for key in ("test_loss", "test_accuracy", "val_loss"):
        assert ours["final"][key] == pytest.approx(full["final"][key], rel=1e-4, abs=1e-6), key
    if method == "linear_probe":
        mine, theirs = ours["prefix_cache"][0], full["prefix_cache"][0]
        assert mine["examples"] == theirs["examples"] == 64
        assert mine["mb"] < theirs["mb"] / 3  # one hidden state per example instead of one per token
