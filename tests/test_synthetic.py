"""The synthetic dataset: layout, label values, void borders, determinism, statistics, CLI."""
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from eir import tasks
from eir.data import synthetic
from eir.data.synthetic import (
    SYNTHETIC_CLASSES,
    ensure_synthetic,
    generate,
    make_sample,
    sample_rng,
    validate,
)

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64
ARGS = {"num_train": 40, "num_val": 12, "size": SIZE, "seed": 3}


def _read_rgb(path):
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, path
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _read_label(path):
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert label is not None, path
    return label


def _ids(root, split):
    name = {"train": "train_aug.txt", "val": "val.txt"}[split]
    return (root / "ImageSets" / "Segmentation" / name).read_text().split()


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _n_regions(mask):
    """Number of 4-connected regions of a boolean mask (reference for the bank's candidate rule)."""
    n, _ = cv2.connectedComponents(mask.astype(np.uint8), connectivity=4)
    return n - 1


def _is_candidate(label):
    return all(_n_regions(label == c) == 1 for c in np.unique(label) if c not in (0, 255))


def _present(label):
    return [int(c) for c in np.unique(label) if 0 < c < 255]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic") / "data"
    assert generate(root, verbose=False, **ARGS) == root
    return root


@pytest.fixture(scope="module")
def labels(dataset):
    return [_read_label(dataset / "SegmentationClassAug" / f"{i}.png") for i in _ids(dataset, "train")]


@pytest.fixture(scope="module")
def samples():
    """150 in-memory training samples of seed 0: enough for statistics, fast at 64 px."""
    return [make_sample(sample_rng(0, "train", i), SIZE) for i in range(150)]


def test_class_names_match_tasks():
    spec = tasks.DATASETS["synthetic"]
    assert SYNTHETIC_CLASSES == spec.class_names
    if hasattr(spec, "colors"):  # meta.json's label colours are the ones Detectron2 will show
        assert [list(c) for c in spec.colors] == synthetic.label_colors()
    assert len(SYNTHETIC_CLASSES) == 11 and SYNTHETIC_CLASSES[0] == "background"


def test_layout_lists_match_files(dataset):
    train, val = _ids(dataset, "train"), _ids(dataset, "val")
    assert len(train) == 40 and len(val) == 12 and not set(train) & set(val)
    stems = {p.stem for p in (dataset / "JPEGImages").glob("*.jpg")}
    assert stems == set(train) | set(val)
    assert {p.stem for p in (dataset / "SegmentationClassAug").glob("*.png")} == stems
    for image_id in train[:5] + val[:5]:
        image = _read_rgb(dataset / "JPEGImages" / f"{image_id}.jpg")
        label = _read_label(dataset / "SegmentationClassAug" / f"{image_id}.png")
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
        assert label.shape == (SIZE, SIZE) and label.dtype == np.uint8
    meta = json.loads((dataset / "meta.json").read_text())
    assert meta["args"] == ARGS and meta["seed"] == 3
    assert meta["format_version"] == synthetic.FORMAT_VERSION
    assert tuple(meta["class_names"]) == SYNTHETIC_CLASSES
    assert len(meta["colors"]) == 11 and meta["colors"][1] == [128, 0, 0]  # VOC colour map
    assert validate(dataset) == meta
    # No temporary directory is left beside the dataset.
    assert [p.name for p in dataset.parent.iterdir()] == ["data"]


def test_files_are_the_in_memory_samples(dataset):
    """A written label is exactly make_sample's; the JPEG is its image at quality 95, RGB order."""
    for split in ("train", "val"):
        for index in (0, 7):
            image, label = make_sample(sample_rng(3, split, index), SIZE)
            image_id = _ids(dataset, split)[index]
            assert np.array_equal(_read_label(dataset / "SegmentationClassAug" / f"{image_id}.png"), label)
            jpg = (dataset / "JPEGImages" / f"{image_id}.jpg").read_bytes()
            bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
            assert jpg == cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
            decoded = _read_rgb(dataset / "JPEGImages" / f"{image_id}.jpg").astype(np.float32)
            swapped = np.abs(decoded - image[..., ::-1]).mean()
            assert np.abs(decoded - image).mean() < min(12.0, swapped)


def test_meta_statistics_match_the_labels(dataset, labels):
    stats = json.loads((dataset / "meta.json").read_text())["stats"]["train"]
    counts = np.zeros(11, int)
    for label in labels:
        counts[_present(label)] += 1
    assert stats["images_per_class"] == {SYNTHETIC_CLASSES[c]: int(counts[c]) for c in range(1, 11)}
    assert stats["bank_candidates"] == sum(_is_candidate(label) for label in labels)


def test_label_values(labels):
    for label in labels:
        assert set(np.unique(label).tolist()) <= set(range(11)) | {255}


