"""What a continual task's steps see in a synthetic dataset: the structure that makes CSS hard.

Why: on Pascal VOC an incremental step's images often hold old classes (labelled background
there: background shift), and old images sometimes hold classes of later steps (so a
replayed whole image carries them as background). This command measures those shares for a
generated dataset and a task, with the image-level figures they depend on:

* per step: its training images (the task's setting decides which; overlap: every image with
  a pixel of the step's classes), the share of them with pixels of earlier steps' classes and
  of later steps' classes, and their objects and classes per image;
* for the whole split: objects and classes per image, the share of images with two classes
  or more, and each class's image frequency (share of the images that hold it).

An *object* is a 4-connected region of one class in the label (the generator's void border
keeps touching objects apart), so an object split in two by an occluder counts twice.

Usage::

    python -m eir.data.synthetic_stats --root datasets/eir_synthetic --task 4-2
    python -m eir.data.synthetic_stats --root datasets/eir_synthetic --task 6-1 --split val
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from eir.tasks import IGNORE_LABEL, SETTINGS, Task, build_task

__all__ = ["format_stats", "image_table", "main", "read_labels", "task_stats"]

LISTS = {"train": "train_aug.txt", "val": "val.txt"}


def read_labels(root: str | Path, split: str = "train") -> list[np.ndarray]:
    """The label maps of a split of a VOC-layout dataset (``SegmentationClassAug/<id>.png``)."""
    if split not in LISTS:
        raise ValueError(f"unknown split {split!r}; use one of {tuple(LISTS)}")
    root = Path(root)
    list_file = root / "ImageSets" / "Segmentation" / LISTS[split]
    if not list_file.is_file():
        raise FileNotFoundError(
            f"no {split} list at {list_file}: is --root a synthetic dataset "
            f"(`python -m eir.data.synthetic --out {root}`)?"
        )
    labels = []
    for image_id in list_file.read_text().split():
        path = root / "SegmentationClassAug" / f"{image_id}.png"
        label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if label is None or label.ndim != 2:
            raise FileNotFoundError(f"cannot read the single-channel label {path}")
        labels.append(label)
    if not labels:
        raise ValueError(f"{list_file} lists no images")
    return labels


def image_table(labels: Sequence[np.ndarray], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(presence, objects), both of shape (images, num_classes + 1), column = class id.

    ``presence[i, c]``: image i has a pixel of class c; ``objects[i, c]``: its number of
    4-connected regions of class c. Column 0 (background) is always False / 0. Label values
    above ``num_classes`` other than 255 raise ValueError.
    """
    presence = np.zeros((len(labels), num_classes + 1), dtype=bool)
    objects = np.zeros((len(labels), num_classes + 1), dtype=np.int64)
    for i, label in enumerate(labels):
        counts = np.bincount(label.ravel(), minlength=256)
        foreign = np.flatnonzero(counts)
        foreign = foreign[(foreign > num_classes) & (foreign != IGNORE_LABEL)]
        if foreign.size:
            raise ValueError(f"label {i} holds values {foreign.tolist()}, not classes 0..{num_classes} or 255")
        present = np.flatnonzero(counts[1 : num_classes + 1]) + 1
        presence[i, present] = True
        for c in present:  # a handful of classes per image
            objects[i, c] = cv2.connectedComponents((label == c).astype(np.uint8), connectivity=4)[0] - 1
    return presence, objects


def _share(mask: np.ndarray) -> float | None:
    """The share of True in ``mask``; None for no images."""
    return float(mask.mean()) if mask.size else None


def task_stats(presence: np.ndarray, objects: np.ndarray, task: Task) -> dict:
    """The figures of the module docstring for one split's image table and a task.

    Shares are fractions in [0, 1]; a share with nothing to measure is None (earlier classes
    at step 0, later classes at the last step, any share of a step without images).
    """
    n = task.num_classes
    if presence.shape[1] != n + 1:
        raise ValueError(f"image table has {presence.shape[1] - 1} classes, task {task} has {n}")
    step = np.array([-1] + [task.step_of(c) for c in range(1, n + 1)])
    classes = presence.sum(1)
    num_objects = objects.sum(1)
    steps = []
    for t in range(task.num_steps):
        has_new = presence[:, step == t].any(1)
        later = presence[:, step > t].any(1)
        kept = has_new & ~later if task.setting == "disjoint" else has_new
        steps.append({
            "classes": task.new_classes(t),
            "images": int(kept.sum()),
            "with_earlier": _share(presence[kept][:, (step >= 0) & (step < t)].any(1)) if t > 0 else None,
            "with_later": _share(later[kept]) if t < task.num_steps - 1 else None,
            "objects_per_image": float(num_objects[kept].mean()) if kept.any() else None,
            "classes_per_image": float(classes[kept].mean()) if kept.any() else None,
        })  # fmt: skip
    return {
        "task": task.describe(),
        "images": int(len(presence)),
        "objects_per_image": float(num_objects.mean()),
        "classes_per_image": float(classes.mean()),
        "multi_class_share": float((classes >= 2).mean()),
        "class_frequency": {task.class_names[c]: float(presence[:, c].mean()) for c in range(1, n + 1)},
        "steps": steps,
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def format_stats(stats: dict, title: str) -> str:
    """A plain-text report (two Markdown tables) of :func:`task_stats`'s output."""
    lines = [
        f"{title}: {stats['images']} images; {_num(stats['objects_per_image'])} objects "
        f"(4-connected class regions) and {_num(stats['classes_per_image'])} classes per image; "
        f"{_pct(stats['multi_class_share'])} of the images hold two classes or more",
        "",
        "| class | images holding it |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {_pct(share)} |" for name, share in stats["class_frequency"].items()]
    lines += [
        "",
        f"task {stats['task']}",
        "",
        "| step | classes | training images | with earlier classes | with later classes "
        "| objects / image | classes / image |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for t, s in enumerate(stats["steps"]):
        lines.append(
            f"| {t} | {','.join(map(str, s['classes']))} | {s['images']} | {_pct(s['with_earlier'])} "
            f"| {_pct(s['with_later'])} | {_num(s['objects_per_image'])} | {_num(s['classes_per_image'])} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eir.data.synthetic_stats",
        description="Per-step co-occurrence statistics of a synthetic dataset for a continual task.",
    )
    parser.add_argument("--root", required=True, help="the dataset folder (e.g. datasets/eir_synthetic)")
    parser.add_argument("--task", default="4-2", help="task name, 'B-I' or 'joint' (default 4-2)")
    parser.add_argument("--setting", default="overlap", choices=SETTINGS, help="which images a step trains on")
    parser.add_argument("--split", default="train", choices=tuple(LISTS), help="split to read (default train)")
    a = parser.parse_args(argv)
    try:
        task = build_task("synthetic", a.task, a.setting)
        presence, objects = image_table(read_labels(a.root, a.split), task.num_classes)
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f"error: {e}\n")
    print(format_stats(task_stats(presence, objects, task), f"{a.root} ({a.split})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
