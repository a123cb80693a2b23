"""Tests of eir.evaluation.metrics: hand-worked matrices and an independent count."""
import datetime
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from eir.evaluation import metrics
from eir.evaluation.metrics import ConfusionMatrix, format_table, group_means, summarize

# Rows = ground truth, columns = prediction; classes 0 (background), 1 (old), 2 (new).
HAND = np.array(
    [
        [50, 2, 3],  # gt 0: row sum 55
        [4, 20, 1],  # gt 1: row sum 25
        [0, 5, 15],  # gt 2: row sum 20
    ]
)
# Column sums: 54, 27, 19. Total 100, diagonal 85.
# IoU0 = 50 / (55 + 54 - 50) = 50/59 = 84.7458 %
# IoU1 = 20 / (25 + 27 - 20) = 20/32 = 62.5 %
# IoU2 = 15 / (20 + 19 - 15) = 15/24 = 62.5 %
IOU0, IOU1, IOU2 = 100 * 50 / 59, 100 * 20 / 32, 100 * 15 / 24


def test_summarize_hand_worked():
    s = summarize(HAND, old_classes=[1], new_classes=[2], class_names=["bg", "cat", "dog"])
    assert s["per_class"] == pytest.approx({"bg": IOU0, "cat": IOU1, "dog": IOU2})
    assert list(s["per_class"]) == ["bg", "cat", "dog"]
    old = (IOU0 + IOU1) / 2  # 73.6229
    new = IOU2  # 62.5
    assert s["old"] == pytest.approx(old)
    assert s["new"] == pytest.approx(new)
    assert s["all"] == pytest.approx((IOU0 + IOU1 + IOU2) / 3)  # 69.9153
    assert s["hiou"] == pytest.approx(2 * old * new / (old + new))  # 67.6069
    assert s["hiou"] == pytest.approx(67.60695, abs=1e-4)
    assert s["pixel_acc"] == pytest.approx(85.0)
    assert s["na_classes"] == []
    assert s["new_class_names"] == ["dog"]
    assert s["old_class_names"] == ["bg", "cat"]
    assert s["num_pixels"] == 100


def test_summarize_accepts_tensor_and_background_in_old():
    a = summarize(torch.from_numpy(HAND), old_classes=[0, 1], new_classes=[2])
    b = summarize(HAND, old_classes=[1], new_classes=[2])
    assert a == b
    assert list(a["per_class"]) == ["0", "1", "2"]


def test_summarize_na_class_left_out_of_means():
    m = np.array(
        [
            [10, 0, 0, 0],  # IoU0 = 10/10 = 100
            [0, 5, 5, 0],  # IoU1 = 5/(10+5-5) = 50
            [0, 0, 5, 0],  # IoU2 = 5/(5+10-5) = 50
            [0, 0, 0, 0],  # class 3: absent from gt and prediction -> n/a
        ]
    )
    s = summarize(m, old_classes=[1], new_classes=[2, 3])
    assert s["per_class"] == {"0": 100.0, "1": 50.0, "2": 50.0, "3": None}
    assert s["na_classes"] == ["3"]
    assert s["old"] == pytest.approx(75.0)
    assert s["new"] == pytest.approx(50.0)  # class 3 left out, not counted as 0
    assert s["all"] == pytest.approx(200 / 3)
    assert s["hiou"] == pytest.approx(2 * 75 * 50 / 125)  # 60


def test_summarize_missed_class_is_zero_not_na():
    # Class 2 is in the ground truth but never predicted: IoU 0, not n/a.
    m = np.array([[4, 0, 0], [0, 4, 0], [0, 2, 0]])
    s = summarize(m, old_classes=[1], new_classes=[2])
    assert s["per_class"]["2"] == 0.0
    assert s["new"] == 0.0
    assert s["hiou"] == 0.0
    # IoU1 = 4 / (4 + 6 - 4) = 4/6
    assert s["per_class"]["1"] == pytest.approx(100 * 4 / 6)


def test_summarize_all_new_na_gives_none():
    m = np.array([[3, 1, 0], [1, 3, 0], [0, 0, 0]])
    s = summarize(m, old_classes=[1], new_classes=[2])
    assert s["new"] is None and s["hiou"] is None
    assert s["na_classes"] == ["2"]


