"""Rows -> validated examples and splits: every bad row is either an error naming file, line and field,
or counted in the report; splits are seeded and deterministic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.data import (
    DataConfig,
    Row,
    SplitConfig,
    load_labelled_file,
    load_text_classification,
    split_rows,
)
from tunesmith.errors import DataError


def write_jsonl(path: Path, records: list[object]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def balanced(n: int, labels: tuple[str, ...] = ("neg", "pos")) -> list[dict]:
    return [{"text": f"example {i}", "label": labels[i % len(labels)]} for i in range(n)]


def load_files(tmp_path: Path, train: list, **kwargs) -> object:
    cfg = DataConfig(train=write_jsonl(tmp_path / "train.jsonl", train), **kwargs)
    return load_text_classification(cfg)


def test_labels_indices_and_report(tmp_path: Path) -> None:
    data = load_files(tmp_path, balanced(20), split=SplitConfig(validation=0.2, test=0.1, seed=3))
    assert data.label_names == ["neg", "pos"]
    assert (len(data.train), len(data.validation), len(data.test)) == (14, 4, 2)
    assert all(
        data.label_names[e.label] == f"{'neg' if int(e.text.split()[1]) % 2 == 0 else 'pos'}"
        for e in data.train + data.validation + data.test
    )
    assert data.report.counts == {"train": 14, "validation": 4, "test": 2}
    assert sum(data.report.label_counts["train"].values()) == 14
    assert data.report.sources["train"] == f"{tmp_path / 'train.jsonl'} (seeded split 0.7/0.2/0.1, seed 3)"
    assert data.train[0].where.startswith(f"{tmp_path / 'train.jsonl'}:")
    text = "\n".join(data.report.lines())
    assert "train: 14 examples" in text and "labels: neg: " in text


def test_integer_labels_sort_numerically_and_keep_string_names(tmp_path: Path) -> None:
    rows = [{"text": f"t{i}", "label": label} for i, label in enumerate([10, 2, 1, 2, 10, 1])]
    data = load_files(tmp_path, rows, split=SplitConfig(validation=0, test=0))
    assert data.label_names == ["1", "2", "10"]
    assert [data.label_names[e.label] for e in data.train] == ["10", "2", "1", "2", "10", "1"]


def test_mixed_labels_sort_lexicographically(tmp_path: Path) -> None:
    rows = [{"text": "a", "label": True}, {"text": "b", "label": "maybe"}, {"text": "c", "label": 3}]
    data = load_files(tmp_path, rows, split=SplitConfig(validation=0, test=0), allow_mixed=True)
    assert data.label_names == ["3", "True", "maybe"]
    assert data.validation == [] and data.test == []
    assert data.report.sources["validation"] == "none (data.split.validation is 0)"
    assert "validation: none (data.split.validation is 0)" in data.report.lines()


def test_validation_and_test_files(tmp_path: Path) -> None:
    val = write_jsonl(tmp_path / "val.jsonl", balanced(4))
    test = write_jsonl(tmp_path / "test.jsonl", balanced(6))
    data = load_files(tmp_path, balanced(10), validation=val, test=test)
    assert (len(data.train), len(data.validation), len(data.test)) == (10, 4, 6)
    assert data.report.sources == {"train": str(tmp_path / "train.jsonl"), "validation": val, "test": test}


def test_test_file_with_carved_validation(tmp_path: Path) -> None:
    test = write_jsonl(tmp_path / "test.jsonl", balanced(6))
    data = load_files(tmp_path, balanced(10), test=test, split=SplitConfig(validation=0.2, test=0.5))
    assert (len(data.train), len(data.validation), len(data.test)) == (8, 2, 6)
    assert "seeded split train/validation 0.8/0.2" in data.report.sources["train"]


def test_field_options(tmp_path: Path) -> None:
    rows = [{"review": f"r{i}", "stars": i % 2} for i in range(10)]
    data = load_files(tmp_path, rows, text_field="review", label_field="stars")
    assert data.label_names == ["0", "1"]


BAD_ROWS = [
    ({"txt": "x", "label": "pos"}, "no field 'text' (the row has 'txt', 'label')", "data.text_field"),
    ({"text": "x", "cls": "pos"}, "no field 'label' (the row has 'text', 'cls')", "data.label_field"),
    ({"text": "   ", "label": "pos"}, "field 'text' is empty", "fill in the text"),
    ({"text": 5, "label": "pos"}, "field 'text' is a int (5), not a string", "as a string"),
    ({"text": None, "label": "pos"}, "field 'text' is null, not a string", "as a string"),
    ({"text": "x", "label": None}, "field 'label' is null", "give every row a label"),
    ({"text": "x", "label": ""}, "field 'label' is empty", "give every row a label"),
    ({"text": "x", "label": 0.5}, "field 'label' is a float (0.5)", "integers or booleans"),
]


@pytest.mark.parametrize(("bad", "problem", "fix"), BAD_ROWS)
def test_bad_row_errors_name_file_line_and_field(tmp_path: Path, bad: dict, problem: str, fix: str) -> None:
    rows = balanced(6)
    rows.insert(3, bad)
    with pytest.raises(DataError) as e:
        load_files(tmp_path, rows)
    message = str(e.value)
    assert message.startswith(f"{tmp_path / 'train.jsonl'}:4: {problem}; ")
    assert fix in message and "data.on_bad_rows: skip" in message


def test_first_bad_row_in_file_order_is_reported(tmp_path: Path) -> None:
    rows = balanced(30)
    rows[5]["text"] = ""
    rows[20]["label"] = None
    with pytest.raises(DataError, match=r"train\.jsonl:6: field 'text' is empty"):
        load_files(tmp_path, rows)


def test_skip_mode_counts_and_shows_first_five(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    lines = [json.dumps(r) for r in balanced(20)]
    for i in (2, 4, 6, 8):
        lines[i] = json.dumps({"text": "", "label": "pos"})
    lines[10] = "{not json"
    lines[12] = json.dumps({"text": "x", "label": None})
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = load_text_classification(DataConfig(train=str(path), on_bad_rows="skip"))
    assert data.report.skipped == 6
    assert len(data.train) + len(data.validation) + len(data.test) == 14
    examples = data.report.skipped_examples
    assert len(examples) == 5
    assert examples[0].startswith(f"{path}:11: malformed JSON")  # file-level problems are found first
    assert examples[1] == f"{path}:3: field 'text' is empty"
    assert any("... and 1 more" in line for line in data.report.lines())


def test_unseen_label_in_test_file(tmp_path: Path) -> None:
    test = balanced(4)
    test[2]["label"] = "meh"
    test_path = write_jsonl(tmp_path / "test.jsonl", test)
    with pytest.raises(DataError) as e:
        load_files(tmp_path, balanced(10), test=test_path)
    message = str(e.value)
    assert message.startswith(
        f"{test_path}:3: label 'meh' (field 'label') never appears in the training split"
    )
    assert "'neg', 'pos'" in message
    data = load_files(tmp_path, balanced(10), test=test_path, on_bad_rows="skip")
    assert len(data.test) == 3 and data.report.skipped == 1
    assert data.report.skipped_examples[0].startswith(f"{test_path}:3: label 'meh'")


def test_single_label_in_train(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"train\.jsonl.*only one label \('pos'\).*at least 2"):
        load_files(tmp_path, balanced(10, labels=("pos",)))


def test_given_split_file_left_empty(tmp_path: Path) -> None:
    val = write_jsonl(tmp_path / "val.jsonl", [{"text": "", "label": "pos"}])
    with pytest.raises(DataError, match=r"val\.jsonl: no rows left for the validation split"):
        load_files(tmp_path, balanced(10), validation=val, on_bad_rows="skip")


def test_empty_train_after_skipping(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"train\.jsonl.*no usable training rows \(2 bad rows were skipped"):
        load_files(tmp_path, [{"text": ""}, {"text": ""}], on_bad_rows="skip")


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({}, "exactly one of data.builtin .* neither is set"),
        ({"builtin": "rotten-tomatoes", "train": "x.jsonl"}, "exactly one of .* both are set"),
        ({"train": "x.jsonl", "on_bad_rows": "ignore"}, "on_bad_rows is 'ignore'; valid values: error, skip"),
        ({"train": "x.jsonl", "format": "xls"}, "unknown data format 'xls'"),
        ({"train": "x.jsonl", "split": SplitConfig(validation=-0.1)}, r"data\.split\.validation is -0\.1"),
        ({"train": "x.jsonl", "split": SplitConfig(validation=0.5, test=0.5)}, "sum must be below 1"),
        ({"train": "x.jsonl", "max_train_samples": 0}, "data.max_train_samples is 0"),
        ({"builtin": "rotten-potatoes"}, "unknown built-in data set 'rotten-potatoes'; did you mean"),
    ],
)
def test_config_errors(kwargs: dict, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        load_text_classification(DataConfig(**kwargs))


def test_fractions_of_splits_given_as_files_do_not_count(tmp_path: Path) -> None:
    val = write_jsonl(tmp_path / "val.jsonl", balanced(2))
    test = write_jsonl(tmp_path / "test.jsonl", balanced(2))
    data = load_files(
        tmp_path, balanced(4), validation=val, test=test, split=SplitConfig(validation=0.6, test=0.6)
    )
    assert len(data.train) == 4


def rows_of(n: int) -> list[Row]:
    return [Row("f.jsonl", i + 1, {"text": str(i)}) for i in range(n)]


def test_split_rows_is_seeded_and_disjoint() -> None:
    rows = rows_of(100)
    a = split_rows(rows, 0.2, 0.1, seed=0)
    assert {k: len(v) for k, v in a.items()} == {"train": 70, "validation": 20, "test": 10}
    assert a == split_rows(rows, 0.2, 0.1, seed=0)
    assert a["test"] != split_rows(rows, 0.2, 0.1, seed=1)["test"]
    lines = [{r.line for r in a[s]} for s in ("train", "validation", "test")]
    assert not (lines[0] & lines[1] or lines[0] & lines[2] or lines[1] & lines[2])
    assert set().union(*lines) == set(range(1, 101))
    assert all([r.line for r in part] == sorted(r.line for r in part) for part in a.values())


def test_split_rows_rejects_bad_fractions() -> None:
    with pytest.raises(DataError, match="sum must be below 1"):
        split_rows(rows_of(10), 0.7, 0.3, seed=0)


def test_max_samples_are_seeded_subsets_in_order(tmp_path: Path) -> None:
    kwargs = {
        "split": SplitConfig(validation=0.3, test=0.2, seed=5),
        "max_train_samples": 10,
        "max_eval_samples": 4,
    }
    a = load_files(tmp_path, balanced(100), **kwargs)
    b = load_files(tmp_path, balanced(100), **kwargs)
    assert (len(a.train), len(a.validation), len(a.test)) == (10, 4, 4)
    assert a.train == b.train and a.test == b.test
    assert [e.where for e in a.train] == sorted(
        (e.where for e in a.train), key=lambda w: int(w.rsplit(":")[1])
    )
    full = load_files(tmp_path, balanced(100), split=kwargs["split"])
    assert set(a.train) < set(full.train) and set(a.validation) < set(full.validation)
    assert "seeded subset of 10 of 50" in a.report.sources["train"]
    # Without carved splits only the subset depends on the seed.
    unsplit = [
        load_files(tmp_path, balanced(100), split=SplitConfig(0, 0, seed), max_train_samples=10)
        for seed in (5, 6)
    ]
    assert unsplit[0].train != unsplit[1].train


def test_csv_labels_and_lines(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text('text,label\n"two\nlines",1\nplain,0\nempty label,\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path}:5: field 'label' is empty"):
        load_text_classification(DataConfig(train=str(path)))


def test_load_labelled_file(tmp_path: Path) -> None:
    rows = [{"sentence": "a", "y": 1}, {"sentence": "b", "y": 0}, {"sentence": "c", "y": 7}]
    path = write_jsonl(tmp_path / "eval.jsonl", rows)
    with pytest.raises(
        DataError, match=rf"^{path}:3: label '7' \(field 'y'\) is not one the model was trained"
    ):
        load_labelled_file(path, "sentence", "y", ["0", "1"])
    examples, report = load_labelled_file(path, "sentence", "y", ["0", "1"], on_bad_rows="skip")
    assert [(e.text, e.label) for e in examples] == [("a", 1), ("b", 0)]
    assert report.counts == {"eval": 2} and report.skipped == 1
    assert report.label_counts == {"eval": {"0": 1, "1": 1}}
    with pytest.raises(DataError, match="no field .text.*with --text-field"):  # eval names its own flag
        load_labelled_file(path, "text", "y", ["0", "1"])


def test_labels_mixing_numbers_and_words_are_refused_naming_the_rows(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text("text,label\n" + "".join(f"text {i},{'fresh' if i % 3 else i % 2}\n" for i in range(30)),
                    encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_text_classification(DataConfig(train=str(path)))
    message = str(e.value)
    assert f"mix numbers and words: numbers ('0', '1') in 9 rows (e.g. {path}:2, {path}:5, " in message
    assert f"; words ('fresh') in 15 rows (e.g. {path}:3, {path}:7, " in message  # the 24 training rows
    assert "data.allow_mixed: true to train on them as 3 classes" in message
    allowed = load_text_classification(DataConfig(train=str(path), allow_mixed=True))
    assert allowed.label_names == ["0", "1", "fresh"]
    clean = load_text_classification(DataConfig(train=write_jsonl(tmp_path / "ok.jsonl", balanced(20))))
    assert not [line for line in clean.report.lines() if line.startswith("warning:")]


def test_every_bad_row_is_named_in_one_error(tmp_path: Path) -> None:
    rows = balanced(10)
    rows[2] = {"text": "", "label": "pos"}
    rows[5] = {"text": "fine", "label": None}
    rows[7] = {"txt": "no text column", "label": "neg"}
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError) as e:
        load_text_classification(DataConfig(train=path))
    message = str(e.value)
    assert message.startswith("3 bad rows (fix them, or set data.on_bad_rows: skip to train without them):")
    for line, problem in ((3, "field 'text' is empty"), (6, "field 'label' is null"), (8, "no field 'text'")):
        assert f"{path}:{line}: {problem}" in message
    one = write_jsonl(tmp_path / "one.jsonl", balanced(10)[:9] + [{"text": "", "label": "pos"}])
    with pytest.raises(DataError, match=rf"^{one}:10: field 'text' is empty; .*\(or set data.on_bad_rows: skip\)$"):
        load_text_classification(DataConfig(train=one))


def test_chat_rows_under_a_classifier_suggest_a_language_model(tmp_path: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "fresh"}]}] * 4
    with pytest.raises(DataError, match="these look like chat rows, which train a language model: "
                                        "set objective: causal_lm"):
        load_text_classification(DataConfig(train=write_jsonl(tmp_path / "chat.jsonl", rows)))
