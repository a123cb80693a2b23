"""Coverage of the instance bank, counted from labels before training, and its warnings."""
import numpy as np
import pytest

from eir.data.bank import InstanceBank
from eir.data.bank_coverage import (
    built_bank_record,
    coverage_record,
    coverage_warnings,
    predict_bank_counts,
    step_coverage,
    step_warnings,
)
from eir.data.bank_rule import RegionRule
from eir.tasks import DatasetSpec, build_task

RULE = RegionRule(4 / 64)  # 4 pixels of an 8x8 label


def tiny_task(name="2-1"):
    spec = DatasetSpec.from_label_values("tiny", ["background", "cat", "dog", "cow"], background=True)
    return build_task(spec, name)


def paint(rects, size=8):
    label = np.zeros((size, size), np.uint8)
    for c, y0, y1, x0, x1 in rects:
        label[y0:y1, x0:x1] = c
    return label


def as_samples(labels):
    return [
        {"image": np.random.default_rng(i).integers(0, 256, (*lab.shape, 3), dtype=np.uint8),
         "label": lab, "image_id": f"s{i}"}
        for i, lab in enumerate(labels)
    ]


def mixed_dataset():
    """cat 1, dog 2 (step 0), cow 3 (step 1); 8x8 labels, areas in pixels."""
    return as_samples([
        paint([(1, 0, 2, 0, 3), (2, 5, 7, 5, 7)]),  # s0: cat 6, dog 4, one region each
        paint([(1, 0, 2, 0, 3), (1, 6, 7, 0, 2), (2, 4, 6, 4, 6)]),  # s1: cat 6 + 2, dog 4
        paint([(2, 0, 1, 0, 3), (2, 5, 6, 0, 3)]),  # s2: dog 3 + 3
        paint([(3, 2, 4, 2, 5)]),  # s3: cow 6
        paint([(1, 0, 1, 0, 2), (3, 5, 6, 5, 8)]),  # s4: cat 2, cow 3
    ])


def two_region_dataset():
    """Every class forms two regions in every image: the paper's rule finds nothing."""
    return as_samples([
        paint([(1, 0, 2, 0, 3), (1, 4, 5, 0, 2), (2, 0, 2, 5, 8), (2, 6, 8, 6, 8)]),  # cat 6+2, dog 6+4
        paint([(1, 0, 2, 0, 2), (1, 5, 8, 0, 2), (2, 0, 1, 4, 8), (2, 4, 5, 4, 8)]),  # cat 4+6, dog 4+4
    ])


def test_step_coverage_worked_by_hand():
    task, samples = tiny_task(), mixed_dataset()
    paper = step_coverage(samples, task, 0)
    assert paper.step == 0 and paper.num_images == 5 and paper.instances is None
    assert paper.images == {1: 3, 2: 3}  # cat in s0 s1 s4, dog in s0 s1 s2
    assert paper.qualifying == {1: 2, 2: 1}  # candidates: s0 (cat, dog), s4 (cat; cow is 0 at step 0)
    assert paper.pool == ((1, 2), (1,))
    regions = step_coverage(samples, task, 0, instances=RULE)
    assert regions.images == {1: 3, 2: 3}
    assert regions.qualifying == {1: 2, 2: 2}  # cat 6 in s0 and s1; dog 4 in s0 and s1; s2's 3s, s4's 2 fail
    assert regions.pool == ((1,), (2,), (1,), (2,))
    step1 = step_coverage(samples, task, 1)
    assert step1.images == {3: 2} and step1.qualifying == {3: 2} and step1.pool == ((3,), (3,))
    assert step_coverage(samples, task, 1, instances=RULE).qualifying == {3: 1}  # s4's cow has 3
    assert step_coverage(samples, task, 1, instances=RULE, num_workers=2) == step_coverage(
        samples, task, 1, instances=RULE)


