"""Reading rows from data files.

`.json` files hold one JSON array of objects or JSON Lines (told apart by the first character); `.jsonl`
files hold JSON Lines. Every row remembers the file and line it came from, so that any later complaint about it (an empty text,
an unknown label) can say "file:line" and the user can open the file right at the culprit.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import DataError

FORMATS = ("jsonl", "csv", "tsv", "parquet", "json")
_EXTENSIONS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}
_DECOMPRESS: dict[str, Callable[[bytes], bytes]] = {
    ".gz": gzip.decompress,
    ".bz2": bz2.decompress,
    ".xz": lzma.decompress,
}
_CSV_FIELD_LIMIT = 2**31 - 1  # the csv module's default (128 KiB) rejects long documents


@dataclass(frozen=True, slots=True)
class Row:
    """One record of a data file, with enough provenance to point the user back at it."""

    source: str  # file path as given, or "builtin:NAME"
    line: int  # 1-based: physical line where the record starts; parquet: row number
    values: dict[str, Any]
    unit: str = "line"  # "row" for formats without lines (parquet), so `where` doesn't claim a line

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}" if self.unit == "line" else f"{self.source}:row {self.line}"


def check_format(format: str) -> str:
    """Validate a `format` option up front, before any file is opened."""
    if not isinstance(format, str) or format.lower() not in ("auto", *FORMATS):
        raise DataError(f"unknown data format {format!r}; valid formats: auto, {', '.join(FORMATS)}")
    return format.lower()


def detect_format(path: str | Path, format: str = "auto") -> str:
    """The concrete format of `path`: `format` itself unless it is "auto", else by extension."""
    format = check_format(format)
    if format != "auto":
        return format
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] in _DECOMPRESS:
        suffixes.pop()
    ext = suffixes[-1] if suffixes else ""
    if ext not in _EXTENSIONS:
        raise DataError(
            f"{path}: cannot tell the data format from the extension {ext or '(none)'!r}; name the file "
            f"{' / '.join(_EXTENSIONS)} (optionally compressed: .gz .bz2 .xz) or set the format to one of "
            f"{', '.join(FORMATS)}"
        )
    return _EXTENSIONS[ext]


def read_rows(
    path: str | Path, format: str = "auto", *, skip_bad: list[str] | None = None, source: str | None = None
) -> list[Row]:
    """Read every record of a json / jsonl / csv / tsv / parquet file (optionally .gz/.bz2/.xz compressed).

    A record the reader cannot make sense of (malformed JSON, a non-object JSON line, a CSV row with more
    fields than the header) raises, unless `skip_bad` is a list: then its message is appended there and
    the record left out, so the caller can count and show it. Problems with the whole file (missing,
    not UTF-8, not parquet) always raise. `source` names the rows instead of the path (built-in sets).
    """
    name = source if source is not None else os.fspath(path)
    path = Path(path)
    fmt = detect_format(path, format)
    if not path.exists():
        where = "" if path.is_absolute() else f" (relative paths start at the working directory {Path.cwd()})"
        raise DataError(f"{name}: file not found{where}")
    if path.is_dir():
        raise DataError(f"{name}: is a directory, not a data file")
    skipped_before = len(skip_bad) if skip_bad is not None else 0
    if fmt == "parquet":
        rows = _parquet_rows(path, name)
    else:
        text = _decode(_read_bytes(path, name), name)
        if fmt == "json" and text.lstrip().startswith("["):
            rows = _json_array_rows(text, name, skip_bad)
        elif fmt in ("json", "jsonl"):
            rows = _jsonl_rows(text, name, skip_bad)
        else:
            rows = _csv_rows(text, name, "," if fmt == "csv" else "\t", skip_bad)
    if not rows and (skip_bad is None or len(skip_bad) == skipped_before):
        raise DataError(f"{name}: no rows")
    return rows


def _report(message: str, skip_bad: list[str] | None) -> None:
    if skip_bad is None:
        raise DataError(message)
    skip_bad.append(message)


def _read_bytes(path: Path, name: str) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{name}: cannot read the file ({e.strerror or e})") from e
    suffix = path.suffix.lower()
    if suffix in _DECOMPRESS:
        try:
            raw = _DECOMPRESS[suffix](raw)
        except (OSError, EOFError, ValueError, lzma.LZMAError) as e:
            raise DataError(
                f"{name}: not a valid {suffix[1:]} file ({e}); decompress it or fix its name"
            ) from e
    return raw


def _decode(raw: bytes, name: str) -> str:
    """Strict UTF-8: a wrong encoding would otherwise turn into silently garbled training text."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        column = e.start - raw.rfind(b"\n", 0, e.start)
        guess = " (it looks like UTF-16)" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise DataError(
            f"{name}:{line}: not valid UTF-8{guess} (byte 0x{raw[e.start]:02x} at column {column}); "
            "re-save the file as UTF-8"
        ) from None
    return text.removeprefix("\ufeff")  # a BOM would otherwise glue itself to the first column name


