"""Whether the [CLS] pooler trains with the head: on by default for a sentence-transformers checkpoint
that pools by mean (its pooler never learned to summarise) under LoRA-like methods, off for a linear
probe (measured: about a point worse there) and for full / freeze (the pooler trains with the body at
train.lr there; at head_lr it cost OOD accuracy), and whatever `model.train_pooler` says when set."""

import json
import shutil

import pytest

from tunesmith.config import config_from_dict
from tunesmith.models import load_text_classifier
from tunesmith.objectives.classify import pooler_trains

POOLER = {"bert.pooler.dense.weight", "bert.pooler.dense.bias"}


@pytest.fixture(scope="module")
def mean_pooled(tiny_bert, tmp_path_factory):
    path = tmp_path_factory.mktemp("st") / "model"
    shutil.copytree(tiny_bert, path)
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": False,
                                                               "pooling_mode_mean_tokens": True}))
    return path


def head(path, method, train_pooler=None, stages=None):
    raw = {"model": {"name": str(path), "max_length": 32, "train_pooler": train_pooler}, "method": {"name": method}}
    if stages:
        raw["stages"] = [{"name": f"s{i}", "method": {"name": m}} for i, m in enumerate(stages)]
    cfg = config_from_dict(raw)
    return set(load_text_classifier(str(path), ["a", "b"], 0, pooler_trains(cfg)).head_params)


def test_mean_pooled_checkpoint_trains_its_pooler_with_the_head_under_adapters(mean_pooled):
    assert POOLER <= head(mean_pooled, "lora")
    assert POOLER <= head(mean_pooled, "dora")
    # full and freeze train the pooler anyway, with the body at train.lr (at head_lr it cost OOD accuracy)
    assert not POOLER & head(mean_pooled, "full")
    assert not POOLER & head(mean_pooled, "freeze")
    assert not POOLER & head(mean_pooled, "linear_probe")
    assert not POOLER & head(mean_pooled, "lora", stages=["linear_probe", "full"])  # LP-FT: the probe comes first
    assert POOLER <= head(mean_pooled, "linear_probe", train_pooler=True)  # asked for
    assert not POOLER & head(mean_pooled, "lora", train_pooler=False)


def test_cls_checkpoint_keeps_its_pooler_unless_asked(tiny_bert):
    assert not POOLER & head(tiny_bert, "lora")
    assert POOLER <= head(tiny_bert, "lora", train_pooler=True)