def test_summarize_step0_has_no_new_or_hiou():
    s = summarize(HAND, old_classes=[1, 2], new_classes=[])
    assert s["new"] is None and s["hiou"] is None
    assert s["old"] == pytest.approx((IOU0 + IOU1 + IOU2) / 3)
    assert s["all"] == pytest.approx(s["old"])
    assert s["new_class_names"] == []


def test_summarize_unseen_class_pixels_still_count():
    # Class 3 is not seen; its (unexpected) pixels are FN of nobody seen but the
    # prediction 1 on them is an FP of class 1: IoU1 = 4 / (4 + 6 - 4).
    m = np.array([[4, 0, 0, 0], [0, 4, 0, 0], [0, 0, 4, 0], [0, 2, 0, 0]])
    s = summarize(m, old_classes=[1], new_classes=[2])
    assert list(s["per_class"]) == ["0", "1", "2"]
    assert s["per_class"]["1"] == pytest.approx(100 * 4 / 6)
    assert s["pixel_acc"] == pytest.approx(100 * 12 / 14)


def test_summarize_errors():
    with pytest.raises(ValueError, match="outside"):
        summarize(HAND, old_classes=[1], new_classes=[3])
    with pytest.raises(ValueError, match="disjoint"):
        summarize(HAND, old_classes=[1], new_classes=[1, 2])
    with pytest.raises(ValueError, match="square"):
        summarize(np.zeros((3, 2)), old_classes=[1], new_classes=[])
    with pytest.raises(ValueError, match="no name"):
        summarize(HAND, old_classes=[1], new_classes=[2], class_names=["bg", "cat"])


def _reference_count(pairs, k):
    ref = np.zeros((k, k), dtype=np.int64)
    for pred, gt in pairs:
        for p, g in zip(pred.reshape(-1).tolist(), gt.reshape(-1).tolist()):
            if g != 255:
                ref[g, p] += 1
    return ref


def test_confusion_matrix_matches_numpy_loop():
    k = 5
    gen = torch.Generator().manual_seed(0)
    pairs = []
    cm = ConfusionMatrix(k)
    for shape in [(2, 17, 19), (31,)]:
        gt = torch.randint(0, k, shape, generator=gen)
        gt[torch.rand(shape, generator=gen) < 0.2] = 255
        pred = torch.randint(0, k, shape, generator=gen)
        cm.update(pred, gt.to(torch.uint8))
        pairs.append((pred.numpy(), gt.numpy()))
    assert cm.matrix.dtype == torch.int64
    assert cm.matrix.shape == (k, k)
    np.testing.assert_array_equal(cm.matrix.numpy(), _reference_count(pairs, k))
    cm.reset()
    assert int(cm.matrix.sum()) == 0


def test_confusion_matrix_hand_counts_and_merge():
    cm = ConfusionMatrix(3, device="cpu")
    cm.update(torch.tensor([[0, 1], [2, 2]]), torch.tensor([[0, 1], [1, 255]]))
    expected = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]])
    np.testing.assert_array_equal(cm.matrix.numpy(), expected)
    other = ConfusionMatrix(3)
    other.update(torch.tensor([1]), torch.tensor([0]))
    cm += other
    expected[0, 1] += 1
    np.testing.assert_array_equal(cm.matrix.numpy(), expected)


def test_confusion_matrix_errors():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="same shape"):
        cm.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        cm.update(torch.zeros(4), torch.zeros(4, dtype=torch.long))
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        cm.update(torch.tensor([0, 3]), torch.tensor([0, 1]))  # prediction 3
    with pytest.raises(ValueError, match="outside"):
        cm.update(torch.tensor([0, 0]), torch.tensor([-1, 0]))  # negative gt
    # A rejected batch is not counted.
    np.testing.assert_array_equal(cm.matrix.numpy(), np.diag([1, 1, 0]))
    with pytest.raises(ValueError, match="255"):
        ConfusionMatrix(256)


def test_confusion_matrix_deferred_check(monkeypatch):
    # On accelerators the check waits for the read, to avoid a sync per update.
    monkeypatch.setattr(metrics, "_checks_eagerly", lambda device: False)
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 7]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="1 counted pixel"):
        cm.matrix  # noqa: B018
    with pytest.raises(ValueError, match="outside"):
        cm.all_reduce()