@pytest.mark.parametrize("rule", [None, RULE])
@pytest.mark.parametrize("budget", [1, 2, 3, 10])
def test_predicted_counts_are_the_builds_counts(rule, budget):
    task, samples = tiny_task("1-1"), mixed_dataset()  # steps: cat, dog, cow: two banks
    coverages = [step_coverage(samples, task, t, instances=rule) for t in range(2)]
    for seed in range(4):
        bank0 = InstanceBank.build(samples, task, 0, budget, seed, verbose=False, instances=rule)
        bank1 = InstanceBank.build(samples, task, 1, budget, seed, previous=bank0, verbose=False,
                                   instances=rule)
        predicted = predict_bank_counts(coverages, task, budget, seed)
        assert predicted == {0: bank0.class_counts(), 1: bank1.class_counts()}
        assert predict_bank_counts(coverages[1:], task, budget, seed, previous=bank0) == {
            1: bank1.class_counts()}


def test_predicted_counts_by_hand_and_step_checks():
    task, samples = tiny_task(), mixed_dataset()
    regions = step_coverage(samples, task, 0, instances=RULE)
    # pool: two cat and two dog entries; a budget of 10 takes all, whatever the seed
    assert predict_bank_counts([regions], task, 10, 5) == {0: {1: 2, 2: 2}}
    counts = predict_bank_counts([regions], task, 3, 5)[0]
    assert sorted(counts.values()) == [1, 2]  # round robin: 2 + 1
    with pytest.raises(ValueError, match=r"consecutive steps from step 0 .*: got step 1 where step 0 was due"):
        predict_bank_counts([step_coverage(samples, task, 1)], task, 3, 0)
    bank0 = InstanceBank.build(samples, task, 0, 3, 0, verbose=False)
    with pytest.raises(ValueError, match="the previous bank holds the paper's rule"):
        predict_bank_counts([step_coverage(samples, task, 1, instances=RULE)], task, 3, 0,
                            previous=bank0)


def test_two_region_dataset_warns_under_the_paper_rule_only():
    task, samples = tiny_task(), two_region_dataset()
    paper = step_coverage(samples, task, 0)
    assert paper.images == {1: 2, 2: 2} and paper.qualifying == {1: 0, 2: 0} and paper.pool == ()
    counts = predict_bank_counts([paper], task, 4, 0)
    assert counts == {0: {1: 0, 2: 0}}
    (message,) = coverage_warnings(task, [paper], counts)
    assert message.startswith(
        "the bank that step 0 builds for step 1 would be empty: nothing qualifies under the paper's "
        "rule (every class of the image one 4-connected region), from 2 training images; step 1 "
        "would run without replay or pasting, i.e. as distillation with pseudo-labels."
    )
    assert "RegionRule" in message
    regions = step_coverage(samples, task, 0, instances=RULE)
    assert regions.qualifying == {1: 2, 2: 2}  # cat 6 and 6, dog 6 and 4
    counts = predict_bank_counts([regions], task, 4, 0)
    assert counts == {0: {1: 2, 2: 2}}
    assert coverage_warnings(task, [regions], counts) == []
    bank = InstanceBank.build(samples, task, 0, 4, 0, verbose=False, instances=RULE)
    assert bank.class_counts() == {1: 2, 2: 2}
    assert sorted((e.source, e.credited, e.label.shape) for e in bank.entries) == [
        ("s0", 1, (2, 3)), ("s0", 2, (2, 3)), ("s1", 1, (3, 2)), ("s1", 2, (1, 4))]


