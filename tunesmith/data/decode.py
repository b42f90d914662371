"""Image files and in-memory images -> uint8 RGB arrays; anything unreadable is a DataError naming it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tunesmith.errors import DataError


class ImageExample(Protocol):
    """What decoding reads of an example (data.images.ImageExample has it)."""

    image: np.ndarray | Path  # pixels already in memory, or a file
    where: str


def read_image(example: ImageExample) -> np.ndarray:
    """The example's pixels as a fresh, writable uint8 (H, W, 3) RGB array.

    Files are decoded with Pillow: EXIF orientation applied, then grayscale / palette / CMYK / RGBA
    (alpha dropped) converted to RGB; 16-bit images are scaled down to 8 bits, not clipped. Anything
    unreadable raises DataError naming the example and the file.
    """
    if isinstance(example.image, np.ndarray):
        return _array_to_rgb(example.image, example.where)
    return _decode(Path(example.image), example.where)


def header_of(example: ImageExample) -> tuple[int, int, str]:
    """(height, width, "grey" or "colour") of an image as read_image gives it (EXIF orientation applied),
    before it makes it RGB: a file's header is read, not its pixels. Unreadable files give (0, 0, "colour"):
    read_image names their problem."""
    from PIL import Image

    if isinstance(example.image, np.ndarray):
        array = example.image
        return array.shape[0], array.shape[1], "grey" if array.ndim == 2 or array.shape[-1] == 1 else "colour"
    try:
        with Image.open(example.image) as image:
            (width, height), mode = image.size, image.mode
            try:
                turned = image.getexif().get(0x0112) in (5, 6, 7, 8)  # orientations that swap width and height
            except Exception:  # a broken EXIF block: read_image keeps the pixels as stored
                turned = False
    except (OSError, ValueError, SyntaxError):
        return 0, 0, "colour"
    if turned:
        width, height = height, width
    return height, width, "grey" if mode in ("1", "L", "LA", "I", "F") or mode.startswith("I;16") else "colour"


def _array_to_rgb(array: np.ndarray, where: str) -> np.ndarray:
    if array.dtype != np.uint8:
        raise DataError(f"{where}: in-memory image has dtype {array.dtype}; expected uint8")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        out = np.repeat(array[:, :, None], 3, axis=2)
    elif array.ndim == 3 and array.shape[2] == 3:
        out = array.copy()
    else:
        raise DataError(
            f"{where}: in-memory image has shape {array.shape}; expected (H, W), (H, W, 1) or (H, W, 3)"
        )
    if not out.size:
        raise DataError(f"{where}: in-memory image is empty (shape {array.shape})")
    return out


def _decode(path: Path, where: str) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError  # only image runs pay for Pillow

    name = str(path) if where == str(path) else f"{where}: {path}"
    try:
        with Image.open(path) as image:
            image.load()  # decodes now, so a truncated file fails here, inside the try
            try:
                image = ImageOps.exif_transpose(image)
            except Exception:  # a broken EXIF block: the pixels themselves are fine, keep them as stored
                pass
            return _pil_to_rgb(image, name)
    except Image.DecompressionBombError as e:
        raise DataError(
            f"{name}: cannot read the image: too many pixels to decode safely ({e}); shrink it, or raise "
            "PIL.Image.MAX_IMAGE_PIXELS if you trust the file"
        ) from None
    except FileNotFoundError:
        raise DataError(f"{name}: cannot read the image: file not found (was it moved or deleted?)") from None
    except UnidentifiedImageError:
        raise DataError(
            f"{name}: cannot read the image: not a recognised image format (corrupt, or not an image); "
            "fix or remove the file"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # truncated / corrupt data, I/O errors
        raise DataError(f"{name}: cannot read the image: {e}; fix or remove the file") from None


def _pil_to_rgb(image: Any, name: str) -> np.ndarray:
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":  # 16-bit (PNG/TIFF): Pillow's convert would clip at 255
        values = np.asarray(image).astype(np.float64)
        gray = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        raise DataError(
            f"{name}: cannot read the image: floating-point pixels (mode F) have no fixed range; save it "
            "as an 8-bit image"
        )
    return np.array(image.convert("RGB"), dtype=np.uint8)
