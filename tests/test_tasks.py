"""Tests of eir.tasks against the protocol table of METHOD.md section 2, written out by hand."""
import json
import pickle

import numpy as np
import pytest

from eir.tasks import (
    DATASETS,
    VOC_CLASSES,
    DatasetSpec,
    Task,
    build_task,
    get_dataset,
    voc_colormap,
)


def r(a, b):
    """Class ids a..b inclusive."""
    return list(range(a, b + 1))


# Section 2's table, every step spelled out independently of the implementation.
EXPECTED_STEPS = {
    ("voc", "19-1"): [r(1, 19), [20]],
    ("voc", "15-5"): [r(1, 15), r(16, 20)],
    ("voc", "15-1"): [r(1, 15), [16], [17], [18], [19], [20]],
    ("voc", "10-1"): [r(1, 10), [11], [12], [13], [14], [15], [16], [17], [18], [19], [20]],
    ("voc", "5-3"): [r(1, 5), r(6, 8), r(9, 11), r(12, 14), r(15, 17), r(18, 20)],
    ("voc", "2-2"): [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [11, 12], [13, 14], [15, 16],
                     [17, 18], [19, 20]],
    ("voc", "10-5"): [r(1, 10), r(11, 15), r(16, 20)],
    ("voc", "10-10"): [r(1, 10), r(11, 20)],
    ("voc", "joint"): [r(1, 20)],
    ("ade", "100-50"): [r(1, 100), r(101, 150)],
    ("ade", "100-10"): [r(1, 100), r(101, 110), r(111, 120), r(121, 130), r(131, 140),
                        r(141, 150)],
    ("ade", "100-5"): [r(1, 100), r(101, 105), r(106, 110), r(111, 115), r(116, 120),
                       r(121, 125), r(126, 130), r(131, 135), r(136, 140), r(141, 145),
                       r(146, 150)],
    ("ade", "50-50"): [r(1, 50), r(51, 100), r(101, 150)],
    ("ade", "joint"): [r(1, 150)],
}  # fmt: skip


@pytest.mark.parametrize(("dataset", "name"), sorted(EXPECTED_STEPS))
def test_named_task_steps_match_section_2(dataset, name):
    task = build_task(dataset, name)
    expected = EXPECTED_STEPS[(dataset, name)]
    assert task.steps == expected
    assert task.num_steps == len(expected)
    assert task.dataset == dataset and task.name == name and task.setting == "overlap"
    assert task.num_classes == (20 if dataset == "voc" else 150)
    # Every class is learned exactly once.
    assert sorted(c for s in task.steps for c in s) == r(1, task.num_classes)


def test_step_counts_quoted_in_the_spec():
    assert build_task("voc", "2-2").num_steps == 10
    assert build_task("voc", "10-1").num_steps == 11
    assert build_task("ade", "100-5").num_steps == 11
    assert build_task("ade", "100-10").num_steps == 6
    assert build_task("ade", "50-50").num_steps == 3


def test_every_named_task_of_each_dataset_builds():
    for spec in DATASETS.values():
        for name in spec.named_tasks:
            assert build_task(spec.name, name).name == name


def test_dataset_specs():
    voc, ade, syn = DATASETS["voc"], DATASETS["ade"], DATASETS["synthetic"]
    assert voc.num_classes == 20 and ade.num_classes == 150 and syn.num_classes == 10
    assert voc.class_names[0] == "background" and syn.class_names[0] == "background"
    assert ade.class_names[0] == "other"
    assert voc.class_names[1] == "aeroplane" and voc.class_names[20] == "tvmonitor"
    assert voc.class_names[15] == "person" and voc.class_names[11] == "diningtable"
    # objectInfo150 order, spot checks at both ends and in the middle.
    assert ade.class_names[1:4] == ("wall", "building", "sky")
    assert ade.class_names[13] == "person" and ade.class_names[45] == "chest of drawers"
    assert ade.class_names[100] == "buffet" and ade.class_names[101] == "poster"
    assert ade.class_names[148:] == ("glass", "clock", "flag")
    assert len(set(ade.class_names)) == 151
    assert syn.class_names == ("background", "disc", "square", "triangle", "ring", "cross",
                               "star", "hexagon", "crescent", "bar", "diamond")
    assert voc.unseen_test_label == 0 and syn.unseen_test_label == 0
    assert ade.unseen_test_label == 255
    for spec in (voc, ade, syn):
        assert len(spec.colors) == spec.num_classes + 1
        assert len(set(spec.colors)) == len(spec.colors), "colours must be distinct"
        assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in spec.colors)
    assert DATASETS["ade"].colors == DATASETS["ade"].colors  # deterministic module constant


