"""A step's model applied to image files: class-id label PNGs and overlays (``tools/predict.py``).

The images are resized as evaluation resizes them (the shorter side to
``dataloader.test.augmentations.short_side``; no crop: the whole image is predicted) and the
prediction is brought back to the file's own size by the model (``height`` / ``width``).
Images of one size go through the model together, up to ``batch_size`` at a time, so a batch
holds no padding and each prediction is the one the image gets alone.

Predicting never overwrites a file it did not write (:class:`PredictionFolder`): an output
folder that holds input images is refused, and so is one holding a file of an output's name
that ``eir_predictions.json`` (the folder's record of what predict wrote, with digests) does
not vouch for. Inputs whose stems collide (``im.tif``, ``im.bmp``) keep their extension in
their outputs' names (``im.tif.png``, ``im.bmp.png``).
"""
from __future__ import annotations

import eir.require_detectron2  # noqa: F401  (first: says how to install a missing Detectron2)

# isort: split
import json
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
from eir.fileio import atomic_write, atomic_write_json, sha256_file

__all__ = ["IMAGE_SUFFIXES", "PredictionFolder", "collect_images", "output_names", "predict_labels"]

#: The output folder's record of the files predict wrote: ``{"written": {name: sha256 or null}}``.
RECORD = "eir_predictions.json"
_SHOWN = 3

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
    unique = {}
    for path in files:  # a file named twice (itself and by its folder) is predicted once
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def output_names(files: Sequence[Path]) -> list[str]:
    """The name of each input's outputs (``<name>.png``, ``<name>_overlay.jpg``): its stem, or,
    where stems collide (``im.tif``, ``im.bmp``; compared ignoring case, as some filesystems
    do), its file name, numbered (``_2``, ...) where even those collide."""
    stems = [p.stem.lower() for p in files]
    taken: set[str] = set()
    names = []
    for path, stem in zip(files, stems):
        name = path.stem if stems.count(stem) == 1 else path.name
        candidate, k = name, 1
        while candidate.lower() in taken:
            k += 1
            candidate = f"{name}_{k}"
        taken.add(candidate.lower())
        names.append(candidate)
    return names


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


class PredictionFolder:
    """The ``--output`` folder of predict: checked before anything is written, then written
    atomically, every file it writes recorded in :data:`RECORD` (see the module docstring)."""

    def __init__(self, path: Path, files: Sequence[Path]):
        self.path = Path(path)
        self.files = list(files)
        self.names = output_names(self.files)
        self.record_path = self.path / RECORD
        self.written: dict[str, str | None] = {}
        self.check()

    def outputs(self, name: str) -> tuple[str, str]:
        return f"{name}.png", f"{name}_overlay.jpg"

    def _read_record(self) -> dict[str, str | None]:
        if not self.record_path.exists():
            return {}
        try:
            written = json.loads(self.record_path.read_bytes())["written"]
            if not isinstance(written, dict):
                raise TypeError(type(written).__name__)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"{self.record_path} is not a record of tools/predict.py ({e}), so the files of {self.path} "
                "cannot be told apart from yours: choose another --output folder"
            ) from None
        return written

    def check(self) -> None:
        """Refuse a path that is a file, a folder that holds inputs, and a folder holding a file of
        an output's name that the record does not vouch for (absent, or changed since)."""
        out = self.path
        if out.exists() and not out.is_dir():
            raise ValueError(f"--output {out} is a file, not a folder: name a folder (made when missing)")
        if not out.is_dir():
            return
        inside = [p for p in self.files if p.resolve().parent == out.resolve()]
        if inside:
            raise ValueError(
                f"--output {out} holds input images ({', '.join(p.name for p in inside[:_SHOWN])}"
                f"{' ...' if len(inside) > _SHOWN else ''}): predictions written there could replace them, "
                "and a later run would predict on its own outputs. Choose another folder"
            )
        self.written = self._read_record()
        foreign = []
        for name in self.names:
            for output in self.outputs(name):
                path = out / output
                if path.exists() and not self._vouched(output):
                    foreign.append(output)
        if foreign:
            raise ValueError(
                f"--output {out} already holds {len(foreign)} file(s) of the names predict writes that it did "
                f"not write (or that changed since), e.g. {', '.join(foreign[:_SHOWN])}: they are left as they "
                "are. Choose another folder, or move them away"
            )

    def _vouched(self, output: str) -> bool:
        """Whether the record says predict wrote ``output`` as it is now (None: it was about to)."""
        if output not in self.written:
            return False
        digest = self.written[output]
        return digest is None or sha256_file(self.path / output) == digest

    def write(self, predictions: Iterable[tuple[Path, np.ndarray, np.ndarray]], task) -> list[Path]:
        """Write ``(path, image, label)`` of each input as :func:`write_prediction`; returns the label files."""
        name_of = dict(zip((p.resolve() for p in self.files), self.names))
        labels: list[Path] = []
        try:
            for path, image, label in predictions:
                if not labels:  # the first prediction: every output is recorded before it is written
                    self._start()
                label_name, overlay_name = self.outputs(name_of[path.resolve()])
                write_prediction(self.path / label_name, self.path / overlay_name, image, label, task)
                for output in (label_name, overlay_name):
                    self.written[output] = sha256_file(self.path / output)
                labels.append(self.path / label_name)
        finally:
            if labels:
                self._save_record()
        return labels

    def _start(self) -> None:
        """Make the folder and record every output as about to be written (a killed run's files
        then stay predict's own)."""
        self.path.mkdir(parents=True, exist_ok=True)
        for name in self.names:
            for output in self.outputs(name):
                self.written[output] = None
        self._save_record()

    def _save_record(self) -> None:
        atomic_write_json(self.record_path, {"about": "files written by tools/predict.py, with their SHA-256",
                                             "written": self.written})


def write_prediction(label_path: Path, overlay_path: Path, image: np.ndarray, label: np.ndarray, task) -> None:
    """``label_path``: the label (class ids, a palette PNG with the dataset's colours), and
    ``overlay_path``: the image with the prediction drawn by Detectron2's Visualizer; each
    written atomically."""
    palette = np.zeros((256, 3), np.uint8)
    palette[: len(task.spec.colors)] = task.spec.colors
    png = Image.fromarray(label, mode="P")
    png.putpalette(palette.ravel().tolist())
    atomic_write(label_path, lambda f: png.save(f, format="PNG"))
    overlay = Visualizer(image, metadata=task_metadata(task)).draw_sem_seg(label, alpha=0.5)
    atomic_write(overlay_path, lambda f: Image.fromarray(overlay.get_image()).save(f, format="JPEG", quality=92))
