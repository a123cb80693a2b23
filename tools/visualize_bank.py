#!/usr/bin/env python
"""Render an instance bank (and, optionally, pasted training examples) as one PNG.

    python tools/visualize_bank.py BANK_DIR --out grid.png
    python tools/visualize_bank.py BANK_DIR --out grid.png --images-root DATASET_ROOT \\
        --split train_aug --num-examples 4 --seed 0

The bank part has one row per class: its name, colour and number of credited
entries, then the instances credited to it (``bank.instance``) over a
checkerboard, so the mask boundary is visible; the header names the instance rule
(the paper's, or the region rule: each thumbnail is then one stored region). The examples part takes images of
the step the bank serves from a VOC-like root (JPEGImages/, SegmentationClassAug/,
ImageSets/Segmentation/<split>.txt), remaps their labels to that step and pastes
bank instances with ``eir.data.paste.paste_from_bank``. There is no old model
here, so the ground truth of the old classes stands in for its pseudo map (an
oracle): step 1 then picks the old classes really hidden in the background.
Panels: image | step label | pasted image with the paste outline | soft target
(colours mixed by paste_alpha).

Core layer only (NumPy + OpenCV drawing); the bank is loaded without task checks.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from eir.data.bank import InstanceBank
from eir.data.bank_rule import rule_record
from eir.data.io import check_same_size, read_image, read_label
from eir.data.paste import PasteConfig, paste_from_bank
from eir.tasks import DATASETS, Task, voc_colormap

FONT = cv2.FONT_HERSHEY_SIMPLEX
BG = (255, 255, 255)
INK = (20, 20, 20)
GREY = (110, 110, 110)
IGNORE_COLOR = np.array([255, 255, 255], np.uint8)
RULE_NAMES = {"one_region": "paper's (every class one region)", "largest_region": "largest region per class"}


def palette_for(bank: InstanceBank) -> np.ndarray:
    """(256, 3) uint8 RGB colour per class id: the dataset's colours, VOC's colour map otherwise."""
    spec = DATASETS.get(bank.dataset)
    colors = list(spec.colors) if spec is not None else []
    fill = voc_colormap(256)
    pal = np.array([colors[i] if i < len(colors) else fill[i] for i in range(256)], np.uint8)
    pal[255] = IGNORE_COLOR
    return pal


def text(canvas, s, org, scale=0.5, color=INK, thickness=1):
    cv2.putText(canvas, s, (int(org[0]), int(org[1])), FONT, scale, color, thickness, cv2.LINE_AA)


def fit(image: np.ndarray, box_w: int, box_h: int, interp=cv2.INTER_AREA) -> np.ndarray:
    """Resize keeping aspect so the image fits in box_w x box_h (never upscale past 4x)."""
    h, w = image.shape[:2]
    scale = min(box_w / w, box_h / h, 4.0)
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    return cv2.resize(image, size, interpolation=interp)


def checkerboard(h: int, w: int, square: int = 6) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    light = ((yy // square + xx // square) % 2).astype(bool)
    board = np.full((h, w, 3), 205, np.uint8)
    board[light] = 240
    return board


def instance_thumb(crop: np.ndarray, mask: np.ndarray, size: int, color) -> np.ndarray:
    """The instance over a checkerboard in a size x size tile, framed in its class colour."""
    img = fit(crop, size - 4, size - 4, cv2.INTER_AREA)
    m = fit(mask.view(np.uint8) * 255, size - 4, size - 4, cv2.INTER_AREA) >= 128
    tile = checkerboard(size, size)
    h, w = m.shape
    y0, x0 = (size - h) // 2, (size - w) // 2
    region = tile[y0:y0 + h, x0:x0 + w]
    region[m] = img[m]
    cv2.rectangle(tile, (0, 0), (size - 1, size - 1), tuple(int(v) for v in color), 2)
    return tile


def overlay(image: np.ndarray, label: np.ndarray, pal: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Label colours over the image where the label is not background."""
    out = image.copy()
    m = label != 0
    out[m] = np.rint((1 - alpha) * image[m] + alpha * pal[label[m]]).astype(np.uint8)
    return out


def soft_target(label, paste_class, paste_alpha, pal):
    """The training target as colours: paste_alpha * colour(paste_class) + (1 - alpha) * colour(label)."""
    a = paste_alpha[..., None]
    col = a * pal[paste_class] + (1 - a) * pal[label]
    return np.clip(np.rint(col), 0, 255).astype(np.uint8)