def test_voc_colormap_known_values():
    # Pascal VOC's published palette for the first ids.
    cmap = voc_colormap(21)
    assert cmap[0] == (0, 0, 0)
    assert cmap[1] == (128, 0, 0)
    assert cmap[2] == (0, 128, 0)
    assert cmap[3] == (128, 128, 0)
    assert cmap[7] == (128, 128, 128)
    assert cmap[8] == (64, 0, 0)
    assert cmap[15] == (192, 128, 128)
    assert cmap[20] == (0, 64, 128)
    assert DATASETS["voc"].colors == cmap
    assert voc_colormap(256)[255] == (224, 224, 192)


def test_dataset_aliases_and_case():
    assert get_dataset("ADE20K") is DATASETS["ade"]
    task = build_task("VOC", " 15-1 ", setting="Disjoint")
    assert (task.dataset, task.name, task.setting) == ("voc", "15-1", "disjoint")


def test_new_old_seen_voc_15_1():
    task = build_task("voc", "15-1")
    assert task.new_classes(0) == r(1, 15)
    assert task.old_classes(0) == []
    assert task.seen_classes(0) == r(1, 15)
    assert task.new_classes(1) == [16]
    assert task.old_classes(1) == r(1, 15)
    assert task.seen_classes(1) == r(1, 16)
    assert task.new_classes(3) == [18]
    assert task.old_classes(3) == r(1, 17)
    assert task.seen_classes(3) == r(1, 18)
    assert task.new_classes(5) == [20]
    assert task.old_classes(5) == r(1, 19)
    assert task.seen_classes(5) == r(1, 20)
    assert task.step_sizes(0) == [15]
    assert task.step_sizes(3) == [15, 1, 1, 1]
    assert task.channel_classes(2) == [0] + r(1, 17)
    assert task.num_channels(0) == 16
    assert task.num_channels(5) == 21


def test_new_old_seen_ade_100_10_and_voc_5_3():
    task = build_task("ade", "100-10")
    assert task.new_classes(2) == r(111, 120)
    assert task.old_classes(2) == r(1, 110)
    assert task.seen_classes(2) == r(1, 120)
    assert task.step_sizes(5) == [100, 10, 10, 10, 10, 10]
    assert task.num_channels(5) == 151
    voc = build_task("voc", "5-3")
    assert voc.new_classes(4) == [15, 16, 17]
    assert voc.old_classes(4) == r(1, 14)
    assert voc.step_sizes(2) == [5, 3, 3]
    assert voc.num_channels(2) == 12


def test_channels_with_reversed_order():
    order = list(range(20, 0, -1))
    task = build_task("voc", "15-1", order=order)
    assert task.steps == [r(6, 20)[::-1], [5], [4], [3], [2], [1]]
    assert task.order == tuple(order)
    # Channel k holds the k-th class of the order: channel 1 = class 20, ..., 15 = class 6.
    assert task.channel_classes(0) == [0, 20, 19, 18, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6]
    assert task.channel_of(0, 0) == 0
    assert task.channel_of(20, 0) == 1
    assert task.channel_of(6, 0) == 15
    assert task.channel_of(5, 1) == 16
    assert task.channel_of(1, 5) == 20
    assert task.channel_of(20, 5) == 1
    with pytest.raises(ValueError, match="learned at step 1"):
        task.channel_of(5, 0)
    with pytest.raises(ValueError, match="not a class"):
        task.channel_of(21, 5)
    lut = task.class_to_channel_lut(1)
    assert lut.dtype == np.int64 and lut.shape == (256,)
    expected = np.zeros(256, dtype=np.int64)
    for channel, class_id in enumerate([0, 20, 19, 18, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7,
                                        6, 5]):
        expected[class_id] = channel
    expected[255] = 255
    np.testing.assert_array_equal(lut, expected)
    assert lut[4] == 0  # unseen at step 1


