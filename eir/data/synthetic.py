"""A synthetic continual-segmentation dataset, written to disk in Pascal VOC's layout.

Why: a whole continual run (every step, the bank, pasting, evaluation) must be
runnable and testable in minutes on a CPU, with no download, and it must show what
continual segmentation is about on VOC: a model can learn the classes well (the
images are clean enough for a small model trained from scratch to reach a high
ceiling), and the steps' images share classes the way VOC's do, so that old
classes appear, unlabelled, in new steps' images (background shift) and old images
hold classes of later steps (which a replayed whole image carries as background).
``python -m eir.data.synthetic_stats`` measures this per step of a task.

How classes are drawn (VOC: a little over 2 objects and about 1.5 classes per image)
    * The common class (disc, VOC's person) is in 32 % of the draws (about 31 % of
      the images hold it: some end up hidden), whatever the scene.
    * Every other class belongs to one of three scene groups, each spanning early
      and late class ids: (square, cross, bar), (triangle, star, crescent),
      (ring, hexagon, diamond). An image picks a scene, then 0-2 scene classes
      beside the common class or 1-3 without it (mean 1.5 classes per image);
      each draw comes from the image's own scene 80 % of the time, else from
      another. Within a group the classes are drawn 0.45 : 0.33 : 0.22, so image
      frequencies run from about 17 % down to 9 % (a long tail under the common
      class).
    * A present class has 1-3 instances (the common class more often several), so
      an image holds 2.2 objects on average (2.45 visible regions: an occluder
      can split one); about half of the images are bank candidates (every present
      class one 4-connected region).

What is in an image (``size`` x ``size``, RGB)
    * A muted background that is no class (label 0): a low-contrast, desaturated
      texture (solid, gradient, stripes, checker, low-frequency noise, dots,
      speckle), sometimes a second region, 0 to 2 distractors (blobs with smooth
      irregular outlines, opaque or translucent; lines, curves, scribbles, specks),
      a soft illumination gradient.
    * Objects: diameters from 30 % (thin shapes: 40 %) to 80 % of the image side
      for a lone object, scaled by n ** -0.3 for n objects (groups are smaller),
      with a random rotation and a slight aspect jitter; some are cut by the image
      border, some cast a soft shadow or have an outline. Objects cover about 23 %
      of the pixels, void 4 %.
    * Colour helps: each class has its own hue (36 degrees apart, jittered by a
      normal of 8 degrees; used 95 % of the time, a random hue otherwise), a
      saturated colour, and a preferred texture family (80 % of the time) that it
      shares with another class; the background is desaturated, the distractors
      draw from every colour and texture. Shape tells apart classes of similar hue.
    * Objects are drawn in turn, so later ones occlude earlier ones (placements
      that would hide more than 40 % of an earlier object are redrawn); a thin
      line of background clutter sometimes crosses the objects. Labels follow the
      visible pixels.
    * Photometric noise: brightness / contrast jitter, Gaussian noise,
      occasional blur, JPEG compression (quality 95).

Labels (``uint8``): 0 background, 1..10 the classes below, 255 a void border of
1-2 px around every visible object (on the background side, or on the occluded
object's side where objects overlap), as in Pascal VOC.

Classes (id: name, shape)
    1 disc (filled circle), 2 square, 3 triangle, 4 ring (annulus), 5 cross,
    6 star (five points), 7 hexagon, 8 crescent, 9 bar (long thin rectangle),
    10 diamond (elongated rhombus; a square turned by 45 degrees is still a square).

Layout (read by the VOC-style loader of ``eir.data.datasets``)::

    DIR/JPEGImages/<id>.jpg                      RGB content, JPEG quality 95
    DIR/SegmentationClassAug/<id>.png            uint8 labels (0, 1..10, 255)
    DIR/ImageSets/Segmentation/train_aug.txt     training ids, one per line
    DIR/ImageSets/Segmentation/val.txt           validation ids
    DIR/meta.json                                class names, label colours, generator
                                                 arguments, seed, format version, statistics

Generation is deterministic: image ``i`` of a split is drawn from its own seed
(``numpy.random.SeedSequence(seed, spawn_key=(split, i))``), so the same arguments
give byte-identical files whatever the number of worker processes. Generation happens
only where no dataset is yet, under a lock (on the parent folder), into a temporary
sibling renamed to ``DIR`` at the end; the temporary folders of a killed generation are
removed by the next one, and worker processes end with the process that started them. A
dataset on disk is never deleted or regenerated: one of an older ``FORMAT_VERSION`` is
refused by :func:`ensure_synthetic`, with what to do.

Usage::

    python -m eir.data.synthetic --out datasets/eir_synthetic --num-train 5000 --num-val 500 --size 160

or ``generate(root, ...)`` / ``ensure_synthetic(root, ...)`` from Python.
"""
from __future__ import annotations

import argparse
import colorsys
import contextlib
import fcntl
import functools
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from eir.constants import IGNORE_LABEL
from eir.tasks import SYNTHETIC_CLASSES

__all__ = [
    "DEFAULTS",
    "FORMAT_VERSION",
    "IGNORE_LABEL",
    "SYNTHETIC_CLASSES",
    "colorize",
    "ensure_synthetic",
    "generate",
    "is_stale",
    "is_synthetic_dataset",
    "label_colors",
    "main",
    "make_sample",
    "sample_rng",
    "validate",
]

