"""The packaged MiniLM-L6 and the built-in Rotten Tomatoes set, end to end (a few steps)."""

import pytest
import torch
from safetensors.torch import load_file

from tunesmith.config import config_from_dict
from tunesmith.models import MODELS
from tunesmith.run import run

pytestmark = pytest.mark.slow


def test_minilm_freeze_on_rotten_tomatoes(tmp_path):
    cfg = {
        "model": {"name": "minilm-l6", "max_length": 48},
        "method": {"name": "freeze", "freeze_layers": 4, "freeze_embeddings": True},
        "data": {"builtin": "rotten-tomatoes", "max_train_samples": 96, "max_eval_samples": 64},
        "train": {"epochs": 1, "batch_size": 16, "lr": 1e-4, "progress": False, "log_every": 1},
    }
    summary = run(config_from_dict(cfg), tmp_path / "run")
    assert summary["label_names"] == ["fresh", "rotten"]
    assert summary["total_params"] == 22_713_986  # 22.7M encoder + 770 head parameters
    # 2 unfrozen layers (2 x 1,774,464) + pooler (147,840) + head (770)
    assert summary["trainable_params"] == 2 * 1_774_464 + 147_840 + 770
    assert summary["steps"] == 6
    # the saved model, read by plain transformers, gives the run's own test accuracy
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tunesmith.data import load_text_classification

    test = load_text_classification(config_from_dict(cfg).data).test
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "model").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "run" / "model")
    with torch.no_grad():
        batch = tok([e.text for e in test], truncation=True, max_length=48, padding=True, return_tensors="pt")
        predicted = model(**batch).logits.argmax(-1)
    labels = torch.tensor([e.label for e in test])
    assert summary["final"]["test_accuracy"] == pytest.approx((predicted == labels).float().mean().item())
    base = load_file(str(MODELS["minilm-l6"].locate() / "model.safetensors"))
    after = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    key = "encoder.layer.3.output.dense.weight"
    assert torch.equal(base[key], after["bert." + key])
    moved = "encoder.layer.5.output.dense.weight"
    assert not torch.equal(base[moved], after["bert." + moved])
