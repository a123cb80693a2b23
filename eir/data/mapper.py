"""EIRDatasetMapper: a dataset dict -> the tensors one training or evaluation sample needs.

Also the augmentations of EIR's recipe (METHOD.md section 8), as Detectron2
``Augmentation`` objects: :func:`build_train_augmentations` (random resized crop
with torchvision's semantics, then horizontal flip) and :func:`build_test_augmentations`
(shorter side 512, then a centre crop of 512, or full resolution).
"""
from __future__ import annotations

import eir.require_detectron2  # noqa: F401  (first: says how to install a missing Detectron2)

# isort: split
import logging
import math
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch
from detectron2.data import transforms as T
from detectron2.utils import comm
from fvcore.transforms.transform import CropTransform, Transform, TransformList

from eir.constants import IGNORE_LABEL, IMAGENET_MEAN
from eir.data.datasets import check_label_values
from eir.data.io import check_same_size, read_image, read_label
from eir.seeding import numpy_global_seed, sample_rng, unpositioned_sample_rng
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
    "POSITION_KEY",
]

logger = logging.getLogger(__name__)

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


# --------------------------------------------------------------------------- mapper


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
    3. Augment image and label together.
    4. In training, with a ``paste`` callable (an incremental step that pastes, e.g.
       :class:`eir.data.paste.InstancePaster`): paste old-class instances into the
       augmented sample.
    5. Return ``image`` (3xHxW uint8 RGB tensor), ``sem_seg`` (HxW int64 class ids),
       ``paste_class`` (HxW int64, 0 where nothing was pasted), ``paste_alpha`` (HxW
       float32), ``height`` / ``width`` (of the returned label: evaluation compares the
       model's output resized to this size with the transformed label), ``file_name``,
       ``image_id`` (and ``bank_index`` for replayed entries).

    Randomness (reproducible): each call draws from its own ``numpy.random.Generator``,
    :func:`eir.seeding.sample_rng` of the dict's position in the step's sample stream
    (:data:`POSITION_KEY`, set by :mod:`eir.engine.sampling`), so the crops, flips and
    pastes of a sample depend on the run's seed, the step and where the sample falls in
    the stream only: not on the number of GPUs or workers, nor on whether the step was
    resumed. A dict without a position (the mapper called directly) draws from
    :func:`eir.seeding.unpositioned_sample_rng` instead.
    The bank lives in memory; no file is read per sample except the image and label.
    """

    def __init__(
        self,
        *,
        is_train: bool = True,
        task: Task,
        step: int,
        augmentations: Sequence[T.Augmentation | Transform] | None = None,
        bank: Any = None,
        paste: Callable | None = None,
        mean_color: Sequence[float] = IMAGENET_MEAN,
        seed: int = 0,
    ):
        """
        Args:
            is_train: training (train LUT, pasting) or evaluation (test LUT).
            task: the :class:`eir.tasks.Task`.
            step: the step being trained or evaluated.
            augmentations: Detectron2 augmentations; default :func:`build_train_augmentations`
                in training and :func:`build_test_augmentations` in evaluation.
            bank: the :class:`~eir.data.bank.InstanceBank` whose entries replay dicts render,
                or None.
            paste: ``paste(image, label, dataset_dict, transforms, source_shape, rng)`` ->
                ``(image, label, paste_class, paste_alpha)``, the step's pasting
                (:class:`eir.data.paste.InstancePaster`), or None for no pasting.
            mean_color: RGB fill of replay canvases.
            seed: the run's seed (see the class docstring for the per-sample rule).
        """
        if not isinstance(task, Task):
            raise TypeError(f"task must be an eir.tasks.Task (build_task(...)), got {type(task).__name__}")
        self.is_train = bool(is_train)
        self.task = task
        self.step = task.check_step(step)
        if augmentations is None:
            augmentations = build_train_augmentations() if self.is_train else build_test_augmentations()
        self.augmentations = T.AugmentationList(list(augmentations))
        self.bank = bank
        self.paste = paste
        self.mean_color = tuple(float(c) for c in mean_color)
        if len(self.mean_color) != 3:
            raise ValueError(f"mean_color must be 3 values (RGB), got {mean_color}")
        self.seed = int(seed)
        self.lut = task.train_label_lut(self.step) if self.is_train else task.test_label_lut(self.step)
        self._rank = comm.get_rank()
        self._calls = 0
        logger.info(
            "EIRDatasetMapper (%s, step %d, pasting %s): %s",
            "train" if self.is_train else "test", self.step, "on" if paste is not None else "off",
            self.augmentations,
        )

    # ----------------------------------------------------------------- helpers
    def sample_rng(self, dataset_dict: dict) -> np.random.Generator:
        """The generator of one call: from the dict's stream position, else the call counter."""
        image_id = dataset_dict.get("image_id", "")
        position = dataset_dict.get(POSITION_KEY)
        if position is not None:
            return sample_rng(self.seed, self.step, position, image_id)
        worker = torch.utils.data.get_worker_info()
        worker_id = worker.id + 1 if worker is not None else 0
        rng = unpositioned_sample_rng(self.seed, self._rank, worker_id, self._calls, image_id)
        self._calls += 1
        return rng

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
        check_label_values(label, self.task.spec, seg_file)
        return image, self.lut[label], str(file_name)

    # ----------------------------------------------------------------- call
    def __call__(self, dataset_dict: dict) -> dict:
        rng = self.sample_rng(dataset_dict)
        image, label, file_name = self._read(dataset_dict)
        source_shape = label.shape

        aug_input = T.AugInput(image, sem_seg=label)
        with numpy_global_seed(rng):
            tfms = self.augmentations(aug_input)
        image, label = aug_input.image, aug_input.sem_seg
        h, w = label.shape

        if self.paste is not None:
            image, label, paste_class, paste_alpha = self.paste(image, label, dataset_dict, tfms, source_shape, rng)
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
