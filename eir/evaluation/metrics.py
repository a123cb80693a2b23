"""Confusion matrix and the continual-segmentation summary (projects/EIR/METHOD.md, section 7).

Core module: torch and numpy only. Class ids, not model channels: 0 = background,
255 = ignore, 1..K-1 dataset classes.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from eir.constants import IGNORE_LABEL

NA_NOTE = "n/a: absent from ground truth and prediction, left out of the means"
NEW_NOTE = "*: new class (added after step 0)"
GROUPS_NOTE = (
    "old: background + step-0 classes; new: classes added after step 0; "
    "all: every seen class incl. background; hIoU: harmonic mean of old and new"
)


def _checks_eagerly(device: torch.device) -> bool:
    """Whether `update` may check values at once: free on CPU, a device sync elsewhere."""
    return device.type == "cpu"


def _out_of_range_error(count: int, num_classes: int) -> ValueError:
    return ValueError(
        f"{count} counted pixel(s) had a ground truth or prediction outside [0, {num_classes}) "
        "(ground truth 255 is ignored); map labels to class ids first or raise num_classes"
    )


class ConfusionMatrix:
    """Pixel confusion matrix accumulated on the device of the tensors it is given.

    Rows are ground truth, columns predictions; ground truth 255 is not counted.

    Out-of-range values (a ground truth other than 255, or a prediction, outside
    [0, num_classes)) are counted in an extra bin rather than checked with a
    host round trip, so `update` adds no synchronisation of its own on an
    accelerator (torch.bincount itself reads the largest index on CUDA). On CPU
    the bin is checked at once and `update` raises ValueError without counting
    the batch; on other devices the error is raised when the counts are read
    (`.matrix`, `all_reduce`), where a sync happens anyway.
    """

    def __init__(self, num_classes: int, device: torch.device | str | None = None):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int):
            raise ValueError(f"num_classes must be an int, got {num_classes!r}")
        if not 1 <= num_classes <= IGNORE_LABEL:
            raise ValueError(
                f"num_classes must be in 1..{IGNORE_LABEL} (255 is the ignore label), got {num_classes}"
            )
        self.num_classes = num_classes
        # Without an explicit device the counts follow the first update's tensors.
        self._follow_input = device is None
        self._counts = torch.zeros(
            num_classes * num_classes + 1, dtype=torch.int64, device=device or "cpu"
        )

    @property
    def device(self) -> torch.device:
        return self._counts.device

    @property
    def matrix(self) -> torch.Tensor:
        """int64 [K, K] counts (rows ground truth, columns prediction), on `device`."""
        self._raise_if_invalid()
        k = self.num_classes
        return self._counts[: k * k].view(k, k)

    def reset(self) -> None:
        self._counts.zero_()

    def update(self, pred: torch.Tensor, gt: torch.Tensor) -> None:
        """Count one batch: `pred` and `gt` are integer tensors of the same shape."""
        pred = torch.as_tensor(pred)
        gt = torch.as_tensor(gt)
        if pred.shape != gt.shape:
            raise ValueError(
                f"pred and gt must have the same shape, got {tuple(pred.shape)} and {tuple(gt.shape)}"
            )
        for name, t in (("pred", pred), ("gt", gt)):
            if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
                raise ValueError(f"{name} must be an integer tensor of class ids, got {t.dtype}")
        if pred.device != gt.device:
            raise ValueError(f"pred and gt must be on one device, got {pred.device} and {gt.device}")
        if self._follow_input and self._counts.device != gt.device:
            self._counts = self._counts.to(gt.device)
        self._follow_input = False

        k = self.num_classes
        gt = gt.reshape(-1).long()
        pred = pred.reshape(-1).long()
        # Bins: k*k pairs, then out-of-range, then ignore (dropped). No boolean
        # indexing, which would sync on an accelerator.
        valid = (gt >= 0) & (gt < k) & (pred >= 0) & (pred < k)
        index = torch.where(valid, gt * k + pred, k * k)
        index = torch.where(gt == IGNORE_LABEL, k * k + 1, index)
        counts = torch.bincount(index, minlength=k * k + 2)[: k * k + 1]
        if _checks_eagerly(counts.device) and int(counts[-1]):
            raise _out_of_range_error(int(counts[-1]), k)
        self._counts += counts.to(self._counts.device)

    def __iadd__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        if not isinstance(other, ConfusionMatrix) or other.num_classes != self.num_classes:
            raise ValueError("can only add a ConfusionMatrix with the same num_classes")
        self._counts += other._counts.to(self._counts.device)
        return self

    merge = __iadd__

    def all_reduce(self) -> ConfusionMatrix:
        """Sum the counts over all ranks; a no-op unless torch.distributed is initialised.

        The out-of-range bin travels with the counts, so every rank raises together
        instead of one rank leaving the others waiting in a collective.
        """
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            self._raise_if_invalid()
            return self
        dist = torch.distributed
        counts = self._counts
        if dist.get_backend() == "nccl" and counts.device.type != "cuda":
            buffer = counts.cuda()
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            counts.copy_(buffer.to(counts.device))
        else:
            dist.all_reduce(counts, op=dist.ReduceOp.SUM)
        self._raise_if_invalid()
        return self

    def _raise_if_invalid(self) -> None:
        bad = int(self._counts[-1])
        if bad:
            raise _out_of_range_error(bad, self.num_classes)

    def __repr__(self) -> str:
        return f"ConfusionMatrix(num_classes={self.num_classes}, device={self.device})"


def _as_numpy(matrix: Any) -> np.ndarray:
    if isinstance(matrix, torch.Tensor):
        matrix = matrix.detach().cpu().numpy()
    m = np.asarray(matrix)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"the confusion matrix must be square [K, K], got shape {m.shape}")
    return m.astype(np.float64)


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def group_means(iou: Mapping, old: Sequence, new: Sequence) -> dict:
    """old / new / all mIoU and hIoU from per-class IoUs (None = n/a, left out of the means).

    ``old`` and ``new`` are keys of ``iou`` (class ids or names); background belongs in
    ``old``. ``new`` and ``hiou`` are None when ``new`` is empty or all n/a; hIoU is the
    harmonic mean of old and new (0 when both are 0).
    """
    old_miou = _mean([iou[c] for c in old])
    new_miou = _mean([iou[c] for c in new]) if new else None
    if old_miou is None or new_miou is None:
        hiou = None
    elif old_miou + new_miou == 0:
        hiou = 0.0
    else:
        hiou = 2.0 * old_miou * new_miou / (old_miou + new_miou)
    return {"old": old_miou, "new": new_miou, "all": _mean([iou[c] for c in [*old, *new]]), "hiou": hiou}


def summarize(
    matrix: Any,
    old_classes: Sequence[int],
    new_classes: Sequence[int],
    class_names: Sequence[str] | None = None,
) -> dict:
    """Old / new / all mIoU, hIoU, per-class IoU and pixel accuracy, in percent.

    `old_classes` are the step-0 class ids (background 0 is added if missing),
    `new_classes` the ids added after step 0. IoU is TP / (TP + FP + FN) over the
    full matrix: pixels of a class outside the seen ones (which should not
    occur) still count as a seen class's FP or FN, so nothing is dropped
    silently. A class absent from both ground truth and predictions is n/a
    (None) and left out of the means. Classes are listed background first, then
    old, then new, in the order given (the task order).

    Keys: old, new, all, hiou (new and hiou are None when there are no new
    classes, i.e. step 0), pixel_acc, per_class {name: IoU or None},
    na_classes, new_class_names, old_class_names, num_pixels.
    """
    m = _as_numpy(matrix)
    k = m.shape[0]
    old = [0] + [int(c) for c in old_classes if int(c) != 0]
    new = [int(c) for c in new_classes]
    if 0 in new:
        raise ValueError("background (0) is an old class; remove it from new_classes")
    seen = old + new
    if len(set(seen)) != len(seen):
        raise ValueError(f"old_classes and new_classes must be disjoint without repeats: {old} / {new}")
    out_of_range = [c for c in seen if not 0 <= c < k]
    if out_of_range:
        raise ValueError(f"class ids {out_of_range} are outside the {k}x{k} confusion matrix")
    if class_names is None:
        names = {c: str(c) for c in seen}
    else:
        missing = [c for c in seen if c >= len(class_names)]
        if missing:
            raise ValueError(f"class_names has {len(class_names)} entries; no name for ids {missing}")
        names = {c: str(class_names[c]) for c in seen}
        if len(set(names.values())) != len(seen):
            raise ValueError("class_names must give distinct names to the seen classes")

    tp = np.diag(m)
    union = m.sum(0) + m.sum(1) - tp
    iou = {c: (100.0 * tp[c] / union[c] if union[c] > 0 else None) for c in seen}

    total = m.sum()
    return {
        **group_means(iou, old, new),
        "pixel_acc": float(100.0 * tp.sum() / total) if total > 0 else None,
        "per_class": {names[c]: (None if iou[c] is None else float(iou[c])) for c in seen},
        "na_classes": [names[c] for c in seen if iou[c] is None],
        "new_class_names": [names[c] for c in new],
        "old_class_names": [names[c] for c in old],
        "num_pixels": int(total),
    }


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.2f}"


def format_table(summary: dict, title: str | None = None) -> str:
    """Fixed-width text table of a `summarize` result, for logs.

    New classes are marked `*`. At step 0 (no new classes) the header shows
    all and pixel accuracy only, as section 7 asks.
    """
    per_class = summary["per_class"]
    new_names = set(summary.get("new_class_names", []))
    if summary.get("new_class_names"):
        header = (
            f"old {_fmt(summary['old'])} | new {_fmt(summary['new'])} | "
            f"all {_fmt(summary['all'])} | hIoU {_fmt(summary['hiou'])} | "
            f"pixel acc {_fmt(summary['pixel_acc'])}"
        )
    else:
        header = f"all {_fmt(summary['all'])} | pixel acc {_fmt(summary['pixel_acc'])}"
    width = max([len("class")] + [len(n) for n in per_class])
    lines = [title] if title else []
    lines.append(header)
    lines.append(f"  {'class':<{width}}  {'IoU':>6}")
    lines.append(f"  {'-' * width}  {'-' * 6}")
    for name, value in per_class.items():
        mark = "*" if name in new_names else " "
        lines.append(f"{mark} {name:<{width}}  {_fmt(value):>6}")
    lines.append(f"{NEW_NOTE}; {NA_NOTE}" if new_names else NA_NOTE)
    lines.append(GROUPS_NOTE)
    return "\n".join(lines)
