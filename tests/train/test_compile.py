"""train.compile: regional torch.compile of the repeated blocks that train, same results as eager."""

import pytest
from helpers import cli, model_weights, write_config
from tiny import tiny_config

from tunesmith.train.compile import compile_available, repeated_blocks


def test_repeated_blocks_are_the_layers(tiny_bert):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    blocks = repeated_blocks(model)
    assert blocks and blocks == list(model.bert.encoder.layer)  # not their submodules, not the whole model


@pytest.mark.slow
@pytest.mark.skipif(not compile_available()[0], reason="torch.compile needs a C++ compiler on CPU")
def test_compiled_run_matches_eager(tiny_bert_nodrop, tmp_path):
    cfg = tiny_config(tiny_bert_nodrop, tmp_path / "d", n_train=48, epochs=1, lr=1e-2)
    eager = cli("train", str(write_config(tmp_path / "eager.yaml", cfg)), "--out", str(tmp_path / "eager"))
    assert eager.returncode == 0, eager.stderr[-2000:]
    cfg["train"]["compile"] = True
    compiled = cli("train", str(write_config(tmp_path / "compiled.yaml", cfg)), "--out", str(tmp_path / "compiled"),
                   timeout=900)
    assert compiled.returncode == 0, compiled.stderr[-3000:]
    assert "repeated blocks that train will be compiled" in compiled.stderr + compiled.stdout
    a, b = model_weights(tmp_path / "eager"), model_weights(tmp_path / "compiled")
    assert a.keys() == b.keys()  # compiling in place keeps the checkpoint's names
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-4, worst