def test_warning_names_the_missing_classes_with_counts():
    task = tiny_task()
    samples = as_samples([
        paint([(1, 0, 2, 0, 3)]),  # cat alone, one region
        paint([(1, 0, 2, 0, 3), (2, 4, 5, 0, 2), (2, 4, 5, 4, 6)]),  # dog split
    ])
    cov = step_coverage(samples, task, 0)
    counts = predict_bank_counts([cov], task, 4, 0)
    assert counts == {0: {1: 1, 2: 0}}
    (message,) = coverage_warnings(task, [cov], counts)
    assert message.startswith(
        "the bank that step 0 builds for step 1 would hold no entry of 1 of its 2 classes under the "
        "paper's rule (every class of the image one 4-connected region): dog (0 of the 1 step-0 "
        "training images with it qualify); these classes are never pasted."
    )
    # an old class is named with the counts of the step that learnt it
    task3 = tiny_task("1-1")
    covs = [step_coverage(samples, task3, t, instances=RULE) for t in range(2)]
    counts = predict_bank_counts(covs, task3, 4, 0)
    assert counts == {0: {1: 2}, 1: {1: 2, 2: 0}}
    (message,) = coverage_warnings(task3, covs, counts)
    assert message.startswith("the bank that step 1 builds for step 2 would hold no entry of 1 of its 2")
    assert "dog (0 of the 1 step-1 training images with it qualify)" in message
    assert "RegionRule" not in message  # no hint when the region rule is already used


def test_step_warnings_tell_what_one_steps_labels_give():
    """At start-up each step is told alone: step 0 without any qualifying image is an empty bank;
    a later step adds nothing to the earlier entries; a step with some classes missing names them."""
    task = tiny_task()
    (message,) = step_warnings(task, step_coverage(two_region_dataset(), task, 0))
    assert message.startswith(
        "the bank that step 0 builds for step 1 would be empty: nothing qualifies under the paper's rule (every "
        "class of the image one 4-connected region): cat (0 of the 2 step-0 training images with it qualify), "
        "dog (0 of the 2 step-0 training images with it qualify); step 1 would run without replay or pasting"
    )
    assert "RegionRule" in message
    assert step_warnings(task, step_coverage(two_region_dataset(), task, 0, instances=RULE)) == []
    samples = as_samples([paint([(1, 0, 2, 0, 3)]), paint([(1, 0, 2, 0, 3), (2, 4, 5, 0, 2), (2, 4, 5, 4, 6)])])
    (message,) = step_warnings(task, step_coverage(samples, task, 0))
    assert message.startswith(
        "the bank that step 0 builds for step 1 would hold no entry of 1 of the step's 2 classes under the paper's "
        "rule (every class of the image one 4-connected region): dog (0 of the 1 step-0 training images with it "
        "qualify); these classes are never pasted."
    )
    task3 = tiny_task("1-1")
    (message,) = step_warnings(task3, step_coverage(samples, task3, 1))
    assert message.startswith(
        "the bank that step 1 builds for step 2 would get no entry from step 1's 2 training images under the "
        "paper's rule (every class of the image one 4-connected region): dog (0 of the 1 step-1 training images "
        "with it qualify); its classes are never pasted, and the bank holds the earlier steps' entries only."
    )


def test_built_bank_record_and_its_warnings():
    task, samples = tiny_task(), two_region_dataset()
    cov = step_coverage(samples, task, 0)
    bank = InstanceBank.build(samples, task, 0, 4, 0, verbose=False)
    record = built_bank_record(task, bank, cov)
    assert {k: record[k] for k in ("serves_step", "storage", "budget", "entries", "bank_entries")} == {
        "serves_step": 1, "storage": "instance", "budget": 4, "entries": 0, "bank_entries": {"cat": 0, "dog": 0}}
    assert record["classes"] == {"cat": {"images": 2, "qualifying": 0}, "dog": {"images": 2, "qualifying": 0}}
    (message,) = record["warnings"]
    assert message.startswith(
        "the bank that step 0 built for step 1 is empty: nothing qualifies under the paper's rule (every class "
        "of the image one 4-connected region), from 2 training images; step 1 will run without replay or pasting"
    )
    images = InstanceBank.build(samples, task, 0, 4, 0, storage="image", verbose=False)
    assert built_bank_record(task, images) == {
        "serves_step": 1, "storage": "image", "budget": 4, "entries": 2, "bank_entries": {"cat": 1, "dog": 1}}