def test_format_table():
    s = summarize(
        np.array([[10, 0, 0, 0], [0, 5, 5, 0], [0, 0, 5, 0], [0, 0, 0, 0]]),
        old_classes=[1],
        new_classes=[2, 3],
        class_names=["background", "cat", "dog", "horse"],
    )
    text = format_table(s, title="step 1")
    lines = text.splitlines()
    assert lines[0] == "step 1"
    assert lines[1] == "old 75.00 | new 50.00 | all 66.67 | hIoU 60.00 | pixel acc 80.00"
    rows = {line[2:].split()[0]: line for line in lines[4:8]}
    assert rows["background"].startswith(" ") and rows["background"].endswith("100.00")
    assert rows["cat"].startswith(" ") and rows["cat"].endswith("50.00")
    assert rows["dog"].startswith("*") and rows["dog"].endswith("50.00")
    assert rows["horse"].startswith("*") and rows["horse"].endswith("n/a")
    assert "n/a: absent from ground truth and prediction, left out of the means" in text
    assert "*: new class" in text
    assert lines[-1].startswith("old: background + step-0 classes; new:")
    assert "all: every seen class" in lines[-1]
    # Fixed width: every class row has the same length.
    assert len({len(line) for line in lines[4:8]}) == 1


def test_format_table_step0():
    text = format_table(summarize(HAND, old_classes=[1, 2], new_classes=[]))
    first = text.splitlines()[0]
    assert first == f"all {(IOU0 + IOU1 + IOU2) / 3:.2f} | pixel acc 85.00"
    assert not any(line.startswith("*") for line in text.splitlines())
    assert text.splitlines()[-2] == metrics.NA_NOTE


def _all_reduce_worker(rank, world_size, init_file, out_dir):
    torch.set_num_threads(1)  # no OpenMP pool in a forked child
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        cm = ConfusionMatrix(3)
        if rank == 0:
            cm.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 2]))
        else:
            cm.update(torch.tensor([2, 2, 0, 0]), torch.tensor([2, 255, 0, 1]))
        cm.all_reduce()
        torch.save(cm.matrix.clone(), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_all_reduce_two_process_gloo(tmp_path):
    # fork where the platform has it: spawn re-imports torch in every child, which
    # costs seconds; the children only touch tiny tensors, so forking is safe.
    methods = mp.get_all_start_methods()
    mp.start_processes(
        _all_reduce_worker,
        args=(2, str(tmp_path / "init"), str(tmp_path)),
        nprocs=2,
        join=True,
        start_method="fork" if "fork" in methods else "spawn",
    )
    # rank 0: (gt, pred) = (0,0), (1,1), (2,1); rank 1: (2,2), (0,0), (1,0); 255 dropped.
    expected = np.array([[2, 0, 0], [1, 1, 0], [0, 1, 1]])
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        np.testing.assert_array_equal(result.numpy(), expected)


def test_all_reduce_without_process_group_is_noop():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([1]), torch.tensor([1]))
    assert cm.all_reduce() is cm
    np.testing.assert_array_equal(cm.matrix.numpy(), [[0, 0], [0, 1]])


def test_hiou_is_harmonic_mean():
    s = summarize(HAND, old_classes=[1], new_classes=[2])
    assert 1 / s["hiou"] == pytest.approx((1 / s["old"] + 1 / s["new"]) / 2)
    assert math.isclose(min(s["old"], s["new"]), 62.5)
    assert s["new"] <= s["hiou"] <= s["old"]


def test_group_means_by_name_with_na():
    # old = background and "a"; new = "b" (n/a, left out) and "c".
    iou = {"background": 90.0, "a": 30.0, "b": None, "c": 20.0}
    g = group_means(iou, ["background", "a"], ["b", "c"])
    assert g["old"] == 60.0 and g["new"] == 20.0
    assert abs(g["all"] - 140.0 / 3) < 1e-12
    assert abs(g["hiou"] - 2 * 60.0 * 20.0 / 80.0) < 1e-12
    assert group_means(iou, ["background", "a"], ["b"])["hiou"] is None
