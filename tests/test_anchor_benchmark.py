"""The side-by-side benchmark harness runs both sides of a case end to end (tiny models, tiny data):
each in its own process, alternating, with the same held-out yardstick, and writes its table and JSON."""

import json

import pytest
from helpers import ROOT, cli

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("case, model, repeats", [("minilm-lora", "tiny_bert", 2), ("smollm2-lora-sft", "tiny_llama", 1)])
def test_anchor_benchmark_runs_both_sides(case, model, repeats, request, tmp_path):
    model_dir = request.getfixturevalue(model)
    out = tmp_path / "bench"
    result = cli("--case", case, "--model", str(model_dir), "--train", "32", "--test", "16", "--repeats", str(repeats),
                 "--variants", "anchor,tunesmith,same-order", "--out", str(out), module="benchmarks.anchor", cwd=ROOT,
                 timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / f"{case}.json").read_text())
    runs = record["runs"]
    # alternating order: seed 0 runs anchor first, seed 1 last
    order = [("anchor", 0), ("tunesmith", 0), ("same-order", 0), ("same-order", 1), ("tunesmith", 1), ("anchor", 1)]
    assert [(r["variant"], r["seed"]) for r in runs] == order[: 3 * repeats]
    metric = "accuracy" if case == "minilm-lora" else "loss"
    for r in runs:
        assert r["train_seconds"] > 0 and r["peak_rss_mb"] > 100
        assert metric in r["metrics"] and r["metrics"][metric] >= 0
    assert record["workload"]["samples_per_epoch"] == 32 and record["workload"]["flops_per_sample"] > 0
    rows = {row["variant"]: row for row in record["rows"]}
    assert rows["anchor"]["speed_vs_anchor"] == pytest.approx(1.0)
    assert rows["tunesmith"]["speed_vs_anchor"] > 0 and 0 < rows["tunesmith"]["mfu"]
    by_seed = {(r["variant"], r["seed"]): r["metrics"][metric] for r in runs}
    diffs = [by_seed["tunesmith", s] - by_seed["anchor", s] for s in range(repeats)]
    assert rows["tunesmith"]["metric_diff_mean"] == pytest.approx(sum(diffs) / repeats)
    assert rows["tunesmith"]["metric_diff_se"] is None if repeats == 1 else rows["tunesmith"]["metric_diff_se"] >= 0
    table = (out / f"{case}.md").read_text()
    assert "| tunesmith |" in table and "| anchor |" in table and "GFLOP/s" in table
    assert "| anchor fed tunesmith's batch order |" in table
    rendered = cli("--render", str(out / f"{case}.json"), module="benchmarks.anchor", cwd=ROOT)
    assert rendered.returncode == 0 and table.strip() in rendered.stdout  # the stored runs give the same table


@pytest.mark.parametrize("case, model", [("minilm-lora", "tiny_bert"), ("smollm2-lora-sft", "tiny_llama")])
def test_same_steps_as_the_anchor_without_randomness(case, model, request, tmp_path):
    """With dropout off and the anchor fed tunesmith's batches, tunesmith's training steps are the
    reference library's (PEFT + Trainer, TRL): the same loss at every step and the same held-out metric."""
    out = tmp_path / "same"
    result = cli("--case", case, "--model", str(request.getfixturevalue(model)), "--train", "160", "--test", "16",
                 "--out", str(out), module="benchmarks.same_steps", cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / f"{case}.json").read_text())
    anchor, ours = record["anchor"], record["tunesmith"]
    assert len(ours["step_losses"]) == len(anchor["step_losses"]) >= 4
    assert ours["step_losses"] == pytest.approx(anchor["step_losses"], rel=1e-4)
    metric = "accuracy" if case == "minilm-lora" else "loss"
    assert ours["metrics"][metric] == pytest.approx(anchor["metrics"][metric], rel=1e-3)


@pytest.mark.parametrize("case, model, metric", [("smollm2-dpo-lora", "tiny_llama", "loss"),
                                                 ("minilm-reward", "tiny_bert", "accuracy"),
                                                 ("smollm2-reward-lora", "tiny_llama", "accuracy")])
def test_preference_cases_run_against_trl(case, model, metric, request, tmp_path):
    """The DPO and reward-model cases: TRL's DPOTrainer / RewardTrainer and tunesmith on the same pairs,
    judged by the same held-out evaluation, with tunesmith's ablation rows."""
    out = tmp_path / "bench"
    variants = "anchor,tunesmith," + ("no-grouping" if case == "minilm-reward" else "no-shared-prompt")
    result = cli("--case", case, "--model", str(request.getfixturevalue(model)), "--train", "24", "--test", "16",
                 "--max-length", "48", "--repeats", "1", "--variants", variants, "--out", str(out),
                 module="benchmarks.anchor", cwd=ROOT, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / f"{case}.json").read_text())
    assert {r["variant"] for r in record["runs"]} == set(variants.split(","))
    for r in record["runs"]:
        assert r["train_seconds"] > 0 and metric in r["metrics"] and r["metrics"][metric] >= 0
    assert record["workload"]["samples_per_epoch"] == 24 and record["workload"]["flops_per_sample"] > 0