FORMAT_VERSION = 3  # 2: scene groups, a common class, VOC's objects per image, bolder shapes; 3: 5,000 images of 160 px
GENERATOR = "eir.data.synthetic"
JPEG_QUALITY = 95

NUM_CLASSES = len(SYNTHETIC_CLASSES) - 1

DEFAULTS = {"num_train": 5000, "num_val": 500, "size": 160, "seed": 0}  # 500: rare classes in 40+ val images
SPLITS = {"train": ("train_aug.txt", 0), "val": ("val.txt", 1)}  # list file, seed key
MIN_SIZE = 32

# Co-occurrence. The common class (disc: VOC's person) is in about a third of the images,
# whatever the scene; every other class belongs to one scene group, each group spanning
# early and late class ids so that a step's images hold classes of other steps. Within a
# group the classes are drawn with unequal weights (a long tail).
COMMON_CLASS = 1
P_COMMON = 0.32  # objects that end up hidden make the measured share a little lower
SCENE_GROUPS = ((2, 5, 9), (3, 6, 8), (4, 7, 10))
SCENE_WEIGHTS = (0.45, 0.33, 0.22)  # draw weights of a group's classes, in the order above
P_IN_SCENE = 0.8  # a scene-class draw comes from the image's own scene, else from another
# Number of scene-class draws (0, 1, 2, 3) with and without the common class: mean ~1.5 classes.
SCENE_DRAWS_P = {True: (0.35, 0.5, 0.15, 0.0), False: (0.0, 0.7, 0.25, 0.05)}
# Instances of a present class (1, 2, 3): people come in groups more often than things do.
INSTANCES_P = {True: (0.5, 0.3, 0.2), False: (0.7, 0.2, 0.1)}

# Each class has its own hue (degrees, 36 apart) and a preferred texture family; textures
# are shared by pairs of classes, and any class sometimes takes a random colour.
CLASS_HUES = {c: (36 * (c - 1),) for c in range(1, 11)}
CLASS_TEXTURES = {
    1: "gradient", 2: "checker", 3: "stripes", 4: "solid", 5: "noise",
    6: "dots", 7: "checker", 8: "gradient", 9: "stripes", 10: "noise",
}  # fmt: skip
TEXTURES = ("solid", "gradient", "stripes", "checker", "noise", "dots", "speckle")
THIN_CLASSES = (4, 5, 6, 8, 9)  # ring, cross, star, crescent, bar: need more pixels to be seen

P_PREFERRED_HUE = 0.95
HUE_JITTER = 8.0  # degrees (normal sd) around a class's hue
P_PREFERRED_TEXTURE = 0.8
DISTRACTORS_P = (0.4, 0.4, 0.2)  # 0, 1, 2 distractors (blobs, strokes, specks) per image
MIN_VISIBLE_FRACTION = 0.6  # an earlier object keeps at least this share of its pixels
SIZE_RANGE = (0.3, 0.8)  # object diameter / image side, for an image's first object
THIN_MIN_SIZE = 0.4
GROUP_SHRINK = 0.3  # with n objects in an image, every diameter scales by n ** -GROUP_SHRINK
_SHIFT = 4  # cv2 fixed-point bits: sub-pixel vertices
_ONE = 1 << _SHIFT


# ----------------------------------------------------------------------------- colours


def label_colors() -> list[list[int]]:
    """Pascal VOC's colour map for ids 0..10 (RGB): the visualisation colour of each class."""
    ids = np.arange(len(SYNTHETIC_CLASSES))
    cmap = np.zeros((len(ids), 3), dtype=np.int64)
    for shift in range(8):
        for channel in range(3):
            cmap[:, channel] |= ((ids >> (3 * shift + channel)) & 1) << (7 - shift)
    return cmap.tolist()


