"""Instance pasting: EIR's step-6 augmentation (METHOD.md section 6).

Old-class instances from the bank are pasted into the free background of a
training crop, so old classes keep real labels in new images. The five steps:

1. :func:`potential_classes` -- old classes the old model sees but the label lacks (at most K);
2. :func:`occupancy_map` + :func:`best_cells` -- the freest cells of an S x S grid host the pastes;
3. one random bank entry per class, rescaled to its cell (:func:`rescale_instance`), with
   :func:`augment_instance`;
4. :func:`choose_classes` -- the fallback to random old classes when too few were found;
5. :func:`paste_instances` -- place in the cell, blend (mixup or copy), write the paste maps.

:func:`paste_from_bank` runs the five together; :class:`InstancePaster` is a step's pasting
as the callable its training mapper applies. Core layer: NumPy and OpenCV
only, because it runs on CPU inside data-loader workers; every random draw
comes from the caller's ``numpy.random.Generator``.

Outputs, all HxW like the input: ``image`` (uint8 RGB), ``label`` (the class
beneath the top paste layer), ``paste_class`` (uint8 class id of the top paste,
0 where nothing was pasted) and ``paste_alpha`` (float32 lam of the top paste,
0 where nothing was pasted). The training target of a pixel is
``paste_alpha * onehot(paste_class) + (1 - paste_alpha) * onehot(label)`` where
``paste_class > 0`` and ``onehot(label)`` elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, List, Sequence, Tuple

import cv2
import numpy as np

from eir.constants import IGNORE_LABEL

__all__ = [
    "InstancePaster",
    "PasteConfig",
    "potential_classes",
    "occupancy_map",
    "best_cells",
    "choose_classes",
    "pack_instance",
    "rescaled_size",
    "rescale_instance",
    "augment_instance",
    "paste_instances",
    "paste_from_bank",
]

MODES = ("mixup", "copy")
#: Where an instance may cover the crop: "any" pixel (METHOD.md section 6: inside the instance's
#: mask, whatever lies beneath) or "background" only (label 0: labelled objects stay in front).
ONTO = ("any", "background")

#: The crop size the paper's cell size S = 250 belongs to.
REFERENCE_CROP = 512

# Up to this many cells, best_cells counts per cell; beyond, it uses an integral image.
_FEW_CELLS = 64


@dataclass
class PasteConfig:
    """Pasting hyperparameters, defaults from the paper (METHOD.md sections 6 and 8).

    ``cell_size`` is S for a 512 x 512 crop; it scales with the crop (use
    :meth:`scaled_to` for another crop size, e.g. S = 125 for 256 crops), so a
    pasted instance covers the same fraction of the image.
    """

    max_classes: int = 3  # K: at most K potential old classes per image
    cell_size: int = 250  # S: side of a grid cell, in pixels of the (512) crop
    min_found: int = 2  # fall back to random old classes when fewer were found
    fallback_total: int = 3  # ... until this many instances are pasted
    mode: str = "mixup"  # "mixup": lam ~ Beta(beta); "copy": lam = 1
    beta: Tuple[float, float] = (1.0, 1.0)
    flip_prob: float = 0.5  # horizontal flip of each instance (its fresh augmentation)
    onto: str = "any"  # "background": pastes cover label-0 pixels only (an option, not the paper's)
    skip_classes: Tuple[int, ...] = ()  # old classes never pasted (an ablation; the paper pastes all)

    def __post_init__(self):
        for name in ("max_classes", "min_found", "fallback_total"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"PasteConfig.{name} must be an integer >= 0, got {value!r}")
        if isinstance(self.cell_size, bool) or not isinstance(self.cell_size, (int, np.integer)) \
                or self.cell_size < 2:
            raise ValueError(
                f"PasteConfig.cell_size must be an integer >= 2 (instances fill cell_size - 1 "
                f"pixels), got {self.cell_size!r}"
            )
        if self.mode not in MODES:
            raise ValueError(f"PasteConfig.mode must be one of {MODES}, got {self.mode!r}")
        self.beta = _check_beta(self.beta)
        if not 0.0 <= float(self.flip_prob) <= 1.0:
            raise ValueError(f"PasteConfig.flip_prob must be in [0, 1], got {self.flip_prob!r}")
        if self.onto not in ONTO:
            raise ValueError(f"PasteConfig.onto must be one of {ONTO}, got {self.onto!r}")
        try:
            self.skip_classes = tuple(int(c) for c in self.skip_classes)
        except (TypeError, ValueError):
            raise ValueError(f"PasteConfig.skip_classes must be class ids, got {self.skip_classes!r}") from None

    def scaled_to(self, crop_size: int, reference: int = REFERENCE_CROP) -> PasteConfig:
        """A copy whose cell size is ``cell_size * crop_size / reference`` (S scales with the crop)."""
        if crop_size <= 0 or reference <= 0:
            raise ValueError(f"crop_size and reference must be > 0, got {crop_size}, {reference}")
        cell = max(2, int(round(self.cell_size * crop_size / reference)))
        return PasteConfig(
            max_classes=self.max_classes, cell_size=cell, min_found=self.min_found,
            fallback_total=self.fallback_total, mode=self.mode, beta=self.beta,
            flip_prob=self.flip_prob, onto=self.onto, skip_classes=self.skip_classes,
        )


def _check_beta(beta) -> Tuple[float, float]:
    try:
        a, b = (float(v) for v in beta)
    except (TypeError, ValueError):
        raise ValueError(f"beta must be a pair of positive numbers (a, b), got {beta!r}") from None
    if not (a > 0 and b > 0):
        raise ValueError(f"beta must be a pair of positive numbers (a, b), got {beta!r}")
    return (a, b)


def _as_class_map(classes_map, what: str) -> np.ndarray:
    arr = np.asarray(classes_map)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be HxW, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError(f"{what} must hold class ids in 0..255")
        arr = arr.astype(np.uint8)
    return np.ascontiguousarray(arr)


def _nonzero_values(arr: np.ndarray, limit: int = 12, scratch: np.ndarray | None = None) -> List[int]:
    """The distinct non-zero values of a uint8 map, largest first.

    Peels values off from the top: max, zero every value >= it, max again; each
    round is two SIMD passes, so the few classes of a label or pseudo map cost
    much less than a histogram. Past ``limit`` values it finishes with a histogram.
    ``scratch``: an optional uint8 buffer of ``arr``'s shape to work in.
    """
    values: List[int] = []
    work = arr
    top = int(work.max()) if work.size else 0
    while top > 0:
        if len(values) == limit:
            hist = cv2.calcHist([work], [0], None, [256], [0, 256]).ravel()
            return values + [int(v) for v in np.flatnonzero(hist[1:] > 0)[::-1] + 1]
        values.append(top)
        if scratch is None:
            scratch = np.empty_like(arr)
        work = cv2.threshold(work, top - 1, 0, cv2.THRESH_TOZERO_INV, dst=scratch)[1]
        top = int(work.max())
    return values


def potential_classes(
    pseudo_map: np.ndarray | None,
    label: np.ndarray,
    old_classes: Iterable[int],
    k: int,
    rng: np.random.Generator,
) -> List[int]:
    """Step 1: old classes in the old model's pseudo map but absent from the label.

    At most ``k`` are kept, a random choice in random order (the first one gets
    the best cell). ``pseudo_map`` may be None (nothing detected) and may have
    another resolution than ``label``: only the set of classes matters.
    """
    return _potential_classes(pseudo_map, label, old_classes, k, rng)


def _potential_classes(pseudo_map, label, old_classes, k, rng, scratch=None) -> List[int]:
    if pseudo_map is None or k <= 0:
        return []
    pm = _as_class_map(pseudo_map, "pseudo_map")
    in_pseudo = set(_nonzero_values(pm, scratch=scratch if pm.shape == np.shape(label) else None))
    found = [int(c) for c in old_classes if 0 < int(c) < 255 and int(c) in in_pseudo]
    if found:
        in_label = set(_nonzero_values(_as_class_map(label, "label"), scratch=scratch))
        found = [c for c in found if c not in in_label]
    if not found:
        return []
    picked = rng.choice(len(found), size=min(int(k), len(found)), replace=False)
    return [found[i] for i in picked]


def occupancy_map(label: np.ndarray, pseudo_map: np.ndarray | None) -> np.ndarray:
    """Pixels that are labelled (any non-zero id; 255 padding/borders count) or pseudo-labelled.

    A ``pseudo_map`` of another size (the prepass's low-resolution map) is
    resized to the label's size with nearest-neighbour interpolation.
    """
    return _occupied(label, pseudo_map) != 0


def _occupied(label: np.ndarray, pseudo_map: np.ndarray | None, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 map, non-zero where occupied: ``label | pseudo_map`` (one pass, no binarising);
    written to ``out`` (uint8, label's shape) when given."""
    label = _as_class_map(label, "label")
    if pseudo_map is None:
        return label
    pm = _as_class_map(pseudo_map, "pseudo_map")
    if pm.shape != label.shape:
        pm = cv2.resize(pm, (label.shape[1], label.shape[0]), interpolation=cv2.INTER_NEAREST)
    return cv2.bitwise_or(label, pm) if out is None else cv2.bitwise_or(label, pm, dst=out)


def best_cells(occupancy: np.ndarray, cell: int, count: int) -> List[Tuple[int, int]]:
    """Step 2: top-left corners (y, x) of the ``count`` freest cells, best first.

    ``occupancy``: HxW, non-zero (True) where occupied (see :func:`occupancy_map`).

    The image is tiled from (0, 0) with ``cell`` x ``cell`` cells; partial cells
    at the right and bottom edges are scored on their real pixels. Score = number
    of free pixels; ties go to the earlier cell in row-major order. When
    ``count`` exceeds the number of cells the ranking is cycled through.
    """
    occ = np.asarray(occupancy)
    if occ.ndim != 2:
        raise ValueError(f"occupancy must be HxW, got shape {occ.shape}")
    if cell < 1:
        raise ValueError(f"cell must be >= 1, got {cell}")
    if count <= 0:
        return []
    h, w = occ.shape
    if h == 0 or w == 0:
        raise ValueError(f"occupancy must not be empty, got shape {occ.shape}")
    if occ.dtype == bool:
        occ_u8 = np.ascontiguousarray(occ).view(np.uint8)
    elif occ.dtype == np.uint8:
        occ_u8 = np.ascontiguousarray(occ)
    else:
        occ_u8 = (occ != 0).view(np.uint8)
    corners = [(y, x) for y in range(0, h, cell) for x in range(0, w, cell)]
    if len(corners) <= _FEW_CELLS:
        # Few cells (the paper's S = 250 on 512 crops: 9): one SIMD count per cell view,
        # ranked in plain Python (cheaper than NumPy's call overhead at this size).
        free = [
            (min(cell, h - y) * min(cell, w - x) - cv2.countNonZero(occ_u8[y:y + cell, x:x + cell]))
            for y, x in corners
        ]
        order = sorted(range(len(corners)), key=lambda i: (-free[i], i))
    else:
        # Many cells: the integral image, S[y1, x1] - S[y0, x1] - S[y1, x0] + S[y0, x0].
        if occ.dtype != bool:
            occ_u8 = (occ_u8 != 0).view(np.uint8)
        integral = cv2.integral(occ_u8, sdepth=cv2.CV_32S)
        ys, xs = np.arange(0, h, cell), np.arange(0, w, cell)
        ye, xe = np.append(ys, h), np.append(xs, w)
        s = integral[ye[:, None], xe[None, :]].astype(np.int64)
        occupied = s[1:, 1:] - s[:-1, 1:] - s[1:, :-1] + s[:-1, :-1]
        areas = np.outer(ye[1:] - ys, xe[1:] - xs)
        order = np.argsort(-(areas - occupied).ravel(), kind="stable").tolist()
    return [corners[order[i % len(order)]] for i in range(count)]


def choose_classes(
    found: Sequence[int],
    old_classes: Sequence[int],
    available: Iterable[int],
    cfg: PasteConfig,
    rng: np.random.Generator,
) -> List[int]:
    """Step 4: the classes to paste, one instance each (a class may repeat).

    The found classes that have bank entries (in ``available``) come first.
    When fewer than ``cfg.min_found`` remain, random old classes are drawn
    uniformly, with replacement, over all old classes with bank entries, until
    ``cfg.fallback_total`` instances in total. Decision (METHOD.md section 6):
    every old class can be drawn, the last one included.
    """
    avail = {int(c) for c in available}
    chosen = [int(c) for c in found if int(c) in avail]
    if len(chosen) >= cfg.min_found:
        return chosen
    pool = [int(c) for c in dict.fromkeys(old_classes) if int(c) in avail]
    need = cfg.fallback_total - len(chosen)
    if not pool or need <= 0:
        return chosen
    draws = rng.integers(0, len(pool), size=need)
    return chosen + [pool[i] for i in draws]


def pack_instance(image: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """An instance as the bank keeps it for pasting: its mask's tight box as one HxWx4
    uint8 array, RGB pixels then the mask (1 inside, 0 outside); None when the mask is empty.

    One array rather than a pair because the nearest-neighbour rescale of step 5 then
    moves pixels and mask in one call (4-channel pixels also resize about twice as fast
    as 3- or 1-channel ones).
    """
    mask = np.ascontiguousarray(mask, dtype=bool)
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
            or image.shape[2] != 3 or image.shape[:2] != mask.shape:
        raise ValueError(
            f"instance image {getattr(image, 'shape', None)} {getattr(image, 'dtype', None)} and "
            f"mask {mask.shape} must be hxwx3 uint8 and hxw"
        )
    x0, y0, w, h = cv2.boundingRect(mask.view(np.uint8))
    if w == 0 or h == 0:
        return None
    crop = np.ascontiguousarray(image[y0:y0 + h, x0:x0 + w])
    return cv2.merge([crop, np.ascontiguousarray(mask[y0:y0 + h, x0:x0 + w]).view(np.uint8)])


def rescaled_size(h: int, w: int, cell: int, img_h: int, img_w: int) -> Tuple[int, int]:
    """Step 5's size of an h x w instance: longer side ``cell - 1``, aspect kept, never larger
    than the img_h x img_w image."""
    scale = min((cell - 1) / max(h, w), img_h / h, img_w / w)
    new_h = min(img_h, max(1, int(round(h * scale))))
    new_w = min(img_w, max(1, int(round(w * scale))))
    return new_h, new_w


def rescale_instance(packed: np.ndarray, size: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """A :func:`pack_instance` rescaled (nearest) to ``size = (h, w)`` and split into
    ``(RGB pixels, uint8 0/1 mask)``, both new contiguous arrays."""
    if tuple(size) != packed.shape[:2]:
        packed = cv2.resize(packed, (int(size[1]), int(size[0])), interpolation=cv2.INTER_NEAREST)
    return cv2.cvtColor(packed, cv2.COLOR_RGBA2RGB), cv2.extractChannel(packed, 3)


def augment_instance(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, flip_prob: float = 0.5
) -> Tuple[np.ndarray, np.ndarray]:
    """Step 3's fresh training augmentation of an instance: a random horizontal flip.

    The scale part of the usual augmentation is left out on purpose: step 5 rescales
    every instance to its cell anyway (:func:`paste_from_bank` flips the rescaled
    instance, the cheaper order). One random number is drawn per call, flipped or not,
    so the stream of draws does not depend on the outcome. The inputs are not modified;
    the mask keeps its dtype (bool or uint8).
    """
    if rng.random() < flip_prob:
        mask = np.ascontiguousarray(mask)
        flipped = cv2.flip(mask.view(np.uint8) if mask.dtype == bool else mask, 1)
        return cv2.flip(np.ascontiguousarray(image), 1), flipped.view(mask.dtype)
    return image, mask


def _copy_to_writes_views() -> bool:
    """Whether cv2.copyTo writes into a strided NumPy view in place (the OpenCV this was
    written against does); checked once at import, bindings that copy instead get a
    contiguous round trip in :func:`_masked_copy`."""
    probe = np.zeros((4, 6, 3), np.uint8)
    view = probe[1:3, 1:4]
    try:
        out = cv2.copyTo(np.full((2, 3, 3), 7, np.uint8), np.ones((2, 3), np.uint8), view)
    except cv2.error:
        return False
    return out is view and bool((probe[1:3, 1:4] == 7).all()) and int(probe.sum()) == 7 * 18


_VIEWS_IN_PLACE = _copy_to_writes_views()


def _masked_copy(dst: np.ndarray, src: np.ndarray, mask: np.ndarray) -> None:
    """``dst[mask] = src[mask]`` for a view ``dst`` (maybe strided), with OpenCV's masked copy
    (an order of magnitude faster than NumPy's masked assignment on 3-channel images)."""
    if _VIEWS_IN_PLACE:
        cv2.copyTo(src, mask, dst)
    else:
        dst[...] = cv2.copyTo(src, mask, np.ascontiguousarray(dst))


def _check_image_label(image: np.ndarray, label: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
            or image.shape[2] != 3:
        raise ValueError(
            f"image must be an HxWx3 uint8 RGB array, got "
            f"{getattr(image, 'shape', None)} {getattr(image, 'dtype', type(image).__name__)}"
        )
    if not isinstance(label, np.ndarray) or label.dtype != np.uint8 or label.shape != image.shape[:2]:
        raise ValueError(
            f"label must be an HxW uint8 array of the image's size {image.shape[:2]}, got "
            f"{getattr(label, 'shape', None)} {getattr(label, 'dtype', type(label).__name__)}"
        )


def paste_instances(
    image: np.ndarray,
    label: np.ndarray,
    instances: Sequence[Tuple[np.ndarray, np.ndarray, int]],
    cells: Sequence[Tuple[int, int]],
    cell: int,
    mode: str = "mixup",
    rng: np.random.Generator | None = None,
    beta: Tuple[float, float] = (1.0, 1.0),
    inplace: bool = False,
    onto: str = "any",
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Step 5: paste ``instances[i] = (crop, mask, class_id)`` at ``cells[i]``, in order.

    Each instance is cut to its mask's tight box and rescaled (nearest, aspect
    kept) so its longer side is ``cell - 1`` pixels, or less where the image is
    smaller; it is placed at the cell's corner, moved inside the image where it
    would stick out. Inside the rescaled mask only,
    ``image = lam * instance + (1 - lam) * image``, lam ~ Beta(beta) per paste
    ("mixup", needs ``rng``) or lam = 1 ("copy"). Later pastes go over earlier
    ones; where one covers an earlier paste, the earlier paste's class is
    folded into ``label`` where its alpha >= 0.5. Instances with an empty mask
    are skipped (no draw; their cell stays unused). Returns ``(image, label,
    paste_class, paste_alpha)``; the inputs are not modified unless ``inplace`` (for
    a caller that owns them, such as the mapper with its freshly augmented crop: it
    saves a full-image copy). Every instance is checked before anything is pasted.
    ``onto="background"`` clips every instance to the pixels whose input label is 0, so
    labelled objects (and 255) stay in front of the pastes.
    """
    _check_image_label(image, label)
    if cell < 2:
        raise ValueError(f"cell must be >= 2 (instances fill cell - 1 pixels), got {cell}")
    img_h, img_w = label.shape
    ready = []
    for inst_image, inst_mask, class_id in instances:
        class_id = _check_class(class_id)
        packed = pack_instance(inst_image, inst_mask)
        if packed is None:
            ready.append(None)
        else:
            size = rescaled_size(*packed.shape[:2], cell, img_h, img_w)
            ready.append((*rescale_instance(packed, size), class_id))
    return _paste_rescaled(image, label, ready, cells, mode, rng, beta, inplace, onto)


def _check_class(class_id) -> int:
    class_id = int(class_id)
    if not 0 < class_id < 255:
        raise ValueError(f"pasted class ids must be in 1..254, got {class_id}")
    return class_id


def _paste_rescaled(image, label, ready, cells, mode, rng, beta, inplace, onto="any"):
    """Step 5 on instances already rescaled: ``ready[i] = (rgb, uint8 0/1 mask, class_id)``,
    each no larger than the image, or None (an empty instance: its cell stays unused).
    The callers have checked ``image`` and ``label``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if onto not in ONTO:
        raise ValueError(f"onto must be one of {ONTO}, got {onto!r}")
    # the input label's background, taken before any fold writes into the label
    free = (label == 0).view(np.uint8) if onto == "background" else None
    if mode == "mixup":
        beta = _check_beta(beta)
        if rng is None:
            raise ValueError("mode 'mixup' draws lam ~ Beta(beta): pass rng=numpy.random.Generator")
    if len(cells) < len(ready):
        raise ValueError(f"need one cell per instance: {len(ready)} instances, {len(cells)} cells")

    img_h, img_w = label.shape
    out_image = image if inplace else image.copy()
    out_label = label if inplace else label.copy()
    paste_class = np.zeros((img_h, img_w), np.uint8)
    paste_alpha = np.zeros((img_h, img_w), np.float32)
    pasted_boxes: List[Tuple[int, int, int, int]] = []
    fill_class = fill_alpha = None  # constant sources for masked writes over earlier pastes

    for item, (cy, cx) in zip(ready, cells):
        if item is None:
            continue  # empty mask: nothing to paste, no draw
        crop, mask, class_id = item
        new_h, new_w = mask.shape
        py = min(max(int(cy), 0), img_h - new_h)
        px = min(max(int(cx), 0), img_w - new_w)
        lam = np.float32(1.0) if mode == "copy" else np.float32(rng.beta(*beta))
        window = (slice(py, py + new_h), slice(px, px + new_w))
        if free is not None:  # a new array: the bank's rescaled masks are shared
            mask = cv2.bitwise_and(mask, free[window])

        # Blend inside the paste box only (no full-image float copies); addWeighted rounds
        # to nearest. Masked writes go through cv2.copyTo, far faster than NumPy's.
        region = out_image[window]
        if mode == "mixup":  # into a new array: the bank's rescaled instances are shared
            crop = cv2.addWeighted(crop, float(lam), region, float(1 - lam), 0.0)
        _masked_copy(region, crop, mask)

        pc, pa = paste_class[window], paste_alpha[window]
        box = (py, py + new_h, px, px + new_w)
        if not any(b[0] < box[1] and box[0] < b[1] and b[2] < box[3] and box[2] < b[3] for b in pasted_boxes):
            # the maps are still zero in this box: the 0/1 mask times the value writes them
            np.multiply(mask, class_id, out=pc)
            np.multiply(mask, lam, out=pa)
        else:
            # over an earlier paste: fold its class into the label beneath where its alpha >= 0.5,
            # then overwrite the maps inside this mask only
            fold = mask.view(bool) & (pc > 0) & (pa >= 0.5)
            np.copyto(out_label[window], pc, where=fold)
            if fill_class is None:
                fill_class = np.empty((img_h, img_w), np.uint8)
                fill_alpha = np.empty(fill_class.shape, np.float32)
            fill_class[:new_h, :new_w] = class_id
            _masked_copy(pc, fill_class[:new_h, :new_w], mask)
            fill_alpha[:new_h, :new_w] = lam
            _masked_copy(pa, fill_alpha[:new_h, :new_w], mask)
        pasted_boxes.append(box)
    return out_image, out_label, paste_class, paste_alpha


def paste_from_bank(
    image: np.ndarray,
    label: np.ndarray,
    pseudo_map: np.ndarray | None,
    bank,
    old_classes: Sequence[int],
    cfg: PasteConfig,
    rng: np.random.Generator,
    inplace: bool = False,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Steps 1-5 on one augmented training crop; returns paste_instances' four outputs.

    ``bank`` needs ``entries_for_class(c) -> list[int]``, ``packed_instance(index, c)``
    (a :func:`pack_instance`) and ``rescaled_instance(index, c, size)`` (that instance
    through :func:`rescale_instance`; :class:`eir.data.bank.InstanceBank` memoises them, so
    a worker rescales each instance once); ``pseudo_map`` (the prepass map
    transformed with the crop, any resolution) may be None. Old classes with no
    bank entry, and those of ``cfg.skip_classes``, are never pasted. Use ``cfg.scaled_to(crop_size)`` for crops
    other than 512. When nothing is pasted the outputs are the inputs (copies
    unless ``inplace``) and zero maps.
    """
    _check_image_label(image, label)
    entries = {}
    for c in dict.fromkeys(int(c) for c in old_classes if int(c) not in cfg.skip_classes):
        idx = bank.entries_for_class(c)
        if len(idx):
            entries[c] = idx
    # one HxW uint8 work buffer for steps 1 and 2: fewer fresh pages per image in a worker
    scratch = np.empty(label.shape, np.uint8)
    found = _potential_classes(pseudo_map, label, list(entries), cfg.max_classes, rng, scratch)
    classes = choose_classes(found, list(entries), entries.keys(), cfg, rng)

    img_h, img_w = label.shape
    instances = []
    for c in classes:
        idx = entries[c]
        index = idx[int(rng.integers(len(idx)))]
        packed = bank.packed_instance(index, c)
        if packed is None:  # an empty instance (never in an InstanceBank): nothing to paste
            continue
        size = rescaled_size(*packed.shape[:2], cfg.cell_size, img_h, img_w)
        rgb, mask = augment_instance(*bank.rescaled_instance(index, c, size), rng, cfg.flip_prob)
        instances.append((rgb, mask, c))
    if not instances:
        if not inplace:
            image, label = image.copy(), label.copy()
        return image, label, np.zeros((img_h, img_w), np.uint8), np.zeros((img_h, img_w), np.float32)
    cells = best_cells(_occupied(label, pseudo_map, scratch), cfg.cell_size, len(instances))
    return _paste_rescaled(image, label, instances, cells, cfg.mode, rng, cfg.beta, inplace, cfg.onto)


def _writable(array: np.ndarray) -> np.ndarray:
    """``array`` if it is a writable C-contiguous array, else a copy that is."""
    if array.flags.writeable and array.flags.c_contiguous:
        return array
    return np.array(array, order="C")


class InstancePaster:
    """The pasting of one incremental step, as the callable its training mapper applies.

    Holds what pasting needs for the whole step (the bank of the previous step, the step's
    prepass maps, the settings and the old classes) so that the mapper only hands it each
    augmented sample. Per sample:

    1. the image's prepass map (the old model's low-resolution pseudo-labels; all 0 for a
       replayed bank entry, or without a prepass store) is resized to the source image with
       nearest interpolation and taken through the sample's transforms, padding reading 0;
    2. :func:`paste_from_bank` pastes into the crop in place (copied first where a transform
       left a view or a read-only array).

    An image the prepass store lacks is an error: its maps were made for other images.

    Args:
        bank: the bank serving the step (see :func:`paste_from_bank` for what it needs).
        prepass: a store with ``lookup(image_id)`` and ``path`` (the step's
            :class:`eir.data.prepass.PrepassStore`), or None (pasted classes then come from
            the fallback alone).
        config: the :class:`PasteConfig`.
        old_classes: the classes of the steps before this one.
    """

    def __init__(self, bank, prepass, config: PasteConfig, old_classes: Sequence[int]):
        if not isinstance(config, PasteConfig):
            config = PasteConfig(**dict(config))
        self.bank = bank
        self.prepass = prepass
        self.config = config
        self.old_classes = [int(c) for c in old_classes]

    def pseudo_map(self, dataset_dict: dict, shape: Tuple[int, int]) -> np.ndarray:
        """The sample's prepass map at the source image's size ``shape`` (uint8 class ids)."""
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

    def __call__(self, image, label, dataset_dict: dict, transforms, source_shape, rng: np.random.Generator):
        """Paste into one augmented sample; returns ``(image, label, paste_class, paste_alpha)``.

        ``transforms`` (anything with ``apply_segmentation``, e.g. Detectron2's
        ``TransformList``) took the source image of ``source_shape`` to ``image``.
        """
        pseudo = transforms.apply_segmentation(self.pseudo_map(dataset_dict, source_shape))
        pseudo = np.where(pseudo == IGNORE_LABEL, 0, pseudo).astype(np.uint8)  # padding: nothing
        return paste_from_bank(
            _writable(image), _writable(label), pseudo, self.bank, self.old_classes, self.config, rng,
            inplace=True,
        )