def test_channels_with_shuffled_order_synthetic():
    order = [3, 7, 1, 10, 5, 2, 9, 4, 8, 6]
    task = build_task("synthetic", "4-2", order=order)
    assert task.steps == [[3, 7, 1, 10], [5, 2], [9, 4], [8, 6]]
    assert task.seen_classes(1) == [3, 7, 1, 10, 5, 2]
    assert task.old_classes(2) == [3, 7, 1, 10, 5, 2]
    for t in range(task.num_steps):
        lut = task.class_to_channel_lut(t)
        for channel, class_id in enumerate(task.channel_classes(t)):
            assert task.channel_of(class_id, t) == channel
            assert lut[class_id] == channel
    assert task.channel_of(10, 0) == 4
    assert task.channel_of(6, 3) == 10
    # Training LUT keeps the step's classes, whatever their position in the order.
    lut = task.train_label_lut(1)
    assert lut[5] == 5 and lut[2] == 2 and lut[3] == 0 and lut[9] == 0


def ref_train(task_steps, t, value):
    """Section 2's training-label rule, written with no NumPy."""
    if value == 255:
        return 255
    if value in task_steps[t]:
        return value
    return 0


def ref_test(task_steps, t, value, num_classes, unseen_label):
    """Section 2's test-label rule; ids that are no dataset class are ignored."""
    if value == 255 or value == 0:
        return value
    if not 1 <= value <= num_classes:
        return 255
    seen = [c for s in task_steps[: t + 1] for c in s]
    return value if value in seen else unseen_label