def colorize(label: np.ndarray) -> np.ndarray:
    """An RGB picture of a label map: class colours, void (255) light grey as in VOC."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(SYNTHETIC_CLASSES)] = label_colors()
    lut[IGNORE_LABEL] = (224, 224, 192)
    return lut[label]


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((h % 360.0) / 360.0, s, v), dtype=np.float32) * 255.0


def _object_colour(rng: np.random.Generator, cls: int) -> tuple[np.ndarray, tuple]:
    if rng.random() < P_PREFERRED_HUE:
        hue = float(rng.choice(CLASS_HUES[cls])) + rng.normal(0.0, HUE_JITTER)
    else:
        hue = rng.uniform(0.0, 360.0)
    hsv = (hue, rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0))
    return _hsv(*hsv), hsv


def _clutter_colour(rng: np.random.Generator, max_saturation: float = 0.75) -> tuple[np.ndarray, tuple]:
    hsv = (rng.uniform(0.0, 360.0), rng.uniform(0.0, max_saturation), rng.uniform(0.15, 0.95))
    return _hsv(*hsv), hsv


def _second_colour(rng: np.random.Generator, hsv: tuple, p_shade: float = 0.5) -> np.ndarray:
    """The other colour of a two-colour texture: a shade of the first (``p_shade``), or any colour."""
    if rng.random() < p_shade:
        h, s, v = hsv
        dv = rng.uniform(0.2, 0.5) * (1 if v < 0.6 else -1)
        return _hsv(h + rng.normal(0, 10), float(np.clip(s + rng.normal(0, 0.15), 0, 1)), v + dv)
    return _clutter_colour(rng)[0]


# ----------------------------------------------------------------------------- textures


Box = tuple[int, int, int, int]  # y0, y1, x0, x1: the part of the canvas a texture covers


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def _coords(size: int, box: Box) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = _grid(size)
    return yy[box[0] : box[1], box[2] : box[3]], xx[box[0] : box[1], box[2] : box[3]]


def _rotated(rng: np.random.Generator, size: int, box: Box) -> tuple[np.ndarray, np.ndarray]:
    """Canvas coordinates of the box, rotated by a random angle (for stripes, checkers...)."""
    yy, xx = _coords(size, box)
    a = rng.uniform(0.0, np.pi)
    c, s = np.float32(np.cos(a)), np.float32(np.sin(a))
    return xx * c + yy * s, yy * c - xx * s


def _ramp(u: np.ndarray) -> np.ndarray:
    lo, hi = float(u.min()), float(u.max())
    return (u - lo) * np.float32(1.0 / max(hi - lo, 1.0))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a small random grid resized with cubic interpolation."""
    grid = rng.random((cells, cells)).astype(np.float32)
    w = cv2.resize(grid, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    lo, hi = float(w.min()), float(w.max())
    return (w - lo) * np.float32(1.0 / max(hi - lo, 1e-6))


def _texture_weight(rng: np.random.Generator, kind: str, size: int, box: Box) -> np.ndarray:
    """Per-pixel mix weight in [0, 1] between a texture's two colours, over the box."""
    shape = (box[1] - box[0], box[3] - box[2])
    if kind == "solid":
        return _ramp(_rotated(rng, size, box)[0]) * np.float32(rng.uniform(0, 0.25))
    if kind == "gradient":
        if rng.random() < 0.3:  # radial
            yy, xx = _coords(size, box)
            cy, cx = rng.uniform(box[0], box[1]), rng.uniform(box[2], box[3])
            r = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
            return np.clip(r / np.float32(max(shape) * rng.uniform(0.3, 1.0)), 0, 1)
        return _ramp(_rotated(rng, size, box)[0])
    if kind == "stripes":
        u, _ = _rotated(rng, size, box)
        period = rng.uniform(3.0, max(4.0, 0.12 * size))
        w = 0.5 + 0.5 * np.sin(u * np.float32(2 * np.pi / period) + np.float32(rng.uniform(0, 6.3)))
        return (w > rng.uniform(0.3, 0.7)).astype(np.float32) if rng.random() < 0.6 else w
    if kind == "checker":
        u, v = _rotated(rng, size, box)
        cell = np.float32(1.0 / rng.uniform(2.0, max(3.0, 0.1 * size)))
        return ((np.floor(u * cell) + np.floor(v * cell)) % 2).astype(np.float32)
    if kind == "noise":
        cells = max(2, round(rng.uniform(3, 12) * max(shape) / size))
        return _smooth_noise(rng, shape, cells)
    if kind == "dots":
        u, v = _rotated(rng, size, box)
        spacing = rng.uniform(4.0, max(5.0, 0.12 * size))
        radius = spacing * rng.uniform(0.2, 0.4)
        du, dv = u % spacing - spacing / 2, v % spacing - spacing / 2
        return (du * du + dv * dv < radius * radius).astype(np.float32)
    if kind == "speckle":
        w = rng.random(shape).astype(np.float32)
        if rng.random() < 0.5:
            w = _ramp(cv2.GaussianBlur(w, (0, 0), rng.uniform(0.6, 1.2)))
        return w
    raise ValueError(f"unknown texture {kind!r}; use one of {TEXTURES}")


def _texture(rng: np.random.Generator, kind: str, c1: np.ndarray, c2: np.ndarray, size: int, box: Box) -> np.ndarray:
    w = _texture_weight(rng, kind, size, box)
    return cv2.merge([c1[i] + (c2[i] - c1[i]) * w for i in range(3)])


def _clutter_texture(
    rng: np.random.Generator, size: int, box: Box, contrast=(0.5, 1.0), max_saturation: float = 0.75
) -> np.ndarray:
    """A texture of background or distractors; ``contrast`` scales its two colours' difference."""
    c1, hsv = _clutter_colour(rng, max_saturation)
    kind = TEXTURES[int(rng.integers(len(TEXTURES)))]
    c2 = c1 + (_second_colour(rng, hsv) - c1) * np.float32(rng.uniform(*contrast))
    return _texture(rng, kind, c1, c2, size, box)


def _object_texture(rng: np.random.Generator, cls: int, size: int, box: Box) -> np.ndarray:
    c1, hsv = _object_colour(rng, cls)
    if rng.random() < P_PREFERRED_TEXTURE:
        kind = CLASS_TEXTURES[cls]
    else:
        kind = TEXTURES[int(rng.integers(len(TEXTURES)))]
    tex = _texture(rng, kind, c1, _second_colour(rng, hsv, p_shade=0.8), size, box)
    shade = 1.0 + np.float32(rng.uniform(0.0, 0.4)) * (_ramp(_rotated(rng, size, box)[0]) - 0.5)
    return tex * shade[..., None]  # mild shading, as if lit from one side


def _alpha_box(alpha: np.ndarray) -> Box | None:
    x, y, w, h = cv2.boundingRect(alpha)
    return (y, y + h, x, x + w) if w > 0 and h > 0 else None


def _paint(img: np.ndarray, alpha: np.ndarray, texture) -> None:
    """img <- a * texture + (1 - a) * img where a = alpha / 255, in place, within alpha's box.

    ``texture(box)`` makes the texture of the box only, which keeps small objects cheap.
    """
    box = _alpha_box(alpha)
    if box is None:
        return
    y0, y1, x0, x1 = box
    a = alpha[y0:y1, x0:x1].astype(np.float32)[..., None] * np.float32(1.0 / 255.0)
    region = img[y0:y1, x0:x1]
    region += (texture(box) - region) * a


# ----------------------------------------------------------------------------- shapes


def _fixed(points: np.ndarray) -> np.ndarray:
    return np.round(points * _ONE).astype(np.int32).reshape(-1, 1, 2)


def _poly(canvas: np.ndarray, points: np.ndarray, value: int = 255) -> None:
    cv2.fillPoly(canvas, [_fixed(points)], value, lineType=cv2.LINE_AA, shift=_SHIFT)


def _circle(canvas: np.ndarray, center: np.ndarray, radius: float, value: int = 255) -> None:
    c = tuple(int(v) for v in np.round(center * _ONE))
    r = max(int(round(radius * _ONE)), 1)
    cv2.circle(canvas, c, r, value, thickness=-1, lineType=cv2.LINE_AA, shift=_SHIFT)


def _unit_polygon(rng: np.random.Generator, cls: int) -> np.ndarray | None:
    """Vertices of a class's polygon at radius ~1 around the origin (None: a round class)."""
    if cls == 2:  # square
        ang = np.pi / 4 + np.arange(4) * np.pi / 2
        return np.stack([np.cos(ang), np.sin(ang)], 1)
    if cls == 3:  # triangle, vertices slightly jittered
        ang = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3 + rng.normal(0, 0.08, 3)
        return np.stack([np.cos(ang), np.sin(ang)], 1)
    if cls == 5:  # cross
        w = rng.uniform(0.28, 0.38)
        return np.array([
            (w, 1), (w, w), (1, w), (1, -w), (w, -w), (w, -1),
            (-w, -1), (-w, -w), (-1, -w), (-1, w), (-w, w), (-w, 1),
        ])  # fmt: skip
    if cls == 6:  # five-pointed star
        inner = rng.uniform(0.5, 0.62)
        ang = -np.pi / 2 + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, 1.0, inner)
        return np.stack([rad * np.cos(ang), rad * np.sin(ang)], 1)
    if cls == 7:  # hexagon
        ang = np.arange(6) * np.pi / 3
        return np.stack([np.cos(ang), np.sin(ang)], 1)
    if cls == 9:  # bar
        w = rng.uniform(0.2, 0.3)
        return np.array([(-1, -w), (1, -w), (1, w), (-1, w)])
    if cls == 10:  # diamond: an elongated rhombus
        a = rng.uniform(0.55, 0.7)
        return np.array([(0, -1), (a, 0), (0, 1), (-a, 0)])
    return None


