"""The online RL benchmarks run end to end on tiny models: tunesmith's grpo and ppo against TRL's
GRPOTrainer (each in its own process, one held-out yardstick, table, figure and samples), and the
sampling-speed comparison of padded with equal-length batches."""

import json

import pytest
from helpers import ROOT, cli

from tunesmith.config import config_from_dict
from tunesmith.run import run

pytestmark = pytest.mark.slow


def test_online_rl_benchmark_runs_every_side(tiny_bert, tiny_llama, tmp_path):
    classifier = tmp_path / "classifier"  # a classify run whose labels include `fresh`
    run(config_from_dict({"model": {"name": str(tiny_bert), "max_length": 32}, "method": {"name": "full"},
                          "objective": "classify",
                          "data": {"builtin": "rotten-tomatoes", "max_train_samples": 32, "max_eval_samples": 16},
                          "train": {"max_steps": 2, "batch_size": 16, "progress": False}}), classifier)
    out = tmp_path / "bench"
    settings = ["--model", str(tiny_llama), "--classifier", str(classifier), "--steps", "2", "--prompts", "2",
                "--k", "2", "--tokens", "4", "--test", "4", "--out", str(out)]
    result = cli(*settings, "--variants", "tunesmith-grpo", module="benchmarks.online_rl", cwd=ROOT, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    result = cli(*settings, module="benchmarks.online_rl", cwd=ROOT, timeout=900)  # the rest, in a second sitting
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tunesmith-grpo: read from" in result.stderr and "== tunesmith-ppo\n" in result.stderr
    record = json.loads((out / "results.json").read_text())
    assert [r["variant"] for r in record["rows"]] == ["tunesmith-grpo", "tunesmith-ppo", "trl-grpo"]
    for r in [record["before"]] + [r["held_out"] for r in record["rows"]]:
        assert 0 <= r["reward"] <= 1 and 0 <= r["fresh"] <= 1 and r["ref_perplexity"] > 1 and r["prompts"] == 4
    for r in record["rows"]:
        assert r["train_seconds"] > 0 and r["peak_rss_mb"] > 100 and r["completions"] == 2 * 2 * 2
        assert [c["step"] for c in r["curve"]] == [1, 2]  # every side logged each step's reward
    table = (out / "results.md").read_text()
    assert "| before (the base model) |" in table and "tunesmith-grpo vs trl-grpo" in table
    assert (out / "reward_kl.png").stat().st_size > 0
    assert (out / "samples.md").read_text().count("- before:") == 4


def test_sampling_speed_benchmark_compares_padded_with_equal_length_batches(tiny_llama, tmp_path):
    out = tmp_path / "sampling"
    result = cli("--model", str(tiny_llama), "--repeats", "2", "--tokens", "4", "--copies", "2", "--out", str(out),
                 module="benchmarks.sampling_speed", cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {r["variant"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert set(rows) == {"padded", "by length"} and rows["by length"]["speed_vs_by_length"] == 1.0
    assert all(len(r["seconds"]) == 2 and min(r["seconds"]) > 0 for r in rows.values())
    assert "| padded |" in (out / "results.md").read_text()
