"""The region rule of the instance bank, against hand-worked label maps (METHOD.md sections 5, 9)."""
import json

import numpy as np
import pytest

from eir.data.bank import InstanceBank, candidate_classes, scan_labels
from eir.data.bank_rule import (
    RegionRule,
    largest_region,
    region_classes,
    rule_from_record,
    rule_record,
)
from eir.tasks import DatasetSpec, build_task

# rows 0-7, cols 0-9 (80 pixels); 255 = ignore
#   class 1: a 2x2 blob (rows 0-1, cols 0-1, area 4) and a 2x3 blob (rows 2-3, cols 3-5, area 6)
#   class 2: a 2x3 blob (rows 0-1, cols 7-9, area 6) and one pixel (5, 0)
#   class 3: one pixel (4, 9)
MAP = np.array(
    [
        [1, 1, 0, 0, 0, 0, 0, 2, 2, 2],
        [1, 1, 0, 0, 0, 0, 0, 2, 2, 2],
        [0, 0, 0, 1, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 1, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 3],
        [2, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [255, 255, 0, 0, 0, 0, 0, 0, 0, 0],
        [255, 255, 0, 0, 0, 0, 0, 0, 0, 0],
    ],
    np.uint8,
)


def tiny_task(name="2-1"):
    spec = DatasetSpec.from_label_values("tiny", ["background", "cat", "dog", "cow"], background=True)
    return build_task(spec, name)


def picture(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_region_rule_parameters():
    assert RegionRule().min_area == 0.001
    assert RegionRule(0.05).min_pixels(8, 10) == 4  # 0.05 x 80, not rounded up to 5
    assert RegionRule(0.001).min_pixels(360, 480) == 173  # 172.8 pixels of a CamVid image
    assert RegionRule(0).min_pixels(8, 10) == 1  # every region, however small
    for bad in (-0.1, 1, 1.5, float("nan"), True, "0.1", None):
        with pytest.raises(ValueError, match="fraction of the image"):
            RegionRule(bad)
    assert rule_record(None) == {"rule": "one_region"}
    assert rule_record(RegionRule(0.05)) == {"rule": "largest_region", "min_area": 0.05}
    assert rule_from_record(None) is None  # a manifest written before the rule was recorded
    assert rule_from_record({"rule": "one_region"}) is None
    assert rule_from_record({"rule": "largest_region", "min_area": 0.05}) == RegionRule(0.05)
    with pytest.raises(ValueError, match="unknown instance rule"):
        rule_from_record({"rule": "largest_region", "min_area": 0.05, "per_image": 2})
    with pytest.raises(ValueError, match="None .* or a RegionRule"):
        rule_record("regions")


def test_largest_region_on_the_hand_worked_map():
    rule = RegionRule(0.05)  # 4 pixels of 80
    assert candidate_classes(MAP) is None  # the paper's rule: classes 1 and 2 are split
    assert region_classes(MAP, np.array([1, 2, 3]), rule) == (1, 2)  # class 3's one pixel < 4
    one = largest_region(MAP, 1, rule)
    expected = np.zeros_like(MAP, bool)
    expected[2:4, 3:6] = True  # the 6-pixel blob, not the 4-pixel one
    assert np.array_equal(one, expected)
    two = largest_region(MAP, 2, rule)
    expected = np.zeros_like(MAP, bool)
    expected[0:2, 7:10] = True  # the pixel at (5, 0) is a region of its own, left out
    assert np.array_equal(two, expected)
    assert largest_region(MAP, 3, rule) is None
    assert largest_region(MAP, 3, RegionRule(0)).sum() == 1  # min_area 0 keeps a pixel
    assert largest_region(MAP, 4, rule) is None  # absent
    # 7 pixels: class 1's largest blob (6) is too small, class 2's too
    assert region_classes(MAP, np.array([1, 2, 3]), RegionRule(7 / 80)) == ()
    # the 4-pixel blob of class 1 alone passes min_area 4/80 too, but only the largest is kept
    assert largest_region(MAP, 1, RegionRule(4 / 80)).sum() == 6


def test_largest_region_ties_go_to_the_first_region_in_row_major_order():
    label = np.zeros((6, 6), np.uint8)
    label[4, 0:3] = 5  # 3 pixels, starts at (4, 0)
    label[0:3, 5] = 5  # 3 pixels, starts at (0, 5): first in row-major order
    region = largest_region(label, 5, RegionRule(0))
    assert region[0:3, 5].all() and region.sum() == 3


def test_diagonal_pixels_are_separate_regions():
    label = np.zeros((5, 5), np.uint8)
    label[1, 1] = label[2, 2] = label[3, 3] = 6  # 8-connected, three 4-connected regions
    assert largest_region(label, 6, RegionRule(0)).sum() == 1
    assert region_classes(label, np.array([6]), RegionRule(2 / 25)) == ()


def test_region_entries_crop_mask_and_credit():
    task = tiny_task("joint")
    image = picture(8, 10, 0)
    sample = {"image": image, "label": MAP, "image_id": "map"}
    bank = InstanceBank.build([sample], task, 0, budget=10, seed=0, verbose=False,
                              instances=RegionRule(0.05))
    assert len(bank) == 2 and bank.instances == RegionRule(0.05)
    by_class = {e.credited: e for e in bank.entries}
    one, two = by_class[1], by_class[2]
    assert one.classes == (1,) and one.offset == (2, 3) and one.source_size == (8, 10)
    assert np.array_equal(one.label, np.full((2, 3), 1, np.uint8))
    assert np.array_equal(one.image, image[2:4, 3:6])
    assert two.classes == (2,) and two.offset == (0, 7)
    assert np.array_equal(two.label, np.full((2, 3), 2, np.uint8))
    assert bank.class_counts() == {1: 1, 2: 1, 3: 0}
    # replay: the region alone on the mean colour
    out, lab = bank.render_replay(bank.entries.index(one))
    assert (lab == 1).sum() == 6 and (lab != 0).sum() == 6 and np.array_equal(out[2:4, 3:6], image[2:4, 3:6])
    crop, mask = bank.instance(bank.entries.index(two), 2)
    assert np.array_equal(crop, image[0:2, 7:10]) and mask.all()
    # the paper's rule finds nothing in the same image
    assert len(InstanceBank.build([sample], task, 0, budget=10, seed=0, verbose=False)) == 0


def test_region_entry_keeps_only_its_region_inside_its_box():
    label = np.zeros((12, 12), np.uint8)
    label[2:10, 2] = 5  # an L: 8 pixels down ...
    label[9, 2:10] = 5  # ... and 8 along, 15 pixels in all
    label[4:6, 5:7] = 5  # a separate 4-pixel blob of the same class inside the L's box
    label[3, 4] = 2  # another class inside the box
    spec = DatasetSpec.from_label_values("tiny5", [str(i) for i in range(6)], background=True)
    task = build_task(spec, "joint")
    image = picture(12, 12, 1)
    bank = InstanceBank.build([{"image": image, "label": label}], task, 0, budget=10, seed=0,
                              verbose=False, instances=RegionRule(0))
    entry = {e.credited: e for e in bank.entries}[5]
    assert entry.offset == (2, 2) and entry.label.shape == (8, 8)
    expected = np.zeros((8, 8), np.uint8)
    expected[:, 0] = 5
    expected[7, :] = 5
    assert np.array_equal(entry.label, expected)  # the blob and class 2 are 0 in the crop
    assert np.array_equal(entry.image, image[2:10, 2:10])
    assert {e.credited: e.classes for e in bank.entries} == {2: (2,), 5: (5,)}


def two_region_dataset():
    """4 images of 10x12 where cat (1) and dog (2) each form two regions; cow (3) one in image 3."""
    samples = []
    for i in range(4):
        label = np.zeros((10, 12), np.uint8)
        label[0:2, 0:2 + i] = 1  # cat: 4 + 2i pixels ...
        label[5:8, 0:3] = 1  # ... and 9 pixels
        label[0:3, 8:12] = 2  # dog: 12 pixels ...
        label[8:10, 8:12] = 2  # ... and 8 pixels
        if i == 3:
            label[4:6, 6:8] = 3  # cow: one 4-pixel region
        samples.append({"image": picture(10, 12, i), "label": label, "image_id": f"two{i}"})
    return samples


def test_scan_labels_two_region_dataset_both_rules():
    task = tiny_task()
    samples = two_region_dataset()
    paper = scan_labels(samples, task, 0)
    assert paper == [((1, 2), None)] * 4  # cow (3) is not a step-0 class: the LUT made it 0
    regions = scan_labels(samples, task, 0, instances=RegionRule(9 / 120))
    assert regions == [((1, 2), (1, 2))] * 4  # cat 9 and dog 12 pixels pass 9 pixels
    # 11 pixels: no cat region is that large (image 3's first blob has 10), dog's 12-pixel one is
    assert scan_labels(samples, task, 0, instances=RegionRule(11 / 120)) == [((1, 2), (2,))] * 4
    step1 = scan_labels(samples, task, 1, instances=RegionRule(9 / 120))
    assert step1 == [((), None)] * 3 + [((3,), None)]  # cow's 4 pixels < 9
    assert scan_labels(samples, task, 1) == [((), None)] * 3 + [((3,), (3,))]


def test_region_bank_of_the_two_region_dataset(tmp_path):
    task = tiny_task()
    samples = two_region_dataset()
    rule = RegionRule(9 / 120)
    bank = InstanceBank.build(samples, task, 0, budget=5, seed=3, verbose=False, instances=rule)
    # pool: 8 single-class entries (4 cat, 4 dog); budget 5 over 2 classes: 3 and 2
    assert sorted(bank.class_counts().values()) == [2, 3] and len(bank) == 5
    for e in bank.entries:
        i = int(e.source[3:])
        if e.credited == 1:
            # the largest cat region: 9 pixels at rows 5-7 (image 3's first blob is 2 x 5 = 10)
            assert (e.offset, e.label.shape) == (((0, 0), (2, 5)) if i == 3 else ((5, 0), (3, 3)))
        else:
            assert (e.offset, e.label.shape) == ((0, 8), (3, 4))
    assert "instances=RegionRule(min_area=0.075)" in repr(bank)
    path = bank.save(tmp_path / "bank")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["instances"] == {"rule": "largest_region", "min_area": 0.075}
    loaded = InstanceBank.load(path, task=task, step=0, instances=rule)
    assert loaded.entries == bank.entries and loaded.instances == rule
    assert InstanceBank.load(path).instances == rule  # left out: not checked
    with pytest.raises(ValueError, match="region rule .* but the run asks for the paper's rule"):
        InstanceBank.load(path, task=task, step=0, instances=None)
    with pytest.raises(ValueError, match=r">= 0.075 .* asks for the region rule .* >= 0.1 "):
        InstanceBank.load(path, task=task, step=0, instances=RegionRule(0.1))
    # the next step extends it with the same rule only
    with pytest.raises(ValueError, match="same instance rule"):
        InstanceBank.build(samples, task, 1, budget=5, seed=3, previous=bank, verbose=False)
    nxt = InstanceBank.build(samples, task, 1, budget=5, seed=3, previous=bank, verbose=False,
                             instances=rule)
    assert nxt.class_counts()[3] == 0 and len(nxt) == 5  # cow's region is too small


def test_paper_rule_manifest_and_load(tmp_path):
    task = tiny_task()
    label = np.zeros((6, 6), np.uint8)
    label[1:3, 1:3] = 1
    bank = InstanceBank.build([{"image": picture(6, 6, 0), "label": label}], task, 0, budget=2,
                              seed=0, verbose=False)
    assert bank.instances is None and "instances=" not in repr(bank)
    path = bank.save(tmp_path / "bank")
    manifest_path = path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["instances"] == {"rule": "one_region"}
    with pytest.raises(ValueError, match="paper's rule .* asks for the region rule"):
        InstanceBank.load(path, task, 0, instances=RegionRule())
    del manifest["instances"]  # a bank written before the rule was recorded: the paper's
    manifest_path.write_text(json.dumps(manifest))
    assert InstanceBank.load(path, task, 0, instances=None).instances is None
    manifest["instances"] = {"rule": "every_pixel"}
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="unknown instance rule.*rebuild"):
        InstanceBank.load(path, task, 0)


def test_region_rule_needs_instance_storage():
    task = tiny_task()
    with pytest.raises(ValueError, match="stores whole images"):
        InstanceBank.build([], task, 0, budget=1, seed=0, storage="image", instances=RegionRule(),
                           verbose=False)
    with pytest.raises(ValueError, match="or a RegionRule"):
        InstanceBank.build([], task, 0, budget=1, seed=0, instances=0.01, verbose=False)
