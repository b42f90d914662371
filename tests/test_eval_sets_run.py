"""Named out-of-distribution evaluation sets in a run: evaluated at the end (and, when asked, at every
evaluation), reported in summary.json and metrics.jsonl, never used for early stopping."""

import json

import pytest
from tiny import sentiment_rows, tiny_config, write_jsonl

from tunesmith.config import config_from_dict
from tunesmith.run import run

pytestmark = pytest.mark.slow


def test_eval_sets_are_evaluated_and_reported(tiny_bert, tmp_path):
    shifted = [r | {"text": r["text"].upper()} for r in sentiment_rows(24, seed=9)]  # unknown words: [UNK]
    cfg = tiny_config(tiny_bert, tmp_path / "d", eval_every="epoch", eval_sets_during_training=True)
    cfg["data"]["eval_sets"] = {"ood-shouting": str(write_jsonl(tmp_path / "ood.jsonl", shifted)),
                                "again": str(tmp_path / "d" / "test.jsonl")}
    s = run(config_from_dict(cfg), tmp_path / "r")
    assert {"ood-shouting_accuracy", "again_accuracy", "test_accuracy"} <= set(s["final"])
    assert s["final"]["again_accuracy"] == s["final"]["test_accuracy"]  # the same file, the same answer
    assert set(s["details"]) == {"validation", "test", "ood-shouting", "again"}
    assert s["data"]["counts"]["ood-shouting"] == 24
    evals = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines() if "val_loss" in x]
    assert len(evals) == 2 and all("ood-shouting_accuracy" in e for e in evals)
    assert s["best"]["metric"] == "val_accuracy"
    assert (tmp_path / "r" / "plots" / "accuracy.png").exists() and (tmp_path / "r" / "plots" / "metrics.png").exists()
