"""Dataset registration, class presence and per-step views (Detectron2 layer)."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import DETECTRON2_SKIP_REASON

pytest.importorskip("detectron2", reason=DETECTRON2_SKIP_REASON)

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402

from eir.data import datasets as D  # noqa: E402
from eir.data.io import read_label  # noqa: E402
from eir.data.synthetic import generate  # noqa: E402
from eir.tasks import DATASETS, build_task  # noqa: E402

SYNTHETIC = DATASETS["synthetic"]

# Hand-made VOC labels: the classes of each image (besides 0 and a 255 border).
VOC_CLASSES = {
    "a": [1, 2],
    "b": [16],
    "c": [15, 16],
    "d": [16, 17],
    "e": [17],
    "f": [],
}


def _label(classes, h=8, w=12):
    label = np.zeros((h, w), np.uint8)
    label[0, :] = 255
    for k, c in enumerate(classes):
        label[2 + 2 * k : 4 + 2 * k, 1 + 3 * k : 4 + 3 * k] = c
    return label


def _palette_png(path, label):
    from PIL import Image

    im = Image.fromarray(label, mode="P")
    palette = np.zeros((256, 3), np.uint8)
    palette[:21] = np.array(DATASETS["voc"].colors, np.uint8)
    palette[255] = (224, 224, 192)
    im.putpalette(palette.ravel().tolist())
    im.save(path)


def make_voc(root: Path, devkit: bool = False, classes=VOC_CLASSES) -> Path:
    base = root / "VOCdevkit" / "VOC2012" if devkit else root / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClassAug", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for image_id, cls in classes.items():
        label = _label(cls)
        cv2.imwrite(str(base / "JPEGImages" / f"{image_id}.jpg"), np.full((8, 12, 3), 90, np.uint8))
        cv2.imwrite(str(base / "SegmentationClassAug" / f"{image_id}.png"), label)
        _palette_png(base / "SegmentationClass" / f"{image_id}.png", label)  # VOC val: palette PNGs
    ids = "".join(f"{i}\n" for i in classes)
    (base / "ImageSets" / "Segmentation" / "train_aug.txt").write_text(ids)
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text(ids)
    return base


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("d2data")
    generate(root / "eir_synthetic", num_train=24, num_val=8, size=64, seed=3, verbose=False)
    return root


@pytest.fixture(autouse=True)
def _forget_registration():
    yield
    for name in D.DATASET_NAMES:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
    D._registered_root.clear()


def test_register_synthetic(synthetic_root):
    names = D.register_eir_datasets(synthetic_root)
    assert set(names) == {f"eir_{d}_{s}" for d in ("voc", "ade", "synthetic") for s in ("train", "val")}
    train = DatasetCatalog.get("eir_synthetic_train")
    val = DatasetCatalog.get("eir_synthetic_val")
    assert len(train) == 24 and len(val) == 8
    listed = (synthetic_root / "eir_synthetic/ImageSets/Segmentation/train_aug.txt").read_text().split()
    assert [d["image_id"] for d in train] == listed
    for d in train + val:
        assert set(d) == {"file_name", "sem_seg_file_name", "image_id"}
        assert Path(d["file_name"]).is_file() and Path(d["sem_seg_file_name"]).is_file()
        assert Path(d["file_name"]).stem == d["image_id"] == Path(d["sem_seg_file_name"]).stem
    meta = MetadataCatalog.get("eir_synthetic_train")
    assert meta.stuff_classes == list(DATASETS["synthetic"].class_names)
    assert len(meta.stuff_colors) == 11 and meta.stuff_colors[0] == [0, 0, 0]
    assert meta.ignore_label == 255 and meta.evaluator_type == "eir_sem_seg"
    assert meta.eir_dataset == "synthetic"
    assert meta.image_root == str(synthetic_root / "eir_synthetic" / "JPEGImages")
    assert meta.sem_seg_root == str(synthetic_root / "eir_synthetic" / "SegmentationClassAug")
    assert MetadataCatalog.get("eir_ade_val").stuff_classes[0] == "other"
    assert len(MetadataCatalog.get("eir_ade_val").stuff_classes) == 151


def test_register_is_idempotent_and_follows_root(synthetic_root, tmp_path, monkeypatch):
    D.register_eir_datasets(synthetic_root)
    loader = DatasetCatalog["eir_voc_train"]
    D.register_eir_datasets(synthetic_root)
    assert DatasetCatalog["eir_voc_train"] is loader  # same root: nothing redone
    D.register_eir_datasets(tmp_path)
    assert DatasetCatalog["eir_voc_train"] is not loader
    assert MetadataCatalog.get("eir_voc_train").image_root == str(tmp_path / "VOC2012" / "JPEGImages")
    # root defaults to DETECTRON2_DATASETS
    monkeypatch.setenv("DETECTRON2_DATASETS", str(synthetic_root))
    D.register_eir_datasets()
    assert len(DatasetCatalog.get("eir_synthetic_val")) == 8


def test_synthetic_generated_on_first_use(tmp_path, monkeypatch):
    from eir.data import synthetic

    calls = []

    def small(root, **kwargs):  # the real call uses the default arguments (5,000 images)
        calls.append((Path(root), kwargs))
        return generate(root, num_train=4, num_val=2, size=48, verbose=False)

    monkeypatch.setattr(synthetic, "ensure_synthetic", small)
    D.register_eir_datasets(tmp_path)
    assert not (tmp_path / "eir_synthetic").exists()  # registering reads nothing
    assert len(DatasetCatalog.get("eir_synthetic_train")) == 4
    # the dataset's own defaults, rendered by worker processes (the files do not depend on their number)
    assert [path for path, _ in calls] == [tmp_path / "eir_synthetic"]
    assert set(calls[0][1]) == {"num_workers"} and calls[0][1]["num_workers"] >= 1
    assert len(DatasetCatalog.get("eir_synthetic_val")) == 2
    assert len(calls) == 1  # present now: not generated again


def test_synthetic_of_an_older_format_is_refused_not_replaced(tmp_path):
    """A dataset written by an older generator is left as it is (a run may have trained on it)."""
    from eir.data import synthetic

    base = tmp_path / "eir_synthetic"
    generate(base, num_train=4, num_val=2, size=48, verbose=False)
    meta = json.loads((base / "meta.json").read_text())
    (base / "meta.json").write_text(json.dumps({**meta, "format_version": synthetic.FORMAT_VERSION - 1}))
    D.register_eir_datasets(tmp_path)
    with pytest.raises(ValueError, match="earlier version of this generator"):
        DatasetCatalog.get("eir_synthetic_train")
    assert len(list((base / "JPEGImages").iterdir())) == 6


@pytest.mark.parametrize("devkit", [False, True])
def test_voc_layouts(tmp_path, devkit):
    base = make_voc(tmp_path, devkit=devkit)
    D.register_eir_datasets(tmp_path)
    train = DatasetCatalog.get("eir_voc_train")
    val = DatasetCatalog.get("eir_voc_val")
    assert [d["image_id"] for d in train] == list(VOC_CLASSES)
    assert train[0]["file_name"] == str(base / "JPEGImages" / "a.jpg")
    assert train[0]["sem_seg_file_name"] == str(base / "SegmentationClassAug" / "a.png")
    assert val[0]["sem_seg_file_name"] == str(base / "SegmentationClass" / "a.png")
    # the palette PNG reads as class ids, not colours
    np.testing.assert_array_equal(read_label(val[2]["sem_seg_file_name"]), _label([15, 16]))
    assert MetadataCatalog.get("eir_voc_val").sem_seg_root == str(base / "SegmentationClass")


def test_voc_list_with_path_pairs(tmp_path):
    base = make_voc(tmp_path)
    (base / "ImageSets/Segmentation/train_aug.txt").write_text(
        "/JPEGImages/b.jpg /SegmentationClassAug/b.png\n/JPEGImages/c.jpg /SegmentationClassAug/c.png\n"
    )
    D.register_eir_datasets(tmp_path)
    assert [d["image_id"] for d in DatasetCatalog.get("eir_voc_train")] == ["b", "c"]


def test_ade_layout(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    for split in ("training", "validation"):
        (base / "images" / split).mkdir(parents=True)
        (base / "annotations" / split).mkdir(parents=True)
    for stem in ("ADE_train_00000002", "ADE_train_00000001"):
        cv2.imwrite(str(base / "images/training" / f"{stem}.jpg"), np.zeros((4, 4, 3), np.uint8))
        cv2.imwrite(str(base / "annotations/training" / f"{stem}.png"), np.full((4, 4), 150, np.uint8))
    D.register_eir_datasets(tmp_path)
    train = DatasetCatalog.get("eir_ade_train")
    assert [d["image_id"] for d in train] == ["ADE_train_00000001", "ADE_train_00000002"]
    assert train[0]["sem_seg_file_name"] == str(base / "annotations/training/ADE_train_00000001.png")
    with pytest.raises(FileNotFoundError, match="images"):
        DatasetCatalog.get("eir_ade_val")  # folders exist but hold no image
    (base / "annotations/training/ADE_train_00000002.png").unlink()
    with pytest.raises(FileNotFoundError, match="ADE_train_00000002.png"):
        DatasetCatalog.get("eir_ade_train")


def test_missing_paths_name_the_expected_layout(tmp_path):
    D.register_eir_datasets(tmp_path)  # registering an empty root works: files are read lazily
    with pytest.raises(FileNotFoundError) as e:
        DatasetCatalog.get("eir_voc_train")
    text = str(e.value)
    assert str(tmp_path / "VOC2012" / "JPEGImages") in text
    assert "VOCdevkit/VOC2012" in text and "README" in text and "DETECTRON2_DATASETS" in text
    with pytest.raises(FileNotFoundError, match=r"ADEChallengeData2016/images/validation.*README"):
        DatasetCatalog.get("eir_ade_val")
    base = make_voc(tmp_path)
    (base / "SegmentationClassAug" / "c.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 label file\(s\).*SegmentationClassAug/c.png"):
        DatasetCatalog.get("eir_voc_train")
    (base / "ImageSets/Segmentation/val.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"image list not found at .*val.txt"):
        DatasetCatalog.get("eir_voc_val")


def test_class_presence_matches_np_unique(synthetic_root):
    D.register_eir_datasets(synthetic_root)
    dicts = DatasetCatalog.get("eir_synthetic_train") + DatasetCatalog.get("eir_synthetic_val")
    table = D.class_presence(dicts, SYNTHETIC, verbose=False)
    assert table.shape == (32, 11) and table.dtype == bool
    for row, d in zip(table, dicts):
        values = np.unique(cv2.imread(d["sem_seg_file_name"], cv2.IMREAD_UNCHANGED))
        expected = np.zeros(11, bool)
        expected[values[values <= 10]] = True
        np.testing.assert_array_equal(row, expected)
    assert table[:, 1:].any(axis=1).all()  # every synthetic image has an object
    np.testing.assert_array_equal(D.class_presence(dicts, SYNTHETIC, num_workers=3, verbose=False), table)


def test_class_presence_cache_reused_and_invalidated(synthetic_root, tmp_path, monkeypatch):
    D.register_eir_datasets(synthetic_root)
    dicts = DatasetCatalog.get("eir_synthetic_train")
    cache = tmp_path / "out" / "presence.npz"
    reads = []
    real = D._presence_row
    monkeypatch.setattr(D, "_presence_row", lambda p, n: reads.append(p) or real(p, n))
    first = D.class_presence(dicts, SYNTHETIC, cache_file=cache, verbose=False)
    assert cache.is_file() and len(reads) == 24
    again = D.class_presence(dicts, SYNTHETIC, cache_file=cache, verbose=False)
    assert len(reads) == 24  # reused: no label read
    np.testing.assert_array_equal(again, first)
    # another file list (fewer images) does not match the key: recomputed and rewritten
    part = D.class_presence(dicts[:5], SYNTHETIC, cache_file=cache, verbose=False)
    assert len(reads) == 29
    np.testing.assert_array_equal(part, first[:5])
    D.class_presence(dicts[:5], SYNTHETIC, cache_file=cache, verbose=False)
    assert len(reads) == 29
    # a corrupt cache is recomputed, not trusted
    cache.write_bytes(b"garbage")
    np.testing.assert_array_equal(D.class_presence(dicts[:5], SYNTHETIC, cache_file=cache, verbose=False), part)
    assert len(reads) == 34


def test_bad_label_values_raise(tmp_path):
    base = make_voc(tmp_path)
    bad = _label([3])
    bad[5, 5] = 21
    bad[6, 6] = 99
    cv2.imwrite(str(base / "SegmentationClassAug" / "d.png"), bad)
    D.register_eir_datasets(tmp_path)
    with pytest.raises(ValueError, match=r"SegmentationClassAug/d.png holds values \[21, 99\]"):
        D.class_presence(DatasetCatalog.get("eir_voc_train"), DATASETS["voc"], verbose=False)
    with pytest.raises(ValueError, match=r"d.png holds values \[21, 99\]"):
        D.class_presence(DatasetCatalog.get("eir_voc_train"), DATASETS["voc"], num_workers=2, verbose=False)


@pytest.mark.parametrize(
    "setting, step, split, expected",
    [
        ("overlap", 0, "train", "ac"),
        ("disjoint", 0, "train", "a"),
        ("overlap", 1, "train", "bcd"),
        ("disjoint", 1, "train", "bc"),
        ("overlap", 2, "train", "de"),
        ("disjoint", 2, "train", "de"),
        ("overlap", 3, "train", ""),
        ("overlap", 0, "test", "ac"),
        ("disjoint", 0, "test", "ac"),
        ("overlap", 1, "test", "abcd"),
        ("overlap", 2, "test", "abcde"),
        ("overlap", 5, "test", "abcde"),
    ],
)
def test_step_views(tmp_path, setting, step, split, expected):
    make_voc(tmp_path)
    D.register_eir_datasets(tmp_path)
    task = build_task("voc", "15-1", setting)
    name = "eir_voc_train" if split == "train" else "eir_voc_val"
    out = D.step_dataset_dicts(name, task, step, split, cache_dir=tmp_path / "cache", verbose=False)
    assert "".join(d["image_id"] for d in out) == expected
    assert all(d["eir_step"] == step for d in out)
    assert (tmp_path / "cache" / f"presence_{name}.npz").is_file()
    assert all("eir_step" not in d for d in DatasetCatalog.get(name))  # catalog dicts untouched


def test_step_views_check_arguments(tmp_path):
    make_voc(tmp_path)
    D.register_eir_datasets(tmp_path)
    task = build_task("voc", "15-1")
    with pytest.raises(ValueError, match="split"):
        D.step_dataset_dicts("eir_voc_train", task, 0, "val", verbose=False)
    with pytest.raises(ValueError, match="out of range"):
        D.step_dataset_dicts("eir_voc_train", task, 6, "train", verbose=False)
    with pytest.raises(ValueError, match=r"dataset eir_voc_train names other classes \(21 stuff_classes\) than the task synthetic"):
        D.step_dataset_dicts("eir_voc_train", build_task("synthetic", "5-5"), 0, "train", verbose=False)
    # the task may come as its dict (e.g. from a manifest)
    out = D.step_dataset_dicts("eir_voc_train", task.to_dict(), 1, "train", verbose=False)
    assert [d["image_id"] for d in out] == ["b", "c", "d"]


def test_replay_dataset_dicts():
    class Bank:
        def __len__(self):
            return 3

    assert D.replay_dataset_dicts(Bank()) == [
        {"bank_index": 0, "image_id": "bank_0"},
        {"bank_index": 1, "image_id": "bank_1"},
        {"bank_index": 2, "image_id": "bank_2"},
    ]
    assert D.replay_dataset_dicts(None) == []