def _keep_largest_region(alpha: np.ndarray) -> None:
    """Erase every 4-connected piece of the mask (alpha >= 128) but the largest, in place."""
    n, regions, stats, _ = cv2.connectedComponentsWithStats((alpha >= 128).astype(np.uint8), connectivity=4)
    if n > 2:
        keep = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        drop = ((regions > 0) & (regions != keep)).astype(np.uint8)
        alpha[(cv2.dilate(drop, np.ones((3, 3), np.uint8)) > 0) & (regions != keep)] = 0


def _shape_alpha(rng: np.random.Generator, cls: int, center: np.ndarray, radius: float, size: int) -> np.ndarray:
    """Anti-aliased coverage (uint8 0..255) of one object of class ``cls``."""
    canvas = np.zeros((size, size), dtype=np.uint8)
    angle = rng.uniform(0, 2 * np.pi)
    if cls in (1, 4, 8):  # disc, ring, crescent: circles
        _circle(canvas, center, radius)
        if cls == 4:
            _circle(canvas, center, radius * rng.uniform(0.4, 0.55), 0)
        elif cls == 8:
            d = radius * rng.uniform(0.3, 0.45)
            off = np.array([np.cos(angle), np.sin(angle)]) * d
            _circle(canvas, center + off, radius * rng.uniform(0.7, 0.82), 0)
    else:
        pts = _unit_polygon(rng, cls) * np.array([1.0, rng.uniform(0.88, 1.0)])  # aspect jitter
        c, s = np.cos(angle), np.sin(angle)
        _poly(canvas, pts @ np.array([[c, s], [-s, c]]) * radius + center)
    _keep_largest_region(canvas)  # thin anti-aliased tips (crescent) can break off as specks
    return canvas


def _blob_points(rng: np.random.Generator, center: np.ndarray, radius: float) -> np.ndarray:
    """A smooth irregular outline (no class): a radius modulated by a few random harmonics."""
    theta = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    r = np.ones_like(theta)
    for k in range(2, 6):
        r += rng.uniform(0.0, 0.45) / np.sqrt(k - 1) * np.cos(k * theta + rng.uniform(0, 6.3))
    r = np.clip(r, 0.25, None) * radius
    pts = np.stack([r * np.cos(theta), r * np.sin(theta) * rng.uniform(0.45, 1.0)], 1)
    a = rng.uniform(0, np.pi)
    c, s = np.cos(a), np.sin(a)
    return pts @ np.array([[c, s], [-s, c]]) + center


