"""A step's model applied to image files: class-id label PNGs and overlays (``tools/predict.py``).

The images are resized as evaluation resizes them (the shorter side to
``dataloader.test.augmentations.short_side``; no crop: the whole image is predicted) and the
prediction is brought back to the file's own size by the model (``height`` / ``width``).
Images of one size go through the model together, up to ``batch_size`` at a time, so a batch
holds no padding and each prediction is the one the image gets alone.
"""
from __future__ import annotations

import eir.require_detectron2  # noqa: F401  (first: says how to install a missing Detectron2)

# isort: split
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from detectron2.data import transforms as T
from detectron2.utils.visualizer import Visualizer
from PIL import Image
from tqdm import tqdm

from eir.data.io import read_image
from eir.evaluation.prediction_figure import task_metadata

__all__ = ["IMAGE_SUFFIXES", "collect_images", "predict_labels", "write_prediction"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def collect_images(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """The image files named by ``inputs``: files as given, folders' images (sorted, not
    recursive). A path that does not exist, or a folder without images, is an error naming it."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"{item} holds no image ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"input {item} does not exist")
    return files


def _batches(files: Sequence[Path], resize, batch_size: int) -> Iterator[list[tuple[Path, np.ndarray, dict]]]:
    """Consecutive images of one resized size, at most ``batch_size`` of them."""
    batch: list[tuple[Path, np.ndarray, dict]] = []
    for path in files:
        image = read_image(path)  # names the file when it is missing or cannot be decoded
        aug = T.AugInput(image)
        T.AugmentationList(resize)(aug)
        inp = {
            "image": torch.from_numpy(np.ascontiguousarray(aug.image.transpose(2, 0, 1))),
            "height": image.shape[0],
            "width": image.shape[1],
        }
        if batch and (len(batch) == batch_size or batch[-1][2]["image"].shape != inp["image"].shape):
            yield batch
            batch = []
        batch.append((path, image, inp))
    if batch:
        yield batch


@torch.no_grad()
def predict_labels(model, files: Sequence[Path], *, short_side: int | None, batch_size: int = 4, verbose=True):
    """Yield ``(path, image, label)`` for each file: its RGB image and the class id of each pixel
    (the argmax of the model's class scores, uint8, at the image's size)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    resize = [T.ResizeShortestEdge(int(short_side), sample_style="choice")] if short_side else []
    model.eval()
    with tqdm(total=len(files), desc="predicting", unit="img", disable=not verbose) as bar:
        for batch in _batches(files, resize, batch_size):
            outputs = model([inp for _, _, inp in batch])
            for (path, image, _), out in zip(batch, outputs):
                yield path, image, out["sem_seg"].argmax(0).to(torch.uint8).cpu().numpy()
            bar.update(len(batch))


def write_prediction(out_dir: Path, path: Path, image: np.ndarray, label: np.ndarray, task) -> tuple[Path, Path]:
    """``out_dir/<stem>.png``: the label (class ids, a palette PNG with the dataset's colours), and
    ``out_dir/<stem>_overlay.jpg``: the image with the prediction drawn by Detectron2's Visualizer."""
    out_dir.mkdir(parents=True, exist_ok=True)
    label_path, overlay_path = out_dir / f"{path.stem}.png", out_dir / f"{path.stem}_overlay.jpg"
    palette = np.zeros((256, 3), np.uint8)
    palette[: len(task.spec.colors)] = task.spec.colors
    png = Image.fromarray(label, mode="P")
    png.putpalette(palette.ravel().tolist())
    png.save(label_path)
    overlay = Visualizer(image, metadata=task_metadata(task)).draw_sem_seg(label, alpha=0.5)
    Image.fromarray(overlay.get_image()).save(overlay_path, quality=92)
    return label_path, overlay_path
