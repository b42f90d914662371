"""The command line as a newcomer meets it: flags anywhere, --version, files of rows for predict,
per-example eval output, per-class scores, merge that does not overwrite, a run that can be extended."""

import json
import subprocess
import sys

import pytest
from helpers import ROOT, cli, write_config
from tiny import chat_rows, sentiment_rows, tiny_config, write_jsonl

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished(tiny_bert, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    cfg = tiny_config(tiny_bert, tmp / "data", epochs=6, lr=1e-2, eval_every=6, checkpoint_minutes=None)
    path = write_config(tmp / "cfg.yaml", cfg)
    out = cli("train", str(path), "--out", str(tmp / "run"))
    assert out.returncode == 0, out.stderr
    return tmp / "run", out, tmp, path


def test_evaluation_metrics_and_the_restored_best_are_on_the_console(finished):
    run_dir, out, _, _ = finished
    evals = [line for line in out.stderr.splitlines() if line.startswith("step ") and "val_accuracy" in line]
    assert len(evals) == 6 and evals[0].startswith("step 6 (epoch 1): val_loss ")
    logged = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if "val_accuracy" in x]
    # the best accuracy; among evaluations that tie on it, the lowest loss (then the first)
    best = max(logged, key=lambda r: (r["val_accuracy"], -r["val_loss"], -r["step"]))
    restored = f"restored the best weights, from step {best['step']} (val_accuracy {best['val_accuracy']:.4f})"
    assert (restored in out.stderr) == (best["step"] != 36)


def test_version_debug_anywhere_and_json_after_the_texts(finished):
    run_dir, _, _, _ = finished
    version = cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("tunesmith ")
    mixed = cli("predict", str(run_dir), "superb film", "--json", "awful film")
    assert mixed.returncode == 0, mixed.stderr
    assert [json.loads(x)["label"] for x in mixed.stdout.splitlines()] == ["pos", "neg"]
    debug_after = cli("train", "missing.yaml", "--debug")
    assert debug_after.returncode != 0 and "Traceback" in debug_after.stderr


def test_predict_reads_the_text_column_of_a_jsonl_or_csv_file(finished):
    run_dir, _, tmp, _ = finished
    rows = [{"id": 1, "text": "superb film"}, {"id": 2, "text": "awful film"}]
    jsonl = write_jsonl(tmp / "rows.jsonl", rows)
    out = cli("predict", str(run_dir), "--file", str(jsonl), "--json")
    assert out.returncode == 0, out.stderr
    assert [json.loads(x)["text"] for x in out.stdout.splitlines()] == ["superb film", "awful film"]
    csv = tmp / "rows.csv"
    csv.write_text("id,review\n1,superb film\n2,awful film\n")
    named = cli("predict", str(run_dir), "--file", str(csv), "--field", "review", "--json")
    assert [json.loads(x)["label"] for x in named.stdout.splitlines()] == ["pos", "neg"]
    missing = cli("predict", str(run_dir), "--file", str(csv))
    assert missing.returncode == 2 and "rows.csv:2: no text in field 'text'" in missing.stderr


