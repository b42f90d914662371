"""train.compile: regional torch.compile of the repeated blocks that train, same results as eager."""

import pytest
from helpers import model_weights
from tiny import tiny_config

from tunesmith.config import config_from_dict
from tunesmith.run import run
from tunesmith.train.compile import compile_available, repeated_blocks


def test_repeated_blocks_are_the_layers(tiny_bert):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    blocks = repeated_blocks(model)
    assert blocks and blocks == list(model.bert.encoder.layer)  # not their submodules, not the whole model


@pytest.mark.slow
@pytest.mark.skipif(not compile_available()[0], reason="torch.compile needs a C++ compiler on CPU")
def test_compiled_run_matches_eager(tiny_bert_nodrop, tmp_path, capsys):
    import torch._dynamo
    from torch._dynamo.utils import counters

    cfg = tiny_config(tiny_bert_nodrop, tmp_path / "d", n_train=48, epochs=1, lr=1e-2)
    run(config_from_dict(cfg), tmp_path / "eager")
    cfg["train"]["compile"] = True
    torch._dynamo.reset()
    counters.clear()
    try:
        run(config_from_dict(cfg), tmp_path / "compiled")
        # the blocks really ran as captured graphs: no silent fallback to eager, no graph break inside
        assert counters["stats"]["unique_graphs"] >= 1 and counters["frames"]["ok"] >= 1
        assert not counters["graph_break"], dict(counters["graph_break"])
    finally:
        torch._dynamo.reset()
    assert "repeated blocks that train will be compiled" in capsys.readouterr().err
    a, b = model_weights(tmp_path / "eager"), model_weights(tmp_path / "compiled")
    assert a.keys() == b.keys()  # compiling in place keeps the checkpoint's names
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-4, worst
