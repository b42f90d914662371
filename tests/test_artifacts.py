"""A run directory holds everything: resolved config, metrics, plots, HF model, summary, checkpoints."""

import json

import pytest
import torch
import yaml
from helpers import cli, write_config
from tiny import sentiment_rows, tiny_config, write_jsonl

from tunesmith.config import config_from_dict
from tunesmith.run import run


@pytest.fixture(scope="module")
def finished(tiny_bert, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("artifacts")
    cfg = tiny_config(tiny_bert, tmp / "data", epochs=8, lr=1e-2, eval_every=6)
    summary = run(config_from_dict(cfg), tmp / "run")
    return tmp / "run", summary, tmp


def test_run_dir_layout(finished):
    run_dir, summary, _ = finished
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "plots/loss.png", "plots/metrics.png",
                 "plots/confusion_test.png", "model/config.json", "model/model.safetensors",
                 "checkpoints/latest.json"):
        assert (run_dir / name).exists(), name
    assert not list(run_dir.rglob("*.tmp"))  # atomic writes leave no temp files behind
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["train"]["lr"] == 1e-2 and resolved["train"]["batch_size"] == 16  # defaults filled in
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["final"] == summary["final"]
    for key in ("trainable_params", "total_params", "train_seconds", "samples_per_s", "wall_seconds", "best"):
        assert key in on_disk
    assert summary["final"]["test_accuracy"] >= 0.9  # the tiny task is learnable: the loop really trains
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("train_loss" in x and "lr" in x and "samples_per_s" in x for x in lines)
    assert any("val_accuracy" in x for x in lines)


def test_saved_model_loads_with_plain_transformers_and_gives_same_logits(finished):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tunesmith.models import load_text_classifier
    from tunesmith.train.checkpoint import latest_checkpoint, load_changing_state, load_checkpoint

    run_dir, summary, _ = finished
    hf = AutoModelForSequenceClassification.from_pretrained(run_dir / "model").eval()
    tok = AutoTokenizer.from_pretrained(run_dir / "model")
    assert hf.config.id2label == {0: "neg", 1: "pos"}
    # rebuild the same weights our way: pretrained base + the restored best checkpoint's trained tensors
    ours = load_text_classifier(json.loads((run_dir / "summary.json").read_text())["model"], ["neg", "pos"], 0)
    best = latest_checkpoint(run_dir / "checkpoints", "best.json")
    load_changing_state(ours.model, load_checkpoint(best)[0])
    batch = tok(["the film was great", "a dull plot"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.allclose(hf(**batch).logits, ours.model.eval()(**batch).logits, atol=1e-6)


def test_eval_and_predict_commands(finished):
    run_dir, summary, tmp = finished
    data = write_jsonl(tmp / "more.jsonl", sentiment_rows(20, seed=9))
    out = cli("eval", str(run_dir), "--data", str(data))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["examples"] == 20 and set(result["per_class_accuracy"]) == {"neg", "pos"}
    # the same accuracy as predict's labels on the same rows: eval and predict read the run alike
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    predicted = cli("predict", str(run_dir), *[r["text"] for r in rows], "--json")
    labels = [json.loads(x)["label"] for x in predicted.stdout.splitlines()]
    assert result["accuracy"] == sum(p == r["label"] for p, r in zip(labels, rows, strict=True)) / len(rows)
    for name in ("neg", "pos"):
        mine = [(p, r["label"]) for p, r in zip(labels, rows, strict=True) if r["label"] == name]
        assert result["per_class_accuracy"][name] == sum(p == t for p, t in mine) / len(mine)
    pred = cli("predict", str(run_dir), "superb film", "awful film", "--json")
    assert pred.returncode == 0, pred.stderr
    rows = [json.loads(x) for x in pred.stdout.splitlines()]
    assert [r["label"] for r in rows] == ["pos", "neg"]
    assert sum(rows[0]["probabilities"].values()) == pytest.approx(1.0)
    texts = tmp / "texts.txt"
    texts.write_text("great scene\n\nbad actor\n")
    from_file = cli("predict", str(run_dir), "--file", str(texts))
    assert from_file.returncode == 0 and len(from_file.stdout.splitlines()) == 2


def test_eval_rejects_unseen_labels(finished):
    run_dir, _, tmp = finished
    data = write_jsonl(tmp / "odd.jsonl", [{"text": "great", "label": "pos"}, {"text": "meh", "label": "mixed"}])
    out = cli("eval", str(run_dir), "--data", str(data))
    assert out.returncode == 2 and "odd.jsonl:2" in out.stderr and "mixed" in out.stderr
    assert "Traceback" not in out.stderr


def test_cli_errors_are_one_line_without_traceback(tmp_path, tiny_bert):
    bad = write_config(tmp_path / "bad.yaml", {"train": {"epochs": "lots"}})
    out = cli("train", str(bad), "--out", str(tmp_path / "r"))
    assert out.returncode == 2 and out.stderr.startswith("error: ") and "bad.yaml:2: train.epochs" in out.stderr
    assert "Traceback" not in out.stderr
    debug = cli("--debug", "train", str(bad), "--out", str(tmp_path / "r"))
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    cfg = tiny_config(tiny_bert, tmp_path / "d")
    (tmp_path / "d" / "val.jsonl").write_text('{"text": "fine film", "label": "pos"}\n{"text": "x", "label": "neg"\n')
    broken = cli("train", str(write_config(tmp_path / "c.yaml", cfg)), "--out", str(tmp_path / "r2"))
    assert broken.returncode == 2 and "val.jsonl:2" in broken.stderr
    assert not (tmp_path / "r2" / "checkpoints").exists()  # stopped before training


def test_listing_commands():
    for command, expected in (("models", "minilm-l6"), ("datasets", "rotten-tomatoes"), ("methods", "linear_probe")):
        out = cli(command)
        assert out.returncode == 0 and expected in out.stdout