def _stroke_points(rng: np.random.Generator, size: int) -> np.ndarray:
    kind = rng.integers(3)
    if kind == 0:  # straight line across
        return rng.uniform(-0.1, 1.1, (2, 2)) * size
    if kind == 1:  # quadratic curve
        p = rng.uniform(-0.1, 1.1, (3, 2)) * size
        t = np.linspace(0, 1, 24)[:, None]
        return (1 - t) ** 2 * p[0] + 2 * (1 - t) * t * p[1] + t**2 * p[2]
    steps = rng.normal(0, 0.08 * size, (int(rng.integers(4, 10)), 2))  # scribble
    return np.cumsum(steps, 0) + rng.uniform(0, size, 2)


def _stroke_alpha(rng: np.random.Generator, size: int, max_thickness: int = 3) -> np.ndarray:
    canvas = np.zeros((size, size), dtype=np.uint8)
    thickness = int(rng.integers(1, max_thickness + 1))
    cv2.polylines(canvas, [_fixed(_stroke_points(rng, size))], False, 255, thickness, cv2.LINE_AA, _SHIFT)
    return canvas


# ----------------------------------------------------------------------------- one image


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Background (no class): a muted texture, sometimes a second region, 0-2 distractors."""
    full = (0, size, 0, size)
    img = _clutter_texture(rng, size, full, contrast=(0.1, 0.5), max_saturation=0.4)
    if rng.random() < 0.4:  # a second region: half-plane or an irregular patch
        if rng.random() < 0.5:
            u, _ = _rotated(rng, size, full)
            region = u > rng.uniform(float(u.min()), float(u.max()))
        else:
            region = _smooth_noise(rng, (size, size), int(rng.integers(2, 6))) > rng.uniform(0.35, 0.65)
        alpha = cv2.GaussianBlur(region.astype(np.uint8) * 255, (0, 0), rng.uniform(0.5, 2.0))
        _paint(img, alpha, lambda box: _clutter_texture(rng, size, box, contrast=(0.1, 0.5), max_saturation=0.4))
    for _ in range(int(rng.choice(len(DISTRACTORS_P), p=DISTRACTORS_P))):  # blobs, strokes, specks
        kind = rng.choice(("blob", "blob", "stroke", "stroke", "specks"))
        if kind == "blob":
            alpha = np.zeros((size, size), dtype=np.uint8)
            radius = rng.uniform(0.04, 0.18) * size
            _poly(alpha, _blob_points(rng, rng.uniform(0, size, 2), radius))
            if rng.random() < 0.5:  # a translucent stain rather than a solid thing
                alpha = (alpha * rng.uniform(0.3, 0.8)).astype(np.uint8)
        elif kind == "stroke":
            alpha = _stroke_alpha(rng, size, max_thickness=max(2, size // 40))
        else:
            alpha = np.zeros((size, size), dtype=np.uint8)
            for p in rng.uniform(0, size, (int(rng.integers(5, 30)), 2)):
                _circle(alpha, p, rng.uniform(0.5, 1.5))
        _paint(img, alpha, lambda box: _clutter_texture(rng, size, box))
    return img


def _weighted_pick(rng: np.random.Generator, pool: list[tuple[int, float]]) -> int:
    """One class of ``pool`` ((class, weight) pairs), drawn in proportion to its weight."""
    w = np.array([wt for _, wt in pool])
    return pool[int(rng.choice(len(pool), p=w / w.sum()))][0]


def _choose_classes(rng: np.random.Generator) -> tuple[int, list[int]]:
    """(scene, distinct classes) of one image: the common class or not, then scene classes."""
    scene = int(rng.integers(len(SCENE_GROUPS)))
    common = bool(rng.random() < P_COMMON)
    classes = [COMMON_CLASS] if common else []
    draws = int(rng.choice(4, p=SCENE_DRAWS_P[common]))
    for _ in range(draws):
        own = rng.random() < P_IN_SCENE
        pool = [
            (c, w)
            for g, group in enumerate(SCENE_GROUPS)
            if (g == scene) == own
            for c, w in zip(group, SCENE_WEIGHTS)
            if c not in classes
        ]
        if pool:
            classes.append(_weighted_pick(rng, pool))
    return scene, classes


def _choose_objects(rng: np.random.Generator, size: int) -> tuple[int, list[tuple[int, float]]]:
    """(scene, [(class, radius) of each object]), roughly largest first so small ones stay visible."""
    scene, classes = _choose_classes(rng)
    instances = []
    for cls in classes:
        p = INSTANCES_P[cls == COMMON_CLASS]
        instances += [cls] * (int(rng.choice(len(p), p=p)) + 1)
    shrink = len(instances) ** -GROUP_SHRINK
    objects = []
    for cls in instances:
        lo = max(SIZE_RANGE[0], THIN_MIN_SIZE if cls in THIN_CLASSES else 0.0)
        diameter = (lo + (SIZE_RANGE[1] - lo) * rng.random() ** 0.8) * shrink * size
        objects.append((cls, diameter / 2))
    keys = [r * rng.uniform(0.6, 1.4) for _, r in objects]
    return scene, [objects[i] for i in np.argsort(keys, kind="stable")[::-1]]


def _render(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, dict]:
    img = _background(rng, size)
    depth = np.zeros((size, size), dtype=np.uint8)  # 0 background, k = k-th visible object
    classes = [0]
    areas: list[int] = []
    min_pixels = max(6, int((0.03 * size) ** 2))
    scene, objects = _choose_objects(rng, size)
    for cls, radius in objects:
        for _ in range(10):
            margin = 0.4 * radius
            center = rng.uniform(margin, size - margin, 2)
            alpha = _shape_alpha(rng, cls, center, radius, size)
            mask = alpha >= 128
            if np.count_nonzero(mask) < min_pixels:
                radius *= 1.15
                continue
            kept = [np.count_nonzero((depth == k) & ~mask) for k in range(1, len(classes))]
            if all(v >= MIN_VISIBLE_FRACTION * a for v, a in zip(kept, areas)):
                break
            radius *= 0.85
        else:
            continue
        if rng.random() < 0.2:  # soft drop shadow on whatever lies below
            d = rng.uniform(0.05, 0.15) * radius  # light from the top left
            shift = np.float32([[1, 0, d], [0, 1, d]])
            shadow = cv2.warpAffine(alpha, shift, (size, size))
            shadow = cv2.GaussianBlur(shadow, (0, 0), max(0.8, 0.08 * radius))
            img *= (1.0 - shadow.astype(np.float32) * np.float32(rng.uniform(0.2, 0.5) / 255))[..., None]
        _paint(img, alpha, lambda box, cls=cls: _object_texture(rng, cls, size, box))
        if rng.random() < 0.15:  # an outline in another colour
            edge = cv2.subtract(alpha, cv2.erode(alpha, np.ones((3, 3), np.uint8)))
            colour = _clutter_colour(rng)[0]
            _paint(img, edge, lambda box, c=colour: c)
        depth[mask] = len(classes)
        classes.append(cls)
        areas.append(int(np.count_nonzero(mask)))
    if rng.random() < 0.1:  # background clutter crossing the objects (labelled 0)
        alpha = _stroke_alpha(rng, size, max_thickness=2)
        _paint(img, alpha, lambda box: _clutter_texture(rng, size, box))
        depth[alpha >= 128] = 0

    label = np.asarray(classes, dtype=np.uint8)[depth]
    for k in range(1, len(classes)):  # void border on the lower side of each object's outline
        width = 2 if areas[k - 1] >= (0.2 * size) ** 2 and rng.random() < 0.5 else 1
        grown = cv2.dilate((depth == k).astype(np.uint8), np.ones((2 * width + 1,) * 2, np.uint8))
        label[(grown > 0) & (depth < k)] = IGNORE_LABEL

    # Photometric jitter: illumination gradient, contrast / brightness, blur, sensor noise.
    u = _ramp(_rotated(rng, size, (0, size, 0, size))[0]) - 0.5
    img *= (1.0 + np.float32(rng.uniform(0.0, 0.3)) * u)[..., None]
    mean = img.mean()
    img = (img - mean) * np.float32(rng.uniform(0.85, 1.15)) + mean + np.float32(rng.uniform(-12, 12))
    if rng.random() < 0.2:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 0.8))
    img += rng.normal(0.0, rng.uniform(1.0, 4.0), img.shape).astype(np.float32)
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return image, label, {"instances": len(classes) - 1, "scene": scene}


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of image ``index`` of ``split``: independent of every other image."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {tuple(SPLITS)}")
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLITS[split][1], index)))


def make_sample(rng: np.random.Generator | int, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image (``size`` x ``size`` x 3 uint8 RGB) and its label (uint8), in memory."""
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    _check_size(size)
    image, label, _ = _render(rng, size)
    return image, label


