"""Named extra evaluation sets (data.eval_sets): read and checked like data.test, subset per set with
max_eval_samples, listed in the report after test; bad names and unknown labels are errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tunesmith.data import (
    DataConfig,
    DataReport,
    SplitConfig,
    load_image_classification,
    load_text_classification,
)
from tunesmith.data.lm import load_lm_data
from tunesmith.errors import DataError


def write_jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def rows(n: int, prefix: str = "example", labels: tuple[str, ...] = ("neg", "pos")) -> list[dict]:
    return [{"text": f"{prefix} {i}", "label": labels[i % len(labels)]} for i in range(n)]


def text_cfg(tmp_path: Path, eval_sets: dict[str, list[dict]], **kwargs) -> DataConfig:
    files = {name: write_jsonl(tmp_path / f"{name}.jsonl", records) for name, records in eval_sets.items()}
    return DataConfig(train=write_jsonl(tmp_path / "train.jsonl", rows(20)), eval_sets=files, **kwargs)


# ---------------------------------------------------------------------------------------------- text


def test_text_eval_sets_loaded_in_order_and_reported(tmp_path: Path) -> None:
    cfg = text_cfg(tmp_path, {"ood-b": rows(5, "b"), "ood-a": rows(3, "a", ("pos",))})
    data = load_text_classification(cfg)
    assert list(data.eval_sets) == ["ood-b", "ood-a"]  # config order, not sorted
    assert [e.text for e in data.eval_sets["ood-a"]] == ["a 0", "a 1", "a 2"]
    assert all(data.label_names[e.label] == "pos" for e in data.eval_sets["ood-a"])
    assert data.eval_sets["ood-b"][1].where == f"{tmp_path / 'ood-b.jsonl'}:2"
    assert (len(data.train), len(data.validation), len(data.test)) == (16, 2, 2)  # splits unaffected
    report = data.report
    assert report.eval_sets == ["ood-b", "ood-a"]
    assert list(report.counts) == ["train", "validation", "test", "ood-b", "ood-a"]
    assert report.counts["ood-a"] == 3 and report.label_counts["ood-a"] == {"neg": 0, "pos": 3}
    assert report.sources["ood-b"] == str(tmp_path / "ood-b.jsonl")
    lines = report.lines()
    test_at = next(i for i, line in enumerate(lines) if line.startswith("test:"))
    assert lines[test_at + 2] == f"eval set ood-b: 5 examples from {tmp_path / 'ood-b.jsonl'}"
    assert lines[test_at + 3] == "  labels: neg: 3; pos: 2"
    assert lines[test_at + 4] == f"eval set ood-a: 3 examples from {tmp_path / 'ood-a.jsonl'}"


def test_no_eval_sets_keeps_report_unchanged(tmp_path: Path) -> None:
    data = load_text_classification(text_cfg(tmp_path, {}))
    assert data.eval_sets == {} and data.report.eval_sets == []
    assert list(data.report.counts) == ["train", "validation", "test"]
    plain = DataReport(
        sources=dict(data.report.sources), counts=dict(data.report.counts),
        label_counts=dict(data.report.label_counts),
    )
    assert plain.lines() == data.report.lines()
    assert not any(line.startswith("eval set") for line in data.report.lines())


def test_text_eval_set_unknown_label_names_file_line_and_field(tmp_path: Path) -> None:
    records = rows(4)
    records[2]["label"] = "maybe"
    cfg = text_cfg(tmp_path, {"shifted": records})
    path = tmp_path / "shifted.jsonl"
    with pytest.raises(
        DataError,
        match=rf"{path}:3: label 'maybe' \(field 'label'\) never appears in the training split; "
        r"the training labels are 'neg', 'pos' \(or set data\.on_bad_rows: skip\)",
    ):
        load_text_classification(cfg)
    cfg.on_bad_rows = "skip"
    data = load_text_classification(cfg)
    assert len(data.eval_sets["shifted"]) == 3 and data.report.skipped == 1
    assert data.report.skipped_examples[0].startswith(f"{path}:3: label 'maybe'")


def test_text_eval_set_bad_rows_and_missing_files(tmp_path: Path) -> None:
    cfg = text_cfg(tmp_path, {"shifted": [{"text": "", "label": "pos"}]})
    with pytest.raises(DataError, match=r"shifted\.jsonl:1: field 'text' is empty"):
        load_text_classification(cfg)
    cfg.on_bad_rows = "skip"
    with pytest.raises(DataError, match=r"shifted\.jsonl: no rows left for the eval set 'shifted'"):
        load_text_classification(cfg)
    cfg = DataConfig(train=write_jsonl(tmp_path / "t.jsonl", rows(10)), eval_sets={"gone": "nope.jsonl"})
    with pytest.raises(DataError, match=r"nope\.jsonl: file not found"):
        load_text_classification(cfg)


@pytest.mark.parametrize("name", ["Ood", "-ood", "ood_1", "ood set", "", "test", "train", "validation", None])
def test_bad_eval_set_names(tmp_path: Path, name: object) -> None:
    cfg = DataConfig(train=write_jsonl(tmp_path / "t.jsonl", rows(10)), eval_sets={name: "x.jsonl"})
    with pytest.raises(DataError, match=r"data\.eval_sets: name .*(lower-case letters|is a split)"):
        load_text_classification(cfg)
    cfg = DataConfig(train=str(tmp_path), eval_sets={name: "x"})
    with pytest.raises(DataError, match=r"data\.eval_sets: name"):  # images too, before reading anything
        load_image_classification(cfg)


def test_good_names_and_bad_values(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "t.jsonl", rows(10))
    files = {name: write_jsonl(tmp_path / f"{name}.jsonl", rows(2)) for name in ("0", "ood-2-b", "x--")}
    assert list(load_text_classification(DataConfig(train=train, eval_sets=files)).eval_sets) == list(files)
    numbered = {2024: files["0"]}  # a YAML key 2024 is a number: taken as the name "2024"
    data = load_text_classification(DataConfig(train=train, eval_sets=numbered))  # type: ignore[arg-type]
    assert list(data.eval_sets) == ["2024"] and data.report.eval_sets == ["2024"]
    with pytest.raises(DataError, match=r"data\.eval_sets is \['a\.jsonl'\]; give a mapping of names to files"):
        load_text_classification(DataConfig(train=train, eval_sets=["a.jsonl"]))  # type: ignore[arg-type]
    with pytest.raises(DataError, match=r"data\.eval_sets\.ood is None; give the path of a data file"):
        load_text_classification(DataConfig(train=train, eval_sets={"ood": None}))  # type: ignore[dict-item]
    with pytest.raises(DataError, match=r"data\.eval_sets\.ood is ' '"):
        load_text_classification(DataConfig(train=train, eval_sets={"ood": " "}))


def test_max_eval_samples_applies_per_set_independently(tmp_path: Path) -> None:
    big = {"ood-a": rows(50, "a"), "ood-b": rows(40, "b")}
    data = load_text_classification(text_cfg(tmp_path, big, max_eval_samples=7))
    assert {name: len(examples) for name, examples in data.eval_sets.items()} == {"ood-a": 7, "ood-b": 7}
    assert data.report.sources["ood-a"].endswith("; seeded subset of 7 of 50 (seed 0)")
    assert data.report.counts["ood-b"] == 7
    kept = [e.text for e in data.eval_sets["ood-a"]]
    assert kept == sorted(kept, key=lambda t: int(t.split()[1]))  # file order kept
    # the draw depends on the set's name and the seed only: not on the other sets or their order
    alone = load_text_classification(text_cfg(tmp_path, {"ood-a": big["ood-a"]}, max_eval_samples=7))
    swapped = load_text_classification(
        text_cfg(tmp_path, {"ood-b": big["ood-b"], "ood-a": big["ood-a"]}, max_eval_samples=7)
    )
    assert [e.text for e in alone.eval_sets["ood-a"]] == kept
    assert [e.text for e in swapped.eval_sets["ood-a"]] == kept
    # two sets with the same content draw different subsets (own streams), and so does another seed
    same = load_text_classification(
        text_cfg(tmp_path, {"ood-a": big["ood-a"], "ood-c": big["ood-a"]}, max_eval_samples=7)
    )
    assert [e.text for e in same.eval_sets["ood-c"]] != kept
    reseeded = load_text_classification(
        text_cfg(tmp_path, big, max_eval_samples=7, split=SplitConfig(seed=1))
    )
    assert [e.text for e in reseeded.eval_sets["ood-a"]] != kept
    small = load_text_classification(text_cfg(tmp_path, big, max_eval_samples=45))
    assert len(small.eval_sets["ood-b"]) == 40 and "subset" not in small.report.sources["ood-b"]


def test_language_model_runs_refuse_eval_sets(tmp_path: Path) -> None:
    cfg = DataConfig(train=write_jsonl(tmp_path / "t.jsonl", rows(10)), eval_sets={"ood": "x.jsonl"})
    with pytest.raises(DataError, match=r"data\.eval_sets \(ood\): extra evaluation sets are for classification"):
        load_lm_data(cfg)


# ---------------------------------------------------------------------------------------------- images


def png(path: Path, value: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (4, 3), value).save(path)
    return path


def image_folder(root: Path, counts: dict[str, int]) -> str:
    for label, n in counts.items():
        for i in range(n):
            png(root / label / f"{i:03d}.png", 10 * i)
    return str(root)


def test_image_eval_sets_from_folder_and_file(tmp_path: Path) -> None:
    train = image_folder(tmp_path / "train", {"cat": 6, "dog": 6})
    shifted = image_folder(tmp_path / "night", {"dog": 3, "cat": 2})
    (tmp_path / "night" / "notes.txt").write_text("not an image")
    png(tmp_path / "pics" / "a.png", 1)
    (tmp_path / "list.csv").write_text("path,label\npics/a.png,dog\npics/a.png,cat\n")
    cfg = DataConfig(train=train, eval_sets={"ood-night": shifted, "ood-list": str(tmp_path / "list.csv")})
    data = load_image_classification(cfg)
    assert data.label_names == ["cat", "dog"]
    assert list(data.eval_sets) == ["ood-night", "ood-list"]
    night = data.eval_sets["ood-night"]
    assert [data.label_names[e.label] for e in night] == ["cat", "cat", "dog", "dog", "dog"]
    assert all(isinstance(e.image, Path) for e in night)
    listed = data.eval_sets["ood-list"]
    assert [e.where for e in listed] == [f"{tmp_path / 'list.csv'}:{n}" for n in (2, 3)]
    assert data.report.counts["ood-night"] == 5 and data.report.label_counts["ood-list"] == {"cat": 1, "dog": 1}
    assert data.report.sources["ood-night"].startswith(f"{shifted}; ignored 1 non-image file")
    assert any(line.startswith("eval set ood-list: 2 examples from ") for line in data.report.lines())
    limited = load_image_classification(
        DataConfig(train=train, eval_sets={"ood-night": shifted}, max_eval_samples=2)
    )
    assert len(limited.eval_sets["ood-night"]) == 2
    assert "seeded subset of 2 of 5" in limited.report.sources["ood-night"]


def test_image_eval_set_unknown_labels(tmp_path: Path) -> None:
    train = image_folder(tmp_path / "train", {"cat": 4, "dog": 4})
    png(tmp_path / "pics" / "a.png", 1)
    (tmp_path / "list.csv").write_text("path,label\npics/a.png,dog\npics/a.png,fox\n")
    cfg = DataConfig(train=train, eval_sets={"ood": str(tmp_path / "list.csv")})
    with pytest.raises(
        DataError,
        match=rf"{tmp_path / 'list.csv'}:3: label 'fox' \(field 'label'\) never appears in the training split",
    ):
        load_image_classification(cfg)
    folder = image_folder(tmp_path / "zoo", {"fox": 2})
    with pytest.raises(DataError, match=r"label 'fox' \(class folder\) never appears in the training split"):
        load_image_classification(DataConfig(train=train, eval_sets={"ood": folder}))
    with pytest.raises(DataError, match=r"zoo: no images left for the eval set 'ood'"):
        load_image_classification(DataConfig(train=train, eval_sets={"ood": folder}, on_bad_rows="skip"))


def test_image_eval_set_arrays_are_untouched(tmp_path: Path) -> None:
    """Eval sets do not change the train/validation/test split of the same config."""
    train = image_folder(tmp_path / "train", {"cat": 10, "dog": 10})
    base = load_image_classification(DataConfig(train=train))
    with_eval = load_image_classification(DataConfig(train=train, eval_sets={"ood": train}))
    for split in ("train", "validation", "test"):
        assert [e.where for e in getattr(base, split)] == [e.where for e in getattr(with_eval, split)]
    assert len(with_eval.eval_sets["ood"]) == 20
    assert np.array_equal(
        np.array([e.label for e in with_eval.eval_sets["ood"]]), np.repeat([0, 1], 10)
    )
