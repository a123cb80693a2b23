"""Tests of the instance bank: candidates, selection, entries, save / load (METHOD.md, section 5)."""
import json
import zlib
from collections import Counter, deque

import cv2
import numpy as np
import pytest

from eir.constants import IMAGENET_MEAN
from eir.data import bank as bank_module
from eir.data.bank import (
    BankEntry,
    InstanceBank,
    is_candidate,
    present_classes,
    round_robin,
    select_entries,
)
from eir.tasks import build_task

MEAN_RGB = (124, 116, 104)  # IMAGENET_MEAN rounded


# --------------------------------------------------------------------------- helpers


def paint(h, w, rects, border=False):
    """A label with rectangles (class, y0, y1, x0, x1) painted in order; optional 255 frame."""
    label = np.zeros((h, w), np.uint8)
    for c, y0, y1, x0, x1 in rects:
        label[y0:y1, x0:x1] = c
    if border:
        label[0, :] = label[-1, :] = label[:, 0] = label[:, -1] = 255
    return label


def picture(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def sample(i, label, image=None):
    h, w = label.shape
    return {"image": picture(h, w, 1000 + i) if image is None else image, "label": label,
            "image_id": f"img{i:03d}"}


def reference_components(mask):
    """Number of 4-connected regions of a bool mask, by breadth-first search (independent of OpenCV)."""
    seen = np.zeros_like(mask, dtype=bool)
    h, w = mask.shape
    count = 0
    for y in range(h):
        for x in range(w):
            if mask[y, x] and not seen[y, x]:
                count += 1
                queue = deque([(y, x)])
                seen[y, x] = True
                while queue:
                    cy, cx = queue.popleft()
                    for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                        if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            queue.append((ny, nx))
    return count


def reference_round_robin(pool_classes, class_order, budget):
    """The selection rule written the slow, obvious way (rescan the pool for every pick)."""
    taken, chosen = set(), []
    while len(chosen) < budget:
        progress = False
        for c in class_order:
            if len(chosen) >= budget:
                break
            for pos, classes in enumerate(pool_classes):
                if pos not in taken and c in classes:
                    taken.add(pos)
                    chosen.append((pos, c))
                    progress = True
                    break
        if not progress:
            break
    return chosen


@pytest.fixture(scope="module")
def task():
    return build_task("voc", "15-5")  # step 0: 1..15, step 1: 16..20


def two_class_scene():
    """40x50, class 16 at rows 5-9 / cols 10-19, class 17 at rows 20-24 / cols 30-34, 255 frame,
    plus a split old class 3 that the step-1 LUT turns into background."""
    return paint(40, 50, [(16, 5, 10, 10, 20), (17, 20, 25, 30, 35), (3, 30, 32, 2, 4),
                          (3, 35, 37, 2, 4)], border=True)


# --------------------------------------------------------------------------- is_candidate


def test_is_candidate_hand_made_labels():
    two_blobs = paint(10, 10, [(3, 1, 3, 1, 3), (3, 6, 8, 6, 8)])
    assert not is_candidate(two_blobs)

    diagonal = np.zeros((6, 6), np.uint8)
    diagonal[2, 2] = diagonal[3, 3] = 5  # touching by a corner only: two 4-regions
    assert not is_candidate(diagonal)
    assert cv2.connectedComponents(diagonal, connectivity=8)[0] == 2  # one 8-region
    assert reference_components(diagonal == 5) == 2

    framed = np.full((9, 9), 255, np.uint8)
    framed[3:6, 3:6] = 7  # one blob touching 255 all round
    assert is_candidate(framed)
    assert is_candidate(paint(12, 12, [(7, 3, 6, 3, 6)], border=True))

    assert not is_candidate(np.zeros((8, 8), np.uint8))  # only background
    assert not is_candidate(paint(8, 8, [], border=True))  # background and ignore only

    touching = paint(10, 10, [(1, 0, 5, 0, 10), (2, 5, 10, 0, 10)])  # two classes, one region each
    assert is_candidate(touching)
    ring = paint(9, 9, [(4, 1, 8, 1, 8), (0, 3, 6, 3, 6)])  # a region with a hole is one region
    assert is_candidate(ring)
    one_split = paint(10, 10, [(1, 0, 4, 0, 4), (2, 6, 8, 0, 2), (2, 6, 8, 5, 7)])
    assert not is_candidate(one_split)


def test_is_candidate_matches_breadth_first_search_reference():
    rng = np.random.default_rng(0)
    for _ in range(150):
        h, w = rng.integers(3, 11, size=2)
        label = rng.choice(np.array([0, 0, 0, 2, 9, 255], np.uint8), size=(h, w))
        classes = [c for c in (2, 9) if (label == c).any()]
        expected = bool(classes) and all(reference_components(label == c) == 1 for c in classes)
        assert is_candidate(label) == expected
        assert list(present_classes(label)) == classes


def test_is_candidate_rejects_non_label_arrays():
    with pytest.raises(ValueError, match="HxW uint8"):
        is_candidate(np.zeros((4, 4), np.int32))
    with pytest.raises(ValueError, match="HxW uint8"):
        is_candidate(np.zeros((4, 4, 3), np.uint8))


# --------------------------------------------------------------------------- selection


def test_round_robin_uneven_availability_worked_by_hand():
    pool = [(1,), (2,), (3,), (3,), (3,), (2,)]
    # round 1: 1 -> 0, 2 -> 1, 3 -> 2 ; round 2: 1 has none, 2 -> 5, 3 -> 3 (budget reached)
    assert round_robin(pool, [1, 2, 3], 5) == [(0, 1), (1, 2), (2, 3), (5, 2), (3, 3)]
    # budget above the pool: round 3 gives 3 -> 4, then nothing is left: stop with all 6
    assert round_robin(pool, [1, 2, 3], 100) == [(0, 1), (1, 2), (2, 3), (5, 2), (3, 3), (4, 3)]
    assert round_robin(pool, [1, 2, 3], 0) == []
    assert round_robin([], [1, 2], 10) == []
    assert round_robin(pool, [4], 10) == []  # no entry for the only class
    with pytest.raises(ValueError, match="budget"):
        round_robin(pool, [1], -1)


def test_round_robin_multi_class_entries_worked_by_hand():
    pool = [(1, 2), (1,), (2,), (2, 3)]
    # round 1: 2 takes 0 (credited 2), 1 skips the taken 0 and takes 1, 3 takes 3
    # round 2: 2 takes 2, 1 and 3 have nothing left -> stop with 4 entries
    assert round_robin(pool, [2, 1, 3], 10) == [(0, 2), (1, 1), (3, 3), (2, 2)]
    # with 1 first: 1 takes 0, 2 skips it and takes 2, 3 takes 3; round 2: 1 takes 1, 2 finds
    # only the taken 3 and drops out, 3 has nothing left
    assert round_robin(pool, [1, 2, 3], 10) == [(0, 1), (2, 2), (3, 3), (1, 1)]
    assert round_robin(pool, [1, 2, 3], 3) == [(0, 1), (2, 2), (3, 3)]


def test_round_robin_matches_slow_reference_on_random_pools():
    rng = np.random.default_rng(1)
    for _ in range(60):
        n = int(rng.integers(0, 40))
        pool = [tuple(sorted(set(rng.integers(1, 7, size=int(rng.integers(1, 4))).tolist())))
                for _ in range(n)]
        order = [int(c) for c in rng.permutation(np.arange(1, 8))]
        budget = int(rng.integers(0, 50))
        assert round_robin(pool, order, budget) == reference_round_robin(pool, order, budget)


def test_select_entries_counts_and_seed_derivation():
    # single-class entries: class 1 has 1, class 2 has 2, class 3 has 5 -> budget 5 gives 1/2/2
    pool = [(3,), (2,), (3,), (1,), (3,), (3,), (2,), (3,)]
    for seed in range(6):
        chosen = select_entries(pool, [1, 2, 3], 5, seed, step=1)
        assert Counter(c for _, c in chosen) == {1: 1, 2: 2, 3: 2}
        assert all(c in pool[i] for i, c in chosen)
        # budget 4: the fourth entry goes to whichever of 2 and 3 comes first in the class order,
        # drawn from default_rng([seed, step]) after the pool permutation
        rng = np.random.default_rng([seed, 1])
        perm = rng.permutation(len(pool))
        order = [int(c) for c in rng.permutation(np.array([1, 2, 3]))]
        fourth = [c for c in order if c != 1][0]
        chosen4 = select_entries(pool, [1, 2, 3], 4, seed, step=1)
        assert Counter(c for _, c in chosen4) == Counter([1, 2, 3, fourth])
        shuffled = [pool[i] for i in perm]
        expected = [(int(perm[p]), c) for p, c in reference_round_robin(shuffled, order, 4)]
        assert chosen4 == expected
    assert select_entries(pool, [1, 2, 3], 5, 3, 1) == select_entries(pool, [1, 2, 3], 5, 3, 1)
    assert select_entries(pool, [1, 2, 3], 100, 0, 1).__len__() == len(pool)
    with pytest.raises(ValueError, match="non-negative"):
        select_entries(pool, [1, 2, 3], 5, -1, 1)


# --------------------------------------------------------------------------- build: instance mode


def test_instance_entry_crop_offset_and_label(task):
    label = two_class_scene()
    image = picture(40, 50, 7)
    bank = InstanceBank.build([sample(0, label, image)], task, 1, budget=10, seed=0, verbose=False)
    assert len(bank) == 1
    e = bank.entries[0]
    assert e.source_size == (40, 50)
    assert e.offset == (5, 10)  # union box of 16 and 17: rows 5..24, cols 10..34
    assert e.label.shape == (20, 25) and e.image.shape == (20, 25, 3)
    assert e.classes == (16, 17)
    assert e.credited in (16, 17)
    assert e.source == "img000"
    assert np.array_equal(e.image, image[5:25, 10:35])
    expected = np.zeros((20, 25), np.uint8)
    expected[0:5, 0:10] = 16
    expected[15:20, 20:25] = 17
    assert np.array_equal(e.label, expected)  # 255 frame and the old class 3 became 0
    assert bank.nbytes == 20 * 25 * 4

    crop, mask = bank.instance(0, 17)
    assert np.array_equal(crop, image[20:25, 30:35]) and mask.dtype == bool and mask.all()
    crop, mask = bank.instance(0, 16)
    assert crop.shape == (5, 10, 3) and mask.shape == (5, 10) and mask.all()
    with pytest.raises(ValueError, match="read-only"):
        crop[:] = 0  # shared between calls: nobody may change the bank through it
    assert np.array_equal(bank.entries[0].image, image[5:25, 10:35])
    with pytest.raises(ValueError, match="not 18"):
        bank.instance(0, 18)


def test_instance_tight_box_of_an_irregular_region(task):
    label = np.zeros((30, 30), np.uint8)
    label[10:20, 4:6] = 16  # an L shape: vertical bar ...
    label[18:20, 4:12] = 16  # ... and foot
    label[2:5, 20:28] = 18
    image = picture(30, 30, 3)
    bank = InstanceBank.build([sample(0, label, image)], task, 1, budget=1, seed=0, verbose=False)
    e = bank.entries[0]
    assert e.offset == (2, 4) and e.label.shape == (18, 24)
    crop, mask = bank.instance(0, 16)
    assert np.array_equal(crop, image[10:20, 4:12])
    assert np.array_equal(mask, label[10:20, 4:12] == 16)
    assert mask.sum() == 20 + 16 - 4
    packed = bank.packed_instance(0, 16)  # what pasting reads: RGB + 0/1 mask, same box
    assert packed.shape == (10, 8, 4) and not packed.flags.writeable
    assert np.array_equal(packed[..., :3], image[10:20, 4:12])
    assert np.array_equal(packed[..., 3], (label[10:20, 4:12] == 16).astype(np.uint8))
    with pytest.raises(ValueError, match="not 17"):
        bank.packed_instance(0, 17)
    rgb, mask = bank.rescaled_instance(0, 16, (20, 16))  # nearest x2, memoised, read-only
    assert np.array_equal(rgb, image[10:20, 4:12].repeat(2, axis=0).repeat(2, axis=1))
    assert np.array_equal(mask, (label[10:20, 4:12] == 16).astype(np.uint8).repeat(2, 0).repeat(2, 1))
    again = bank.rescaled_instance(0, 16, (20, 16))
    assert again[0] is rgb and again[1] is mask and not rgb.flags.writeable and not mask.flags.writeable


def test_render_replay_places_instances_on_mean_colour(task):
    label = two_class_scene()
    image = picture(40, 50, 7)
    bank = InstanceBank.build([sample(0, label, image)], task, 1, budget=1, seed=0, verbose=False)
    out, lab = bank.render_replay(0, IMAGENET_MEAN)
    assert out.shape == (40, 50, 3) and out.dtype == np.uint8 and lab.shape == (40, 50)
    kept = (label == 16) | (label == 17)
    assert np.array_equal(lab, np.where(kept, label, 0))
    assert np.array_equal(out[kept], image[kept])
    assert (out[~kept] == np.array(MEAN_RGB, np.uint8)).all()
    out2, _ = bank.render_replay(0, (0, 255, 10.4))
    assert (out2[~kept] == np.array([0, 255, 10], np.uint8)).all()
    assert np.array_equal(out2[kept], image[kept])


def make_step_samples(task):
    """Step-1 samples of voc 15-5: candidates with 16/17/18, and non-candidates."""
    scenes = [
        paint(20, 24, [(16, 2, 6, 2, 8)]),
        paint(20, 24, [(16, 1, 4, 1, 4), (17, 10, 15, 10, 20)], border=True),
        paint(20, 24, [(17, 5, 9, 5, 9)]),
        paint(20, 24, [(16, 1, 3, 1, 3), (16, 10, 12, 10, 12)]),  # 16 split: no candidate
        paint(20, 24, [(5, 4, 9, 4, 9)]),  # only an old class: nothing of the step
        paint(20, 24, [(18, 3, 7, 3, 20)]),
        paint(20, 24, [(16, 12, 18, 3, 9), (5, 0, 2, 0, 2)]),
        paint(20, 24, [(17, 0, 20, 0, 3)]),
    ]
    return [sample(i, s) for i, s in enumerate(scenes)]


def test_build_selects_candidates_like_the_reference(task):
    samples = make_step_samples(task)
    candidates = {0: (16,), 1: (16, 17), 2: (17,), 5: (18,), 6: (16,), 7: (17,)}
    for budget in (0, 2, 4, 100):
        bank = InstanceBank.build(samples, task, 1, budget=budget, seed=5, verbose=False)
        idx = sorted(candidates)
        expected = select_entries([candidates[i] for i in idx], task.seen_classes(1), budget, 5, 1)
        assert [(e.source, e.credited) for e in bank.entries] == [
            (f"img{idx[p]:03d}", c) for p, c in expected
        ]
    assert len(bank) == 6  # budget above the pool: every candidate, and it stops
    counts = bank.class_counts()
    assert list(counts) == task.seen_classes(1)
    assert sum(counts.values()) == 6 and counts[18] == 1 and counts[1] == 0
    assert bank.entries_for_class(18) == [i for i, e in enumerate(bank.entries) if e.credited == 18]
    assert sorted(bank.entries_containing(16)) == sorted(
        i for i, e in enumerate(bank.entries) if 16 in e.classes)
    assert bank.entries_for_class(3) == [] and bank.entries_containing(20) == []


def test_previous_bank_entries_join_the_pool(task):
    step0 = [sample(10 + i, paint(16, 16, [(c, 2 + i % 3, 9, 3, 12)])) for i, c in
             enumerate([1, 2, 1, 3, 2, 1])]
    bank0 = InstanceBank.build(step0, task, 0, budget=4, seed=2, verbose=False)
    assert len(bank0) == 4 and bank0.step == 0 and bank0.classes == task.seen_classes(0)
    samples = make_step_samples(task)
    new = {0: (16,), 1: (16, 17), 2: (17,), 5: (18,), 6: (16,), 7: (17,)}
    idx = sorted(new)
    pool = [e.classes for e in bank0.entries] + [new[i] for i in idx]
    names = [e.source for e in bank0.entries] + [f"img{i:03d}" for i in idx]
    for budget in (5, 100):
        bank1 = InstanceBank.build(samples, task, 1, budget=budget, seed=2, previous=bank0,
                                   verbose=False)
        expected = select_entries(pool, task.seen_classes(1), budget, 2, 1)
        assert [(e.source, e.credited) for e in bank1.entries] == [(names[p], c) for p, c in expected]
    assert len(bank1) == 10  # all 4 previous entries and all 6 candidates
    for old in bank0.entries:  # previous entries keep their pixels
        (same,) = [e for e in bank1.entries if e.source == old.source]
        assert np.array_equal(same.image, old.image) and np.array_equal(same.label, old.label)
        assert same.offset == old.offset and same.source_size == old.source_size
    with pytest.raises(ValueError, match="after step 1, but the bank of step 1 extends .* step 0"):
        InstanceBank.build(samples, task, 1, budget=5, seed=0, previous=bank1, verbose=False)
    with pytest.raises(ValueError, match="storage"):
        InstanceBank.build(samples, task, 1, budget=5, seed=0, previous=bank0, storage="image",
                           verbose=False)
    other = build_task("voc", "15-1")
    with pytest.raises(ValueError, match="previous bank was built for voc 15-5"):
        InstanceBank.build(samples, other, 1, budget=5, seed=0, previous=bank0, verbose=False)


def test_build_is_deterministic_and_seed_dependent(task, tmp_path):
    samples = make_step_samples(task) + [sample(20 + i, paint(20, 24, [(16 + i % 3, 2, 8, i, i + 9)]))
                                         for i in range(12)]
    a = InstanceBank.build(samples, task, 1, budget=6, seed=11, verbose=False)
    b = InstanceBank.build(samples, task, 1, budget=6, seed=11, verbose=False)
    assert a.entries == b.entries
    a.save(tmp_path / "a")
    b.save(tmp_path / "b")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*")
                           if p.is_file())
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    c = InstanceBank.build(samples, task, 1, budget=6, seed=12, verbose=False)
    assert [e.source for e in c.entries] != [e.source for e in a.entries]


