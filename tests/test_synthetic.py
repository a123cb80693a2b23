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


def test_class_draws_follow_the_scene_groups():
    """The class draw alone (no rendering), 6000 images: the common class in P_COMMON of them,
    1.494 classes per image (0.32 * (1 + 0.8) + 0.68 * 1.35 from the draw tables), pairs of
    scene classes mostly from one group (0.8 ** 2 = 0.64 both from the image's own scene; a
    uniform draw would pair within a group 2 times in 8), and a long tail within each group."""
    rng = np.random.default_rng(0)
    draws = [synthetic._choose_classes(rng) for _ in range(6000)]
    common = np.mean([synthetic.COMMON_CLASS in classes for _, classes in draws])
    assert abs(common - 0.32) < 0.02, common
    mean_classes = np.mean([len(classes) for _, classes in draws])
    assert abs(mean_classes - 1.494) < 0.03, mean_classes
    assert all(len(set(classes)) == len(classes) >= 1 for _, classes in draws)
    group_of = {c: g for g, group in enumerate(synthetic.SCENE_GROUPS) for c in group}
    pairs = [
        [group_of[c] for c in classes if c != synthetic.COMMON_CLASS]
        for _, classes in draws
    ]
    pairs = [g for g in pairs if len(g) == 2]
    same = np.mean([a == b for a, b in pairs])
    assert 0.6 < same < 0.72, same
    in_scene = np.mean([group_of[c] == scene for scene, classes in draws for c in classes if c in group_of])
    assert 0.75 < in_scene < 0.85, in_scene
    counts = np.bincount([c for _, classes in draws for c in classes], minlength=11)
    for first, _, last in synthetic.SCENE_GROUPS:  # weights 0.45 : 0.22
        assert 1.6 < counts[first] / counts[last] < 2.6, counts


def test_images_have_vocs_structure(samples):
    """Rendered images: about a third hold the common class, ~1.5 classes and a little over two
    objects per image, every class present, and late classes often (not always) beside early ones."""
    present = [_present(label) for _, label in samples]
    assert all(present)  # every image has an object, as in VOC
    counts = np.bincount([c for p in present for c in p], minlength=11)
    n = len(samples)
    assert 0.25 * n <= counts[1] <= 0.42 * n, counts
    assert (counts[2:] >= 0.04 * n).all() and counts[2:].max() < counts[1], counts
    classes = np.array([len(p) for p in present])
    assert 1.3 <= classes.mean() <= 1.75, classes.mean()
    objects = [sum(_n_regions(label == c) for c in _present(label)) for _, label in samples]
    assert 2.0 <= np.mean(objects) <= 3.0, np.mean(objects)
    late = [p for p in present if set(p) & {9, 10}]  # step 3 of task 4-2
    with_early = np.mean([bool(set(p) & {1, 2, 3, 4}) for p in late])
    assert 0.4 <= with_early <= 0.9, with_early


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
        if name == "bar":  # half-width 0.2-0.3 of the half-length: aspect 3.3-5
            assert np.median(aspects) > 3.2
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


def _set_format(root, version):
    meta = json.loads((root / "meta.json").read_text())
    (root / "meta.json").write_text(json.dumps({**meta, "format_version": version}))


def test_ensure_synthetic_refuses_an_older_format_and_changes_nothing(tmp_path):
    """A dataset written by an older generator version is never replaced (a run may have trained
    on it): it is refused, saying what to do, and left as it is. A newer format and a foreign
    meta.json are refused too."""
    args = {"num_train": 4, "num_val": 2, "size": 40, "seed": 2}
    root = generate(tmp_path / "e", verbose=False, **args)
    _set_format(root, synthetic.FORMAT_VERSION - 1)
    assert synthetic.is_stale(root)
    before = _files(root)
    with pytest.raises(ValueError, match="earlier version of this generator.*DETECTRON2_DATASETS"):
        ensure_synthetic(root, **args)
    assert _files(root) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]
    _set_format(root, synthetic.FORMAT_VERSION + 1)
    assert not synthetic.is_stale(root)
    with pytest.raises(ValueError, match="format version"):
        ensure_synthetic(root)
    assert json.loads((root / "meta.json").read_text())["format_version"] == synthetic.FORMAT_VERSION + 1


def test_temporary_folders_of_a_killed_generation_are_removed_by_the_next(tmp_path):
    killed = tmp_path / ".e.tmp-killed"
    (killed / "JPEGImages").mkdir(parents=True)
    (killed / "JPEGImages" / "train_000000.jpg").write_bytes(b"half")
    root = generate(tmp_path / "e", verbose=False, num_train=3, num_val=1, size=40)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]
    validate(root)


_KILLED_GENERATION = """
import sys
from eir.data.synthetic import generate
generate(sys.argv[1], num_train=100000, num_val=1, size=64, verbose=False, num_workers=2)
"""


def _children(pid):
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads processes from /proc (Linux)")
def test_generator_workers_end_with_a_killed_parent(tmp_path):
    """SIGKILL of a generating process: its worker processes (a spawn pool, waiting for work)
    exit by themselves instead of blocking forever, and the next generation cleans up."""
    import signal
    import time

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_GENERATION, str(tmp_path / "e")], env=env)
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".e.tmp-") for p in tmp_path.iterdir()) or len(_children(proc.pid)) < 2:
        assert time.monotonic() < deadline and proc.poll() is None, "the generation did not start its workers"
        time.sleep(0.2)
    time.sleep(2)  # the workers are rendering
    workers = _children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{w}").exists() and "Z" not in Path(f"/proc/{w}/stat").read_text().split()[2] for w in workers):
        assert time.monotonic() < deadline, f"worker processes {workers} outlived their parent"
        time.sleep(0.2)
    generate(tmp_path / "e", verbose=False, num_train=3, num_val=1, size=40)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]


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
