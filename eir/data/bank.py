"""The instance bank: EIR's replay memory (METHOD.md, section 5).

When step t ends, the bank is rebuilt from the previous bank's entries and the
step's *candidates* (training images whose every present class forms exactly
one 4-connected region), class-balanced under a fixed budget. An entry stores
pixels, not references, so a bank replays without the old datasets.

Two storage modes:

* ``"instance"`` (EIR): the image crop around the bounding box of the entry's
  classes and the label crop with those classes kept, everything else 0. Which
  parts of a label are entries is the *instance rule* (:mod:`eir.data.bank_rule`):
  the paper's candidates above by default, or one entry per large connected region.
* ``"image"`` (image-replay baseline, SSUL-M / DKD-M style): every image with a
  class of the step is eligible; the whole image and the whole step label
  (255 kept) are stored.

Selection (deterministic): ``rng = eir.seeding.bank_rng(seed, step)``;
the pool (previous entries in their order, then this step's eligible samples in
sample order) is shuffled with ``rng.permutation(len(pool))``, then the class
order with ``rng.permutation(task.seen_classes(step))``; round after round each
class, in that order, takes the next untaken pool entry that contains it and is
credited with it, until ``budget`` entries are taken or no class has any left.
Entries are kept in the order they were taken.

On disk a bank is a folder: ``manifest.json`` plus
``entries/<index:04d>_<credited class name>_{image,label}.png`` (RGB image and
uint8 label, lossless), written to a temporary folder and renamed into place.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import uuid
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from eir.constants import IMAGENET_MEAN
from eir.data.bank_rule import (
    RegionRule,
    largest_region,
    region_classes,
    rule_from_record,
    rule_record,
    rule_text,
)
from eir.data.io import check_same_size, read_image, read_label
from eir.data.paste import pack_instance, rescale_instance
from eir.seeding import bank_rng
from eir.tasks import task_text

__all__ = [
    "BankEntry",
    "FORMAT_VERSION",
    "InstanceBank",
    "candidate_classes",
    "is_candidate",
    "pool_items",
    "present_classes",
    "round_robin",
    "scan_labels",
    "select_entries",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
#: How to rebuild a damaged bank of a run: rerunning alone skips the finished step.
_REBUILD = (
    "a run's step does: delete the bank folder and that step's DONE marker, then rerun "
    "(the step's weights are kept, only its metrics and bank are made again)"
)
ENTRIES_DIR = "entries"
STORAGE_MODES = ("instance", "image")
_KIND = "eir_instance_bank"
#: ``InstanceBank.load``'s default: the bank's instance rule is not checked.
_UNCHECKED: Any = object()


# --------------------------------------------------------------------------- candidates


def _check_label(label: Any, what: str = "label") -> np.ndarray:
    label = np.asarray(label)
    if label.ndim != 2 or label.dtype != np.uint8:
        raise ValueError(
            f"{what} must be an HxW uint8 array of class ids, got shape {label.shape} and dtype "
            f"{label.dtype}; read label files with eir.data.io.read_label (class ids, palette "
            "indices for palette PNGs)"
        )
    return label


def present_classes(label: np.ndarray) -> np.ndarray:
    """Sorted class ids present in ``label``, background (0) and ignore (255) left out."""
    counts = np.bincount(_check_label(label).ravel(), minlength=256)
    counts[0] = 0
    counts[255] = 0
    return np.flatnonzero(counts)


def _single_region(label: np.ndarray, class_id: int) -> bool:
    mask = (label == class_id).view(np.uint8)
    num_labels = cv2.connectedComponents(mask, connectivity=4, ltype=cv2.CV_32S)[0]
    return num_labels == 2  # the background component plus exactly one region


def candidate_classes(label: np.ndarray) -> tuple[int, ...] | None:
    """The present classes when ``label`` is a candidate (see :func:`is_candidate`), else None."""
    return _candidate_of(label, present_classes(label))


def _candidate_of(label: np.ndarray, classes: np.ndarray) -> tuple[int, ...] | None:
    if classes.size == 0:
        return None
    for c in classes:
        if not _single_region(label, int(c)):
            return None
    return tuple(int(c) for c in classes)


def is_candidate(label: np.ndarray) -> bool:
    """True when every present class (not 0, not 255) forms exactly one 4-connected region.

    Tested on the full-resolution label so the bank does not depend on augmentation;
    an image without any class is not a candidate. One connected-component pass per
    present class (OpenCV), stopping at the first class that is split.
    """
    return candidate_classes(label) is not None


# --------------------------------------------------------------------------- selection


def round_robin(
    pool_classes: Sequence[Sequence[int]], class_order: Sequence[int], budget: int
) -> list[tuple[int, int]]:
    """Class-balanced selection over an already shuffled pool and class order.

    Round after round, each class of ``class_order`` in turn takes the first pool
    entry (in pool order) that contains it and is not taken yet, until ``budget``
    entries are taken or no class has an entry left (it always stops). Returns
    ``(pool position, credited class)`` in the order taken. Per-class queues with
    a moving pointer: each pool entry is looked at once per class it contains.
    """
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    queues: dict[int, list[int]] = {int(c): [] for c in class_order}
    for pos, classes in enumerate(pool_classes):
        for c in classes:
            queue = queues.get(int(c))
            if queue is not None:
                queue.append(pos)
    taken = np.zeros(len(pool_classes), dtype=bool)
    pointer = dict.fromkeys(queues, 0)
    active = [int(c) for c in class_order]
    chosen: list[tuple[int, int]] = []
    while active and len(chosen) < budget:
        still_active = []
        for c in active:
            if len(chosen) >= budget:
                break
            queue, p = queues[c], pointer[c]
            while p < len(queue) and taken[queue[p]]:
                p += 1
            if p == len(queue):
                pointer[c] = p
                continue
            taken[queue[p]] = True
            chosen.append((queue[p], c))
            pointer[c] = p + 1
            still_active.append(c)
        active = still_active
    return chosen


def select_entries(
    pool_classes: Sequence[Sequence[int]],
    classes: Sequence[int],
    budget: int,
    seed: int,
    step: int,
) -> list[tuple[int, int]]:
    """Shuffle pool and class order from ``(seed, step)``, then :func:`round_robin`.

    ``rng = default_rng([seed, step])``; pool permutation first, class order second.
    Returns ``(index into the unshuffled pool, credited class)`` in the order taken.
    """
    rng = bank_rng(seed, step)
    perm = rng.permutation(len(pool_classes))
    class_order = [int(c) for c in rng.permutation(np.asarray(list(classes), dtype=np.int64))]
    shuffled = [pool_classes[i] for i in perm]
    return [(int(perm[pos]), c) for pos, c in round_robin(shuffled, class_order, budget)]


# --------------------------------------------------------------------------- entries


@dataclass(eq=False)
class BankEntry:
    """One stored sample.

    ``image``: h x w x 3 uint8 RGB crop; ``label``: h x w uint8 crop (instance mode:
    the stored classes, 0 elsewhere; image mode: the whole step label, 255 kept);
    ``source_size`` (H, W) of the source image; ``offset`` (y, x) of the crop in it;
    ``classes``: the classes in the entry; ``credited``: the class that selected it;
    ``source``: the source image's id.
    """

    image: np.ndarray
    label: np.ndarray
    source_size: tuple[int, int]
    offset: tuple[int, int]
    classes: tuple[int, ...]
    credited: int
    source: str

    def __post_init__(self) -> None:
        self.source_size = (int(self.source_size[0]), int(self.source_size[1]))
        self.offset = (int(self.offset[0]), int(self.offset[1]))
        self.classes = tuple(int(c) for c in self.classes)
        self.credited = int(self.credited)
        self.source = str(self.source)
        h, w = self.label.shape[:2]
        if self.image.shape != (h, w, 3) or self.image.dtype != np.uint8:
            raise ValueError(
                f"bank entry from {self.source}: image must be {h}x{w}x3 uint8 to match its label, "
                f"got {self.image.shape} {self.image.dtype}"
            )
        y, x = self.offset
        if y < 0 or x < 0 or y + h > self.source_size[0] or x + w > self.source_size[1]:
            raise ValueError(
                f"bank entry from {self.source}: crop {h}x{w} at offset {self.offset} does not fit "
                f"in the source size {self.source_size}"
            )

    @property
    def nbytes(self) -> int:
        return int(self.image.nbytes + self.label.nbytes)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BankEntry):
            return NotImplemented
        return (
            self.source_size == other.source_size
            and self.offset == other.offset
            and self.classes == other.classes
            and self.credited == other.credited
            and self.source == other.source
            and self.image.shape == other.image.shape
            and self.label.shape == other.label.shape
            and np.array_equal(self.image, other.image)
            and np.array_equal(self.label, other.label)
        )

    __hash__ = None  # mutable arrays inside


def _read_label(sample: dict, index: int) -> np.ndarray:
    if "label" in sample:
        return _check_label(sample["label"], f"label of sample {index} ({_source_of(sample, index)})")
    path = sample.get("sem_seg_file_name")
    if path is None:
        raise ValueError(
            f"sample {index} has neither a 'label' array nor a 'sem_seg_file_name' path: "
            "give one of them"
        )
    return read_label(path)


def _read_image(sample: dict, index: int) -> np.ndarray:
    if "image" in sample:
        image = np.asarray(sample["image"])
    else:
        path = sample.get("file_name")
        if path is None:
            raise ValueError(
                f"sample {index} has neither an 'image' array nor a 'file_name' path: give one of them"
            )
        image = read_image(path)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"image of sample {index} ({_source_of(sample, index)}) must be HxWx3 uint8 RGB, "
            f"got shape {image.shape} and dtype {image.dtype}"
        )
    return image


def _source_of(sample: dict, index: int) -> str:
    for key in ("source", "image_id", "file_name"):
        if sample.get(key) is not None:
            return str(sample[key])
    return f"sample_{index}"


def _light(sample: dict, with_image: bool) -> dict:
    """The keys a worker needs, so other dataset-dict fields are not pickled."""
    keys = ("label", "sem_seg_file_name", "source", "image_id", "file_name")
    if with_image:
        keys += ("image",)
    return {k: sample[k] for k in keys if k in sample}


def _scan(
    item: tuple[int, dict], lut: np.ndarray, storage: str, instances: RegionRule | None
) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """Pass 1: ``(present classes, eligible classes)`` of a sample's step label; eligible is
    None when the sample gives the bank nothing. Paper's rule: the candidate's classes (one
    entry holds them all); region rule: the classes with a large enough region (one entry each)."""
    index, sample = item
    label = lut[_read_label(sample, index)]
    classes = present_classes(label)
    present = tuple(int(c) for c in classes)
    if storage == "image":
        return present, present or None
    if instances is None:
        return present, _candidate_of(label, classes)
    return present, region_classes(label, classes, instances) or None


def scan_labels(
    samples: Sequence[dict],
    task: Any,
    step: int,
    *,
    instances: RegionRule | None = None,
    num_workers: int = 0,
    verbose: bool = False,
) -> list[tuple[tuple[int, ...], tuple[int, ...] | None]]:
    """Labels only: per sample of step ``step``, ``(present classes, classes it gives the bank)``
    under the rule ``instances`` (None: the paper's), exactly as :meth:`InstanceBank.build`'s
    first pass sees them (``task.train_label_lut(step)`` applied; the second item is None when
    the sample gives nothing). What :mod:`eir.data.bank_coverage` counts."""
    step = task.check_step(step)
    rule_record(instances)  # a wrong type fails here, not in a worker
    lut = np.asarray(task.train_label_lut(step), dtype=np.uint8)
    pool = _thread_pool(num_workers) if num_workers > 0 and len(samples) > 1 else None
    try:
        return _scan_all(samples, lut, "instance", instances, pool, verbose, step)
    finally:
        if pool is not None:
            pool.shutdown()


def _scan_all(samples, lut, storage, instances, pool, verbose, step) -> list:
    items = [(i, _light(s, with_image=False)) for i, s in enumerate(samples)]
    scan = partial(_scan, lut=lut, storage=storage, instances=instances)
    it = map(scan, items) if pool is None else pool.map(scan, items)
    bar = dict(total=len(items), disable=not verbose, unit="img")
    return list(tqdm(it, desc=f"bank step {step}: scanning labels", **bar))


def pool_items(
    found: Sequence[tuple[tuple[int, ...], tuple[int, ...] | None]], instances: RegionRule | None
) -> list[tuple[int, tuple[int, ...]]]:
    """``(sample index, entry classes)`` of this step's pool from what :func:`scan_labels` found,
    in sample order: one per eligible sample (paper's rule, image mode), one per (sample, class)
    in class-id order (region rule). The build and :mod:`eir.data.bank_coverage` share it."""
    if instances is None:
        return [(i, eligible) for i, (_, eligible) in enumerate(found) if eligible is not None]
    return [(i, (c,)) for i, (_, eligible) in enumerate(found) for c in eligible or ()]


def _read_pair(sample: dict, index: int, lut: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A selected sample's step label and image, of the same size."""
    label = lut[_read_label(sample, index)]
    image = _read_image(sample, index)
    check_same_size(
        image, label, sample.get("file_name", f"of sample {index} ({_source_of(sample, index)})"),
        sample.get("sem_seg_file_name", f"of sample {index}"),
    )
    return label, image


def _make_entry(
    item: tuple[int, dict, int], lut: np.ndarray, storage: str, instances: RegionRule | None
) -> BankEntry:
    """Pass 2: read the image of a selected sample and cut its entry."""
    index, sample, credited = item
    if instances is not None:
        return _make_region_entry(item, lut, instances)
    label, image = _read_pair(sample, index, lut)
    classes = tuple(int(c) for c in present_classes(label))
    source = _source_of(sample, index)
    if storage == "image":
        return BankEntry(image.copy(), label.copy(), label.shape, (0, 0), classes, credited, source)
    mask = (label != 0) & (label != 255)
    x, y, w, h = cv2.boundingRect(mask.view(np.uint8))
    crop_label = np.where(mask[y : y + h, x : x + w], label[y : y + h, x : x + w], 0).astype(np.uint8)
    crop_image = np.ascontiguousarray(image[y : y + h, x : x + w])
    return BankEntry(crop_image, crop_label, label.shape, (y, x), classes, credited, source)


def _make_region_entry(item: tuple[int, dict, int], lut: np.ndarray, rule: RegionRule) -> BankEntry:
    """Pass 2 of the region rule: the credited class's largest region alone (its box; the
    label crop holds that region, every other pixel 0)."""
    index, sample, credited = item
    label, image = _read_pair(sample, index, lut)
    region = largest_region(label, credited, rule)
    if region is None:  # pass 1 found it on the same label: only a label changed in between does this
        raise ValueError(
            f"sample {index} ({_source_of(sample, index)}) has no region of class {credited} left "
            "that pass 1 found: did its label file change while the bank was built?"
        )
    y0, y1, x0, x1 = _box(region)
    crop_label = (region[y0:y1, x0:x1] * np.uint8(credited)).astype(np.uint8)
    crop_image = np.ascontiguousarray(image[y0:y1, x0:x1])
    return BankEntry(
        crop_image, crop_label, label.shape, (y0, x0), (credited,), credited, _source_of(sample, index)
    )


def _thread_pool(num_workers: int) -> ThreadPoolExecutor:
    """Threads, not processes: image decoding (PIL) and connected components (OpenCV) release
    the GIL. A forked process pool can deadlock on locks that OpenCV's or torch's
    thread pools held in the parent, and spawn would re-import the caller's ``__main__``."""
    return ThreadPoolExecutor(num_workers, thread_name_prefix="bank")


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    x, y, w, h = cv2.boundingRect(mask.view(np.uint8))
    return y, y + h, x, x + w


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")


def _plain(obj: Any) -> Any:
    """JSON-normalised copy (tuples become lists) so task dicts compare equal."""
    return json.loads(json.dumps(obj))


# --------------------------------------------------------------------------- the bank


class InstanceBank:
    """A class-balanced replay memory of stored instances (or whole images).

    Made by :meth:`build` when a step ends (``.step`` = that step; it serves the
    next step) or by :meth:`load`. Per-class lookups are precomputed so queries
    run in O(1) inside data-loader workers.
    """

    def __init__(
        self,
        entries: Sequence[BankEntry],
        *,
        task: dict,
        step: int,
        budget: int,
        seed: int,
        storage: str,
        classes: Sequence[int],
        class_names: dict[int, str],
        instances: RegionRule | None = None,
    ) -> None:
        if storage not in STORAGE_MODES:
            raise ValueError(f"storage must be one of {STORAGE_MODES}, got {storage!r}")
        rule_record(instances)
        self.instances: RegionRule | None = instances
        self.entries: list[BankEntry] = list(entries)
        self.task: dict = _plain(dict(task))
        self.dataset: str = str(self.task.get("dataset"))
        self.step = int(step)
        self.budget = int(budget)
        self.seed = int(seed)
        self.storage = storage
        self.classes: list[int] = [int(c) for c in classes]
        self.class_names: dict[int, str] = {int(c): str(n) for c, n in class_names.items()}
        known = set(self.classes)
        self._credited: dict[int, list[int]] = {c: [] for c in self.classes}
        self._containing: dict[int, list[int]] = {c: [] for c in self.classes}
        # (image crop, mask) and the packed form pasting reads, of every (entry, class),
        # contiguous and read-only: cut once here rather than on every query.
        self._instances: list[dict[int, tuple[np.ndarray, np.ndarray]]] = []
        self._packed: list[dict[int, np.ndarray]] = []
        # rescaled_instance's memo: a worker pastes the same instances at the same sizes all step
        self._rescaled: dict[tuple[int, int, tuple[int, int]], tuple[np.ndarray, np.ndarray]] = {}
        for i, entry in enumerate(self.entries):
            if entry.credited not in known or entry.credited not in entry.classes:
                raise ValueError(
                    f"bank entry {i} ({entry.source}) is credited to class {entry.credited}, which is "
                    f"not among its classes {entry.classes} or the bank's classes {self.classes}"
                )
            self._credited[entry.credited].append(i)
            instances, packed = {}, {}
            for c in entry.classes:
                self._containing.setdefault(c, []).append(i)
                mask = entry.label == c
                if not mask.any():
                    raise ValueError(
                        f"bank entry {i} ({entry.source}) lists class {c} but its label has no pixel of it"
                    )
                y0, y1, x0, x1 = _box(mask)
                crop = np.ascontiguousarray(entry.image[y0:y1, x0:x1])
                crop_mask = np.ascontiguousarray(mask[y0:y1, x0:x1])
                packed[c] = pack_instance(crop, crop_mask)
                crop.flags.writeable = crop_mask.flags.writeable = packed[c].flags.writeable = False
                instances[c] = (crop, crop_mask)
            self._instances.append(instances)
            self._packed.append(packed)

    # ------------------------------------------------------------------ build

    @classmethod
    def build(
        cls,
        samples: Sequence[dict],
        task: Any,
        step: int,
        budget: int,
        seed: int,
        previous: InstanceBank | None = None,
        storage: str = "instance",
        num_workers: int = 0,
        verbose: bool = True,
        instances: RegionRule | None = None,
    ) -> InstanceBank:
        """Build the bank that ends ``step`` (it serves step + 1).

        ``samples``: the step's training samples, dicts with arrays ``image`` (RGB) and
        ``label`` or paths ``file_name`` and ``sem_seg_file_name``, optional
        ``image_id`` / ``source``. ``task.train_label_lut(step)`` is applied to every
        label. Pass 1 reads labels only (a thread pool when ``num_workers`` > 0) to
        find eligible samples; after selection pass 2 reads images of the selected
        ones only. ``previous``: the bank of step - 1, whose entries join the pool with
        their pixels unchanged. ``instances``: which parts of a label become entries
        (:mod:`eir.data.bank_rule`): None, the paper's one-region rule; a
        :class:`~eir.data.bank_rule.RegionRule`, one entry per (image, class) with a large
        enough region. Instance storage only.
        """
        if storage not in STORAGE_MODES:
            raise ValueError(f"storage must be one of {STORAGE_MODES}, got {storage!r}")
        rule_record(instances)  # the type is checked before the long scan
        if instances is not None and storage != "instance":
            raise ValueError(
                f"instances={instances!r} chooses what an instance-mode entry holds, but storage="
                f"{storage!r} stores whole images: use instances=None with it"
            )
        if int(budget) < 0:
            raise ValueError(f"bank budget must be >= 0, got {budget}")
        step = task.check_step(step)
        task_dict = _plain(task.to_dict())
        classes = [int(c) for c in task.seen_classes(step)]
        if previous is not None:
            cls._check_previous(previous, task_dict, step, storage, instances)
        samples = samples if isinstance(samples, Sequence) else list(samples)
        lut = np.asarray(task.train_label_lut(step), dtype=np.uint8)
        bank_rng(seed, step)  # a bad seed fails before the long scan, not after it

        pool = None
        if num_workers > 0 and len(samples) > 1:
            pool = _thread_pool(num_workers)
        try:
            found = _scan_all(samples, lut, storage, instances, pool, verbose, step)
            eligible = pool_items(found, instances)

            prev_entries = previous.entries if previous is not None else []
            pool_classes = [e.classes for e in prev_entries] + [c for _, c in eligible]
            chosen = select_entries(pool_classes, classes, int(budget), int(seed), int(step))

            n_prev = len(prev_entries)
            todo = [
                (eligible[p - n_prev][0], _light(samples[eligible[p - n_prev][0]], True), c)
                for p, c in chosen
                if p >= n_prev
            ]
            make = partial(_make_entry, lut=lut, storage=storage, instances=instances)
            bar = dict(total=len(todo), disable=not verbose, unit="img")
            it = map(make, todo) if pool is None or len(todo) < 2 else pool.map(make, todo)
            made = iter(list(tqdm(it, desc=f"bank step {step}: reading images", **bar)))
        finally:
            if pool is not None:
                pool.shutdown()

        entries = [
            replace(prev_entries[p], credited=c) if p < n_prev else next(made) for p, c in chosen
        ]
        bank = cls(
            entries,
            task=task_dict,
            step=step,
            budget=budget,
            seed=seed,
            storage=storage,
            classes=classes,
            class_names={c: task.class_names[c] for c in classes},
            instances=instances,
        )
        # What pass 1 found per sample (present classes, classes given to the bank): kept, not
        # saved, so that a report of the step's coverage does not read every label again.
        bank.label_scan = found
        logger.info(
            "built %r from %d eligible of %d samples and %d previous entries",
            bank,
            len({i for i, _ in eligible}),
            len(samples),
            n_prev,
        )
        return bank

    @staticmethod
    def _check_previous(
        previous: InstanceBank, task_dict: dict, step: int, storage: str, instances: RegionRule | None
    ) -> None:
        if previous.task != task_dict:
            raise ValueError(
                f"previous bank was built for {task_text(previous.task)} (order {previous.task.get('order')}), "
                f"not for {task_text(task_dict)} (order {task_dict.get('order')}): pass the bank of "
                "this task's previous step"
            )
        if previous.step != step - 1:
            raise ValueError(
                f"previous bank was built after step {previous.step}, but the bank of step {step} "
                f"extends the bank of step {step - 1}: pass that one"
            )
        if previous.storage != storage:
            raise ValueError(
                f"previous bank stores {previous.storage!r} entries but storage={storage!r} was asked: "
                "use the same storage mode in every step"
            )
        if previous.instances != instances:
            raise ValueError(
                f"previous bank was built with {rule_text(previous.instances)}, but {rule_text(instances)} "
                "was asked: use the same instance rule in every step"
            )

    # ------------------------------------------------------------------ queries

    def __len__(self) -> int:
        return len(self.entries)

    def class_counts(self) -> dict[int, int]:
        """Entries credited to each seen class (0 where none), in task order."""
        return {c: len(self._credited[c]) for c in self.classes}

    @property
    def nbytes(self) -> int:
        """Bytes of stored pixels (images and labels)."""
        return sum(e.nbytes for e in self.entries)

    def entries_for_class(self, class_id: int) -> list[int]:
        """Indices of the entries *credited* to ``class_id`` (what pasting draws from)."""
        return list(self._credited.get(int(class_id), ()))

    def entries_containing(self, class_id: int) -> list[int]:
        """Indices of the entries that contain ``class_id``, credited to it or not."""
        return list(self._containing.get(int(class_id), ()))

    def instance(self, index: int, class_id: int) -> tuple[np.ndarray, np.ndarray]:
        """``(image crop, bool mask)`` of the tight box of ``class_id``'s region in entry ``index``.

        Both are read-only and shared between calls (cut once when the bank is made):
        augment copies, never in place.
        """
        return self._lookup(self._instances, index, class_id)

    def packed_instance(self, index: int, class_id: int) -> np.ndarray:
        """The same instance as :func:`eir.data.paste.pack_instance` packs it (tight box, RGB +
        0/1 mask in one HxWx4 uint8 array): what pasting reads. Read-only and shared."""
        return self._lookup(self._packed, index, class_id)

    def rescaled_instance(
        self, index: int, class_id: int, size: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(RGB pixels, uint8 0/1 mask)`` of the instance rescaled (nearest) to ``size = (h, w)``
        (:func:`eir.data.paste.rescale_instance`). Read-only and memoised: with one crop size,
        pasting asks for one size per instance, so the memo holds at most one rescaled copy
        of each instance pasting draws (about M x S^2 x 4 bytes: 25 MB for M = 100, S = 250)."""
        key = (int(index), int(class_id), (int(size[0]), int(size[1])))
        found = self._rescaled.get(key)
        if found is None:
            found = rescale_instance(self.packed_instance(index, class_id), key[2])
            for array in found:
                array.flags.writeable = False
            self._rescaled[key] = found
        return found

    def _lookup(self, table, index: int, class_id: int):
        found = table[index].get(int(class_id))
        if found is None:
            entry = self.entries[index]
            raise ValueError(
                f"bank entry {index} ({entry.source}) has classes {entry.classes}, not {class_id}: "
                "pick an entry from entries_for_class(class_id)"
            )
        return found

    def render_replay(
        self, index: int, mean_color: Sequence[float] = IMAGENET_MEAN
    ) -> tuple[np.ndarray, np.ndarray]:
        """The training sample of entry ``index``: ``(image HxWx3 uint8 RGB, label HxW uint8)``.

        Instance mode: the stored instance pixels at their original place on a flat
        ``mean_color`` canvas of the source size, labelled with their classes, 0
        elsewhere. Image mode: the stored image and label.
        """
        entry = self.entries[index]
        if self.storage == "image":
            return entry.image.copy(), entry.label.copy()
        color = np.clip(np.rint(np.asarray(mean_color, dtype=np.float64)), 0, 255).astype(np.uint8)
        if color.shape != (3,):
            raise ValueError(f"mean_color must be 3 values (RGB), got {mean_color}")
        height, width = entry.source_size
        y, x = entry.offset
        h, w = entry.label.shape
        image = np.empty((height, width, 3), dtype=np.uint8)
        image[:] = color
        label = np.zeros((height, width), dtype=np.uint8)
        keep = entry.label != 0
        image[y : y + h, x : x + w][keep] = entry.image[keep]
        label[y : y + h, x : x + w] = entry.label
        return image, label

    def __repr__(self) -> str:
        counts = ", ".join(
            f"{self.class_names.get(c, str(c))}: {n}" for c, n in self.class_counts().items()
        )
        rule = "" if self.instances is None else f", instances={self.instances}"
        return (
            f"InstanceBank({task_text(self.task)}, step {self.step}, storage={self.storage!r}{rule}, "
            f"{len(self)}/{self.budget} entries, {self.nbytes} bytes; {counts})"
        )

    # ------------------------------------------------------------------ save / load

    def _file_stem(self, index: int) -> str:
        entry = self.entries[index]
        name = _safe_name(self.class_names.get(entry.credited, "")) or f"class{entry.credited}"
        return f"{ENTRIES_DIR}/{index:04d}_{name}"

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the bank to ``directory`` atomically (temporary folder, then rename).

        An existing bank there is replaced: it is renamed away, the new one renamed
        in, the old one deleted. A folder that is not a bank is never replaced.
        """
        target = Path(directory)
        parent = target.parent
        parent.mkdir(parents=True, exist_ok=True)
        if target.exists() and not (target / MANIFEST).is_file():
            if not target.is_dir() or any(target.iterdir()):
                raise ValueError(
                    f"refusing to write a bank to {target}: it exists and is not a bank (no "
                    f"{MANIFEST}); choose another directory or remove it"
                )
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))
        try:
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; a bank is meant to be shared and read
            self._write(tmp)
            if target.exists():
                old = parent / f".{target.name}.old-{uuid.uuid4().hex}"
                os.rename(target, old)
                try:
                    os.rename(tmp, target)
                except BaseException:
                    os.rename(old, target)
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target

    def _write(self, folder: Path) -> None:
        (folder / ENTRIES_DIR).mkdir()
        records = []
        file_bytes = 0
        for i, entry in enumerate(self.entries):
            stem = self._file_stem(i)
            record: dict[str, Any] = {"index": i}
            for kind, array in (
                ("image", cv2.cvtColor(entry.image, cv2.COLOR_RGB2BGR)),
                ("label", entry.label),
            ):
                ok, buf = cv2.imencode(".png", array)
                if not ok:
                    raise ValueError(f"could not encode bank entry {i} ({entry.source}) as PNG")
                data = buf.tobytes()
                rel = f"{stem}_{kind}.png"
                (folder / rel).write_bytes(data)
                record[f"{kind}_file"] = rel
                record[f"{kind}_bytes"] = len(data)
                record[f"{kind}_crc32"] = zlib.crc32(data)
                file_bytes += len(data)
            record.update(
                shape=list(entry.label.shape),
                source_size=list(entry.source_size),
                offset=list(entry.offset),
                classes=list(entry.classes),
                credited=entry.credited,
                source=entry.source,
            )
            records.append(record)
        manifest = {
            "kind": _KIND,
            "format_version": FORMAT_VERSION,
            "dataset": self.dataset,
            "task": self.task,
            "step": self.step,
            "serves_step": self.step + 1,
            "classes": self.classes,
            "class_names": {str(c): n for c, n in self.class_names.items()},
            "budget": self.budget,
            "seed": self.seed,
            "seed_derivation": "numpy.random.default_rng([seed, step]): pool permutation, then class order",
            "storage": self.storage,
            "instances": rule_record(self.instances),
            "num_entries": len(self.entries),
            "class_counts": [
                {"class": c, "name": self.class_names.get(c, str(c)), "count": n}
                for c, n in self.class_counts().items()
            ],
            "nbytes": self.nbytes,
            "file_bytes": file_bytes,
            "entries": records,
        }
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike,
        task: Any = None,
        step: int | None = None,
        instances: Any = _UNCHECKED,
    ) -> InstanceBank:
        """Read a bank written by :meth:`save`, checking it against the run.

        ``task``: the run's Task (dataset, name, setting and class order must match);
        ``step``: the step that built the bank (a run at step t loads step t - 1);
        ``instances``: the run's instance rule (None: the paper's; left out: not checked).
        Every file is checked against its size and CRC-32 in the manifest.
        """
        folder = Path(directory)
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            leftovers = sorted(p.name for p in folder.parent.glob(f".{folder.name}.old-*"))
            hint = (
                f" (an interrupted save left {leftovers[0]} next to it: rename it to {folder.name})"
                if leftovers
                else ""
            )
            raise FileNotFoundError(
                f"no bank at {folder}: {MANIFEST} is missing{hint}; run the step that builds it or "
                "point to the right output directory"
            )
        try:
            manifest = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(
                f"bank manifest {manifest_path} is not valid JSON ({exc}): the bank is corrupt; "
                f"rebuild it as {_REBUILD}"
            ) from exc
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        if not isinstance(manifest, dict) or manifest.get("kind") != _KIND:
            raise ValueError(f"{manifest_path} is not an EIR instance bank manifest")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"bank at {folder} has format version {version}, but this version of eir reads "
                f"format version {FORMAT_VERSION}: rebuild the bank (rerun the step that wrote it) "
                "with this version"
            )
        bank_task = manifest["task"]
        bank_step = int(manifest["step"])
        where = f"bank at {folder} was built after step {bank_step} of {task_text(bank_task)}"
        if task is not None:
            want = _plain(task.to_dict())
            if bank_task.get("dataset") != want.get("dataset"):
                raise ValueError(
                    f"{where}, on dataset {bank_task.get('dataset')!r}, but the run uses dataset "
                    f"{want.get('dataset')!r}: point to this run's output directory"
                )
            if (bank_task.get("name"), bank_task.get("setting")) != (
                want.get("name"),
                want.get("setting"),
            ):
                raise ValueError(
                    f"{where}, but the run is {task_text(want)}: point to the output directory "
                    "of this task or rebuild the bank"
                )
            if bank_task.get("order") != want.get("order"):
                raise ValueError(
                    f"{where} with class order {bank_task.get('order')}, but the run uses class "
                    f"order {want.get('order')}: a bank is tied to its class order; rebuild it "
                    "with this order"
                )
            if bank_task != want:
                raise ValueError(f"{where}, but the run's task is {want}: rebuild the bank")
        try:
            bank_rule = rule_from_record(manifest.get("instances"))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}; rebuild it as {_REBUILD}") from exc
        if instances is not _UNCHECKED and bank_rule != instances:
            raise ValueError(
                f"{where} with {rule_text(bank_rule)}, but the run asks for {rule_text(instances)}: "
                "a bank is tied to its rule; point to a run with this rule or "
                f"rebuild the bank as {_REBUILD}"
            )
        if step is not None and bank_step != int(step):
            raise ValueError(
                f"{where}, but step {int(step) + 1} needs the bank of step {int(step)}: rerun step "
                f"{int(step)} or point to the right output directory"
            )
        if task is not None:
            seen = [int(c) for c in task.seen_classes(bank_step)]
            if [int(c) for c in manifest["classes"]] != seen:
                raise ValueError(
                    f"{where}, but its classes {manifest['classes']} are not the task's seen "
                    f"classes {seen} of that step: the manifest is inconsistent; rebuild the bank"
                )
        entries = [cls._read_entry(folder, rec, bank_step) for rec in manifest["entries"]]
        bank = cls(
            entries,
            task=bank_task,
            step=bank_step,
            budget=manifest["budget"],
            seed=manifest["seed"],
            storage=manifest["storage"],
            classes=manifest["classes"],
            class_names={int(c): n for c, n in manifest["class_names"].items()},
            instances=bank_rule,
        )
        counts = {int(r["class"]): int(r["count"]) for r in manifest["class_counts"]}
        if counts != bank.class_counts() or manifest["nbytes"] != bank.nbytes:
            raise ValueError(
                f"bank at {folder}: per-class counts or byte size in {MANIFEST} do not match the "
                f"entries: the bank is corrupt; rebuild it as {_REBUILD}"
            )
        return bank

    @staticmethod
    def _read_entry(folder: Path, record: dict, bank_step: int) -> BankEntry:
        arrays = {}
        for kind in ("image", "label"):
            path = folder / record[f"{kind}_file"]
            if not path.is_file():
                raise FileNotFoundError(
                    f"bank at {folder} is incomplete: {record[f'{kind}_file']} listed in {MANIFEST} "
                    f"is missing; rebuild it as {_REBUILD}"
                )
            data = path.read_bytes()
            if len(data) != record[f"{kind}_bytes"] or zlib.crc32(data) != record[f"{kind}_crc32"]:
                raise ValueError(
                    f"bank at {folder} is corrupt: {record[f'{kind}_file']} does not match its size "
                    f"and checksum in {MANIFEST}; rebuild it as {_REBUILD}"
                )
            array = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
            if array is None:
                raise ValueError(
                    f"bank at {folder} is corrupt: {record[f'{kind}_file']} is not a readable PNG; "
                    f"rebuild it as {_REBUILD}"
                )
            arrays[kind] = array
        shape = tuple(record["shape"])
        image, label = arrays["image"], arrays["label"]
        if image.shape != (*shape, 3) or label.shape != shape or label.dtype != np.uint8:
            raise ValueError(
                f"bank at {folder} is corrupt: entry {record['index']} does not have the shape "
                f"{shape} of {MANIFEST}; rebuild it as {_REBUILD}"
            )
        return BankEntry(
            image=cv2.cvtColor(image, cv2.COLOR_BGR2RGB),
            label=label,
            source_size=tuple(record["source_size"]),
            offset=tuple(record["offset"]),
            classes=tuple(record["classes"]),
            credited=record["credited"],
            source=record["source"],
        )
