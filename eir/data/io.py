"""Reading images and label maps: the one reader every stage uses.

The mapper (training and evaluation), the prepass, the bank build and the class-presence
table must see the same pixel grid for a file, or a map computed by one stage lands on the
wrong pixels in another. So all of them read through :func:`read_image` and
:func:`read_label`, which follow Detectron2's ``detection_utils.read_image`` conventions:

* images are decoded by PIL, their EXIF orientation is applied (a photo is used the way it
  is displayed), and they are returned as HxWx3 uint8 RGB. A 16-bit grayscale image (PIL
  modes ``I;16*`` and ``I``, as scientific and medical cameras write them) is scaled to 8 bits,
  value v becoming round(v / 257) (65535 -> 255: the full 16-bit range, no contrast
  stretch); a floating-point image is refused, naming the file;
* labels are returned as HxW uint8 holding their stored values: a palette (``P``) PNG gives
  its palette indices, never colours; a grayscale PNG gives its grey levels. An EXIF
  orientation, if a label file carries one, is applied too, as Detectron2 does;
* a truncated JPEG or PNG (its end marker missing: decoders fill the lost part with grey, or
  decode it without a word), a file that does not decode, and one larger than PIL's
  decompression-bomb guard (``PIL.Image.MAX_IMAGE_PIXELS``) are errors naming the file.

:func:`header_size` checks a file from its header and end only (format, mode, size), for the
start-up check of a run's images (:mod:`eir.data.image_checks`).

Core layer: PIL and NumPy only.
"""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["LABEL_MODES", "check_same_size", "header_size", "read_image", "read_label", "truncated_image"]

#: PIL modes accepted for label files: palette and single-channel integer images.
LABEL_MODES = ("P", "L", "I", "I;16")
#: PIL modes of 16-bit (and 32-bit integer) grayscale images, scaled to 8 bits by :func:`read_image`.
WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
#: What a label of another mode is, for the message that refuses it.
_MODE_NAMES = {
    "1": "a 1-bit (black and white) image: save it as 8-bit grayscale (mode L) holding the class ids",
    "LA": "a grayscale image with an alpha channel: save it without the alpha (mode L)",
    "PA": "a palette image with an alpha channel: save it without the alpha (mode P)",
    "RGB": "a colour (RGB) image, not class ids: save one class id per pixel (mode L or P)",
    "RGBA": "a colour image with alpha, not class ids: save one class id per pixel (mode L or P)",
    "F": "a floating-point image: save the class ids as 8-bit integers (mode L)",
}
#: How to let PIL open images above its decompression-bomb guard.
_ALLOW_BIG = (
    "if the file is genuine, allow bigger images: add `from PIL import Image; "
    "Image.MAX_IMAGE_PIXELS = None` (or a pixel count) to the config file"
)

_EXIF_ORIENTATION = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _apply_exif_orientation(im: Image.Image) -> Image.Image:
    """``im`` turned the way its EXIF orientation tag says (as Detectron2's reader does).

    A missing or unreadable EXIF block leaves the image as stored.
    """
    method = _TRANSPOSE.get(_orientation(im))
    return im if method is None else im.transpose(method)


def _orientation(im: Image.Image) -> int | None:
    """The EXIF orientation tag of ``im``; None when missing or unreadable."""
    try:
        return im.getexif().get(_EXIF_ORIENTATION)
    except Exception:  # malformed EXIF: Detectron2 ignores it as well
        return None


def truncated_image(data: bytes) -> bool:
    """Whether a JPEG or PNG file's bytes lack their end marker."""
    if data[:2] == b"\xff\xd8":  # JPEG: ends with EOI (FFD9), possibly followed by padding
        return not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9")
    if data[:8] == b"\x89PNG\r\n\x1a\n":  # PNG: ends with the IEND chunk
        return b"IEND" not in data[-12:]
    return False