def test_coverage_record():
    task, samples = tiny_task(), mixed_dataset()
    cov = step_coverage(samples, task, 0, instances=RULE)
    assert coverage_record(task, cov) == {
        "instances": {"rule": "largest_region", "min_area": 0.0625},
        "training_images": 5,
        "pool_entries": 4,
        "classes": {"cat": {"images": 3, "qualifying": 2}, "dog": {"images": 3, "qualifying": 2}},
    }
    record = coverage_record(task, cov, {1: 2, 2: 1})
    assert record["bank_entries"] == {"cat": 2, "dog": 1}


def test_camvid_coverage_benchmark_on_tiny_data_in_camvid_layout(tmp_path, capsys):
    """benchmarks/bank_coverage_camvid.py on three 12x16 labels laid out as CamVid/ is."""
    import cv2
    from conftest import load_script

    root = tmp_path / "CamVid"
    (root / "train").mkdir(parents=True)
    (root / "trainannot").mkdir()
    for i in range(3):
        label = np.full((12, 16), 11, np.uint8)  # unlabelled
        label[0:4, :] = 0  # sky: two regions, 4x8 and 4x7 pixels
        label[0:4, 8] = 11
        label[6:12, 0:3] = 8  # car: two regions, 18 and 3 + 3i pixels
        label[6:7, 10:13 + i] = 8
        label[8:12, 5:9] = 3  # road
        cv2.imwrite(str(root / "trainannot" / f"f{i}.png"), label)
        cv2.imwrite(str(root / "train" / f"f{i}.png"), np.full((12, 16, 3), 40 * i, np.uint8))
    tool = load_script("benchmarks/bank_coverage_camvid.py")
    tool.main([str(root), "--task", "8-3", "--budget", "4", "--min-area", "0.05", "--build",
               "--compare-min-areas", "0.05"])
    out = capsys.readouterr().out
    # sky (class 1) and car (class 9) are split: the paper's rule finds no image; min_area 0.05
    # is 10 of 192 pixels: car's 18-pixel region passes
    assert "| paper's | 0 | 0 | 0 | 0 | 0 | 0 | 0 | 0 | 0 | 0 | 0 |" in out
    assert "| regions, min_area 0.05 | 3 | 0 | 0 | 3 | 0 | 0 | 0 | 0 | 3 | 0 | 0 |" in out
    assert "| 0 | sky | 3 | 0 | 0 |" in out and "| 0 | road | 3 | 3 | 2 |" in out
    assert "would be empty" in out
    assert "instances=RegionRule(min_area=0.05), 4/4 entries" in out


def eir_method(**kwargs):
    from eir.methods.eir import EIR
    from eir.modeling.criterion import EIRCriterion

    settings = dict(memory=4, storage="instance", paste=None, criterion=EIRCriterion(), new_head_init="random",
                    prepass={"tau": 0.7, "short_side": 8, "stride": 1})
    return EIR(**{**settings, **kwargs})


def test_eir_warns_for_the_steps_that_save_an_instance_bank():
    task, samples = tiny_task(), two_region_dataset()
    (message,) = eir_method().check_step_data(task, 0, samples)
    assert message.startswith("the bank that step 0 builds for step 1 would be empty")
    assert eir_method(instances=RULE).check_step_data(task, 0, samples) == []
    assert eir_method().check_step_data(task, 1, samples) == []  # the last step builds no bank
    assert eir_method(memory=0).check_step_data(task, 0, samples) == []
    assert eir_method(storage="image").check_step_data(task, 0, samples) == []  # every image is an entry
    with pytest.raises(ValueError, match="instances must be None or a RegionRule .* with storage='instance', got "
                                         r"RegionRule\(min_area=0.0625\) with storage='image'"):
        eir_method(storage="image", instances=RULE)
    with pytest.raises(ValueError, match="instances must be None or a RegionRule"):
        eir_method(instances={"min_area": 0.1})
    assert eir_method().without_bank == "distillation with pseudo-labels"
