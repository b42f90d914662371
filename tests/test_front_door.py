"""What a new user meets first: the README's instructions, the listing and scaffolding commands, the
generated references, the installed package."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import random
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from tunesmith.cli import main
from tunesmith.config import load_config
from tunesmith.errors import ConfigError
from tunesmith.objectives import OBJECTIVES
from tunesmith.reference import cli_reference, config_reference
from tunesmith.schema import RunConfig
from tunesmith.shipped import CONFIG_DIR, resolve_config_path, shipped_configs

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _config_classes() -> set[type]:
    seen: set[type] = set()

    def walk(cls: type) -> None:
        if cls in seen:
            return
        seen.add(cls)
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(default):
                walk(type(default))
        if cls is RunConfig:
            from tunesmith.schema import StageConfig

            walk(StageConfig)

    walk(RunConfig)
    for objective in OBJECTIVES.values():
        walk(objective.Config)
    return seen


def test_every_config_field_says_what_it_means():
    missing = [f"{cls.__name__}.{f.name}" for cls in _config_classes() for f in dataclasses.fields(cls)
               if not dataclasses.is_dataclass(f.default_factory() if f.default_factory is not dataclasses.MISSING
                                               else f.default) and not f.metadata.get("help")]
    assert not missing, f"fields without help=: {missing}"


@pytest.mark.parametrize("page, generate", [("config.md", config_reference), ("cli.md", cli_reference)])
def test_generated_references_are_current(page, generate):
    flag = " --cli" if page == "cli.md" else ""
    assert (ROOT / "docs" / page).read_text(encoding="utf-8") == generate(), (
        f"docs/{page} is stale: python -m tunesmith.reference{flag} > docs/{page}")


def test_the_config_reference_lists_every_field_of_every_section_and_objective():
    text = config_reference()
    for cls in _config_classes() - {RunConfig}:  # RunConfig's fields are the sections themselves
        for f in dataclasses.fields(cls):
            assert f"`{f.name}`" in text or f.name in ("lora", "prompt", "early_stopping", "split", "method")
    for name in OBJECTIVES:
        assert f"### objective: {name}" in text


def test_every_command_has_an_example_in_its_help():
    text = cli_reference()
    sections = text.split("\n## tunesmith ")[1:]
    assert len(sections) >= 17
    for section in sections:
        assert "example:\n  tunesmith " in section, section.split("\n")[0]


def test_the_readme_is_a_front_door_and_no_page_speaks_of_issues():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode()) <= 12 * 1024
    for page in DOCS:
        text = page.read_text(encoding="utf-8")
        assert not re.search(r"\bissues? \d+|\bthis issue\b|\bthe issue's\b", text, re.I), page
    for link in re.findall(r"\]\(((?:docs/)?[\w./-]+\.md)\)", readme):  # the README's links resolve
        assert (ROOT / link).exists(), link


def test_listing_commands(capsys):
    assert main(["objectives"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in OBJECTIVES)
    assert main(["configs"]) == 0
    out = capsys.readouterr().out
    assert all(c.name in out for c in shipped_configs()) and len(shipped_configs()) >= 10
    assert main(["configs", "rt-minilm-full"]) == 0
    assert capsys.readouterr().out == (CONFIG_DIR / "rt-minilm-full.yaml").read_text()


def test_a_shipped_config_is_found_by_name_and_a_wrong_name_lists_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_config_path("rt-minilm-full") == CONFIG_DIR / "rt-minilm-full.yaml"
    assert resolve_config_path("rt-minilm-full.yaml") == CONFIG_DIR / "rt-minilm-full.yaml"
    (tmp_path / "rt-minilm-full.yaml").write_text("model: {name: minilm-l6}\n")  # a user's own file wins
    assert resolve_config_path("rt-minilm-full.yaml") == Path("rt-minilm-full.yaml")
    with pytest.raises(ConfigError, match="shipped configs.*rt-smollm2-dpo"):
        resolve_config_path("rt-minilm-fulll")


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_init_writes_a_commented_config_that_passes_every_check(objective, tmp_path, capsys):
    out = tmp_path / f"{objective}.yaml"
    assert main(["init", objective, "--out", str(out)]) == 0
    text = out.read_text()
    assert text.count("#") >= 8  # the fields' help as comments
    cfg = load_config(out)
    assert cfg.objective.name == objective
    assert main(["check", str(out), "--no-data"]) == 0
    printed = capsys.readouterr().out
    assert yaml.safe_load(printed.split("\n", 1)[1].split("\n# ok")[0])["objective"]["name"] == objective
    assert main(["init", objective, "--out", str(out)]) == 2  # never overwrites silently


def test_check_reads_the_data_and_says_what_it_found(tmp_path, capsys):
    data = tmp_path / "mine.csv"
    data.write_text("text,label\n" + "".join(f"text number {i},{'ab'[i % 2]}\n" for i in range(30)))
    assert main(["check", "rt-minilm-full", "--set", f"data.train={data}"]) == 0
    captured = capsys.readouterr()
    assert "replaces" in captured.err and "rotten-tomatoes" in captured.err  # the built-in is dropped, said so
    assert f"from {data}" in captured.out and "no model was loaded" in captured.out
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nfine,a\n,b\n")
    assert main(["check", "rt-minilm-full", "--set", f"data.train={bad}"]) == 2
    assert f"{bad}:3" in capsys.readouterr().err


def test_importing_tunesmith_sets_no_environment_variables():
    code = ("import os, json; before = dict(os.environ); import tunesmith, tunesmith.api; "
            "import tunesmith.models.hf, tunesmith.run; print(json.dumps(dict(os.environ) == before))")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_NO_ADVISORY_WARNINGS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "true"


@pytest.mark.slow
def test_the_wheel_carries_the_configs_and_the_labeling_functions(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("tunesmith-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for config in CONFIG_DIR.glob("*.yaml"):
        assert f"tunesmith/configs/{config.name}" in names
    assert any(n.startswith("tunesmith/data/lfs/") for n in names)
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "Requires-Dist: pillow" in metadata


def _readme_block(after: str, lang: str = "") -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    part = readme.split(after, 1)[1]
    match = re.search(r"```" + lang + r"\n(.*?)```", part, re.S)
    assert match, after
    return "\n".join(line[3:] if line.startswith("   ") else line for line in match.group(1).splitlines())


@pytest.mark.slow
def test_the_readme_three_steps_train_as_written(tmp_path, monkeypatch, capsys):
    """The README's own CSV sample (made longer with rows of the same kind), its config and its
    commands, run from a fresh folder."""
    monkeypatch.chdir(tmp_path)
    sample = _readme_block("1. A CSV")
    rows = list(csv.reader(sample.strip().splitlines()))
    assert rows[0] == ["text", "label"]
    rng = random.Random(0)
    good = ["Works as described.", "Quiet, sturdy, cheap.", "Setup took two minutes.", "Support was quick."]
    bad = ["Arrived broken.", "Stopped working in a week.", "Support never answered.", "Cheap plastic."]
    with open("reviews.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerows(rows)
        for i in range(80):
            label = rng.choice(["positive", "negative"])
            writer.writerow([f"{rng.choice(good if label == 'positive' else bad)} Order {i}.", label])
    Path("my.yaml").write_text(_readme_block("2. A config", "yaml"))
    commands = [line.split("#")[0].split()[1:] for line in _readme_block("3. Check it").splitlines() if line.strip()]
    assert [c[0] for c in commands] == ["check", "train", "predict"]
    assert main(commands[0]) == 0
    assert "no model was loaded" in capsys.readouterr().out
    fast = ["--set", "train.max_steps=4", "--set", "model.max_length=32", "--set", "train.progress=false"]
    assert main(commands[1] + fast) == 0
    assert "test_accuracy" in json.loads(capsys.readouterr().out)["final"]
    assert main(commands[2]) == 0
    assert re.search(r"\b(positive|negative)\b", capsys.readouterr().out)


def test_the_documented_callback_runs_and_logs(tiny_bert, tmp_path, capsys):
    """docs/run-directory.md's callback example, as written, in a run that names it in its config."""
    from tiny import tiny_config

    page = (ROOT / "docs" / "run-directory.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(# my_callbacks.py.*?)```", page, re.S).group(1)
    (tmp_path / "my_callbacks.py").write_text(code)
    cfg = tiny_config(tiny_bert, tmp_path / "data", max_steps=6, eval_every=3,
                      callbacks=["my_callbacks:StepCounter"])
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "run")]) == 0
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["steps_seen"] for r in lines if "steps_seen" in r][-1] == 6
    assert "step 3: {" in capsys.readouterr().out


def test_export_from_the_command_line(tiny_bert, tmp_path, capsys):
    from tiny import tiny_config

    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(tiny_config(tiny_bert, tmp_path / "data", max_steps=2)))
    assert main(["train", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "run")]) == 0
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "hf"), "--format", "hf"]) == 0
    assert (tmp_path / "hf" / "model.safetensors").exists() and (tmp_path / "hf" / "README.md").exists()
    capsys.readouterr()
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "run.gguf")]) == 2  # a BERT classifier
    assert "--format hf" in capsys.readouterr().err and not (tmp_path / "run.gguf").exists()
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "hf2"), "--format", "hf", "--dtype", "f16"]) == 2