def _single_regions(label: np.ndarray) -> bool:
    """Whether every present class forms exactly one 4-connected region (an EIR bank candidate)."""
    for c in np.unique(label):
        if c in (0, IGNORE_LABEL):
            continue
        n, _ = cv2.connectedComponents((label == c).astype(np.uint8), connectivity=4)
        if n != 2:
            return False
    return True


# ----------------------------------------------------------------------------- writing


def _image_id(split: str, index: int) -> str:
    return f"{split}_{index:06d}"


def _write_one(job: tuple[str, str, int, int, int]) -> tuple[list[int], bool, int]:
    """Render and write one image + label; returns (present classes, candidate, instances)."""
    out, split, index, seed, size = job
    image, label, info = _render(sample_rng(seed, split, index), size)
    image_id = _image_id(split, index)
    ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    ok2, png = cv2.imencode(".png", label, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not (ok and ok2):
        raise RuntimeError(f"OpenCV could not encode image {image_id}")
    root = Path(out)
    (root / "JPEGImages" / f"{image_id}.jpg").write_bytes(jpg.tobytes())
    (root / "SegmentationClassAug" / f"{image_id}.png").write_bytes(png.tobytes())
    present = [int(c) for c in np.unique(label) if 0 < c < IGNORE_LABEL]
    return present, _single_regions(label), info["instances"]


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)  # the parent died (killed): a pool worker would otherwise wait for work forever


def _worker_init() -> None:
    cv2.setNumThreads(1)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _check_size(size: int) -> None:
    if not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
        raise ValueError(f"size must be an integer >= {MIN_SIZE} (got {size!r}); objects need pixels")


