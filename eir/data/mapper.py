"""EIRDatasetMapper: a dataset dict -> the tensors one training or evaluation sample needs.

Also the augmentations of EIR's recipe (EIR_METHOD.md section 8), as Detectron2
``Augmentation`` objects: :func:`build_train_augmentations` (random resized crop
with torchvision's semantics, then horizontal flip) and :func:`build_test_augmentations`
(shorter side 512, then a centre crop of 512, or full resolution).
"""
from __future__ import annotations

import eir.require_detectron2  # noqa: F401  (first: says how to install a missing Detectron2)

# isort: split
import contextlib
import logging
import math
import zlib
from typing import Any, Iterator, Sequence

import cv2
import numpy as np
import torch
from detectron2.config import configurable, instantiate
from detectron2.data import transforms as T
from detectron2.utils import comm
from fvcore.transforms.transform import CropTransform, Transform, TransformList

from eir.data import paste as eir_paste
from eir.data.datasets import invalid_values
from eir.data.io import check_same_size, read_image, read_label
from eir.tasks import Task

__all__ = [
    "EIRDatasetMapper",
    "CenterCrop",
    "CROP_MODES",
    "PadTransform",
    "RandomResizedCrop",
    "RandomResizedCropPad",
    "build_test_augmentations",
    "build_train_augmentations",
    "IMAGENET_MEAN",
    "POSITION_KEY",
]

logger = logging.getLogger(__name__)

#: Normalisation mean colour (RGB, pixel scale): the fill of padding and of replay canvases.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IGNORE_LABEL = 255
#: Training-crop windows: "fit" (the recipe: inside the image) or "pad" (a variant, see
#: :class:`RandomResizedCropPad`).
CROP_MODES = ("fit", "pad")
#: Key of a training dict's position in the step's sample stream (set by
#: :class:`eir.engine.sampling.PositionedDataset`); it seeds the sample's random draws.
POSITION_KEY = "eir_position"


# --------------------------------------------------------------------------- augmentations


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


class PadTransform(Transform):
    """Pad by (x0, y0, x1, y1) pixels: the image with a per-channel colour, labels with ``seg_pad_value``.

    fvcore's PadTransform takes one scalar for every channel; this one fills RGB
    images with the normalisation mean so padding looks like "nothing" to the model.
    """

    def __init__(self, x0: int, y0: int, x1: int, y1: int, pad_value=IMAGENET_MEAN, seg_pad_value: int = IGNORE_LABEL):
        super().__init__()
        pad_value = tuple(float(v) for v in np.atleast_1d(np.asarray(pad_value, dtype=np.float64)))
        self._set_attributes(locals())

    def _cv2_pad(self, img: np.ndarray, value: Sequence[float]) -> np.ndarray:
        return cv2.copyMakeBorder(
            np.ascontiguousarray(img), self.y0, self.y1, self.x0, self.x1, cv2.BORDER_CONSTANT,
            value=[float(np.clip(np.rint(v), 0, 255)) for v in value],
        )

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        if img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == len(self.pad_value) <= 4:
            return self._cv2_pad(img, self.pad_value)  # per-channel colour, fast
        out = np.empty((h + self.y0 + self.y1, w + self.x0 + self.x1) + img.shape[2:], dtype=img.dtype)
        fill = np.asarray(self.pad_value, dtype=np.float64)
        if img.ndim == 2 or fill.size != (img.shape[2] if img.ndim == 3 else 1):
            fill = fill.mean()
        if img.dtype == np.uint8:
            fill = np.clip(np.rint(fill), 0, 255)
        out[...] = fill.astype(img.dtype)
        out[self.y0 : self.y0 + h, self.x0 : self.x0 + w] = img
        return out

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        if segmentation.dtype == np.uint8 and segmentation.ndim == 2:
            return self._cv2_pad(segmentation, (self.seg_pad_value,))
        padding = ((self.y0, self.y1), (self.x0, self.x1)) + ((0, 0),) * (segmentation.ndim - 2)
        return np.pad(segmentation, padding, mode="constant", constant_values=self.seg_pad_value)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords[:, 0] += self.x0
        coords[:, 1] += self.y0
        return coords


