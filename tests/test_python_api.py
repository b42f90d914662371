"""docs/python-api.md's walk-through runs as written (every ```python block, in order, in one namespace,
from an empty folder), and the API's own promises."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import tunesmith
from tunesmith.errors import ConfigError, TunesmithError

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "python-api.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S)


@pytest.mark.slow
def test_the_walk_through_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    blocks = _blocks()
    assert len(blocks) >= 3
    for i, code in enumerate(blocks):
        exec(compile(code, f"{PAGE}:block {i + 1}", "exec"), namespace)  # noqa: S102 - our own docs
    run, longer, lm = namespace["run"], namespace["longer"], namespace["lm"]
    assert 0 <= run.metrics["test_accuracy"] <= 1
    assert longer.summary["steps"] == 40
    assert (tmp_path / "predictions.jsonl").read_text().count("\n") == namespace["result"]["examples"]
    assert namespace["gguf"].exists() and (namespace["merged"] / "README.md").exists()
    assert isinstance(lm.generate(["Dull and far too long."], max_new_tokens=2)[0], str)


def test_what_the_api_refuses(tmp_path):
    with pytest.raises(ConfigError, match="give a config"):
        tunesmith.train()
    with pytest.raises(ConfigError, match="needs out=RUN_DIR"):
        tunesmith.train("rt-minilm-full", resume=True)
    with pytest.raises(TunesmithError, match="not a run directory"):
        tunesmith.load_run(tmp_path)
    with pytest.raises(ConfigError, match="train.learning_rate"):
        tunesmith.check("rt-minilm-full", train={"learning_rate": 1.0})


def test_overrides_read_as_set_does():
    cfg = tunesmith.check("rt-minilm-full", train={"epochs": 1, "early_stopping": {"patience": 2}},
                          method__name="lora", **{"data.max_train_samples": 50})
    assert (cfg.train.epochs, cfg.train.early_stopping.patience, cfg.method.name) == (1, 2, "lora")
    assert cfg.data.max_train_samples == 50
    cfg = tunesmith.check({"model": {"name": "minilm-l6"}, "data": {"builtin": "rotten-tomatoes"}},
                          train={"lr": 1e-4})
    assert cfg.train.lr == 1e-4
