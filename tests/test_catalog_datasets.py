"""Datasets from Detectron2's catalogs: a folder registered with ``load_sem_seg`` runs a whole
continual task (the README's example config), and Detectron2's own ADE20K registration gives
the class ids of the raw ADE20K layout."""
import json
import logging
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import requires_detectron2

pytest.importorskip("detectron2")

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402

from eir.data.datasets import catalog_dicts, catalog_spec, step_dataset_dicts  # noqa: E402
from eir.data.mapper import EIRDatasetMapper  # noqa: E402
from eir.tasks import build_task  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "projects/EIR/configs/custom/folder_dataset.py"
COLORS = np.array([[200, 60, 40], [40, 200, 60], [60, 40, 200]], np.uint8)  # sky, grass, road


def write_folder_dataset(root: Path, num_train=24, num_val=6, size=48, two_regions=False):
    """``root/my_dataset`` as the example config expects: label values 0 (sky, top half),
    1 (grass, bottom half), 2 (road, a square in every other image), 255 (a 2-pixel frame).
    ``two_regions``: sky and grass swap sides in the right half, so that each forms two
    4-connected regions (diagonal quadrants) in every image."""
    rng = np.random.default_rng(0)
    labels = {}
    for split, count in (("train", num_train), ("val", num_val)):
        (root / "my_dataset/images" / split).mkdir(parents=True)
        (root / "my_dataset/labels" / split).mkdir(parents=True)
        for i in range(count):
            label = np.zeros((size, size), np.uint8)
            label[size // 2 :] = 1
            if two_regions:
                label[:, size // 2 :] = 1 - label[:, size // 2 :]
            if i % 2 == 0:
                y, x = rng.integers(4, size - 20, 2)
                label[y : y + 16, x : x + 16] = 2
            label[:2], label[-2:], label[:, :2], label[:, -2:] = 255, 255, 255, 255
            image = COLORS[np.minimum(label, 2)].astype(np.int16) + rng.integers(-20, 21, (size, size, 3))
            cv2.imwrite(str(root / "my_dataset/images" / split / f"{split}_{i}.jpg"), image.clip(0, 255).astype(np.uint8))
            cv2.imwrite(str(root / "my_dataset/labels" / split / f"{split}_{i}.png"), label)
            labels[(split, i)] = label
    return labels


def _folder_dataset(root, monkeypatch, **layout):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    for name in ("my_dataset_train", "my_dataset_val"):  # registered by an earlier test's config
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    yield root, write_folder_dataset(root, **layout)
    for name in ("my_dataset_train", "my_dataset_val"):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


@pytest.fixture
def folder_dataset(tmp_path, monkeypatch):
    yield from _folder_dataset(tmp_path, monkeypatch)


@pytest.fixture
def two_region_dataset(tmp_path, monkeypatch):
    """The example's dataset with sky and grass in two pieces each: the paper's rule finds nothing."""
    yield from _folder_dataset(tmp_path, monkeypatch, two_regions=True)


@requires_detectron2
def test_example_config_converts_a_folder_dataset_s_labels(folder_dataset):
    """The example's labels (values 0..2, 255 unlabelled) become class ids 1..3 and background;
    at step 0 of 2-1, road (not yet seen) is ignored in the test label (no background class:
    ADE20K's protocol), and training keeps only the step's classes."""
    from eir.engine.builders import build_run_task
    from eir.engine.config_checks import load_config

    _, labels = folder_dataset
    task = build_run_task(load_config(EXAMPLE, []))
    assert task.class_names == ("background", "sky", "grass", "road")
    assert task.steps == [[1, 2], [3]] and task.unseen_test_label == 255
    assert task.to_dict()["classes"]["background"] is False
    dicts = step_dataset_dicts("my_dataset_val", task, 0, "test", verbose=False)
    assert [d["image_id"] for d in dicts] == [f"val_{i}" for i in range(6)]  # load_sem_seg gives none
    label = labels[("val", 0)]
    expected_test = np.select([label == 255, label == 2], [0, 255], label.astype(np.int64) + 1)  # by hand
    test_mapper = EIRDatasetMapper(is_train=False, task=task, step=0, augmentations=[])
    np.testing.assert_array_equal(test_mapper(dicts[0])["sem_seg"].numpy(), expected_test)
    train_dicts = step_dataset_dicts("my_dataset_train", task, 1, "train", verbose=False)
    assert len(train_dicts) == 12  # the images with road
    train_label = labels[("train", int(train_dicts[0]["image_id"].split("_")[1]))]
    expected_train = np.where(train_label == 2, 3, 0)  # step 1 keeps road (class 3) alone
    train_mapper = EIRDatasetMapper(is_train=True, task=task, step=1, augmentations=[])
    np.testing.assert_array_equal(train_mapper(train_dicts[0])["sem_seg"].numpy(), expected_train)


@requires_detectron2
@pytest.mark.slow
def test_example_config_runs_a_continual_task_end_to_end(folder_dataset):
    """Two tiny steps of 2-1 on a dataset registered through Detectron2's API only, reported with
    the dataset's class names; the run's task.json records the class table."""
    from eir.engine.config_checks import load_config
    from eir.engine.runner import ContinualRunner

    root, _ = folder_dataset
    out = root / "run"
    cfg = load_config(EXAMPLE, [
        "dataloader.train.total_batch_size=4", "dataloader.train.augmentations.crop_size=48",
        "method.memory=4", "method.paste.cell_size=24", "method.prepass.short_side=48", "schedule.max_iter=20",
        "train.device=cpu", "train.checkpointer.period=10", f"train.output_dir={out}",
    ])
    summaries = ContinualRunner(cfg).run()
    assert sorted(summaries) == [0, 1]
    metrics = json.loads((out / "step_1/metrics.json").read_text())
    text = json.dumps(metrics)
    for name in ("sky", "grass", "road"):
        assert f'"{name}"' in text
    for key in ("old", "new", "all"):
        assert key in json.dumps(summaries[1])
    recorded = json.loads((out / "task.json").read_text())
    assert recorded["dataset"] == "my_dataset_train"
    assert recorded["classes"]["class_names"] == ["background", "sky", "grass", "road"]
    assert (out / "summary.md").read_text().startswith("# my_dataset_train 2-1 overlap: 2 steps: 1-2 | 3")


@requires_detectron2
def test_detectron2_ade20k_registration_gives_the_raw_layout_s_class_ids(tmp_path):
    """Detectron2's builtin ADE20K registration (annotations_detectron2: values 0..149, 255
    unlabelled) with task.background=False: the labels the mapper returns equal those of the
    raw layout (value + 1, unlabelled -> 0 "other") under the paper's ADE20K task."""
    from detectron2.data.datasets.builtin import register_all_ade20k
    from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES

    names = ("ade20k_sem_seg_train", "ade20k_sem_seg_val")
    saved = {n: (DatasetCatalog[n], MetadataCatalog.get(n).as_dict()) for n in names if n in DatasetCatalog}
    d2 = np.array([[0, 5, 99, 255], [149, 100, 7, 255]], np.uint8).repeat(8, 0).repeat(8, 1)
    for sub in ("training", "validation"):
        images = tmp_path / "ADEChallengeData2016/images" / sub
        annotations = tmp_path / "ADEChallengeData2016/annotations_detectron2" / sub
        images.mkdir(parents=True)
        annotations.mkdir(parents=True)
        cv2.imwrite(str(images / "ADE_1.jpg"), np.full(d2.shape + (3,), 128, np.uint8))
        cv2.imwrite(str(annotations / "ADE_1.png"), d2)
    try:
        for n in names:
            if n in DatasetCatalog.list():
                DatasetCatalog.remove(n)
                MetadataCatalog.remove(n)
        register_all_ade20k(str(tmp_path))
        spec = catalog_spec(*names, background=False, unseen_test_label=None)
        assert spec.class_names == ("background", *ADE20K_SEM_SEG_CATEGORIES) and spec.num_classes == 150
        task = build_task(spec, "100-50")
        raw_task = build_task("ade", "100-50")
        raw = np.where(d2 == 255, 0, d2.astype(np.int64) + 1).astype(np.uint8)  # the raw layout's values
        (d,) = step_dataset_dicts("ade20k_sem_seg_val", task, 0, "test", verbose=False)
        assert d["image_id"] == "ADE_1"
        got = EIRDatasetMapper(is_train=False, task=task, step=0, augmentations=[])(d)["sem_seg"].numpy()
        np.testing.assert_array_equal(got, raw_task.test_label_lut(0)[raw])
        # by hand: wall (0) -> 1, 5 -> 6, 99 -> 100 seen; 149 and 100 (classes 150, 101) unseen -> 255
        np.testing.assert_array_equal(got[::8, ::8], [[1, 6, 100, 0], [255, 255, 8, 0]])
        for step in (0, 1):
            np.testing.assert_array_equal(task.train_label_lut(step)[d2], raw_task.train_label_lut(step)[raw])
    finally:
        for n in names:
            if n in DatasetCatalog.list():
                DatasetCatalog.remove(n)
                MetadataCatalog.remove(n)
        for n, (loader, meta) in saved.items():
            DatasetCatalog.register(n, loader)
            MetadataCatalog.get(n).set(**meta)


@requires_detectron2
def test_catalog_errors_say_what_to_do(folder_dataset):
    with pytest.raises(ValueError, match="'no_such_dataset' is not registered in Detectron2's DatasetCatalog"):
        catalog_spec("no_such_dataset", "my_dataset_val", background=True)
    from eir.engine.config_checks import load_config

    load_config(EXAMPLE, [])  # registers my_dataset_*
    with pytest.raises(ValueError, match="task.background is not set"):
        catalog_spec("my_dataset_train", "my_dataset_val", background=None)
    MetadataCatalog.remove("my_dataset_val")
    MetadataCatalog.get("my_dataset_val").set(stuff_classes=["sky", "grass"])
    with pytest.raises(ValueError, match="name different classes"):
        catalog_spec("my_dataset_train", "my_dataset_val", background=False)
    # a value outside the classes is named with its file
    MetadataCatalog.remove("my_dataset_val")
    MetadataCatalog.get("my_dataset_val").set(stuff_classes=["sky", "grass", "road"], ignore_label=255)
    task = build_task(catalog_spec("my_dataset_train", "my_dataset_val", background=False), "2-1")
    root, _ = folder_dataset
    bad = root / "my_dataset/labels/val/val_3.png"
    cv2.imwrite(str(bad), np.full((48, 48), 7, np.uint8))
    with pytest.raises(ValueError, match=r"val_3.png holds values \[7\] outside the label values"):
        step_dataset_dicts("my_dataset_val", task, 0, "test", verbose=False)
    os.remove(bad)


TINY = ["dataloader.train.total_batch_size=4", "dataloader.train.augmentations.crop_size=48", "method.memory=4",
        "method.paste.cell_size=24", "method.prepass.short_side=48", "schedule.max_iter=20", "train.device=cpu"]


def _runner(out, *overrides):
    from eir.engine.config_checks import load_config
    from eir.engine.runner import ContinualRunner

    return ContinualRunner(load_config(EXAMPLE, [*TINY, f"train.output_dir={out}", *overrides]))


@requires_detectron2
def test_images_paired_with_labels_of_another_name_are_refused_at_start_up(folder_dataset):
    """A label renamed (train_3.png -> zzz.png) keeps the folders equally long, so load_sem_seg
    pairs them by position: from train_3.jpg on, every image gets the next image's label."""
    root, _ = folder_dataset
    labels = root / "my_dataset/labels/train"
    (labels / "train_3.png").rename(labels / "zzz.png")
    runner = _runner(root / "run")
    with pytest.raises(ValueError, match=r"'my_dataset_train': 7 of its 24 images are paired with a label of "
                                         r"another name, e.g. \S*train_3.jpg with \S*train_4.png; .*eir_stems_differ=True"):
        runner.run()
    assert not (root / "run").exists()
    MetadataCatalog.get("my_dataset_train").set(eir_stems_differ=True)  # pairs of different names on purpose
    assert len(catalog_dicts("my_dataset_train")) == 24


@requires_detectron2
@pytest.mark.parametrize("classes, background, message", [
    (["background", "grass", "road"], "False", r"label value 0 is named 'background'.*The names suggest "
                                                r"task.background=True"),
    (["sky", "grass", "sky"], "False", r"stuff_classes names a class more than once: 'sky' \(values 0, 2\)"),
    (["sky", "grass", "grass"], "True", r"names a class more than once: 'grass' \(values 1, 2\)"),
])
def test_class_names_that_would_collide_are_refused_before_the_folder_is_claimed(
    folder_dataset, classes, background, message
):
    root, _ = folder_dataset
    _runner(root / "run")  # registers the datasets
    for name in ("my_dataset_train", "my_dataset_val"):
        MetadataCatalog.remove(name)
        MetadataCatalog.get(name).set(stuff_classes=classes, ignore_label=255)
    with pytest.raises(ValueError, match=message):
        _runner(root / "run", f"task.background={background}")
    assert not (root / "run").exists()


@requires_detectron2
def test_files_the_dataset_leaves_out_are_reported(folder_dataset, caplog):
    """load_sem_seg keeps the images and labels whose names match when the folders differ in
    length: an image of extension .JPG (image_ext "jpg"), an image without a label and labels
    without an image are left out, counted and named."""
    root, _ = folder_dataset
    images, labels = root / "my_dataset/images/train", root / "my_dataset/labels/train"
    shutil.copy(images / "train_0.jpg", images / "extra.JPG")
    shutil.copy(labels / "train_0.png", labels / "extra.png")
    shutil.copy(images / "train_0.jpg", images / "orphan.jpg")
    for name in ("lone_a.png", "lone_b.png"):
        shutil.copy(labels / "train_0.png", labels / name)
    _runner(root / "run")  # registers the datasets
    with caplog.at_level(logging.WARNING, logger="eir.data.datasets"):
        assert len(catalog_dicts("my_dataset_train")) == 24
    assert f"my_dataset_train leaves out files of {images}: 1 extension differs in case (extra.JPG); 1 images " \
           "without a label (orphan.jpg)" in caplog.text
    assert f"my_dataset_train leaves out files of {labels}: 2 labels without an image (lone_a.png, lone_b.png)" \
           in caplog.text


@requires_detectron2
def test_a_dataset_whose_every_image_is_left_out_says_so(folder_dataset):
    root, _ = folder_dataset
    images = root / "my_dataset/images/val"
    for path in sorted(images.glob("*.jpg")):
        path.rename(path.with_suffix(".JPG"))
    _runner(root / "run")  # registers the datasets
    with pytest.raises(ValueError, match=r"'my_dataset_val' has no image: its loader left out every file:\n"
                                         r"my_dataset_val leaves out files of \S*images/val: 6 extension differs "
                                         r"in case \(val_0.JPG, val_1.JPG, val_2.JPG ...\)"):
        catalog_dicts("my_dataset_val")


@requires_detectron2
@pytest.mark.parametrize("damage, message", [
    ("truncate", r"image \S*val_2.jpg is truncated"),
    ("resize", r"label \S*train_4.png is 48x48 but image \S*train_4.jpg is 40x48"),
])
def test_damaged_images_are_found_before_the_folder_is_claimed(folder_dataset, damage, message):
    """A test image without its end (found after step 0 trained, before) and a training image of
    step 1 of another size than its label (found mid-step) stop the run at start-up."""
    root, _ = folder_dataset
    if damage == "truncate":
        path = root / "my_dataset/images/val/val_2.jpg"
        path.write_bytes(path.read_bytes()[:-2])
    else:
        path = root / "my_dataset/images/train/train_4.jpg"
        cv2.imwrite(str(path), cv2.imread(str(path))[:40])
    with pytest.raises(ValueError, match=message):
        _runner(root / "run").run()
    assert not (root / "run").exists()


@requires_detectron2
def test_header_checks_are_cached_for_the_files_as_they_are(folder_dataset, tmp_path, monkeypatch):
    from eir.data import image_checks

    root, _ = folder_dataset
    task = _runner(root / "run").task  # registers the datasets
    calls = []
    real = image_checks.header_size
    monkeypatch.setattr(image_checks, "header_size", lambda path, what: calls.append(path) or real(path, what))
    cache = tmp_path / "cache"
    step_dataset_dicts("my_dataset_val", task, 0, "test", cache_dir=cache, verbose=False)
    assert len(calls) == 12 and (cache / "headers_my_dataset_val.json").is_file()  # 6 images, 6 labels
    calls.clear()
    step_dataset_dicts("my_dataset_val", task, 0, "test", cache_dir=cache, verbose=False)
    assert calls == []  # a rerun does not pay again
    os.utime(root / "my_dataset/images/val/val_1.jpg", ns=(1, 1))
    step_dataset_dicts("my_dataset_val", task, 0, "test", cache_dir=cache, verbose=False)
    assert sorted(os.path.basename(p) for p in calls) == ["val_1.jpg", "val_1.png"]  # the changed pair only


PAPERS_RULE = "the paper's rule (every class of the image one 4-connected region)"
REGION_RULE = "method.instances={_target_:eir.data.bank_rule.RegionRule,min_area:0.01}"


@requires_detectron2
def test_a_bank_that_would_be_empty_is_a_warning_before_the_folder_is_claimed(two_region_dataset, caplog):
    """Sky and grass come in two pieces in every image: under the paper's rule the bank step 0
    builds for step 1 would be empty, said at start-up with each class's counts; the region
    rule finds them, and says nothing."""
    root, _ = two_region_dataset
    runner = _runner(root / "run")
    with caplog.at_level(logging.WARNING, logger="eir.engine.runner"):
        runner.check_inputs()
    assert not (root / "run").exists()
    (warning,) = [r for r in caplog.records if r.name == "eir.engine.runner"]
    assert warning.levelno == logging.WARNING and "\n" not in warning.getMessage()
    assert warning.getMessage().startswith(
        f"step 0: the bank that step 0 builds for step 1 would be empty: nothing qualifies under {PAPERS_RULE}: "
        "sky (0 of the 24 step-0 training images with it qualify), grass (0 of the 24 step-0 training images "
        "with it qualify); step 1 would run without replay or pasting, i.e. as distillation with pseudo-labels."
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="eir.engine.runner"):
        _runner(root / "run_regions", REGION_RULE).check_inputs()
    assert not [r for r in caplog.records if r.name == "eir.engine.runner"]


@requires_detectron2
@pytest.mark.slow
def test_an_empty_bank_is_recorded_and_the_summary_says_so_first(two_region_dataset, caplog):
    """The run goes on (a warning is not an error); the empty bank is said again when step 0
    builds it, recorded in step 0's metrics.json, and summary.md says first that step 1 trained
    without instances; summary.json holds no bank."""
    root, _ = two_region_dataset
    out = root / "run"
    with caplog.at_level(logging.WARNING, logger="eir.engine.runner"):
        _runner(out, "schedule.max_iter=4").run()
    built = [r.getMessage() for r in caplog.records if "step 0 built for step 1 is empty" in r.getMessage()]
    assert built and built[0].startswith("step 0: the bank that step 0 built for step 1 is empty")
    bank = json.loads((out / "step_0/metrics.json").read_text())["bank"]
    assert bank["entries"] == 0 and bank["budget"] == 4 and bank["serves_step"] == 1
    assert bank["instances"] == {"rule": "one_region"} and bank["storage"] == "instance"
    assert bank["classes"] == {"sky": {"images": 24, "qualifying": 0}, "grass": {"images": 24, "qualifying": 0}}
    assert bank["bank_entries"] == {"sky": 0, "grass": 0}
    assert bank["method"] == "EIR" and bank["without_bank"] == "distillation with pseudo-labels"
    assert bank["warnings"] == [built[0].removeprefix("step 0: ")]
    assert "bank" not in json.loads((out / "step_1/metrics.json").read_text())  # the last step builds none
    assert "bank" not in (out / "summary.json").read_text()
    summary = (out / "summary.md").read_text().splitlines()
    assert summary[2] == (
        "**Step 1 ran without instances: its bank was empty (0 of 4 entries), so EIR trained as distillation "
        "with pseudo-labels.** Its numbers are not EIR's; see the instance bank below."
    )
    assert "| sky | 0 (0 of 24) |" in summary and "| grass | 0 (0 of 24) |" in summary
    assert "| all | 0 of 4 |" in summary and f"instance storage under {PAPERS_RULE}." in "\n".join(summary)


@requires_detectron2
@pytest.mark.slow
def test_a_region_rule_bank_is_recorded_per_class(two_region_dataset):
    root, _ = two_region_dataset
    out = root / "run"
    _runner(out, "schedule.max_iter=4", REGION_RULE).run()
    bank = json.loads((out / "step_0/metrics.json").read_text())["bank"]
    assert bank["instances"] == {"rule": "largest_region", "min_area": 0.01}
    assert bank["classes"] == {"sky": {"images": 24, "qualifying": 24}, "grass": {"images": 24, "qualifying": 24}}
    assert bank["bank_entries"] == {"sky": 2, "grass": 2} and bank["entries"] == 4 and bank["warnings"] == []
    summary = (out / "summary.md").read_text()
    assert "without instances" not in summary
    assert "| sky | 2 (24 of 24) |" in summary and "| all | 4 of 4 |" in summary


@requires_detectron2
@pytest.mark.slow
def test_start_up_warnings_reach_the_console_and_the_run_s_log(two_region_dataset):
    """The checks before the folder is claimed warn before log.txt exists: tools/train_net.py
    prints them and then writes them to log.txt, once each."""
    import subprocess
    import sys

    root, _ = two_region_dataset
    shutil.copy(root / "my_dataset/images/train/train_0.jpg", root / "my_dataset/images/train/orphan.jpg")
    out = root / "run"
    cmd = [sys.executable, str(Path(__file__).resolve().parents[1] / "tools/train_net.py"), "--config-file",
           str(EXAMPLE), "dataloader.train.total_batch_size=4", "dataloader.train.augmentations.crop_size=48",
           "method.memory=4", "method.paste.cell_size=24", "method.prepass.short_side=48", "schedule.max_iter=2",
           "train.device=cpu", "train.step=0", f"train.output_dir={out}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, DETECTRON2_DATASETS=str(root), OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    left_out = "my_dataset_train leaves out files of"
    empty_bank = "step 0: the bank that step 0 builds for step 1 would be empty"
    console = proc.stdout + proc.stderr
    assert console.count(left_out) == 1 and console.count(empty_bank) >= 1
    log = (out / "log.txt").read_text()
    assert log.count(left_out) == 1 and log.count(empty_bank) == 1
    # in the log's format, before the run's first line
    (line,) = [x for x in log.splitlines() if left_out in x]
    assert " eir.data.datasets WARNING: " in line and log.index(left_out) < log.index("Continual run of")