def test_predict_into_a_closed_pipe_is_quiet(finished):
    run_dir, _, tmp, _ = finished
    many = tmp / "many.txt"
    many.write_text("great scene\n" * 3000)
    predict = subprocess.Popen([sys.executable, "-m", "tunesmith", "predict", str(run_dir), "--file", str(many)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={"PYTHONPATH": str(ROOT),
                                                                                    "HF_HUB_OFFLINE": "1",
                                                                                    "PATH": "/usr/bin:/bin"})
    predict.stdout.readline()
    predict.stdout.close()  # as `| head -1` does
    err = predict.stderr.read().decode()
    assert predict.wait() == 0 and "Traceback" not in err and "BrokenPipe" not in err


def test_eval_writes_every_prediction_and_per_class_scores(finished):
    run_dir, _, tmp, _ = finished
    data = write_jsonl(tmp / "more.jsonl", sentiment_rows(20, seed=9))
    out = cli("eval", str(run_dir), "--data", str(data), "--out", str(tmp / "pred.jsonl"))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    rows = [json.loads(x) for x in (tmp / "pred.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and rows[0]["where"].endswith("more.jsonl:1")
    assert result["accuracy"] == sum(r["correct"] for r in rows) / 20
    for name in ("neg", "pos"):
        scores = result["per_class"][name]
        support = sum(r["label"] == name for r in rows)
        hits = sum(r["label"] == name == r["predicted"] for r in rows)
        called = sum(r["predicted"] == name for r in rows)
        assert scores["support"] == support and scores["recall"] == hits / support
        assert scores["precision"] == (hits / called if called else None)
    odd = write_jsonl(tmp / "odd.jsonl", [{"sentence": "great film", "label": "pos"}])
    hint = cli("eval", str(run_dir), "--data", str(odd))
    assert hint.returncode == 2 and "with --text-field (or pass --skip-bad-rows)" in hint.stderr


def test_merge_refuses_to_overwrite(tiny_bert, tmp_path):
    cfg = tiny_config(tiny_bert, tmp_path / "d", epochs=1) | {
        "method": {"name": "lora", "lora": {"r": 2, "alpha": 4, "target_modules": ["query", "value"]}}}
    assert cli("train", str(write_config(tmp_path / "c.yaml", cfg)), "--out", str(tmp_path / "r")).returncode == 0
    (tmp_path / "merged").mkdir()
    (tmp_path / "merged" / "keep.txt").write_text("mine")
    refused = cli("merge", str(tmp_path / "r"), str(tmp_path / "merged"))
    assert refused.returncode == 2 and "pass --overwrite" in refused.stderr
    assert (tmp_path / "merged" / "keep.txt").read_text() == "mine"
    assert cli("merge", str(tmp_path / "r"), str(tmp_path / "merged"), "--overwrite").returncode == 0
    assert (tmp_path / "merged" / "model.safetensors").exists()


def test_a_finished_run_can_be_extended(finished):
    run_dir, _, tmp, path = finished
    import shutil

    longer = tmp / "longer"
    shutil.copytree(run_dir, longer)
    out = cli("train", str(path), "--resume", str(longer), "--set", "train.epochs=8")
    assert out.returncode == 0, out.stderr
    assert "extending the run from 36 to 48 steps" in out.stderr
    assert "AdamW's moments start afresh" in out.stderr  # the finished run kept no optimizer state
    summary = json.loads((longer / "summary.json").read_text())
    assert summary["steps"] == summary["total_steps"] == 48
    steps = [json.loads(x)["step"] for x in (longer / "metrics.jsonl").read_text().splitlines() if "train_loss" in x]
    assert steps == sorted(set(steps)) and steps[-1] == 48
    shorter = cli("train", str(path), "--resume", str(longer), "--set", "train.epochs=2")
    assert shorter.returncode == 2 and "has trained 48 steps; this config gives only 12" in shorter.stderr


def test_generate_with_a_system_message_and_saved_answers(tiny_llama, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    cfg = {"model": {"name": str(tiny_llama), "max_length": 48}, "objective": "causal_lm",
           "data": {"train": str(write_jsonl(data / "t.jsonl", chat_rows(32, 1))),
                    "test": str(write_jsonl(data / "test.jsonl", chat_rows(6, 3))), "split": {"validation": 0}},
           "train": {"epochs": 1, "batch_size": 16, "lr": 1e-2, "progress": False}}
    assert cli("train", str(write_config(tmp_path / "c.yaml", cfg)), "--out", str(tmp_path / "r")).returncode == 0
    answers = [json.loads(x) for x in (tmp_path / "r" / "exact_match.jsonl").read_text().splitlines()]
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert len(answers) == 6 and {"where", "expected", "answer", "exact_match"} <= set(answers[0])
    assert summary["final"]["test_exact_match"] == sum(a["exact_match"] for a in answers) / 6
    out = cli("generate", str(tmp_path / "r"), "review great film", "--system", "answer in one word",
              "--max-new-tokens", "3")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(">>> review great film")
