"""tools/visualize_bank.py renders a saved bank and pasted examples to a PNG."""
from pathlib import Path

import cv2
import numpy as np
from conftest import load_script

from eir.data.bank import InstanceBank
from eir.tasks import build_task


def load_tool():
    return load_script("tools/visualize_bank.py")


def tiny_dataset(root: Path, n=16, size=64, seed=0):
    """A VOC-like layout: one or two rectangles of classes 1..7 per image, 255 outlines."""
    rng = np.random.default_rng(seed)
    for sub in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    samples, ids = [], []
    for i in range(n):
        image = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        label = np.zeros((size, size), np.uint8)
        classes = rng.choice(np.arange(1, 8), size=1 + i % 2, replace=False)
        for k, c in enumerate(classes):
            y, x = 4 + 30 * k, int(rng.integers(2, 30))
            label[y:y + 20, x:x + 25] = 255
            label[y + 1:y + 19, x + 1:x + 24] = c
            image[y:y + 20, x:x + 25] = (40 * c % 256, 255 - 30 * c, 100)
        image_id = f"img{i:03d}"
        cv2.imwrite(str(root / "JPEGImages" / f"{image_id}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "SegmentationClassAug" / f"{image_id}.png"), label)
        samples.append({"image": image, "label": label, "image_id": image_id})
        ids.append(image_id)
    (root / "ImageSets/Segmentation/train_aug.txt").write_text("\n".join(ids) + "\n")
    return samples


def test_visualize_bank_main_writes_a_png(tmp_path):
    samples = tiny_dataset(tmp_path / "data")
    task = build_task("synthetic", "6-1")
    bank = InstanceBank.build(samples, task, step=0, budget=12, seed=0, verbose=False)
    assert len(bank) > 0
    bank.save(tmp_path / "bank")
    tool = load_tool()

    out = tool.main([str(tmp_path / "bank"), "--out", str(tmp_path / "bank.png")])
    grid = cv2.imread(str(out))
    assert grid is not None
    rows_only = grid.shape
    assert rows_only[0] > 40 + 6 * 72 and rows_only[1] > 190 + 72  # one row per class of step 0

    out = tool.main([str(tmp_path / "bank"), "--out", str(tmp_path / "full.png"),
                     "--images-root", str(tmp_path / "data"), "--num-examples", "2"])
    full = cv2.imread(str(out))
    assert full is not None
    assert full.shape[0] > rows_only[0] + 2 * 240  # two example rows below the bank
    assert full.shape[1] >= 4 * 240
    assert full.std() > 10  # not a blank canvas


def test_visualize_bank_shows_the_region_rule(tmp_path):
    from eir.data.bank_rule import RegionRule

    samples = tiny_dataset(tmp_path / "data")
    for s in samples:  # every class in two pieces: a 2-pixel column cut through its rectangle
        s["label"] = s["label"].copy()
        cols = np.flatnonzero(((s["label"] != 0) & (s["label"] != 255)).any(axis=0))
        s["label"][:, cols[len(cols) // 2]:cols[len(cols) // 2] + 2] = 0
    task = build_task("synthetic", "6-1")
    assert len(InstanceBank.build(samples, task, 0, budget=12, seed=0, verbose=False)) == 0
    bank = InstanceBank.build(samples, task, 0, budget=12, seed=0, verbose=False,
                              instances=RegionRule(0.01))
    assert len(bank) == 12 and all(len(e.classes) == 1 for e in bank.entries)
    bank.save(tmp_path / "bank")
    tool = load_tool()
    loaded = InstanceBank.load(tmp_path / "bank")
    assert tool.summary_line(loaded).startswith(
        "12/12 entries, storage=instance, instances: largest region per class >= 0.01 of the image, ")
    paper = InstanceBank.build(tiny_dataset(tmp_path / "p"), task, 0, budget=3, seed=0, verbose=False)
    assert "instances: paper's (every class one region)," in tool.summary_line(paper)
    out = tool.main([str(tmp_path / "bank"), "--out", str(tmp_path / "regions.png")])
    assert cv2.imread(str(out)).std() > 10