def test_void_border_around_objects(labels, samples):
    """255 separates every object from the background and from other objects, and is thin."""
    all_labels = labels + [label for _, label in samples]
    for label in all_labels:
        if not _present(label):
            continue
        assert (label == 255).any()
        # No class pixel touches (8-neighbourhood) background or a pixel of another class.
        padded = np.pad(label, 1, constant_values=255)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                other = padded[1 + dy : 1 + dy + SIZE, 1 + dx : 1 + dx + SIZE]
                touching = (label != 255) & (other != 255) & (label != other)
                assert not touching.any(), "a class pixel touches background or another class"
    # Thin: nearly all void pixels lie within 2 px of an object pixel; void is a small share.
    void = np.stack(all_labels) == 255
    near = np.stack(
        [cv2.dilate(((lab > 0) & (lab < 255)).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0 for lab in all_labels]
    )
    assert (void & near).sum() >= 0.97 * void.sum()
    assert 0.02 < void.mean() < 0.2


def test_determinism(dataset, tmp_path):
    again = generate(tmp_path / "again", verbose=False, **ARGS)
    assert _files(again) == _files(dataset)
    other = generate(tmp_path / "other", verbose=False, **{**ARGS, "seed": 4})
    a, b = _files(dataset), _files(other)
    assert a.keys() == b.keys()
    differing = [k for k in a if k.suffix == ".png" and a[k] != b[k]]
    assert len(differing) >= 0.9 * 52


def test_workers_give_the_same_bytes(tmp_path):
    args = {"num_train": 10, "num_val": 4, "size": 48, "seed": 1}
    serial = generate(tmp_path / "serial", verbose=False, **args)
    parallel = generate(tmp_path / "parallel", verbose=False, num_workers=2, **args)
    assert _files(serial) == _files(parallel)


def test_images_do_not_depend_on_how_many_are_generated(dataset, tmp_path):
    small = generate(tmp_path / "small", verbose=False, **{**ARGS, "num_train": 5, "num_val": 2})
    for image_id in ("train_000004", "val_000001"):
        for sub, ext in (("JPEGImages", "jpg"), ("SegmentationClassAug", "png")):
            f = f"{sub}/{image_id}.{ext}"
            assert (small / f).read_bytes() == (dataset / f).read_bytes()


def test_every_class_appears_and_images_mix_classes(samples):
    present = [_present(label) for _, label in samples]
    counts = np.bincount([c for p in present for c in p], minlength=11)
    assert counts[0] == 0 and (counts[1:] >= 0.15 * len(samples)).all(), counts
    # Roughly balanced: no class more than twice as frequent as another.
    assert counts[1:].max() <= 2 * counts[1:].min(), counts
    n = np.array([len(p) for p in present])
    assert 2.0 <= n.mean() <= 3.5
    assert (n >= 2).mean() >= 0.6 and (n >= 4).any() and (n >= 1).mean() >= 0.97
    # Classes mix across the id range: low and high ids together (old classes in new images).
    assert np.mean([min(p) <= 5 < max(p) for p in present if p]) >= 0.35


def test_candidate_fraction(samples):
    candidates = np.array([_is_candidate(label) for _, label in samples])
    assert 0.5 <= candidates.mean() <= 0.9, candidates.mean()
    # Some images have a class in two or more regions (second instance or split by occlusion).
    multi = [max(_n_regions(label == c) for c in _present(label)) >= 2 for _, label in samples if _present(label)]
    assert np.mean(multi) >= 0.08


def _gradient_and_contrast(samples, shift=(0, 0)):
    ratios, contrasts = [], []
    for image, label in samples:
        label = np.roll(label, shift, axis=(0, 1))
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
        mag = np.hypot(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))
        if (label == 255).any():
            ratios.append(mag[label == 255].mean() / mag.mean())
        for c in _present(label):
            mask = (label == c).astype(np.uint8)
            inner = cv2.erode(mask, np.ones((3, 3), np.uint8)) > 0
            ring = (cv2.dilate(mask, np.ones((5, 5), np.uint8)) > 0) & (mask == 0) & (label != 255)
            if inner.sum() > 5 and ring.sum() > 5:
                contrasts.append(np.abs(image[inner].mean(0) - image[ring].mean(0)).max())
    return np.mean(ratios), np.median(contrasts)


def test_labels_lie_on_the_drawn_shapes(samples):
    """Image edges sit on the void borders, and objects differ in colour from their surroundings;
    the same statistics for labels shifted by a few pixels are much weaker."""
    ratio, contrast = _gradient_and_contrast(samples)
    shifted_ratio, shifted_contrast = _gradient_and_contrast(samples, shift=(5, 3))
    assert ratio > 1.4 and ratio > shifted_ratio + 0.3, (ratio, shifted_ratio)
    assert contrast > 40 and contrast > 2 * shifted_contrast, (contrast, shifted_contrast)
    # Image content varies under the masks (textured, not flat labels painted on noise).
    stds = [image[label == c].std() for image, label in samples for c in _present(label) if (label == c).sum() > 30]
    assert np.median(stds) > 5


