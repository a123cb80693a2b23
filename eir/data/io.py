"""Reading images and label maps: the one reader every stage uses.

The mapper (training and evaluation), the prepass, the bank build and the class-presence
table must see the same pixel grid for a file, or a map computed by one stage lands on the
wrong pixels in another. So all of them read through :func:`read_image` and
:func:`read_label`, which follow Detectron2's ``detection_utils.read_image`` conventions:

* images are decoded by PIL, their EXIF orientation is applied (a photo is used the way it
  is displayed), and they are returned as HxWx3 uint8 RGB;
* labels are returned as HxW uint8 holding their stored values: a palette (``P``) PNG gives
  its palette indices, never colours; a grayscale PNG gives its grey levels. An EXIF
  orientation, if a label file carries one, is applied too, as Detectron2 does;
* a truncated JPEG or PNG (its end marker missing: decoders fill the lost part with grey, or
  decode it without a word) and a file that does not decode are errors naming the file.

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

__all__ = ["LABEL_MODES", "check_same_size", "read_image", "read_label", "truncated_image"]

#: PIL modes accepted for label files: palette and single-channel integer images.
LABEL_MODES = ("P", "L", "I", "I;16")

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
    try:
        orientation = im.getexif().get(_EXIF_ORIENTATION)
    except Exception:  # malformed EXIF: Detectron2 ignores it as well
        return im
    method = _TRANSPOSE.get(orientation)
    return im if method is None else im.transpose(method)


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
    except (OSError, SyntaxError) as e:  # PIL: "image file is truncated", "broken PNG file", ...
        raise ValueError(f"{what} {path} cannot be decoded ({e}): the file is damaged; restore it") from e


def read_image(path: str | os.PathLike) -> np.ndarray:
    """The image at ``path`` as HxWx3 uint8 RGB, with its EXIF orientation applied."""
    with _open(path, "image") as im:
        im = _apply_exif_orientation(im)
        if im.mode != "RGB":
            im = im.convert("RGB")
        return np.array(im, dtype=np.uint8)


def read_label(path: str | os.PathLike) -> np.ndarray:
    """The label map at ``path`` as HxW uint8 of its stored values (palette indices for ``P``)."""
    with _open(path, "label") as im:
        if im.mode not in LABEL_MODES:
            raise ValueError(
                f"label {path} has image mode {im.mode}; labels must be single-channel PNGs "
                "of class ids (grayscale or palette), not colour images"
            )
        im = _apply_exif_orientation(im)
        label = np.array(im)
    if label.dtype != np.uint8:
        if label.size and (label.min() < 0 or label.max() > 255):
            raise ValueError(f"label {path} holds values outside 0..255; class ids must fit uint8")
        label = label.astype(np.uint8)
    return label


def check_same_size(image: np.ndarray, label: np.ndarray, image_file, label_file) -> None:
    """Raise ValueError, naming both files, when ``image`` and ``label`` differ in size."""
    if image.shape[:2] != label.shape[:2]:
        raise ValueError(
            f"label {label_file} is {label.shape[0]}x{label.shape[1]} but image {image_file} is "
            f"{image.shape[0]}x{image.shape[1]} (as displayed: its EXIF orientation applied); "
            "image and label must have the same size"
        )
