"""read_rows: each format round-trips, and every file problem names the file, the line and the field."""

from __future__ import annotations

import bz2
import gzip
import json
from pathlib import Path

import pytest

from tunesmith.data.sources import Row, detect_format, read_rows
from tunesmith.errors import DataError

RECORDS = [
    {"text": "a fine film", "label": "pos"},
    {"text": 'dull, "very" dull', "label": "neg"},
    {"text": "line one\nline two", "label": "pos"},
]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_jsonl_round_trip_skips_blank_lines_and_numbers_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n\n   \n" + json.dumps(RECORDS[1]) + "\n", encoding="utf-8")
    rows = read_rows(path)
    assert [r.values for r in rows] == RECORDS[:2]
    assert [r.line for r in rows] == [1, 4]
    assert rows[1].where == f"{path}:4"
    assert rows[0].source == str(path)


def test_json_extension_reads_as_jsonl_and_bom_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(RECORDS[0]).encode() + b"\n")
    assert [r.values for r in read_rows(path)] == [RECORDS[0]]


@pytest.mark.parametrize(("name", "delimiter"), [("d.csv", ","), ("d.tsv", "\t")])
def test_csv_tsv_round_trip_with_multiline_record(tmp_path: Path, name: str, delimiter: str) -> None:
    import csv

    path = tmp_path / name
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(["text", "label"])
        for r in RECORDS:
            writer.writerow([r["text"], r["label"]])
        writer.writerow(["after the multi-line one", "neg"])
    rows = read_rows(path)
    assert [r.values for r in rows[:3]] == RECORDS
    # The third record spans lines 4-5, so the next one starts on line 6.
    assert [r.line for r in rows] == [2, 3, 4, 6]
    assert rows[3].where == f"{path}:6"


def test_parquet_round_trip_uses_row_numbers(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([{"text": "x", "label": 3}, {"text": "y", "label": 5}]), path)
    rows = read_rows(path)
    assert [r.values for r in rows] == [{"text": "x", "label": 3}, {"text": "y", "label": 5}]
    assert rows[1].where == f"{path}:row 2"


@pytest.mark.parametrize(("suffix", "compress"), [(".gz", gzip.compress), (".bz2", bz2.compress)])
def test_compressed_files(tmp_path: Path, suffix: str, compress) -> None:
    path = tmp_path / f"d.jsonl{suffix}"
    path.write_bytes(compress(b'{"text": "t", "label": 1}\n'))
    assert read_rows(path) == [Row(str(path), 1, {"text": "t", "label": 1})]
    csv_path = tmp_path / f"d.csv{suffix}"
    csv_path.write_bytes(compress(b"text,label\nt,1\n"))
    assert read_rows(csv_path)[0].values == {"text": "t", "label": "1"}


def test_explicit_format_overrides_extension(tmp_path: Path) -> None:
    path = tmp_path / "d.txt"
    path.write_text("text\tlabel\nhello\tx\n", encoding="utf-8")
    assert read_rows(path, format="tsv")[0].values == {"text": "hello", "label": "x"}
    assert detect_format("a/b.csv.gz") == "csv"


def test_unknown_extension_lists_formats(tmp_path: Path) -> None:
    path = tmp_path / "d.txt"
    path.write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.txt.*'\.txt'.*\.jsonl.*\.csv.*\.parquet"):
        read_rows(path)


def test_invalid_format_value_lists_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="'xml'.*auto, jsonl, csv, tsv, parquet"):
        read_rows(write_jsonl(tmp_path / "d.jsonl", RECORDS), format="xml")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.jsonl: file not found"):
        read_rows(tmp_path / "nope.jsonl")


def test_empty_file_has_no_rows(tmp_path: Path) -> None:
    for name, content in [("e.jsonl", "\n\n"), ("e.csv", "text,label\n"), ("f.csv", "")]:
        path = tmp_path / name
        path.write_text(content, encoding="utf-8")
        with pytest.raises(DataError, match=rf"^{path}: no rows$"):
            read_rows(path)