def _jsonl_rows(text: str, name: str, skip_bad: list[str] | None) -> list[Row]:
    rows = []
    # Split on "\n" only: JSON strings may legally hold U+2028 etc., which str.splitlines would break on.
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as e:
            hint = "each line must hold one complete JSON object"
            if number == 1 and line.lstrip().startswith("["):
                hint = ("the file looks like one JSON array: name it .json (or set data.format: json), or write "
                        "JSON Lines (one object per line)")
            elif number == 1 and line.strip() == "{":
                hint = ("the file looks like one pretty-printed JSON value; give a JSON array of objects in a .json "
                        "file, or JSON Lines (one object per line)")
            _report(f"{name}:{number}: malformed JSON ({e.msg} at column {e.colno}); {hint}", skip_bad)
            continue
        except _DuplicateKey as e:
            _report(f"{name}:{number}: key {e.args[0]!r} appears twice in the object (JSON keeps only the last "
                    "silently); keep one", skip_bad)
            continue
        if not isinstance(value, dict):
            hint = ("; the file looks like one JSON array: name it .json (or set data.format: json), or write one "
                    "object per line" if isinstance(value, list) and not rows else "")
            _report(
                f'{name}:{number}: expected a JSON object like {{"text": ..., "label": ...}}, '
                f"got a JSON {_json_type(value)}{hint}",
                skip_bad,
            )
            continue
        rows.append(Row(name, number, value))
    return rows


_SPACE = re.compile(r"[ \t\n\r]*")  # JSON's whitespace


def _json_array_rows(text: str, name: str, skip_bad: list[str] | None) -> list[Row]:
    """The objects of one JSON array, each with the line it starts on. The array is decoded element by
    element, so a broken element is named by its line; the rest of the file cannot be trusted after it."""
    decoder = json.JSONDecoder(object_pairs_hook=_unique_keys)
    rows = []
    at = _SPACE.match(text, 0).end() + 1  # past "["
    line, counted = 1, 0  # line of text[counted]

    def line_of(pos: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, pos)
        counted = pos
        return line

    at = _SPACE.match(text, at).end()
    if text.startswith("]", at):
        return rows
    while True:
        start = line_of(at)
        try:
            value, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError as e:
            raise DataError(f"{name}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno}); the file is one JSON "
                            "array of objects, [{...}, {...}]") from None
        except _DuplicateKey as e:
            _report(f"{name}:{start}: key {e.args[0]!r} appears twice in the object (JSON keeps only the last "
                    "silently); keep one", skip_bad)
            value, at = json.JSONDecoder().raw_decode(text, at)  # the same element again, to step past it
        else:
            if isinstance(value, dict):
                rows.append(Row(name, start, value))
            else:
                _report(f'{name}:{start}: expected a JSON object like {{"text": ..., "label": ...}} in the array, '
                        f"got a JSON {_json_type(value)}", skip_bad)
        at = _SPACE.match(text, at).end()
        if text.startswith(",", at):
            at = _SPACE.match(text, at + 1).end()
            continue
        if text.startswith("]", at):
            break
        found = repr(text[at]) if at < len(text) else "the end of the file"
        raise DataError(f"{name}:{line_of(at)}: malformed JSON: expected ',' or ']' after the array's element, found "
                        f"{found}")
    rest = _SPACE.match(text, at + 1).end()
    if rest < len(text):
        raise DataError(f"{name}:{line_of(rest)}: more text after the JSON array ends; a .json file holds one array "
                        "(or JSON Lines)")
    return rows


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _json_type(value: Any) -> str:
    types = {
        list: "array",
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
        type(None): "null",
    }
    return types.get(type(value), type(value).__name__)


def _csv_rows(text: str, name: str, delimiter: str, skip_bad: list[str] | None) -> list[Row]:
    # strict: a stray quote is an error naming its line, not a field that silently swallows the rest
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    old_limit = csv.field_size_limit(_CSV_FIELD_LIMIT)
    try:
        return _csv_records(reader, name, delimiter, skip_bad)
    finally:
        csv.field_size_limit(old_limit)


def _records(reader: Any, name: str, delimiter: str):
    """(first line, fields) of each record; a malformed one is an error naming the line it starts on."""
    kind = "CSV" if delimiter == "," else "TSV"
    previous_end = 0
    while True:
        start = previous_end + 1  # records may span several lines
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            if "unexpected end of data" in str(e):
                raise DataError(f"{name}:{start}: malformed {kind}: a quoted field opened on this line is never "
                                'closed (an unterminated "); close the quote or remove it') from None
            raise DataError(f"{name}:{start}: malformed {kind} ({e}); quote fields that contain quotes or "
                            f"{delimiter!r}, doubling quotes inside them") from None
        previous_end = reader.line_num
        yield start, record


def _csv_records(reader: Any, name: str, delimiter: str, skip_bad: list[str] | None) -> list[Row]:
    header: list[str] | None = None
    rows = []
    for start, record in _records(reader, name, delimiter):
        if not record:
            continue  # a blank line
        if header is None:
            header = record
            seen: set[str] = set()
            for column in header:
                if column in seen:
                    raise DataError(
                        f"{name}:{start}: column {column!r} appears twice in the header; rename one"
                    )
                seen.add(column)
            continue
        if len(record) > len(header):
            _report(
                f"{name}:{start}: {len(record)} fields but the header has {len(header)} columns; "
                f"quote fields that contain {delimiter!r}",
                skip_bad,
            )
            continue
        # A short row simply lacks the trailing columns; if it needed one, validation names it.
        rows.append(Row(name, start, dict(zip(header, record, strict=False))))
    return rows


def _parquet_rows(path: Path, name: str) -> list[Row]:
    import pyarrow as pa  # imported here: only parquet users pay for it
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{name}: not a readable parquet file ({e})") from e
    return [Row(name, number, values, "row") for number, values in enumerate(table.to_pylist(), 1)]