def test_shapes_are_single_regions_with_their_geometry():
    """Each class drawn alone is one 4-connected region with the geometry of its shape."""
    rng = np.random.default_rng(0)
    for cls in range(1, 11):
        holes, aspects, solidity = [], [], []
        for _ in range(20):
            alpha = synthetic._shape_alpha(rng, cls, np.array([48.0, 48.0]), rng.uniform(6, 40), 96)
            mask = (alpha >= 128).astype(np.uint8)
            assert _n_regions(mask) == 1, SYNTHETIC_CLASSES[cls]
            contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
            holes.append(sum(h[3] >= 0 for h in hierarchy[0]))
            outer = max(contours, key=len)
            w, h = cv2.minAreaRect(outer)[1]
            aspects.append(max(w, h) / min(w, h))
            hull = np.zeros_like(mask)
            cv2.fillPoly(hull, [cv2.convexHull(outer)], 1)
            solidity.append(mask.sum() / hull.sum())
        name = SYNTHETIC_CLASSES[cls]
        assert all(h == (1 if name == "ring" else 0) for h in holes), name
        if name in ("disc", "square", "hexagon", "triangle", "bar", "diamond"):
            assert np.median(solidity) > 0.9, name
        else:  # ring (its hole), cross, star and crescent are not convex
            assert np.median(solidity) < 0.8, name
        if name == "bar":
            assert np.median(aspects) > 4
        elif name == "diamond":
            assert 1.4 < np.median(aspects) < 2.4
        elif name in ("disc", "ring", "square", "hexagon", "star", "cross"):
            assert np.median(aspects) < 1.25, name


def test_refuses_a_foreign_non_empty_directory(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty and is not a synthetic dataset"):
        generate(foreign, verbose=False, **ARGS)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no temporary left
    with pytest.raises(ValueError, match="not a directory"):
        generate(foreign / "notes.txt", verbose=False, **ARGS)


def test_existing_dataset_same_or_other_arguments(tmp_path, capsys):
    args = {"num_train": 4, "num_val": 2, "size": 40, "seed": 0}
    root = generate(tmp_path / "d", verbose=False, **args)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert generate(root, verbose=True, **args) == root
    assert "already holds this synthetic dataset" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before
    with pytest.raises(ValueError, match="other arguments"):
        generate(root, verbose=False, **{**args, "seed": 1})
    empty = tmp_path / "empty"
    empty.mkdir()
    generate(empty, verbose=False, **args)
    assert _files(empty) == _files(root)


def test_crash_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def failing(job):
        calls.append(job)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        return real(job)

    real = synthetic._write_one
    monkeypatch.setattr(synthetic, "_write_one", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        generate(tmp_path / "d", verbose=False, **ARGS)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments(tmp_path):
    for bad in ({"size": 16}, {"num_train": 0}, {"num_val": -1}, {"seed": -1}, {"size": 64.0}):
        with pytest.raises(ValueError):
            generate(tmp_path / "d", verbose=False, **{**ARGS, **bad})
    with pytest.raises(ValueError, match="num_workers"):
        generate(tmp_path / "d", verbose=False, num_workers=-1)
    assert list(tmp_path.iterdir()) == []


def test_ensure_synthetic(tmp_path, dataset):
    root = tmp_path / "e"
    args = {"num_train": 4, "num_val": 2, "size": 40, "seed": 2}
    assert ensure_synthetic(root, verbose=False, **args) == root
    assert validate(root)["args"] == args
    assert ensure_synthetic(root) == root  # unspecified arguments are not checked
    assert ensure_synthetic(root, size=40) == root
    with pytest.raises(ValueError, match="differs"):
        ensure_synthetic(root, size=64)
    with pytest.raises(ValueError, match="unknown arguments"):
        ensure_synthetic(root, colour="red")
    (root / "JPEGImages" / "train_000001.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="train_000001.jpg"):
        ensure_synthetic(root)
    with pytest.raises(FileNotFoundError, match="python -m eir.data.synthetic"):
        validate(tmp_path / "absent")


def test_cli(tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "eir.data.synthetic", "--out", str(out), "--num-train", "6",
           "--num-val", "3", "--size", "48", "--seed", "5"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "synthetic dataset" in proc.stderr  # tqdm bar and the final message go to stderr
    assert validate(out)["args"] == {"num_train": 6, "num_val": 3, "size": 48, "seed": 5}
    assert len(_ids(out, "train")) == 6 and len(_ids(out, "val")) == 3
    proc = subprocess.run(cmd + ["--quiet"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == ""
    proc = subprocess.run(cmd[:-1] + ["6"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "other arguments" in proc.stderr
