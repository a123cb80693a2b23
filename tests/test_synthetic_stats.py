"""The statistics command on a hand-made four-image dataset whose figures are worked out by hand."""
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from eir.data.synthetic_stats import format_stats, image_table, main, read_labels, task_stats
from eir.tasks import build_task

ROOT = Path(__file__).resolve().parents[1]


def _labels():
    """Task 4-2 steps: 1-4 | 5-6 | 7-8 | 9-10.

    a: class 1 twice (two separate blocks) and class 5 once: classes {1, 5}, 3 objects
    b: class 5 and class 9: {5, 9}, 2 objects
    c: class 2 as two blocks touching at a corner only (two 4-connected regions): {2}, 2 objects
    d: class 7, and class 1 bordered by void (255): {1, 7}, 2 objects
    """
    a = np.zeros((8, 8), np.uint8)
    a[0:2, 0:2] = 1
    a[5:7, 0:2] = 1
    a[3:6, 4:7] = 5
    b = np.zeros((8, 8), np.uint8)
    b[1:3, 1:3] = 5
    b[5:8, 5:8] = 9
    c = np.zeros((8, 8), np.uint8)
    c[0:2, 0:2] = 2
    c[2:4, 2:4] = 2
    d = np.zeros((8, 8), np.uint8)
    d[0:3, 0:3] = 7
    d[4:8, 4:8] = 255
    d[5:7, 5:7] = 1
    return {"a": a, "b": b, "c": c, "d": d}


@pytest.fixture()
def root(tmp_path):
    labels = _labels()
    (tmp_path / "SegmentationClassAug").mkdir()
    (tmp_path / "ImageSets" / "Segmentation").mkdir(parents=True)
    for name, label in labels.items():
        cv2.imwrite(str(tmp_path / "SegmentationClassAug" / f"{name}.png"), label)
    (tmp_path / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("a\nb\nc\nd\n")
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").write_text("c\n")
    return tmp_path


def test_image_table_counts_4_connected_regions(root):
    presence, objects = image_table(read_labels(root), 10)
    assert presence.shape == objects.shape == (4, 11)
    assert [np.flatnonzero(p).tolist() for p in presence] == [[1, 5], [5, 9], [2], [1, 7]]
    assert objects.sum(1).tolist() == [3, 2, 2, 2]
    assert objects[0, 1] == 2 and objects[2, 2] == 2 and objects[3, 1] == 1
    assert len(read_labels(root, "val")) == 1


def test_overlap_figures_by_hand(root):
    task = build_task("synthetic", "4-2", "overlap")
    s = task_stats(*image_table(read_labels(root), 10), task)
    assert s["images"] == 4
    assert s["objects_per_image"] == pytest.approx(9 / 4)
    assert s["classes_per_image"] == pytest.approx(7 / 4)
    assert s["multi_class_share"] == pytest.approx(3 / 4)
    freq = s["class_frequency"]
    assert (freq["disc"], freq["square"], freq["cross"], freq["hexagon"], freq["bar"]) == (0.5, 0.25, 0.5, 0.25, 0.25)
    assert freq["triangle"] == freq["ring"] == freq["star"] == freq["crescent"] == freq["diamond"] == 0
    steps = s["steps"]
    assert [x["images"] for x in steps] == [3, 2, 1, 1]  # step 0: a, c, d; 1: a, b; 2: d; 3: b
    assert [x["with_earlier"] for x in steps] == [None, 0.5, 1.0, 1.0]
    assert steps[0]["with_later"] == pytest.approx(2 / 3)  # a holds 5, d holds 7, c nothing later
    assert [x["with_later"] for x in steps[1:]] == [0.5, 0.0, None]
    assert steps[0]["objects_per_image"] == pytest.approx(7 / 3)
    assert steps[0]["classes_per_image"] == pytest.approx(5 / 3)
    assert steps[1]["objects_per_image"] == 2.5 and steps[1]["classes_per_image"] == 2.0
    assert steps[3]["classes"] == [9, 10]


def test_step_images_agree_with_the_task(root):
    """The vectorised step membership is Task.keeps_train_image's, in both settings."""
    labels = read_labels(root)
    present = [np.unique(label) for label in labels]
    for setting in ("overlap", "disjoint"):
        task = build_task("synthetic", "4-2", setting)
        s = task_stats(*image_table(labels, 10), task)
        expected = [sum(task.keeps_train_image(p, t) for p in present) for t in range(task.num_steps)]
        assert [x["images"] for x in s["steps"]] == expected
    disjoint = task_stats(*image_table(labels, 10), build_task("synthetic", "4-2", "disjoint"))["steps"]
    assert [x["images"] for x in disjoint] == [1, 1, 1, 1]  # c | a | d | b
    assert disjoint[0]["with_later"] == 0.0 and disjoint[1]["with_earlier"] == 1.0


def test_report_and_cli(root, capsys):
    task = build_task("synthetic", "4-2")
    text = format_stats(task_stats(*image_table(read_labels(root), 10), task), "tiny")
    assert "tiny: 4 images; 2.25 objects" in text and "75.0 % of the images" in text
    assert "| disc | 50.0 % |" in text
    assert "| 0 | 1,2,3,4 | 3 | - | 66.7 % | 2.33 | 1.67 |" in text
    assert "| 3 | 9,10 | 1 | 100.0 % | - | 2.00 | 2.00 |" in text
    assert main(["--root", str(root), "--task", "4-2"]) == 0
    assert capsys.readouterr().out.strip() == text.replace("tiny", f"{root} (train)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "eir.data.synthetic_stats", "--root", str(root / "absent")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "no train list" in proc.stderr


def test_bad_labels(root):
    bad = np.full((4, 4), 11, np.uint8)
    bad[0, 0] = 255
    with pytest.raises(ValueError, match=r"values \[11\]"):
        image_table([bad], 10)
    with pytest.raises(ValueError, match="unknown split"):
        read_labels(root, "test")
    (root / "SegmentationClassAug" / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match="b.png"):
        read_labels(root)