@pytest.mark.parametrize(
    ("dataset", "name", "order"),
    [
        ("voc", "15-1", None),
        ("voc", "5-3", list(range(20, 0, -1))),
        ("ade", "100-10", None),
        ("ade", "50-50", [*range(150, 100, -1), *range(1, 101)]),
        ("synthetic", "4-2", [3, 7, 1, 10, 5, 2, 9, 4, 8, 6]),
    ],
)
def test_label_luts_match_plain_python_rules(dataset, name, order):
    task = build_task(dataset, name, order=order)
    if order is None:
        steps = EXPECTED_STEPS[(dataset, name)]
    else:
        b, i = (int(x) for x in name.split("-"))
        steps = [order[:b]] + [order[s: s + i] for s in range(b, len(order), i)]
    assert task.steps == steps
    unseen = 0 if dataset in ("voc", "synthetic") else 255
    for t in sorted({0, 1, task.num_steps // 2, task.num_steps - 1}):
        train, test = task.train_label_lut(t), task.test_label_lut(t)
        assert train.dtype == np.uint8 and train.shape == (256,)
        assert test.dtype == np.uint8 and test.shape == (256,)
        for v in range(256):
            assert train[v] == ref_train(steps, t, v), (t, v)
            assert test[v] == ref_test(steps, t, v, task.num_classes, unseen), (t, v)


def test_label_luts_hand_cases():
    voc = build_task("voc", "15-1")
    label = np.array([[0, 3, 16], [17, 255, 20]], dtype=np.uint8)
    np.testing.assert_array_equal(voc.train_label_lut(0)[label], [[0, 3, 0], [0, 255, 0]])
    np.testing.assert_array_equal(voc.train_label_lut(2)[label], [[0, 0, 0], [17, 255, 0]])
    np.testing.assert_array_equal(voc.test_label_lut(1)[label], [[0, 3, 16], [0, 255, 0]])
    np.testing.assert_array_equal(voc.test_label_lut(5)[label], label)
    ade = build_task("ade", "100-50")
    label = np.array([[0, 99, 101, 150, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(ade.test_label_lut(0)[label], [[0, 99, 255, 255, 255]])
    np.testing.assert_array_equal(ade.test_label_lut(1)[label], label)
    np.testing.assert_array_equal(ade.train_label_lut(1)[label], [[0, 0, 101, 150, 255]])


def test_keeps_train_image_overlap_vs_disjoint():
    overlap = build_task("voc", "15-5", setting="overlap")
    disjoint = build_task("voc", "15-5", setting="disjoint")
    cases = [
        # (present classes, step, overlap keeps, disjoint keeps)
        ([0, 3], 0, True, True),
        ([0, 3, 17], 0, True, False),  # a class of a later step: dropped in disjoint
        ([3, 255], 0, True, True),
        ([0, 255], 0, False, False),  # background and ignore only
        ([], 0, False, False),
        ([17], 0, False, False),
        ([0, 3, 17], 1, True, True),  # old classes are fine in disjoint
        ([0, 3], 1, False, False),  # no class of C_1
        ([16, 20, 255], 1, True, True),
        ([0, 255, 18], 1, True, True),
    ]
    for present, t, keep_o, keep_d in cases:
        assert overlap.keeps_train_image(present, t) is keep_o, (present, t)
        assert disjoint.keeps_train_image(present, t) is keep_d, (present, t)

    task = build_task("voc", "15-1", setting="disjoint")
    assert task.keeps_train_image([16, 17], 1) is False  # 17 belongs to step 2
    assert task.keeps_train_image([16, 17], 2) is True
    assert build_task("voc", "15-1").keeps_train_image([16, 17], 1) is True
    # numpy input (e.g. np.unique of a label) and sets work the same way.
    label = np.array([[0, 16], [255, 2]], dtype=np.uint8)
    assert task.keeps_train_image(np.unique(label), 1) is True
    assert task.keeps_train_image({0, 255, 2}, 1) is False
    assert task.keeps_train_image(np.array([0, 255, 16, 19], dtype=np.uint8), 1) is False


def test_keeps_train_image_with_order():
    task = build_task("voc", "15-1", setting="disjoint", order=list(range(20, 0, -1)))
    assert task.keeps_train_image([20], 0) is True
    assert task.keeps_train_image([20, 1], 0) is False  # class 1 is learned last
    assert task.keeps_train_image([5, 20], 1) is True
    assert task.keeps_train_image([5, 4], 1) is False


def test_keeps_test_image():
    task = build_task("voc", "15-1")
    assert task.keeps_test_image([0, 3], 0) is True
    assert task.keeps_test_image([0, 16, 255], 0) is False
    assert task.keeps_test_image([0, 16, 255], 1) is True
    assert task.keeps_test_image([0, 255], 5) is False


@pytest.mark.parametrize(
    ("dataset", "name", "expected"),
    [
        ("voc", "4-4", [r(1, 4), r(5, 8), r(9, 12), r(13, 16), r(17, 20)]),
        ("voc", "18-2", [r(1, 18), [19, 20]]),
        ("voc", "1-19", [[1], r(2, 20)]),
        ("synthetic", "6-1", [r(1, 6), [7], [8], [9], [10]]),
        ("synthetic", "4-2", [r(1, 4), [5, 6], [7, 8], [9, 10]]),
        ("synthetic", "2-2", [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10]]),
        ("synthetic", "5-5", [r(1, 5), r(6, 10)]),
        ("synthetic", "joint", [r(1, 10)]),
        ("ade", "120-6", [r(1, 120), r(121, 126), r(127, 132), r(133, 138), r(139, 144),
                          r(145, 150)]),
    ],
)
def test_generic_b_i_names(dataset, name, expected):
    assert build_task(dataset, name).steps == expected


def test_name_canonicalised():
    assert build_task("voc", "05-01").name == "5-1"
    assert build_task("voc", "JOINT").name == "joint"


def test_to_dict_round_trip():
    order = [3, 7, 1, 10, 5, 2, 9, 4, 8, 6]
    for task in (
        build_task("voc", "15-1"),
        build_task("ade", "100-5", setting="disjoint"),
        build_task("synthetic", "4-2", order=order),
    ):
        d = task.to_dict()
        assert set(d) == {"dataset", "name", "setting", "order"}
        d2 = json.loads(json.dumps(d))
        assert Task.from_dict(d2) == task
        assert build_task(**d2) == task
        assert Task.from_dict(d2).steps == task.steps
    assert build_task("synthetic", "4-2", order=order).to_dict() == {
        "dataset": "synthetic", "name": "4-2", "setting": "overlap", "order": order,
    }
    # Tasks that differ in any field are different (a checkpoint check relies on it).
    base = build_task("voc", "15-1")
    assert base == build_task("voc", "15-1", order=r(1, 20))
    assert base != build_task("voc", "15-5")
    assert base != build_task("voc", "15-1", setting="disjoint")
    assert base != build_task("voc", "15-1", order=[2, 1] + r(3, 20))
    assert hash(base) == hash(build_task("voc", "15-1"))
    assert pickle.loads(pickle.dumps(base)) == base


def test_from_dict_rejects_bad_keys():
    with pytest.raises(ValueError, match="unknown keys.*step"):
        Task.from_dict({"dataset": "voc", "name": "15-1", "step": 2})
    with pytest.raises(ValueError, match="missing keys.*name"):
        Task.from_dict({"dataset": "voc"})


def test_immutable():
    task = build_task("voc", "15-1")
    steps = task.steps
    steps[0].append(99)
    steps.append([21])
    assert task.steps == EXPECTED_STEPS[("voc", "15-1")]
    new = task.new_classes(1)
    new.append(3)
    assert task.new_classes(1) == [16]
    lut = task.train_label_lut(1)
    lut[3] = 3
    assert task.train_label_lut(1)[3] == 0
    with pytest.raises(AttributeError):
        task.name = "15-5"


def test_describe_and_repr():
    task = build_task("voc", "15-1")
    assert task.describe() == "voc 15-1 overlap: 6 steps: 1-15 | 16 | 17 | 18 | 19 | 20"
    assert repr(task) == "Task(voc 15-1 overlap: 6 steps: 1-15 | 16 | 17 | 18 | 19 | 20)"
    text = build_task("voc", "19-1").describe(names=True)
    assert "step 1 (1): tvmonitor" in text
    assert "step 0 (19): aeroplane, bicycle" in text
    custom = build_task("synthetic", "8-2", order=[2, 1, 3, 4, 5, 6, 7, 8, 10, 9], setting="disjoint")
    assert custom.describe() == "synthetic 8-2 disjoint (custom order): 2 steps: 2,1,3-8 | 10,9"
    assert build_task("ade", "joint").describe() == "ade joint overlap: 1 step: 1-150"


def test_unknown_dataset():
    with pytest.raises(ValueError, match=r"unknown dataset 'coco'.*known datasets: ade, synthetic, voc"):
        build_task("coco", "15-1")


@pytest.mark.parametrize("name", ["abc", "15_1", "15-", "-1", "15-1-1", "", "joint2"])
def test_malformed_name(name):
    with pytest.raises(ValueError, match=r"unknown task name.*'joint'.*'B-I'"):
        build_task("voc", name)


def test_malformed_name_lists_named_tasks():
    with pytest.raises(ValueError, match="19-1, 15-5, 15-1, 10-1, 5-3, 2-2, 10-5, 10-10, joint"):
        build_task("voc", "fifteen-one")
    with pytest.raises(ValueError, match="task name must be a string"):
        build_task("voc", 15)


def test_name_not_covering_classes():
    with pytest.raises(ValueError, match=r"'15-4'.*5 classes remain.*not a multiple of 4.*\[1, 5\]"):
        build_task("voc", "15-4")
    with pytest.raises(ValueError, match="not a multiple of 3"):
        build_task("ade", "100-3")
    with pytest.raises(ValueError, match=r"B must be below 20.*'joint'"):
        build_task("voc", "20-1")
    with pytest.raises(ValueError, match="B must be below 10"):
        build_task("synthetic", "12-1")
    with pytest.raises(ValueError, match="B >= 1"):
        build_task("voc", "0-5")
    with pytest.raises(ValueError, match="I >= 1"):
        build_task("voc", "15-0")


def test_bad_order():
    with pytest.raises(ValueError, match=r"permutation.*missing \[20\]"):
        build_task("voc", "15-1", order=r(1, 19))
    with pytest.raises(ValueError, match=r"duplicated \[3\]"):
        build_task("voc", "15-1", order=[3] + r(1, 19))
    with pytest.raises(ValueError, match=r"missing \[19, 20\]; duplicated \[3\]; out of range \[21\]"):
        build_task("voc", "15-1", order=[3] + r(1, 18) + [21])
    with pytest.raises(ValueError, match=r"out of range \[0, 21\]"):
        build_task("voc", "15-1", order=[0] + r(1, 20) + [21])
    with pytest.raises(ValueError, match=r"out of range \[255\]"):
        build_task("synthetic", "4-2", order=[*r(1, 10), 255])
    with pytest.raises(ValueError, match="integer class ids"):
        build_task("voc", "15-1", order=[1.5] + r(2, 20))
    with pytest.raises(ValueError, match="sequence of class ids"):
        build_task("voc", "15-1", order="1,2,3")
    # NumPy integer orders are accepted.
    assert build_task("synthetic", "5-5", order=np.arange(10, 0, -1)).steps == [
        [10, 9, 8, 7, 6], [5, 4, 3, 2, 1]]


def test_unknown_setting():
    with pytest.raises(ValueError, match=r"unknown setting 'sequential'.*'overlap' or 'disjoint'"):
        build_task("voc", "15-1", setting="sequential")


@pytest.mark.parametrize(
    "method",
    ["new_classes", "old_classes", "seen_classes", "step_sizes", "channel_classes",
     "num_channels", "class_to_channel_lut", "train_label_lut", "test_label_lut", "check_step"],
)
def test_step_out_of_range(method):
    task = build_task("voc", "15-1")
    for bad in (6, -1, 100):
        with pytest.raises(ValueError, match=r"step .* out of range 0\.\.5 for task voc 15-1"):
            getattr(task, method)(bad)
    with pytest.raises(ValueError, match="step must be an integer"):
        getattr(task, method)(1.0)
    assert task.check_step(np.int64(5)) == 5


def test_step_out_of_range_other_methods():
    task = build_task("voc", "19-1")
    with pytest.raises(ValueError, match=r"out of range 0\.\.1"):
        task.keeps_train_image([1], 2)
    with pytest.raises(ValueError, match=r"out of range 0\.\.1"):
        task.channel_of(1, 2)


def test_dataset_spec_from_label_values_without_background():
    """Detectron2's ADE20K / Cityscapes layout: values 0..K-1 are the classes, the unlabelled
    value is none of them (background); tables worked out by hand for K = 3."""
    spec = DatasetSpec.from_label_values("roads", ["sky", "grass", "road"], background=False, unlabelled_value=254)
    assert spec.class_names == ("background", "sky", "grass", "road") and spec.num_classes == 3
    assert spec.value_names == ("sky", "grass", "road") and spec.unseen_test_label == 255
    lut = spec.label_lut()
    assert lut[[0, 1, 2, 254, 3, 255]].tolist() == [1, 2, 3, 0, 255, 255]
    assert spec.invalid_values(np.array([[0, 2, 254], [3, 255, 3]], np.uint8)) == [3, 255]
    task = build_task(spec, "2-1")
    # step 1 trains road alone; its test label keeps every class seen, and the unlabelled value
    assert task.train_label_lut(1)[[0, 1, 2, 254]].tolist() == [0, 0, 3, 0]
    assert task.test_label_lut(0)[[0, 1, 2, 254]].tolist() == [1, 2, 255, 0]
    again = Task.from_dict(task.to_dict())
    assert again == task and again.spec.label_lut().tolist() == lut.tolist()
    other_labels = DatasetSpec.from_label_values("roads", ["sky", "grass", "road"], background=False)
    assert build_task(other_labels, "2-1") != task  # another unlabelled value: another task


def test_builtin_tasks_record_no_class_table():
    """A built-in dataset's task dict stays as runs recorded it before catalog datasets."""
    spec = DatasetSpec.from_label_values("voc", VOC_CLASSES, background=True)
    assert spec == DATASETS["voc"]
    assert build_task(spec, "15-1").to_dict() == {"dataset": "voc", "name": "15-1", "setting": "overlap",
                                                  "order": list(range(1, 21))}
    np.testing.assert_array_equal(DATASETS["voc"].label_lut(), np.arange(256))
