"""Which parts of a training label become instances of the bank (METHOD.md sections 5 and 9).

Two rules, chosen by ``InstanceBank.build(..., instances=...)``:

* ``None``, the paper's: a label is a *candidate* when every present class forms exactly
  one 4-connected region; its entry keeps all of them (:func:`eir.data.bank.candidate_classes`).
  Where classes are not single blobs (street scenes: sky, road and cars come in several
  pieces) it finds nothing: 0 of CamVid's 367 training labels.
* :class:`RegionRule`: every present class gives at most one instance, its *largest*
  4-connected region, when that region covers at least ``min_area`` of the image. The
  entry holds that region alone (its box, its mask, credited to its class); the rest of the
  image is not stored. Regions touching the image border count like any other.

Both are label-only (no image is read), so what a rule finds can be counted before any
training (:mod:`eir.data.bank_coverage`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

__all__ = [
    "PAPER_RULE",
    "RegionRule",
    "largest_region",
    "region_classes",
    "rule_from_record",
    "rule_record",
    "rule_text",
]

#: The manifest's record of the paper's rule (``instances=None``).
PAPER_RULE = {"rule": "one_region"}
_REGIONS = "largest_region"


@dataclass(frozen=True)
class RegionRule:
    """Each class of a label: its largest 4-connected region, if it covers >= ``min_area``.

    ``min_area``: a fraction of the image's pixels (resolution-free; 0.001 is 173 pixels
    of a 360x480 CamVid image, 262 of a 512x512 one). Smaller fragments are label noise or
    too small to paste: pasting scales an instance's longer side up to the cell (249 px).
    """

    min_area: float = 0.001

    def __post_init__(self) -> None:
        value = self.min_area
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and 0 <= value < 1
        ):
            raise ValueError(
                f"RegionRule.min_area is a fraction of the image's pixels in [0, 1), got {value!r}"
            )
        object.__setattr__(self, "min_area", float(value))

    def min_pixels(self, height: int, width: int) -> int:
        """The smallest region (in pixels) kept in an ``height`` x ``width`` label: at least 1."""
        return max(1, math.ceil(round(self.min_area * height * width, 6)))  # 0.05 * 80 is 4, not 5

    def to_dict(self) -> dict[str, Any]:
        return {"rule": _REGIONS, "min_area": self.min_area}


def rule_record(rule: RegionRule | None) -> dict[str, Any]:
    """The JSON record of ``rule`` (a bank's manifest): :data:`PAPER_RULE` for None."""
    if rule is None:
        return dict(PAPER_RULE)
    if not isinstance(rule, RegionRule):
        raise ValueError(
            f"instances must be None (the paper's one-region rule) or a RegionRule, got {rule!r}"
        )
    return rule.to_dict()


def rule_from_record(record: Any) -> RegionRule | None:
    """The rule a manifest recorded (a manifest without the key was written by the paper's rule,
    the only one there was)."""
    if record is None or record == PAPER_RULE:
        return None
    if isinstance(record, dict) and record.get("rule") == _REGIONS and set(record) == {"rule", "min_area"}:
        return RegionRule(min_area=record["min_area"])
    raise ValueError(f"unknown instance rule {record!r} in the bank's manifest")


def rule_text(rule: RegionRule | None) -> str:
    """How messages name a rule."""
    if rule is None:
        return "the paper's rule (every class of the image one 4-connected region)"
    return f"the region rule (largest 4-connected region per class, >= {rule.min_area:g} of the image)"


def _regions(label: np.ndarray, class_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``(component map, areas)`` of ``class_id``'s 4-connected regions (areas[k]: region k + 1)."""
    mask = (label == class_id).view(np.uint8)
    _, components, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4, ltype=cv2.CV_32S)
    return components, stats[1:, cv2.CC_STAT_AREA]


def region_classes(label: np.ndarray, classes: np.ndarray, rule: RegionRule) -> tuple[int, ...]:
    """The classes among ``classes`` (present in ``label``) that give an instance under ``rule``."""
    need = rule.min_pixels(*label.shape)
    return tuple(int(c) for c in classes if _regions(label, int(c))[1].max() >= need)


def largest_region(label: np.ndarray, class_id: int, rule: RegionRule) -> np.ndarray | None:
    """The bool mask of ``class_id``'s largest 4-connected region, None when it is below
    ``rule.min_area`` (or absent). Ties go to the region whose first pixel comes first in
    row-major order, whatever order OpenCV numbered the regions in."""
    components, areas = _regions(label, class_id)
    if areas.size == 0 or areas.max() < rule.min_pixels(*label.shape):
        return None
    tied = np.flatnonzero(areas == areas.max()) + 1
    if tied.size > 1:
        flat = components.ravel()
        tied = [min(tied, key=lambda k: int(np.argmax(flat == k)))]
    return components == tied[0]
