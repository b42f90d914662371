"""What a built-in data set is (its registry entry and the parts it loads), and how its files are found
inside installed packages without importing them (their code and dependencies are heavy, or under
licences we only want to read data under; we need nothing but the files)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from tunesmith.data.sources import Row
from tunesmith.errors import DataError


@dataclass(frozen=True)
class ImageArrays:
    """One part of an in-memory image set: uint8 images (N, H, W) or (N, H, W, 3), labels (N,) int."""

    images: np.ndarray
    labels: np.ndarray  # indices into BuiltinImages.label_names
    part: str  # names the part in examples' `where` ("train", "test"), "" for a set shipped as one file
    about: str = ""  # what the part is, for the data report's source line ("" for plain train/test)
    # an altered copy of the official test set, image for image: max_eval_samples then keeps the same
    # images as the test subset, so clean and corrupted accuracy compare the same pictures
    copy_of_test: bool = False


@dataclass(frozen=True)
class BuiltinImages:
    label_names: list[str]  # in the data set's official index order
    train: ImageArrays  # validation (and test, when there is no official one) are carved from it
    test: ImageArrays | None = None  # the official test split, used as is
    eval_sets: dict[str, ImageArrays] = field(default_factory=dict)  # named extra evaluation sets, in order


@dataclass(frozen=True)
class BuiltinText:
    """A text set with official splits: train rows (validation, and test when there is none, are carved
    from them), the official test rows, and named extra evaluation sets; `about` describes each part
    ("train", "test", eval set names) for the data report."""

    train: list[Row]
    test: list[Row] | None = None
    eval_sets: dict[str, list[Row]] = field(default_factory=dict)
    about: dict[str, str] = field(default_factory=dict)


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
    load: Callable[[], list[Row]]  # text sets: the training rows (text classification uses load_splits)
    load_images: Callable[[], BuiltinImages] | None = None  # image sets only
    load_splits: Callable[[], BuiltinText] | None = None  # text sets with official splits / eval sets
    eval_sets: tuple[str, ...] = ()  # names of its own extra evaluation sets, known without loading it
    # weak supervision: its labeling functions, a YAML file in tunesmith/data/lfs/
    labeling_functions: str | None = None


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