def _check_crop_args(crop_size, scale, ratio) -> tuple[tuple[int, int], tuple[float, float], tuple[float, float]]:
    crop_size = _pair(crop_size)
    scale = (float(scale[0]), float(scale[1]))
    ratio = (float(ratio[0]), float(ratio[1]))
    if min(crop_size) < 1:
        raise ValueError(f"crop_size must be positive, got {crop_size}")
    if not 0 < scale[0] <= scale[1]:
        raise ValueError(f"scale must be (min, max) area factors with 0 < min <= max, got {scale}")
    if not 0 < ratio[0] <= ratio[1]:
        raise ValueError(f"ratio must be (min, max) aspect ratios with 0 < min <= max, got {ratio}")
    return crop_size, scale, ratio


class RandomResizedCrop(T.Augmentation):
    """EIR's training crop: torchvision's RandomResizedCrop as a Detectron2 augmentation.

    Up to 10 draws of a window with ``U(scale)`` times the image's area and an aspect
    ratio (w/h) drawn log-uniformly from ``ratio``; the first window that fits inside
    the image is taken, at a uniformly random position. When none fits, the central
    crop: the whole image, or, when the image's aspect is outside ``ratio``, its central
    part at the nearest allowed aspect. The window is resized to ``crop_size`` (image
    bilinear, labels nearest); nothing is padded. A window fits only when its area
    factor is at most 1, so the part of ``scale`` above 1 only makes the whole-image
    fallback likelier (torchvision's behaviour, which the recipe keeps). Randomness from
    ``numpy.random`` (Detectron2's convention; the mapper seeds it per sample).
    """

    ATTEMPTS = 10

    def __init__(
        self,
        crop_size: int | Sequence[int] = 512,
        scale: Sequence[float] = (0.5, 2.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
    ):
        super().__init__()
        crop_size, scale, ratio = _check_crop_args(crop_size, scale, ratio)
        self._init(locals())

    def window(self, h: int, w: int) -> tuple[int, int, int, int]:
        """A random window ``(x0, y0, width, height)`` of an ``h`` x ``w`` image."""
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(self.ATTEMPTS):
            area = h * w * np.random.uniform(*self.scale)
            aspect = math.exp(np.random.uniform(*log_ratio))
            win_w = int(round(math.sqrt(area * aspect)))
            win_h = int(round(math.sqrt(area / aspect)))
            if 0 < win_w <= w and 0 < win_h <= h:
                y0 = int(np.random.randint(0, h - win_h + 1))
                x0 = int(np.random.randint(0, w - win_w + 1))
                return x0, y0, win_w, win_h
        aspect = w / h
        if aspect < self.ratio[0]:
            win_w, win_h = w, int(round(w / self.ratio[0]))
        elif aspect > self.ratio[1]:
            win_w, win_h = int(round(h * self.ratio[1])), h
        else:
            win_w, win_h = w, h
        return (w - win_w) // 2, (h - win_h) // 2, win_w, win_h

    def get_transform(self, image: np.ndarray) -> Transform:
        h, w = image.shape[:2]
        x0, y0, win_w, win_h = self.window(h, w)
        ch, cw = self.crop_size
        tfms: list[Transform] = []
        if (x0, y0, win_w, win_h) != (0, 0, w, h):
            tfms.append(CropTransform(x0, y0, win_w, win_h, w, h))
        if (win_h, win_w) != (ch, cw):
            tfms.append(T.ResizeTransform(win_h, win_w, ch, cw))
        return TransformList(tfms)


class RandomResizedCropPad(T.Augmentation):
    """A variant of the training crop (``crop_mode="pad"``) that keeps windows larger than the image.

    The window has ``U(scale)`` times the image's area and an aspect ratio (w/h)
    drawn log-uniformly from ``ratio``, as torchvision's RandomResizedCrop; unlike it,
    a window larger than the image (scale up to 2) is kept: the window is placed at a
    random position that covers as much of the image as it can, and its part outside
    the image is padded (image: ``pad_value``, label: ``seg_pad_value``). Equivalently,
    the image is resized to (crop area) / U(scale) and a random ``crop_size`` crop is
    taken, padded where the resized image is smaller; only the visible part is
    resized, so the cost is that of a ``crop_size`` output. Training then sees objects
    smaller than evaluation does (on 500x375 images about 23% of a 512 crop is
    padding); the recipe's crop is :class:`RandomResizedCrop`. Randomness from
    ``numpy.random`` (Detectron2's convention; the mapper seeds it per sample).
    """

    def __init__(
        self,
        crop_size: int | Sequence[int] = 512,
        scale: Sequence[float] = (0.5, 2.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        pad_value: Sequence[float] = IMAGENET_MEAN,
        seg_pad_value: int = IGNORE_LABEL,
    ):
        super().__init__()
        crop_size, scale, ratio = _check_crop_args(crop_size, scale, ratio)
        self._init(locals())

    @staticmethod
    def _span(size: int, window: int, out: int) -> tuple[int, int, int, int]:
        """One axis: (visible source start, end, output start, end) of a randomly placed window."""
        start = int(np.random.randint(min(0, size - window), max(0, size - window) + 1))
        s0, s1 = max(0, start), min(size, start + window)
        o0 = min(out - 1, int(round((s0 - start) * out / window)))
        o1 = max(o0 + 1, min(out, int(round((s1 - start) * out / window))))
        return s0, s1, o0, o1

    def get_transform(self, image: np.ndarray) -> Transform:
        h, w = image.shape[:2]
        ch, cw = self.crop_size
        area = h * w * np.random.uniform(*self.scale)
        aspect = math.exp(np.random.uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
        win_w = max(1, int(round(math.sqrt(area * aspect))))
        win_h = max(1, int(round(math.sqrt(area / aspect))))
        x0, x1, ox0, ox1 = self._span(w, win_w, cw)
        y0, y1, oy0, oy1 = self._span(h, win_h, ch)
        tfms: list[Transform] = []
        if (x0, y0, x1, y1) != (0, 0, w, h):
            tfms.append(CropTransform(x0, y0, x1 - x0, y1 - y0, w, h))
        if (oy1 - oy0, ox1 - ox0) != (y1 - y0, x1 - x0):
            tfms.append(T.ResizeTransform(y1 - y0, x1 - x0, oy1 - oy0, ox1 - ox0))
        if (ox0, oy0, ox1, oy1) != (0, 0, cw, ch):
            tfms.append(PadTransform(ox0, oy0, cw - ox1, ch - oy1, self.pad_value, self.seg_pad_value))
        return TransformList(tfms)


class CenterCrop(T.Augmentation):
    """Crop the centre ``crop_size`` (h, w) of the image (the whole side where the image is smaller)."""

    def __init__(self, crop_size: int | Sequence[int]):
        super().__init__()
        crop_size = _pair(crop_size)
        if min(crop_size) < 1:
            raise ValueError(f"crop_size must be positive, got {crop_size}")
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        h, w = image.shape[:2]
        ch, cw = min(self.crop_size[0], h), min(self.crop_size[1], w)
        return CropTransform((w - cw) // 2, (h - ch) // 2, cw, ch, w, h)


def build_train_augmentations(
    crop_size: int | Sequence[int] = 512,
    scale: Sequence[float] = (0.5, 2.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    flip: bool = True,
    crop_mode: str = "fit",
    pad_value: Sequence[float] = IMAGENET_MEAN,
) -> list[T.Augmentation]:
    """EIR's training augmentation: random resized crop (area x scale, aspect in ratio), then flip.

    ``crop_mode`` "fit" (the recipe) is :class:`RandomResizedCrop`; "pad" is the variant
    :class:`RandomResizedCropPad`, whose padding has the colour ``pad_value``.
    """
    if crop_mode == "fit":
        crop: T.Augmentation = RandomResizedCrop(crop_size, scale, ratio)
    elif crop_mode == "pad":
        crop = RandomResizedCropPad(crop_size, scale, ratio, pad_value)
    else:
        raise ValueError(f"crop_mode must be one of {list(CROP_MODES)}, got {crop_mode!r}")
    augs: list[T.Augmentation] = [crop]
    if flip:
        augs.append(T.RandomFlip(prob=0.5, horizontal=True, vertical=False))
    return augs


def build_test_augmentations(
    short_side: int | None = 512, crop: int | Sequence[int] | None = 512
) -> list[T.Augmentation]:
    """EIR's evaluation transform: shorter side to ``short_side``, then a centre crop of ``crop``.

    ``crop=None`` keeps the whole resized image; ``short_side=None`` too gives full resolution.
    """
    augs: list[T.Augmentation] = []
    if short_side is not None:
        augs.append(T.ResizeShortestEdge(int(short_side), sample_style="choice"))
    if crop is not None:
        augs.append(CenterCrop(crop))
    return augs


@contextlib.contextmanager
def _numpy_global_rng(rng: np.random.Generator) -> Iterator[None]:
    """Run Detectron2 augmentations (which draw from ``numpy.random``) under a seed from ``rng``.

    The global state is restored afterwards, so nothing outside sees the change.
    """
    state = np.random.get_state()
    np.random.seed(int(rng.integers(2**32)))
    try:
        yield
    finally:
        np.random.set_state(state)


# --------------------------------------------------------------------------- mapper


def _as_task(task: Any) -> Task:
    if isinstance(task, Task):
        return task
    if hasattr(task, "keys"):  # a dict, or a config node holding one
        task = {k: (list(task[k]) if k == "order" and task[k] is not None else task[k]) for k in task.keys()}
    return Task.from_dict(task)


def _cfg_get(cfg: Any, path: str, default: Any = None) -> Any:
    node = cfg
    for key in path.split("."):
        try:
            node = node[key] if isinstance(node, dict) or hasattr(node, "keys") else getattr(node, key)
        except (KeyError, AttributeError):
            return default
        if node is None:
            return default
    return node


def _writable(array: np.ndarray) -> np.ndarray:
    """``array`` if it is a writable C-contiguous array, else a copy that is."""
    if array.flags.writeable and array.flags.c_contiguous:
        return array
    return np.array(array, order="C")


class EIRDatasetMapper:
    """Turns an EIR dataset dict into a training or evaluation sample.

    The callable does the following:

    1. Read the image (RGB) and its label from ``file_name`` / ``sem_seg_file_name``
       and check the label's values are classes of the dataset (0..N, 255); or, for a
       replay dict (``"bank_index"``), render that bank entry (its instances on a flat
       ``mean_color`` canvas of the source image's size).
    2. Remap the label to the step with the task's table: ``train_label_lut(step)`` in
       training (the step's classes kept, 255 kept, all else 0), ``test_label_lut(step)``
       in evaluation. Replayed entries are not remapped: their stored old classes are
       their labels.
    3. Augment image and label together. For pasting, the image's prepass map (the old
       model's low-resolution pseudo-labels; an image the store lacks is an error) is
       resized to the image with nearest
       interpolation and goes through the same transforms (nearest; the padding of
       ``crop_mode="pad"`` reads 0); a replayed entry's map is all 0.
    4. In training at a step > 0 with a bank and a ``paste_cfg``: paste bank instances
       into the crop's free background (:func:`eir.data.paste.paste_from_bank`).
    5. Return ``image`` (3xHxW uint8 RGB tensor), ``sem_seg`` (HxW int64 class ids),
       ``paste_class`` (HxW int64, 0 where nothing was pasted), ``paste_alpha`` (HxW
       float32), ``height`` / ``width`` (of the returned label: evaluation compares the
       model's output resized to this size with the transformed label), ``file_name``,
       ``image_id`` (and ``bank_index`` for replayed entries).

    Randomness (reproducible): each call draws from its own
    ``numpy.random.Generator``. A training dict from the runner's loader carries its
    position ``p`` in the step's sample stream (:data:`POSITION_KEY`,
    :mod:`eir.engine.sampling`); its generator is seeded by ``SeedSequence([seed, step, p,
    crc32(image_id)])``, so the crops, flips and pastes of a sample depend on the run's
    seed, the step and where the sample falls in the stream only: not on the number of
    GPUs or workers, nor on whether the step was resumed. A dict without a position
    (the mapper called directly) uses ``n``, the count of this mapper copy's calls, in
    place of ``p`` (with the rank and worker id).
    The bank lives in memory; no file is read per sample except the image and label.
    """

    @configurable
    def __init__(
        self,
        *,
        is_train: bool = True,
        task: Any,
        step: int,
        augmentations: Sequence[T.Augmentation | Transform] | None = None,
        bank: Any = None,
        prepass: Any = None,
        paste_cfg: Any = None,
        mean_color: Sequence[float] = IMAGENET_MEAN,
        seed: int = 0,
    ):
        """
        Args:
            is_train: training (train LUT, pasting) or evaluation (test LUT).
            task: an :class:`eir.tasks.Task` (or its ``to_dict()``).
            step: the step being trained or evaluated.
            augmentations: Detectron2 augmentations; default :func:`build_train_augmentations`
                in training and :func:`build_test_augmentations` in evaluation.
            bank: the :class:`~eir.data.bank.InstanceBank` serving this step (replay dicts
                and pasting need it), or None.
            prepass: the step's :class:`~eir.data.prepass.PrepassStore`, or None (then the
                pasting classes come from the fallback rule only).
            paste_cfg: :class:`~eir.data.paste.PasteConfig`, or None for no pasting.
            mean_color: RGB fill of replay canvases.
            seed: the run's seed (see the class docstring for the per-sample rule).
        """
        self.is_train = bool(is_train)
        self.task = _as_task(task)
        self.step = self.task.check_step(step)
        if augmentations is None:
            augmentations = build_train_augmentations() if self.is_train else build_test_augmentations()
        self.augmentations = T.AugmentationList(list(augmentations))
        self.bank = bank
        self.prepass = prepass
        if isinstance(paste_cfg, dict) or (paste_cfg is not None and hasattr(paste_cfg, "keys")):
            paste_cfg = eir_paste.PasteConfig(**dict(paste_cfg))
        self.paste_cfg = paste_cfg
        self.mean_color = tuple(float(c) for c in mean_color)
        if len(self.mean_color) != 3:
            raise ValueError(f"mean_color must be 3 values (RGB), got {mean_color}")
        self.seed = int(seed)
        self.lut = self.task.train_label_lut(self.step) if self.is_train else self.task.test_label_lut(self.step)
        self.old_classes = self.task.old_classes(self.step)
        self.paste = bool(
            self.is_train and self.step > 0 and bank is not None and paste_cfg is not None and len(bank)
        )
        if paste_cfg is not None and self.is_train and self.step > 0 and bank is None:
            raise ValueError("paste_cfg is set but no bank was given: pasting needs the step's bank")
        if prepass is not None and getattr(prepass, "step", self.step) != self.step:
            raise ValueError(
                f"the prepass store is for step {prepass.step}, but the mapper maps step {self.step}"
            )
        self._rank = comm.get_rank()
        self._calls = 0
        logger.info(
            "EIRDatasetMapper (%s, step %d, pasting %s): %s",
            "train" if self.is_train else "test", self.step, "on" if self.paste else "off",
            self.augmentations,
        )

    @classmethod
    def from_config(cls, cfg: Any, is_train: bool = True, *, task=None, step=None, bank=None,
                    prepass=None, paste_cfg=None):
        """Arguments from a config (yacs ``CfgNode`` or LazyConfig ``DictConfig``).

        Keys read (defaults in brackets): ``eir.task`` (Task or its dict), ``eir.step``,
        ``eir.seed`` [``train.seed`` or 0], ``eir.crop_size`` [512], ``eir.scale``
        [(0.5, 2.0)], ``eir.ratio`` [(3/4, 4/3)], ``eir.crop_mode`` ["fit"], ``eir.test_short_side`` [512],
        ``eir.test_crop`` [512; None = full resolution], ``eir.mean_color``. ``bank``,
        ``prepass`` and ``paste_cfg`` are run-time objects passed as keywords; keyword
        ``task`` / ``step`` override the config.
        """
        task = task if task is not None else _cfg_get(cfg, "eir.task")
        step = step if step is not None else _cfg_get(cfg, "eir.step")
        if task is None or step is None:
            raise ValueError("EIRDatasetMapper.from_config needs eir.task and eir.step in the config")
        if hasattr(task, "keys") and "_target_" in task:  # a LazyCall(build_task)(...) node
            task = instantiate(task)
        if is_train:
            augs = build_train_augmentations(
                crop_size=_cfg_get(cfg, "eir.crop_size", 512),
                scale=tuple(_cfg_get(cfg, "eir.scale", (0.5, 2.0))),
                ratio=tuple(_cfg_get(cfg, "eir.ratio", (3 / 4, 4 / 3))),
                crop_mode=_cfg_get(cfg, "eir.crop_mode", "fit"),
            )
        else:
            augs = build_test_augmentations(
                short_side=_cfg_get(cfg, "eir.test_short_side", 512),
                crop=_cfg_get(cfg, "eir.test_crop", 512),
            )
        return {
            "is_train": is_train,
            "task": task,
            "step": int(step),
            "augmentations": augs,
            "bank": bank,
            "prepass": prepass,
            "paste_cfg": paste_cfg,
            "mean_color": tuple(_cfg_get(cfg, "eir.mean_color", IMAGENET_MEAN)),
            "seed": int(_cfg_get(cfg, "eir.seed", _cfg_get(cfg, "train.seed", 0)) or 0),
        }

    # ----------------------------------------------------------------- helpers
    def sample_rng(self, dataset_dict: dict) -> np.random.Generator:
        """The generator of one call: from the dict's stream position, else the call counter."""
        key = zlib.crc32(str(dataset_dict.get("image_id", "")).encode("utf-8"))
        position = dataset_dict.get(POSITION_KEY)
        if position is not None:
            return np.random.default_rng([self.seed & 0xFFFFFFFF, self.step, int(position), key])
        worker = torch.utils.data.get_worker_info()
        worker_id = worker.id + 1 if worker is not None else 0
        ss = np.random.SeedSequence([self.seed & 0xFFFFFFFF, self._rank, worker_id, self._calls, key])
        self._calls += 1
        return np.random.default_rng(ss)

    def _read(self, dataset_dict: dict) -> tuple[np.ndarray, np.ndarray, str]:
        if "bank_index" in dataset_dict:
            if self.bank is None:
                raise ValueError(
                    f"dataset dict {dataset_dict.get('image_id')} replays bank entry "
                    f"{dataset_dict['bank_index']}, but the mapper has no bank"
                )
            index = int(dataset_dict["bank_index"])
            image, label = self.bank.render_replay(index, self.mean_color)
            return image, label, f"bank:{index}"
        file_name = dataset_dict["file_name"]
        seg_file = dataset_dict["sem_seg_file_name"]
        image = read_image(file_name)
        label = read_label(seg_file)
        check_same_size(image, label, file_name, seg_file)
        bad = invalid_values(label, self.task.num_classes)
        if bad:
            raise ValueError(
                f"label {seg_file} holds values {bad} outside the classes of {self.task.dataset} "
                f"(0..{self.task.num_classes}, 255 = ignore); check the dataset's label files"
            )
        return image, self.lut[label], str(file_name)

    def _pseudo_map(self, dataset_dict: dict, shape: tuple[int, int]) -> np.ndarray:
        h, w = shape
        if self.prepass is None or "bank_index" in dataset_dict:
            return np.zeros((h, w), dtype=np.uint8)
        image_id = str(dataset_dict.get("image_id"))
        low = self.prepass.lookup(image_id)
        if low is None:
            where = self.prepass.path or "(a store not saved to a file)"
            raise ValueError(
                f"training image {image_id} ({dataset_dict.get('file_name')}) has no map in the "
                f"prepass store {where}, which was made for other images; delete that file to "
                "have the prepass recomputed"
            )
        return cv2.resize(np.ascontiguousarray(low), (w, h), interpolation=cv2.INTER_NEAREST)

    # ----------------------------------------------------------------- call
    def __call__(self, dataset_dict: dict) -> dict:
        rng = self.sample_rng(dataset_dict)
        image, label, file_name = self._read(dataset_dict)
        source_shape = label.shape

        aug_input = T.AugInput(image, sem_seg=label)
        with _numpy_global_rng(rng):
            tfms = self.augmentations(aug_input)
        image, label = aug_input.image, aug_input.sem_seg
        h, w = label.shape

        if self.paste:
            pseudo = tfms.apply_segmentation(self._pseudo_map(dataset_dict, source_shape))
            pseudo = np.where(pseudo == IGNORE_LABEL, 0, pseudo).astype(np.uint8)  # padding: nothing
            # Paste into the crop itself; copy first where a transform left a view (flip) or a
            # read-only array (PIL resize).
            image, label = _writable(image), _writable(label)
            image, label, paste_class, paste_alpha = eir_paste.paste_from_bank(
                image, label, pseudo, self.bank, self.old_classes, self.paste_cfg, rng,
                inplace=True,
            )
        else:
            paste_class = np.zeros((h, w), dtype=np.uint8)
            paste_alpha = np.zeros((h, w), dtype=np.float32)

        out = {
            "image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "sem_seg": torch.as_tensor(label.astype(np.int64)),
            "paste_class": torch.as_tensor(paste_class.astype(np.int64)),
            "paste_alpha": torch.as_tensor(np.ascontiguousarray(paste_alpha, dtype=np.float32)),
            "height": int(h),
            "width": int(w),
            "file_name": file_name,
            "image_id": str(dataset_dict.get("image_id", "")),
        }
        if "bank_index" in dataset_dict:
            out["bank_index"] = int(dataset_dict["bank_index"])
        if "eir_step" in dataset_dict:
            out["eir_step"] = int(dataset_dict["eir_step"])
        return out