def _check_args(num_train: int, num_val: int, size: int, seed: int, num_workers: int) -> dict:
    for name, value, low in (("num_train", num_train, 1), ("num_val", num_val, 1), ("seed", seed, 0), ("num_workers", num_workers, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low} (got {value!r})")
    _check_size(size)
    return {"num_train": int(num_train), "num_val": int(num_val), "size": int(size), "seed": int(seed)}


def _read_meta(root: Path) -> dict | None:
    """meta.json of a synthetic dataset at root, or None when root holds none."""
    try:
        meta = json.loads((root / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("generator") != GENERATOR:
        return None
    return meta


def is_synthetic_dataset(root: str | os.PathLike) -> bool:
    """Whether ``root`` holds a dataset written by this module (any arguments)."""
    return _read_meta(Path(root)) is not None


def validate(root: str | os.PathLike) -> dict:
    """Check a synthetic dataset on disk (meta, lists, every listed file); return its meta.json."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"no synthetic dataset at {root}: create it with "
            f"`python -m eir.data.synthetic --out {root}`"
        )
    meta = _read_meta(root)
    if meta is None:
        raise ValueError(f"{root} is not a synthetic dataset ({root / 'meta.json'} is missing or foreign)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{root} has synthetic format version {meta.get('format_version')}, this code reads "
            f"{FORMAT_VERSION}: delete the directory and generate it again"
        )
    if tuple(meta.get("class_names", ())) != SYNTHETIC_CLASSES:
        raise ValueError(f"{root / 'meta.json'} lists classes {meta.get('class_names')}, expected {SYNTHETIC_CLASSES}")
    for split, (list_name, _) in SPLITS.items():
        list_file = root / "ImageSets" / "Segmentation" / list_name
        if not list_file.is_file():
            raise FileNotFoundError(f"synthetic dataset {root} lacks its {split} list {list_file}")
        ids = list_file.read_text().split()
        if len(ids) != meta["args"][f"num_{split}"]:
            raise ValueError(f"{list_file} has {len(ids)} ids, meta.json says {meta['args'][f'num_{split}']}")
        for image_id in ids:
            for path in (root / "JPEGImages" / f"{image_id}.jpg", root / "SegmentationClassAug" / f"{image_id}.png"):
                if not path.is_file():
                    raise FileNotFoundError(f"synthetic dataset {root} lacks {path}; delete it and generate again")
    return meta


def _build_meta(args: dict, stats: dict) -> dict:
    return {
        "generator": GENERATOR,
        "format_version": FORMAT_VERSION,
        "args": args,
        "seed": args["seed"],
        "class_names": list(SYNTHETIC_CLASSES),
        "colors": label_colors(),
        "ignore_label": IGNORE_LABEL,
        "image_format": {"ext": "jpg", "channels": "RGB", "jpeg_quality": JPEG_QUALITY},
        "label_format": {"ext": "png", "dtype": "uint8", "background": 0, "ignore": IGNORE_LABEL},
        "layout": {
            "images": "JPEGImages/<id>.jpg",
            "labels": "SegmentationClassAug/<id>.png",
            "lists": {split: f"ImageSets/Segmentation/{name}" for split, (name, _) in SPLITS.items()},
        },
        "class_hues": {SYNTHETIC_CLASSES[c]: list(h) for c, h in CLASS_HUES.items()},
        "class_textures": {SYNTHETIC_CLASSES[c]: t for c, t in CLASS_TEXTURES.items()},
        "common_class": SYNTHETIC_CLASSES[COMMON_CLASS],
        "scene_groups": [[SYNTHETIC_CLASSES[c] for c in group] for group in SCENE_GROUPS],
        "stats": stats,
    }


def _split_stats(results: Sequence[tuple[list[int], bool, int]]) -> dict:
    counts = np.zeros(NUM_CLASSES + 1, dtype=np.int64)
    for present, _, _ in results:
        counts[present] += 1
    n = len(results)
    return {
        "images": n,
        "images_per_class": {SYNTHETIC_CLASSES[c]: int(counts[c]) for c in range(1, NUM_CLASSES + 1)},
        "mean_classes_per_image": round(sum(len(p) for p, _, _ in results) / n, 3),
        "mean_instances_per_image": round(sum(k for _, _, k in results) / n, 3),
        "bank_candidates": int(sum(c for _, c, _ in results)),
    }


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def generate(
    root: str | os.PathLike,
    num_train: int = DEFAULTS["num_train"],
    num_val: int = DEFAULTS["num_val"],
    size: int = DEFAULTS["size"],
    seed: int = DEFAULTS["seed"],
    verbose: bool = True,
    num_workers: int = 0,
) -> Path:
    """Write the synthetic dataset to ``root`` (see the module docstring) and return ``root``.

    ``root`` must be absent or empty. If it already holds a synthetic dataset generated with
    the same arguments, nothing is done; anything else there raises ValueError, so no
    foreign data is ever overwritten. Files are written to a temporary sibling directory
    that is renamed to ``root`` at the end: an interrupted run leaves nothing behind.
    ``num_workers`` > 0 renders in that many processes (same bytes as 0).
    """
    args = _check_args(num_train, num_val, size, seed, num_workers)
    root = Path(root)
    if root.exists() and _check_existing(root, args, verbose):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with _generation_lock(root):
        # Another process (another rank, a second command) may have written it meanwhile.
        if root.exists() and _check_existing(root, args, verbose):
            return root
        _remove_killed_generations(root)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
        try:
            _write_dataset(tmp, args, verbose, num_workers)
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(tmp, 0o777 & ~mask)
            if _is_empty_dir(root):
                root.rmdir()
            os.rename(tmp, root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    if verbose:
        print(f"synthetic dataset written to {root}", file=sys.stderr)
    return root


@contextlib.contextmanager
def _generation_lock(root: Path):
    """Hold a lock on ``root``'s parent folder for the duration: one generation at a time. It
    is a ``flock`` on the folder itself (no lock file is left behind) and ends with its
    process, so a killed generator never blocks the next one."""
    fd = os.open(root.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _remove_killed_generations(root: Path) -> None:
    """Remove the temporary folders of generations that were killed (called under the lock,
    which their writers would hold if they were alive)."""
    for stale in root.parent.glob(f".{root.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _check_existing(root: Path, args: dict, verbose: bool) -> bool:
    """True when root already holds this very dataset; False when it is empty; else raise."""
    if not root.is_dir():
        raise ValueError(f"{root} exists and is not a directory; choose another --out")
    if _is_empty_dir(root):
        return False
    meta = _read_meta(root)
    if meta is None:
        raise ValueError(
            f"{root} is not empty and is not a synthetic dataset; refusing to write into it. "
            f"Choose another --out, or empty it first"
        )
    if meta.get("format_version") != FORMAT_VERSION or meta.get("args") != args:
        raise ValueError(
            f"{root} holds a synthetic dataset generated with other arguments "
            f"({meta.get('args')}, format {meta.get('format_version')}) than requested ({args}, "
            f"format {FORMAT_VERSION}); choose another --out or delete it"
        )
    validate(root)
    if verbose:
        print(f"{root} already holds this synthetic dataset ({args}); nothing to do", file=sys.stderr)
    return True


def _write_dataset(out: Path, args: dict, verbose: bool, num_workers: int) -> None:
    for sub in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (out / sub).mkdir(parents=True)
    jobs = [
        (str(out), split, i, args["seed"], args["size"])
        for split in SPLITS
        for i in range(args[f"num_{split}"])
    ]
    bar = tqdm(total=len(jobs), desc="synthetic dataset", unit="img", disable=not verbose)
    results = []
    with bar:
        if num_workers > 0:
            ctx = multiprocessing.get_context("spawn")  # no fork of a parent that may hold threads
            with ProcessPoolExecutor(num_workers, mp_context=ctx, initializer=_worker_init) as pool:
                for r in pool.map(_write_one, jobs, chunksize=16):
                    results.append(r)
                    bar.update()
        else:
            for job in jobs:
                results.append(_write_one(job))
                bar.update()
    stats = {}
    start = 0
    for split, (list_name, _) in SPLITS.items():
        n = args[f"num_{split}"]
        ids = "".join(_image_id(split, i) + "\n" for i in range(n))
        (out / "ImageSets" / "Segmentation" / list_name).write_text(ids)
        stats[split] = _split_stats(results[start : start + n])
        start += n
    (out / "meta.json").write_text(json.dumps(_build_meta(args, stats), indent=2) + "\n")


def _stale_version(root: Path) -> int | None:
    """The format version of a synthetic dataset at root older than this code's, else None."""
    meta = _read_meta(root)
    version = None if meta is None else meta.get("format_version")
    return version if isinstance(version, int) and version < FORMAT_VERSION else None


def is_stale(root: str | os.PathLike) -> bool:
    """Whether ``root`` holds a synthetic dataset of an older format version than this code's."""
    return _stale_version(Path(root)) is not None


def ensure_synthetic(root: str | os.PathLike, **kwargs: Any) -> Path:
    """Generate the dataset at ``root`` if it is absent (or an empty directory), else validate it.

    ``kwargs`` are :func:`generate`'s (num_train, num_val, size, seed, verbose, num_workers).
    For an existing dataset, the arguments given must match its meta.json (those left out
    are not checked), so the Detectron2 layer can call ``ensure_synthetic(root)`` on
    whatever the user generated. A dataset written by an older format version of this
    generator (a copy from an earlier checkout) is refused, never replaced: a run may have
    trained on it, and its steps must not continue on other data.
    """
    allowed = set(DEFAULTS) | {"verbose", "num_workers"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ValueError(f"ensure_synthetic got unknown arguments {unknown}; use {sorted(allowed)}")
    root = Path(root)
    if not root.exists() or _is_empty_dir(root):
        return generate(root, **kwargs)
    version = _stale_version(root)
    if version is not None:
        raise ValueError(
            f"{root} holds a synthetic dataset of format {version}, written by an earlier version of "
            f"this generator (format {FORMAT_VERSION} now); runs trained on it continue only on it. "
            "To use this version's dataset, point DETECTRON2_DATASETS at another folder, or move "
            f"{root} away (it is generated there on first use)"
        )
    meta = validate(root)
    wanted = {k: kwargs[k] for k in DEFAULTS if k in kwargs}
    differ = {k: (meta["args"].get(k), v) for k, v in wanted.items() if meta["args"].get(k) != v}
    if differ:
        raise ValueError(
            f"synthetic dataset at {root} differs from the request (existing, requested): {differ}; "
            f"delete it, or point to another directory"
        )
    return root


# ----------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eir.data.synthetic",
        description="Write the synthetic continual-segmentation dataset (VOC layout) to a directory.",
    )
    parser.add_argument("--out", required=True, help="output directory (absent, empty, or the same dataset)")
    parser.add_argument("--num-train", type=int, default=DEFAULTS["num_train"], help="training images")
    parser.add_argument("--num-val", type=int, default=DEFAULTS["num_val"], help="validation images")
    parser.add_argument("--size", type=int, default=DEFAULTS["size"], help="image side in pixels")
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="random seed")
    parser.add_argument("--workers", type=int, default=0, help="worker processes (0: render in this one)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    a = parser.parse_args(argv)
    try:
        generate(a.out, a.num_train, a.num_val, a.size, a.seed, verbose=not a.quiet, num_workers=a.workers)
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f"error: {e}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
