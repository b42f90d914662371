"""Methods decide what learns; frozen weights must come out of training bit-identical."""

import pytest
import torch
from safetensors.torch import load_file
from tiny import tiny_config

from tunesmith.config import MethodConfig, config_from_dict
from tunesmith.errors import ConfigError
from tunesmith.methods import METHODS, count_parameters
from tunesmith.models import load_text_classifier
from tunesmith.run import run


def loaded(tiny_bert):
    return load_text_classifier(str(tiny_bert), ["neg", "pos"], init_seed=0)


def trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_head_is_what_the_checkpoint_lacked(tiny_bert):
    assert loaded(tiny_bert).head_params == ["classifier.weight", "classifier.bias"]


def test_linear_probe_and_bitfit_choose_the_right_parameters(tiny_bert):
    m = loaded(tiny_bert)
    METHODS["linear_probe"]().apply(m, MethodConfig(name="linear_probe"))
    assert trainable(m.model) == {"classifier.weight", "classifier.bias"}
    m = loaded(tiny_bert)
    METHODS["bitfit"]().apply(m, MethodConfig(name="bitfit"))
    names = trainable(m.model)
    assert "classifier.weight" in names and all(n.endswith(".bias") for n in names - {"classifier.weight"})
    assert "bert.encoder.layer.0.attention.self.query.bias" in names


def test_freeze_layers_and_embeddings(tiny_bert):
    m = loaded(tiny_bert)
    METHODS["freeze"]().apply(m, MethodConfig(name="freeze", freeze_layers=1, freeze_embeddings=True))
    names = trainable(m.model)
    assert not any(n.startswith(("bert.embeddings.", "bert.encoder.layer.0.")) for n in names)
    assert any(n.startswith("bert.encoder.layer.1.") for n in names)
    assert {"classifier.weight", "bert.pooler.dense.weight"} <= names
    t, total = count_parameters(m.model)
    assert 0 < t < total


def test_freeze_patterns_and_errors(tiny_bert):
    m = loaded(tiny_bert)
    METHODS["freeze"]().apply(m, MethodConfig(name="freeze", freeze_embeddings=False,
                                            freeze_patterns=["*.attention.*"]))
    assert not any(".attention." in n for n in trainable(m.model))
    assert "bert.embeddings.word_embeddings.weight" in trainable(m.model)
    with pytest.raises(ConfigError, match="matches no parameter"):
        METHODS["freeze"]().apply(m, MethodConfig(name="freeze", freeze_patterns=["nothing.*"]))
    with pytest.raises(ConfigError, match="freeze_layers: 5 > the model's 2 blocks"):
        METHODS["freeze"]().apply(m, MethodConfig(name="freeze", freeze_layers=5))
    with pytest.raises(ConfigError, match="head cannot be frozen"):
        METHODS["freeze"]().apply(m, MethodConfig(name="freeze", freeze_embeddings=False,
                                                freeze_patterns=["classifier.*"]))


@pytest.mark.parametrize("method", [
    {"name": "freeze", "freeze_layers": 1, "freeze_embeddings": True},
    {"name": "linear_probe"},
])
def test_frozen_weights_bit_identical_after_training(tiny_bert, tmp_path, method):
    base = load_file(str(tiny_bert / "model.safetensors"))
    cfg = tiny_config(tiny_bert, tmp_path / "data", epochs=3, lr=1e-2)
    cfg["method"] = method
    run(config_from_dict(cfg), tmp_path / "run")
    after = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    frozen = [k for k in base if (method["name"] == "linear_probe" or k.startswith(("embeddings.", "encoder.layer.0.")))]
    assert frozen
    changed = [k for k in base if not torch.equal(base[k], after["bert." + k])]
    for key in frozen:
        assert torch.equal(base[key], after["bert." + key]), key
    if method["name"] == "freeze":  # the unfrozen layers did move
        assert any(k.startswith("encoder.layer.1.") for k in changed)
    assert not torch.equal(after["classifier.weight"], torch.zeros_like(after["classifier.weight"]))