def test_build_from_files_equals_build_from_arrays(task, tmp_path):
    arrays = make_step_samples(task)
    files = []
    for s in arrays:
        img = tmp_path / f"{s['image_id']}.png"
        lab = tmp_path / f"{s['image_id']}_label.png"
        cv2.imwrite(str(img), cv2.cvtColor(s["image"], cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(lab), s["label"])
        files.append({"file_name": str(img), "sem_seg_file_name": str(lab),
                      "image_id": s["image_id"], "height": 20, "width": 24})
    from_arrays = InstanceBank.build(arrays, task, 1, budget=5, seed=3, verbose=False)
    from_files = InstanceBank.build(files, task, 1, budget=5, seed=3, verbose=False)
    assert len(from_files) == 5 and from_files.entries == from_arrays.entries
    # a JPEG image is read too (lossy pixels, identical labels and geometry)
    jpg = tmp_path / "j.jpg"
    cv2.imwrite(str(jpg), cv2.cvtColor(arrays[0]["image"], cv2.COLOR_RGB2BGR))
    one = InstanceBank.build([dict(files[0], file_name=str(jpg))], task, 1, budget=1, seed=0,
                             verbose=False)
    assert np.array_equal(one.entries[0].label, from_arrays.entries[
        [e.source for e in from_arrays.entries].index("img000")].label)
    # no "image_id": the file name is the source
    anon = InstanceBank.build([{k: files[0][k] for k in ("file_name", "sem_seg_file_name")}], task,
                              1, budget=1, seed=0, verbose=False)
    assert anon.entries[0].source == files[0]["file_name"]


def test_num_workers_gives_the_same_bank(task, tmp_path):
    samples = make_step_samples(task)
    files = []
    for s in samples:
        img, lab = tmp_path / f"{s['image_id']}.png", tmp_path / f"{s['image_id']}_l.png"
        cv2.imwrite(str(img), cv2.cvtColor(s["image"], cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(lab), s["label"])
        files.append({"file_name": str(img), "sem_seg_file_name": str(lab), "image_id": s["image_id"]})
    serial = InstanceBank.build(files, task, 1, budget=4, seed=9, num_workers=0, verbose=False)
    parallel = InstanceBank.build(files, task, 1, budget=4, seed=9, num_workers=2, verbose=False)
    assert len(serial) == 4 and parallel.entries == serial.entries


def test_build_input_errors(task, tmp_path):
    good = sample(0, paint(8, 8, [(16, 1, 4, 1, 4)]))
    with pytest.raises(ValueError, match="storage"):
        InstanceBank.build([good], task, 1, budget=1, seed=0, storage="pixels", verbose=False)
    with pytest.raises(ValueError, match="budget"):
        InstanceBank.build([good], task, 1, budget=-1, seed=0, verbose=False)
    with pytest.raises(ValueError, match="seed"):
        InstanceBank.build([good], task, 1, budget=1, seed=-3, verbose=False)
    with pytest.raises(ValueError, match="out of range"):
        InstanceBank.build([good], task, 2, budget=1, seed=0, verbose=False)
    with pytest.raises(ValueError, match="neither"):
        InstanceBank.build([{"image_id": "x"}], task, 1, budget=1, seed=0, verbose=False)
    with pytest.raises(FileNotFoundError, match="nope.png"):
        InstanceBank.build([{"file_name": "a.jpg", "sem_seg_file_name": str(tmp_path / "nope.png")}],
                           task, 1, budget=1, seed=0, verbose=False)
    with pytest.raises(ValueError, match=r"label of sample 0 is 8x8 but image of sample 0 \(img000\) is 9x8"):
        InstanceBank.build([dict(good, image=picture(9, 8, 0))], task, 1, budget=1, seed=0,
                           verbose=False)


# --------------------------------------------------------------------------- storage="image"


def test_image_storage_mode(task):
    samples = make_step_samples(task)
    bank = InstanceBank.build(samples, task, 1, budget=100, seed=0, storage="image", verbose=False)
    # every image with a class of the step is eligible, split or not; img004 (old class only) is not
    assert sorted(e.source for e in bank.entries) == [f"img{i:03d}" for i in (0, 1, 2, 3, 5, 6, 7)]
    lut = task.train_label_lut(1)
    for e in bank.entries:
        s = samples[int(e.source[3:])]
        assert e.offset == (0, 0) and e.source_size == (20, 24)
        assert np.array_equal(e.image, s["image"])
        assert np.array_equal(e.label, lut[s["label"]])  # whole step label, 255 kept
        assert e.classes == tuple(int(c) for c in present_classes(lut[s["label"]]))
    framed = [e for e in bank.entries if e.source == "img001"][0]
    assert (framed.label == 255).sum() == 2 * 20 + 2 * 24 - 4
    image, label = bank.render_replay(0)
    assert np.array_equal(image, bank.entries[0].image) and np.array_equal(label, bank.entries[0].label)
    i = [e.source for e in bank.entries].index("img002")
    crop, mask = bank.instance(i, 17)  # the tight box of the region in the whole image
    assert np.array_equal(crop, samples[2]["image"][5:9, 5:9]) and mask.all()


# --------------------------------------------------------------------------- save / load


def test_save_load_round_trip_bit_exact(task, tmp_path):
    bank = InstanceBank.build(make_step_samples(task), task, 1, budget=5, seed=4, verbose=False)
    path = bank.save(tmp_path / "step_1" / "bank")
    loaded = InstanceBank.load(path, task=task, step=1)
    assert loaded.entries == bank.entries
    for a, b in zip(loaded.entries, bank.entries):
        assert a.image.dtype == b.image.dtype and a.label.dtype == b.label.dtype
    for attr in ("task", "dataset", "step", "budget", "seed", "storage", "classes", "class_names",
                 "nbytes"):
        assert getattr(loaded, attr) == getattr(bank, attr), attr
    assert loaded.class_counts() == bank.class_counts()
    assert repr(loaded) == repr(bank)
    for c in (16, 17, 18):
        assert loaded.entries_for_class(c) == bank.entries_for_class(c)

    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["step"] == 1 and manifest["budget"] == 5
    assert manifest["task"] == task.to_dict() and manifest["dataset"] == "voc"
    assert manifest["classes"] == task.seen_classes(1) and manifest["storage"] == "instance"
    assert manifest["nbytes"] == bank.nbytes and manifest["num_entries"] == 5
    assert {r["name"]: r["count"] for r in manifest["class_counts"]}["tvmonitor"] == 0
    total = 0
    for i, (rec, e) in enumerate(zip(manifest["entries"], bank.entries)):
        name = task.class_names[e.credited]
        assert rec["image_file"] == f"entries/{i:04d}_{name}_image.png"
        assert rec["label_file"] == f"entries/{i:04d}_{name}_label.png"
        assert rec["offset"] == list(e.offset) and rec["source_size"] == list(e.source_size)
        assert rec["classes"] == list(e.classes) and rec["credited"] == e.credited
        for kind in ("image", "label"):
            data = (path / rec[f"{kind}_file"]).read_bytes()
            assert zlib.crc32(data) == rec[f"{kind}_crc32"] and len(data) == rec[f"{kind}_bytes"]
            total += len(data)
        # what a person opens: a correct-colour PNG and a uint8 label PNG
        assert np.array_equal(cv2.imread(str(path / rec["image_file"]))[..., ::-1], e.image)
        assert np.array_equal(cv2.imread(str(path / rec["label_file"]), cv2.IMREAD_UNCHANGED), e.label)
    assert manifest["file_bytes"] == total


def test_empty_bank_saves_and_loads(task, tmp_path):
    split = [sample(0, paint(8, 8, [(16, 0, 2, 0, 2), (16, 5, 7, 5, 7)]))]
    bank = InstanceBank.build(split, task, 1, budget=10, seed=0, verbose=False)
    assert len(bank) == 0 and bank.nbytes == 0 and set(bank.class_counts().values()) == {0}
    loaded = InstanceBank.load(bank.save(tmp_path / "bank"), task=task, step=1)
    assert len(loaded) == 0 and loaded.entries_for_class(16) == []
    assert "0/10 entries" in repr(loaded)


def test_repr_lists_entries_counts_and_bytes(task):
    bank = InstanceBank.build(make_step_samples(task), task, 1, budget=100, seed=0, verbose=False)
    text = repr(bank)
    counts = bank.class_counts()
    assert "voc 15-5 overlap" in text and "step 1" in text and "6/100 entries" in text
    assert f"{bank.nbytes} bytes" in text
    assert f"pottedplant: {counts[16]}" in text and f"sheep: {counts[17]}" in text
    assert "sofa: 1" in text and "aeroplane: 0" in text and "tvmonitor: 0" in text


def test_save_replaces_an_existing_bank_atomically(task, tmp_path, monkeypatch):
    samples = make_step_samples(task)
    first = InstanceBank.build(samples, task, 1, budget=2, seed=0, verbose=False)
    second = InstanceBank.build(samples, task, 1, budget=5, seed=1, verbose=False)
    target = tmp_path / "bank"
    first.save(target)
    second.save(target)
    assert InstanceBank.load(target, task, 1).entries == second.entries
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank"]  # no temporary or old folder left
    assert len(list((target / "entries").iterdir())) == 10  # the first bank's files are gone

    def crash(self, folder):
        (folder / "entries").mkdir()
        (folder / "entries" / "0000_half.png").write_bytes(b"\x89PNG")
        raise OSError("disk full")

    monkeypatch.setattr(InstanceBank, "_write", crash)
    with pytest.raises(OSError, match="disk full"):
        first.save(target)
    monkeypatch.undo()
    assert InstanceBank.load(target, task, 1).entries == second.entries  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank"]

    not_a_bank = tmp_path / "results"
    not_a_bank.mkdir()
    (not_a_bank / "keep.txt").write_text("precious")
    with pytest.raises(ValueError, match="not a bank"):
        first.save(not_a_bank)
    assert (not_a_bank / "keep.txt").read_text() == "precious"


@pytest.fixture
def saved(task, tmp_path):
    bank = InstanceBank.build(make_step_samples(task), task, 1, budget=4, seed=0, verbose=False)
    return bank.save(tmp_path / "bank")


def test_load_rejects_another_task(saved):
    with pytest.raises(ValueError, match=r"built after step 1 of voc 15-5 overlap.*run is voc 15-1 overlap"):
        InstanceBank.load(saved, task=build_task("voc", "15-1"), step=1)
    with pytest.raises(ValueError, match="run is voc 15-5 disjoint"):
        InstanceBank.load(saved, task=build_task("voc", "15-5", "disjoint"), step=1)
    with pytest.raises(ValueError, match="dataset 'voc'.*dataset 'ade'"):
        InstanceBank.load(saved, task=build_task("ade", "100-50"), step=1)
    order = list(range(1, 21))
    order[0], order[1] = order[1], order[0]
    with pytest.raises(ValueError, match="class order"):
        InstanceBank.load(saved, task=build_task("voc", "15-5", order=order), step=1)


def test_load_rejects_another_step(task, saved):
    with pytest.raises(ValueError, match=r"built after step 1 .* step 1 needs the bank of step 0: rerun step 0"):
        InstanceBank.load(saved, task=task, step=0)
    assert InstanceBank.load(saved).step == 1  # no expectations: no check


def test_load_rejects_corrupt_or_missing_files(task, saved):
    manifest = json.loads((saved / "manifest.json").read_text())
    image_file = saved / manifest["entries"][1]["image_file"]
    data = bytearray(image_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    image_file.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"corrupt: entries/0001_.*_image.png does not match"):
        InstanceBank.load(saved, task, 1)
    label_file = saved / manifest["entries"][2]["label_file"]
    label_file.unlink()
    image_file.unlink()
    with pytest.raises(FileNotFoundError, match=r"incomplete: entries/0001_.*_image.png .* missing"):
        InstanceBank.load(saved, task, 1)


def test_load_rejects_unknown_version_and_bad_manifest(task, saved, tmp_path):
    path = saved / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps(dict(manifest, format_version=99)))
    with pytest.raises(ValueError, match="format version 99.*reads format version 1"):
        InstanceBank.load(saved, task, 1)
    path.write_text(json.dumps(manifest)[:50])
    with pytest.raises(ValueError, match="not valid JSON"):
        InstanceBank.load(saved, task, 1)
    path.unlink()
    with pytest.raises(FileNotFoundError, match="no bank at"):
        InstanceBank.load(saved, task, 1)
    with pytest.raises(FileNotFoundError, match="no bank at"):
        InstanceBank.load(tmp_path / "elsewhere", task, 1)


def test_bank_entry_validation():
    img, lab = np.zeros((4, 5, 3), np.uint8), np.ones((4, 5), np.uint8)
    e = BankEntry(img, lab, (10, 10), (6, 5), (1,), 1, "a")
    assert e == BankEntry(img.copy(), lab.copy(), [10, 10], [6, 5], [1], 1, "a")
    assert e != BankEntry(img, lab * 2, (10, 10), (6, 5), (1,), 1, "a")
    with pytest.raises(ValueError, match="does not fit"):
        BankEntry(img, lab, (10, 10), (7, 5), (1,), 1, "a")
    with pytest.raises(ValueError, match="must be 4x5x3"):
        BankEntry(img[:3], lab, (10, 10), (0, 0), (1,), 1, "a")


def test_module_uses_no_global_random_state(task):
    state = np.random.get_state()[1].copy()
    InstanceBank.build(make_step_samples(task), task, 1, budget=3, seed=0, verbose=False)
    assert np.array_equal(np.random.get_state()[1], state)
    assert bank_module.FORMAT_VERSION == 1
