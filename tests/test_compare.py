"""`tunesmith compare`: strategies x seeds in one report, re-runnable without recomputing, and seed
triage (early discard) that continues only the best seeds and reports the compute saved."""

import json

import pytest
import yaml
from helpers import cli, write_config
from tiny import tiny_config

from tunesmith.compare import compare, load_compare_config, merge

pytestmark = pytest.mark.slow


def compare_config(tmp_path, tiny_bert, seeds=2):
    base = write_config(tmp_path / "base.yaml", tiny_config(tiny_bert, tmp_path / "d", epochs=2))
    spec = {"base": base.name, "seeds": seeds, "vary": "both",
            "strategies": {"probe": {"method": {"name": "linear_probe"}, "train": {"lr": 5e-2}},
                           "full": {"method": {"name": "full"}}}}
    return write_config(tmp_path / "compare.yaml", spec)


def test_merge_is_deep_and_does_not_touch_its_inputs():
    base = {"train": {"lr": 1, "epochs": 2}, "method": {"name": "full"}}
    out = merge(base, {"train": {"lr": 5}, "stages": [{"name": "a"}]})
    assert out == {"train": {"lr": 5, "epochs": 2}, "method": {"name": "full"}, "stages": [{"name": "a"}]}
    assert base["train"]["lr"] == 1


def test_compare_reports_every_strategy_and_never_recomputes(tiny_bert, tmp_path):
    path = compare_config(tmp_path, tiny_bert)
    out = tmp_path / "out"
    result = cli("compare", str(path), "--out", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert sorted(r["strategy"] for r in report["strategies"]) == ["full", "probe"]
    assert all(r["runs"] == 2 and r["peak_rss_mb"] > 50 for r in report["strategies"])
    seeds = [yaml.safe_load((out / "full" / f"seed-{k}" / "config.yaml").read_text())["train"] for k in (0, 1)]
    assert (seeds[0]["init_seed"], seeds[0]["data_seed"]) == (0, 0) and (seeds[1]["init_seed"], seeds[1]["data_seed"]) == (1, 1)
    assert "| probe | 2 |" in result.stdout and (out / "report.html").read_text().count("<tr>") == 3
    assert (out / "learning_curves.png").exists()
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/seed-*/summary.json")}
    again = cli("compare", str(path), "--out", str(out))
    assert again.returncode == 0 and "training" not in again.stderr
    assert stamps == {p: p.stat().st_mtime_ns for p in out.glob("*/seed-*/summary.json")}


def test_early_discard_continues_only_the_best_seeds(tiny_bert, tmp_path):
    cfg = load_compare_config(compare_config(tmp_path, tiny_bert, seeds=3))
    messages = []
    result = compare(cfg, tmp_path / "out", early_discard=0.5, keep=1, strategies=["full"], log=messages.append)
    runs = [r for r in result["runs"] if r["strategy"] == "full"]
    assert sorted(r["status"] for r in runs) == ["discarded", "discarded", "done"]
    winner = next(r for r in runs if r["status"] == "done")
    triage = {r["seed"]: json.loads((tmp_path / "out" / "full" / f"seed-{r['seed']}" / ("triage.json" if r["status"] == "done" else "paused.json")).read_text())
              for r in runs}
    value = lambda r: triage[r["seed"]].get("val_accuracy", triage[r["seed"]].get("last_eval", {}).get("val_accuracy"))  # noqa: E731
    assert value(winner) == max(value(r) for r in runs)
    saved = result["compute_saved"]
    # 3 seeds x 12 steps; two stopped at 6: 24 of 36 steps trained
    assert (saved["steps_full"], saved["steps_spent"]) == (36, 24) and saved["saved_fraction"] == pytest.approx(1 / 3)
    assert "compute saved" in (tmp_path / "out" / "report.md").read_text()
