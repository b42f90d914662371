"""Frozen-prefix caching: the cached path trains exactly like the real one, on a transformer and a CNN;
it turns itself off when the prefix is not deterministic; a killed run with it resumes bitwise."""

import json
import signal

import pytest
import torch
from helpers import cli, model_weights, write_config
from tiny import tiny_config

from tunesmith.methods.common import frozen_batchnorms, frozen_subtrees, keep_in_eval
from tunesmith.objectives import classify
from tunesmith.objectives import image_classify as ic
from tunesmith.train.prefix_cache import attach_prefix_cache


def _tiny_bert(frozen: tuple[str, ...], mark_eval: bool = True):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
        num_labels=2))
    for name, param in model.named_parameters():
        param.requires_grad_(not name.startswith(frozen))
    if mark_eval:
        keep_in_eval(frozen_subtrees(model))
    return model


def _texts(n: int) -> list:
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(2, 20, (n,), generator=g).tolist()
    return [classify.Encoded([1] + torch.randint(5, 100, (k,), generator=g).tolist() + [2], i % 2)
            for i, k in enumerate(lengths)]


def _step(model, loss_sum, batch):
    """Loss and gradients of one training step, with a fixed dropout stream."""
    model.train()
    model.zero_grad()
    torch.manual_seed(5)
    loss = loss_sum(model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(a, b):
    torch.testing.assert_close(a[0], b[0], rtol=1e-6, atol=1e-6)
    assert a[1].keys() == b[1].keys() and a[1]
    for name in a[1]:
        torch.testing.assert_close(a[1][name], b[1][name], rtol=1e-5, atol=1e-7)


def test_transformer_prefix_cache_trains_like_the_real_prefix():
    frozen = ("bert.embeddings", "bert.encoder.layer.0.", "bert.encoder.layer.1.")
    model = _tiny_bert(frozen)
    items = _texts(50)
    collate = lambda batch: classify.collate(batch, 0)  # noqa: E731
    messages = []
    cache = attach_prefix_cache(model, items, collate, classify.loss_sum, torch.device("cpu"), batch_size=16,
                                say=messages.append)
    assert cache is not None and cache.frozen_blocks == 2
    assert [type(m).__name__ for m in cache.chain] == ["BertEmbeddings", "BertLayer", "BertLayer"]
    assert len(cache.store) == len({tuple(it.input_ids) for it in items}) and "2 frozen blocks" in messages[0]
    batch = collate(items[3:20])  # mixed lengths: cached rows are re-padded to this batch's width
    cached = _step(model, classify.loss_sum, batch)
    assert cache.hits == 1
    cache.detach()
    _assert_same(cached, _step(model, classify.loss_sum, batch))
    assert "forward" not in model.bert.embeddings.__dict__  # the model is restored


def test_cnn_prefix_cache_trains_like_the_real_prefix():
    from tunesmith.models.vision import ImagePrep
    from tunesmith.models.vision_specs import _efficientnet_lite0

    torch.manual_seed(0)
    model = _efficientnet_lite0(32)
    model._fc = torch.nn.Linear(1280, 3)
    frozen = ("_conv_stem", "_bn0") + tuple(f"_blocks.{i}." for i in range(5))
    for name, param in model.named_parameters():
        param.requires_grad_(not name.startswith(frozen))
    keep_in_eval(frozen_subtrees(model))
    keep_in_eval(frozen_batchnorms(model))
    prep = ImagePrep(32, (0.5,) * 3, (0.5,) * 3)
    g = torch.Generator().manual_seed(1)
    items = [ic.ImageItem(torch.randint(0, 255, (3, 32, 32), generator=g, dtype=torch.uint8), i % 3, prep)
             for i in range(24)]
    cache = attach_prefix_cache(model, items, ic.collate, ic.loss_sum, torch.device("cpu"), batch_size=8,
                                say=lambda _: None)
    assert cache is not None and cache.frozen_blocks == 5
    # the stem's activation is shared with the head: it passes the cache through only before the blocks
    assert [type(m).__name__ for m in cache.chain][:3] == ["Conv2dStaticSamePadding", "BatchNorm2d", "ReLU6"]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    batch = ic.collate(items[2:12])
    cached = _step(model, ic.loss_sum, batch)
    cache.detach()
    model.load_state_dict(state)  # the trainable blocks' BatchNorm statistics moved in the first step
    _assert_same(cached, _step(model, ic.loss_sum, batch))


def test_cache_stays_off_when_the_prefix_is_random_in_training():
    # frozen but not kept in eval mode: the embeddings' dropout would differ every epoch
    model = _tiny_bert(("bert.embeddings", "bert.encoder.layer.0."), mark_eval=False)
    messages = []
    cache = attach_prefix_cache(model, _texts(10), lambda b: classify.collate(b, 0), classify.loss_sum,
                                torch.device("cpu"), say=messages.append)
    assert cache is None and "off" in messages[0] and "BertEmbeddings" in messages[0]
    assert attach_prefix_cache(_tiny_bert(()), _texts(10), lambda b: classify.collate(b, 0), classify.loss_sum,
                               torch.device("cpu"), say=messages.append) is None  # nothing frozen


@pytest.mark.slow
def test_freeze_run_with_cache_matches_without_and_resumes_bitwise(tiny_bert, tmp_path):
    cfg = tiny_config(tiny_bert, tmp_path / "d", epochs=3, lr=1e-2, checkpoint_every=4, eval_every=5)
    cfg["method"] = {"name": "freeze", "freeze_embeddings": True, "freeze_layers": 1}
    path = write_config(tmp_path / "cfg.yaml", cfg)
    cached = cli("train", str(path), "--out", str(tmp_path / "cached"))
    assert cached.returncode == 0, cached.stderr
    assert "frozen-prefix cache: 1 frozen block computed once for 96 training examples" in cached.stderr
    plain = cli("train", str(path), "--out", str(tmp_path / "plain"), "--set", "objective.cache_frozen_prefix=false")
    assert plain.returncode == 0 and "frozen-prefix cache" not in plain.stderr
    a, b = model_weights(tmp_path / "cached"), model_weights(tmp_path / "plain")
    for key in a:  # the same training up to float rounding (cached rows were computed at other paddings)
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    final = json.loads((tmp_path / "cached" / "summary.json").read_text())["final"]
    assert final == pytest.approx(json.loads((tmp_path / "plain" / "summary.json").read_text())["final"], abs=1e-4)

    killed = cli("train", str(path), "--out", str(tmp_path / "killed"), env={"TUNESMITH_KILL_AT_STEP": "11"})
    assert killed.returncode == -signal.SIGKILL
    assert cli("train", "--resume", str(tmp_path / "killed")).returncode == 0
    resumed = model_weights(tmp_path / "killed")
    for key in a:
        assert torch.equal(a[key], resumed[key]), key