def test_malformed_json_names_line_and_json_message(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok", "label": 1}\n{"text": "broken", "label": }\n', encoding="utf-8")
    with pytest.raises(DataError) as e:
        read_rows(path)
    assert str(e.value).startswith(f"{path}:2: malformed JSON (Expecting value at column ")


def test_json_array_in_a_jsonl_file_gets_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('[{"text": "x"}]\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path}:1: .*looks like one JSON array: name it .json"):
        read_rows(path)


def test_json_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok"}\n["text", "label"]\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path}:2: expected a JSON object .*got a JSON array"):
        read_rows(path)


def test_skip_bad_collects_messages_instead_of_raising(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok"}\nnot json\n42\n{"text": "fine"}\n', encoding="utf-8")
    skipped: list[str] = []
    rows = read_rows(path, skip_bad=skipped)
    assert [r.line for r in rows] == [1, 4]
    assert len(skipped) == 2
    assert skipped[0].startswith(f"{path}:2: malformed JSON")
    assert skipped[1].startswith(f"{path}:3: expected a JSON object")


def test_all_rows_skipped_returns_empty_instead_of_no_rows(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("nope\n", encoding="utf-8")
    skipped: list[str] = []
    assert read_rows(path, skip_bad=skipped) == []
    assert len(skipped) == 1


def test_invalid_utf8_names_line_byte_and_column(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    lines = [b'{"text": "fine", "label": 1}\n'] * 6 + [b'{"text": "caf\xff", "label": 1}\n']
    path.write_bytes(b"".join(lines))
    with pytest.raises(DataError) as e:
        read_rows(path, skip_bad=[])  # undecodable bytes raise even when skipping
    assert str(e.value) == f"{path}:7: not valid UTF-8 (byte 0xff at column 14); re-save the file as UTF-8"


def test_utf16_file_is_recognised(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes("text,label\nx,y\n".encode("utf-16"))
    with pytest.raises(DataError, match=rf"^{path}:1: not valid UTF-8 \(it looks like UTF-16\)"):
        read_rows(path)


def test_csv_row_with_too_many_fields(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("text,label\nfine,pos\nunquoted, comma,neg\nok,neg\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path}:3: 3 fields but the header has 2 columns"):
        read_rows(path)
    skipped: list[str] = []
    assert [r.line for r in read_rows(path, skip_bad=skipped)] == [2, 4]
    assert skipped and skipped[0].startswith(f"{path}:3:")


def test_csv_short_row_lacks_trailing_columns(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("text,label\nonly text\n", encoding="utf-8")
    assert read_rows(path)[0].values == {"text": "only text"}


def test_csv_duplicate_header_column(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("text,text\na,b\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path}:1: column 'text' appears twice"):
        read_rows(path)


def test_csv_long_field_is_read(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    long_text = "word " * 60_000  # 300 kB, over the csv module's default field limit
    path.write_text(f'text,label\n"{long_text}",pos\n', encoding="utf-8")
    assert read_rows(path)[0].values["text"] == long_text


def test_corrupt_parquet(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    path.write_bytes(b"this is not parquet")
    with pytest.raises(DataError, match=rf"^{path}: not a readable parquet file"):
        read_rows(path)


def test_json_key_given_twice_is_a_bad_row(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "x", "label": "y"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.jsonl:2: key 'label' appears twice in the object"):
        read_rows(path)
    skipped: list[str] = []
    assert [r.line for r in read_rows(path, skip_bad=skipped)] == [1] and len(skipped) == 1


def test_csv_unterminated_quote_names_the_line_it_opens_on(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('text,label\ngood film,pos\n"an open quote,neg\nbad film,neg\n', encoding="utf-8")
    with pytest.raises(DataError, match=r'd\.csv:3: malformed CSV: a quoted field opened on this line is never closed'):
        read_rows(path)
    stray = tmp_path / "e.csv"
    stray.write_text('text,label\n"quoted" then more,pos\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"e\.csv:2: malformed CSV"):
        read_rows(stray)