@contextlib.contextmanager
def _open(path: str | os.PathLike, what: str) -> Iterator[Image.Image]:
    """The decoded file; a missing, truncated or undecodable one is an error naming it."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} file {path} not found") from None
    if truncated_image(data):
        raise ValueError(f"{what} {path} is truncated (its end is missing): restore the file")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            yield im
    except UnidentifiedImageError:
        raise ValueError(f"{what} file {path} is not an image PIL can read") from None
    except Image.DecompressionBombError as e:
        raise ValueError(f"{what} {path} is larger than PIL opens by default ({e}); {_ALLOW_BIG}") from None
    except (OSError, SyntaxError) as e:  # PIL: "image file is truncated", "broken PNG file", ...
        raise ValueError(f"{what} {path} cannot be decoded ({e}): the file is damaged; restore it") from e


def read_image(path: str | os.PathLike) -> np.ndarray:
    """The image at ``path`` as HxWx3 uint8 RGB, with its EXIF orientation applied."""
    with _open(path, "image") as im:
        _check_image_mode(im, path)
        im = _apply_exif_orientation(im)
        if im.mode in WIDE_GREY_MODES:
            return _wide_grey_to_rgb(np.asarray(im), path)
        if im.mode != "RGB":
            im = im.convert("RGB")
        return np.array(im, dtype=np.uint8)


def _check_image_mode(im: Image.Image, path) -> None:
    if im.mode == "F":
        raise ValueError(f"image {path} has floating-point pixels (PIL mode F): save it as an 8- or 16-bit image")


def _wide_grey_to_rgb(values: np.ndarray, path) -> np.ndarray:
    """A 16-bit grayscale image as HxWx3 uint8: v -> round(v / 257), so 0..65535 -> 0..255."""
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ValueError(f"image {path} holds values outside 0..65535: save it as an 8- or 16-bit image")
    grey = ((values.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def read_label(path: str | os.PathLike) -> np.ndarray:
    """The label map at ``path`` as HxW uint8 of its stored values (palette indices for ``P``)."""
    with _open(path, "label") as im:
        _check_label_mode(im, path)
        im = _apply_exif_orientation(im)
        label = np.array(im)
    if label.dtype != np.uint8:
        if label.size and (label.min() < 0 or label.max() > 255):
            raise ValueError(f"label {path} holds values outside 0..255; class ids must fit uint8")
        label = label.astype(np.uint8)
    return label


def _check_label_mode(im: Image.Image, path) -> None:
    if im.mode not in LABEL_MODES:
        what = _MODE_NAMES.get(im.mode, f"an image of PIL mode {im.mode}, not class ids")
        raise ValueError(
            f"label {path} is {what} (PIL mode {im.mode}); labels must be single-channel PNGs of "
            "class ids (grayscale or palette)"
        )


def _tail(path, size: int = 64) -> bytes:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - size))
        return f.read()


def header_size(path: str | os.PathLike, what: str) -> tuple[int, int]:
    """The (height, width) ``path`` has as displayed (EXIF orientation applied), from its header
    and end only: it must exist, be of a format and mode PIL reads (a ``what="label"`` of
    :data:`LABEL_MODES`), not be truncated (its end marker), and pass PIL's
    decompression-bomb guard; else an error naming the file, as the full readers give."""
    try:
        with Image.open(path) as im:
            (_check_label_mode if what == "label" else _check_image_mode)(im, path)
            width, height = im.size
            orientation = _orientation(im)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} file {path} not found") from None
    except UnidentifiedImageError:
        raise ValueError(f"{what} file {path} is not an image PIL can read") from None
    except Image.DecompressionBombError as e:
        raise ValueError(f"{what} {path} is larger than PIL opens by default ({e}); {_ALLOW_BIG}") from None
    except (OSError, SyntaxError) as e:
        raise ValueError(f"{what} {path} cannot be decoded ({e}): the file is damaged; restore it") from e
    with open(path, "rb") as f:
        magic = f.read(8)
    if truncated_image(magic + _tail(path)):
        raise ValueError(f"{what} {path} is truncated (its end is missing): restore the file")
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def check_same_size(image: np.ndarray, label: np.ndarray, image_file, label_file) -> None:
    """Raise ValueError, naming both files, when ``image`` and ``label`` differ in size."""
    if image.shape[:2] != label.shape[:2]:
        raise ValueError(
            f"label {label_file} is {label.shape[0]}x{label.shape[1]} but image {image_file} is "
            f"{image.shape[0]}x{image.shape[1]} (as displayed: its EXIF orientation applied); "
            "image and label must have the same size"
        )