def outline(image: np.ndarray, paste_class: np.ndarray, pal: np.ndarray) -> np.ndarray:
    """The pasted regions' contours (drawn at display size): a dark line under the class colour."""
    out = image.copy()
    for c in np.unique(paste_class):
        if c == 0:
            continue
        contours, _ = cv2.findContours(
            (paste_class == c).astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE
        )
        cv2.drawContours(out, contours, -1, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.drawContours(out, contours, -1, tuple(int(v) for v in pal[c]), 1, cv2.LINE_AA)
    return out


def summary_line(bank: InstanceBank) -> str:
    """The bank's size, storage and instance rule (what an entry is), under the title."""
    rule = "" if bank.storage == "image" else f", instances: {RULE_NAMES[rule_record(bank.instances)['rule']]}"
    if bank.instances is not None:
        rule += f" >= {bank.instances.min_area:g} of the image"
    return (f"{len(bank)}/{bank.budget} entries, storage={bank.storage}{rule}, "
            f"{bank.nbytes / 1e6:.2f} MB of pixels")


def render_bank(bank: InstanceBank, pal: np.ndarray, thumb: int, max_per_class: int) -> np.ndarray:
    name_w, pad, head_h = 190, 6, 44
    rows = []
    for c in bank.classes:
        idx = bank.entries_for_class(c)
        tiles = [instance_thumb(*bank.instance(i, c), thumb, pal[c]) for i in idx[:max_per_class]]
        rows.append((c, idx, tiles))
    n_max = max([len(t) for _, _, t in rows] + [1])
    title = (
        f"bank: {bank.task.get('dataset')} {bank.task.get('name')} {bank.task.get('setting')}, "
        f"built after step {bank.step} (serves step {bank.step + 1})"
    )
    title_w = max(cv2.getTextSize(title, FONT, 0.55, 1)[0][0],
                  cv2.getTextSize(summary_line(bank), FONT, 0.45, 1)[0][0]) + 2 * pad
    width = max(name_w + n_max * (thumb + pad) + pad, title_w)
    row_h = thumb + pad
    canvas = np.full((head_h + len(rows) * row_h + pad, width, 3), BG, np.uint8)
    text(canvas, title, (pad, 18), 0.55, INK, 1)
    text(canvas, summary_line(bank), (pad, 36), 0.45, GREY)
    for r, (c, idx, tiles) in enumerate(rows):
        y = head_h + r * row_h
        cv2.rectangle(canvas, (pad, y + 4), (pad + 18, y + 22), tuple(int(v) for v in pal[c]), -1)
        cv2.rectangle(canvas, (pad, y + 4), (pad + 18, y + 22), INK, 1)
        text(canvas, f"{c} {bank.class_names.get(c, str(c))}", (pad + 26, y + 19), 0.5, INK)
        more = f" (first {len(tiles)})" if len(idx) > len(tiles) else ""
        text(canvas, f"{len(idx)} credited{more}", (pad + 26, y + 38), 0.42, GREY)
        if not idx:
            text(canvas, "no entry: never pasted", (name_w, y + thumb // 2), 0.45, GREY)
        for k, tile in enumerate(tiles):
            x = name_w + k * (thumb + pad)
            canvas[y:y + thumb, x:x + thumb] = tile
        cv2.line(canvas, (pad, y + row_h - 3), (width - pad, y + row_h - 3), (225, 225, 225), 1)
    return canvas


def read_example(root: Path, image_id: str):
    """An image of a VOC-like layout under ``root`` and its label, read as training reads them."""
    img_path = root / "JPEGImages" / f"{image_id}.jpg"
    lab_path = root / "SegmentationClassAug" / f"{image_id}.png"
    image, label = read_image(img_path), read_label(lab_path)
    check_same_size(image, label, img_path, lab_path)
    return image, label


def step_luts(bank: InstanceBank):
    """(label LUT of the step the bank serves, old classes) for making examples."""
    old = [int(c) for c in bank.classes]
    try:
        task = Task.from_dict(bank.task)
    except (ValueError, TypeError):
        task = None
    serving = bank.step + 1
    if task is not None and serving < task.num_steps:
        return np.asarray(task.train_label_lut(serving), np.uint8), old
    lut = np.arange(256, dtype=np.uint8)
    lut[old] = 0  # no next step: show the background shift of the bank's own classes
    return lut, old


def render_examples(bank, pal, root: Path, split: str, num: int, seed: int, panel: int,
                    mode: str, cell_size: int | None) -> np.ndarray:
    list_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not list_file.is_file():
        raise FileNotFoundError(f"no image list {list_file}: give --images-root of a VOC-like root")
    ids = [s.split()[0] for s in list_file.read_text().splitlines() if s.strip()]
    lut, old = step_luts(bank)
    old_lut = np.zeros(256, bool)
    old_lut[old] = True
    rng = np.random.default_rng(seed)
    picked = []
    for image_id in [ids[i] for i in rng.permutation(len(ids))[: max(50, 20 * num)]]:
        image, raw = read_example(root, image_id)
        label = lut[raw]
        if ((label != 0) & (label != 255)).any():  # in the step's training set
            picked.append((image_id, image, raw, label))
        if len(picked) == num:
            break
    pad, head_h, cap_h = 6, 46, 40
    heads = ["image", f"step {bank.step + 1} label", "pasted (outlined)",
             "target: alpha-mixed label colours"]
    canvas_w = pad + 4 * (panel + pad)
    rows_h = len(picked) * (panel + cap_h + pad) if picked else 30
    canvas = np.full((head_h + rows_h + pad, canvas_w, 3), BG, np.uint8)
    text(canvas, f"pasted examples from {root.name}/{split} (mode={mode}, oracle pseudo map = "
                 "ground truth of old classes)", (pad, 18), 0.5, INK)
    for k, h in enumerate(heads):
        text(canvas, h, (pad + k * (panel + pad), 38), 0.45, GREY)
    if not picked:
        text(canvas, "no image of the served step found in this split", (pad, head_h + 20), 0.5)
    for r, (image_id, image, raw, label) in enumerate(picked):
        h, w = label.shape
        cfg = PasteConfig(mode=mode)
        cfg = PasteConfig(mode=mode, cell_size=cell_size) if cell_size else cfg.scaled_to(min(h, w))
        cell = cfg.cell_size
        pseudo = np.where(old_lut[raw], raw, 0).astype(np.uint8)
        out, lab, pc, pa = paste_from_bank(
            image, label, pseudo, bank, old, cfg, np.random.default_rng([seed, r])
        )
        shown = fit(out, panel, panel, cv2.INTER_AREA)
        pc_shown = cv2.resize(pc, shown.shape[1::-1], interpolation=cv2.INTER_NEAREST)
        panels = [
            fit(image, panel, panel, cv2.INTER_AREA),
            fit(overlay(image, label, pal), panel, panel, cv2.INTER_AREA),
            outline(shown, pc_shown, pal),
            fit(soft_target(lab, pc, pa, pal), panel, panel, cv2.INTER_NEAREST),
        ]
        y = head_h + r * (panel + cap_h + pad)
        for k, tile in enumerate(panels):
            x = pad + k * (panel + pad)
            canvas[y:y + tile.shape[0], x:x + tile.shape[1]] = tile
        step_classes = [int(c) for c in np.unique(label) if 0 < c < 255]
        pasted = [
            f"{bank.class_names.get(int(c), str(c))} (lam {float(pa[pc == c].mean()):.2f})"
            for c in np.unique(pc) if c != 0
        ]
        text(canvas, f"{image_id}: {w}x{h}, cell {cell}, label classes "
                     f"{[bank_or_task_name(bank, c) for c in step_classes]}",
             (pad, y + panel + 16), 0.42, INK)
        text(canvas, "pasted classes: " + (", ".join(pasted) or "nothing"), (pad, y + panel + 33),
             0.42, INK)
    return canvas


def bank_or_task_name(bank, c: int) -> str:
    if c in bank.class_names:
        return bank.class_names[c]
    spec = DATASETS.get(bank.dataset)
    return spec.class_names[c] if spec is not None and c < len(spec.class_names) else str(c)


def stack(parts: list[np.ndarray], pad: int = 10) -> np.ndarray:
    width = max(p.shape[1] for p in parts)
    out = []
    for p in parts:
        block = np.full((p.shape[0], width, 3), BG, np.uint8)
        block[:, : p.shape[1]] = p
        out += [block, np.full((pad, width, 3), BG, np.uint8)]
    return np.concatenate(out[:-1], axis=0)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bank_dir", help="a bank folder written by InstanceBank.save (manifest.json inside)")
    ap.add_argument("--out", required=True, help="output PNG path")
    ap.add_argument("--images-root", default=None,
                    help="VOC-like dataset root for pasted examples (JPEGImages/, SegmentationClassAug/)")
    ap.add_argument("--split", default="train_aug", help="image list in ImageSets/Segmentation/")
    ap.add_argument("--num-examples", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mode", default="mixup", choices=("mixup", "copy"))
    ap.add_argument("--cell-size", type=int, default=None,
                    help="paste cell size S (default: 250 scaled to the image's shorter side / 512)")
    ap.add_argument("--thumb", type=int, default=72, help="thumbnail size of a bank instance (px)")
    ap.add_argument("--max-per-class", type=int, default=12, help="thumbnails per class row")
    ap.add_argument("--panel", type=int, default=240, help="size of an example panel (px)")
    return ap.parse_args(argv)


def main(argv=None) -> Path:
    args = parse_args(argv)
    bank = InstanceBank.load(args.bank_dir)
    pal = palette_for(bank)
    parts = [render_bank(bank, pal, args.thumb, args.max_per_class)]
    if args.images_root:
        parts.append(render_examples(bank, pal, Path(args.images_root), args.split,
                                     args.num_examples, args.seed, args.panel, args.mode,
                                     args.cell_size))
    canvas = stack(parts)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR)):
        raise ValueError(f"could not write {out}: use a .png path in a writable folder")
    print(f"wrote {out} ({canvas.shape[1]}x{canvas.shape[0]})")
    return out


if __name__ == "__main__":
    main()
