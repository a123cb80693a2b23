"""Tests of eir.data.paste: hand-worked pastes, brute-force references, degenerate inputs."""
import itertools

import numpy as np
import pytest

from eir.data.paste import (
    PasteConfig,
    augment_instance,
    best_cells,
    choose_classes,
    occupancy_map,
    pack_instance,
    paste_from_bank,
    paste_instances,
    potential_classes,
    rescale_instance,
    rescaled_size,
)

RED = (255, 0, 0)
BLUE = (0, 0, 255)


def two_colour_instance(h=10, w=20):
    """Left half red, right half blue, full mask."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2] = RED
    img[:, w // 2:] = BLUE
    return img, np.ones((h, w), bool)


class FakeBank:
    """The two methods paste_from_bank uses; ``per_class`` maps class -> list of (crop, mask)."""

    def __init__(self, per_class):
        self.items = [(c, img, m) for c, lst in per_class.items() for img, m in lst]
        self.calls = []

    def entries_for_class(self, c):
        return [i for i, (k, _, _) in enumerate(self.items) if k == c]

    def packed_instance(self, index, class_id):
        k, img, m = self.items[index]
        assert k == class_id
        self.calls.append((index, class_id))
        return pack_instance(img, m)

    def rescaled_instance(self, index, class_id, size):
        k, img, m = self.items[index]
        return rescale_instance(pack_instance(img, m), size)


class FixedLam:
    """An rng stand-in whose beta() returns the given lams in turn (exact overlap tests)."""

    def __init__(self, lams):
        self.lams = iter(lams)

    def beta(self, a, b):
        return next(self.lams)


# ---------------------------------------------------------------- config


def test_config_defaults_are_the_papers():
    cfg = PasteConfig()
    assert (cfg.max_classes, cfg.cell_size, cfg.min_found, cfg.fallback_total) == (3, 250, 2, 3)
    assert cfg.mode == "mixup" and cfg.beta == (1.0, 1.0) and cfg.flip_prob == 0.5


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "cutmix"},
        {"max_classes": -1},
        {"cell_size": 1},
        {"cell_size": 2.5},
        {"beta": (0.0, 1.0)},
        {"beta": (1.0,)},
        {"flip_prob": 1.5},
        {"fallback_total": -2},
        {"onto": "labels"},
        {"skip_classes": ("star",)},
    ],
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        PasteConfig(**kwargs)


def test_config_cell_scales_with_the_crop():
    assert PasteConfig().scaled_to(512).cell_size == 250
    assert PasteConfig().scaled_to(256).cell_size == 125
    assert PasteConfig(mode="copy").scaled_to(1024).mode == "copy"
    assert PasteConfig().scaled_to(1024).cell_size == 500


# ---------------------------------------------------------------- step 1


def test_potential_classes_set_semantics():
    pseudo = np.zeros((8, 8), np.uint8)
    pseudo[0, :5] = [1, 2, 3, 5, 9]
    label = np.zeros((8, 8), np.uint8)
    label[1, :2] = [2, 255]
    got = potential_classes(pseudo, label, [1, 2, 3, 4, 5], k=10, rng=np.random.default_rng(0))
    # 2 is labelled, 4 is not detected, 9 is not an old class
    assert sorted(got) == [1, 3, 5]
    assert potential_classes(pseudo, label, [1, 2, 3], k=0, rng=np.random.default_rng(0)) == []
    assert potential_classes(None, label, [1, 2, 3], k=3, rng=np.random.default_rng(0)) == []
    assert potential_classes(pseudo, label, [], k=3, rng=np.random.default_rng(0)) == []


def test_potential_classes_k_limit_is_a_random_choice():
    pseudo = np.arange(1, 7, dtype=np.uint8).reshape(2, 3)
    label = np.zeros((4, 4), np.uint8)  # other resolution: only the class set matters
    seen_sets, firsts = set(), set()
    for seed in range(200):
        got = potential_classes(pseudo, label, [1, 2, 3, 4, 5, 6], k=2, rng=np.random.default_rng(seed))
        assert len(got) == 2 and len(set(got)) == 2 and set(got) <= {1, 2, 3, 4, 5, 6}
        seen_sets.add(frozenset(got))
        firsts.add(got[0])
    assert len(seen_sets) == 15  # every pair of 6 classes turns up, not the first k
    assert firsts == {1, 2, 3, 4, 5, 6}


# ---------------------------------------------------------------- step 2


def test_occupancy_map():
    label = np.array([[0, 1, 255], [0, 0, 0]], np.uint8)
    pseudo = np.array([[0, 0, 0], [0, 7, 0]], np.uint8)
    occ = occupancy_map(label, pseudo)
    np.testing.assert_array_equal(occ, [[False, True, True], [False, True, False]])
    np.testing.assert_array_equal(occupancy_map(label, None), label != 0)
    low = np.array([[0, 3]], np.uint8)  # low-resolution map, resized nearest
    occ = occupancy_map(np.zeros((2, 4), np.uint8), low)
    np.testing.assert_array_equal(occ, [[False, False, True, True]] * 2)


def best_cells_reference(occ, cell, count):
    h, w = occ.shape
    cells = [(y, x) for y in range(0, h, cell) for x in range(0, w, cell)]
    scores = [int((~occ[y:y + cell, x:x + cell]).sum()) for y, x in cells]
    ranked = [cells[i] for i in sorted(range(len(cells)), key=lambda i: (-scores[i], i))]
    return [ranked[i % len(ranked)] for i in range(count)]


def test_best_cells_hand_made():
    occ = np.ones((5, 7), bool)  # cells of 3: rows {0-2, 3-4}, cols {0-2, 3-5, 6}
    occ[3:5, 3:6] = False  # 6 free pixels in cell (3, 3)
    occ[0:3, 6] = False  # 3 free pixels in the partial cell (0, 6)
    occ[0, 0] = occ[1, 1] = occ[2, 2] = False  # 3 free in (0, 0): ties with (0, 6), earlier wins
    assert best_cells(occ, 3, 3) == [(3, 3), (0, 0), (0, 6)]
    assert best_cells(occ, 3, 0) == []


@pytest.mark.parametrize(
    "shape,cell",
    # few cells (counted per cell) and many cells (> 64: integral image) both
    [((37, 53), 10), ((53, 37), 16), ((40, 40), 8), ((7, 90), 25), ((100, 90), 7), ((61, 130), 4)],
)
def test_best_cells_matches_brute_force(shape, cell):
    rng = np.random.default_rng(sum(shape) + cell)
    for density in (0.1, 0.5, 0.9):
        occ = rng.random(shape) < density
        n_cells = -(-shape[0] // cell) * -(-shape[1] // cell)
        for count in (1, 3, n_cells, n_cells + 4):
            assert best_cells(occ, cell, count) == best_cells_reference(occ, cell, count)


def test_best_cells_all_occupied_ties_row_major_and_cycles():
    occ = np.ones((20, 30), bool)
    assert best_cells(occ, 10, 8) == [(0, 0), (0, 10), (0, 20), (10, 0), (10, 10), (10, 20),
                                      (0, 0), (0, 10)]


def test_best_cells_cell_larger_than_image():
    occ = np.zeros((30, 40), bool)
    assert best_cells(occ, 250, 3) == [(0, 0)] * 3


# ---------------------------------------------------------------- step 4


def test_choose_classes_enough_found_no_fallback():
    cfg = PasteConfig()
    rng = np.random.default_rng(0)
    assert choose_classes([3, 1], [1, 2, 3], [1, 2, 3], cfg, rng) == [3, 1]
    assert choose_classes([3, 1, 2], [1, 2, 3], [1, 2, 3], cfg, rng) == [3, 1, 2]


def test_choose_classes_fallback_fills_to_total():
    cfg = PasteConfig()
    for seed in range(20):
        got = choose_classes([2], [1, 2, 3, 4], [1, 2, 3, 4], cfg, np.random.default_rng(seed))
        assert len(got) == 3 and got[0] == 2 and set(got) <= {1, 2, 3, 4}
        got = choose_classes([], [1, 2, 3, 4], [1, 2, 3, 4], cfg, np.random.default_rng(seed))
        assert len(got) == 3


def test_choose_classes_fallback_is_uniform_and_reaches_the_last_class():
    cfg = PasteConfig()
    old = [1, 2, 3, 4, 5]
    draws = list(itertools.chain.from_iterable(
        choose_classes([], old, old, cfg, np.random.default_rng(seed)) for seed in range(2000)
    ))
    counts = np.bincount(draws, minlength=6)[1:]
    assert counts.sum() == 6000
    assert counts[-1] > 0  # the release never picked the last old class
    # uniform: each class 1/5 of the draws, within 5 standard deviations
    sd = np.sqrt(6000 * 0.2 * 0.8)
    assert np.all(np.abs(counts - 1200) < 5 * sd), counts


def test_choose_classes_skips_classes_without_entries():
    cfg = PasteConfig()
    for seed in range(50):
        got = choose_classes([1, 3], [1, 2, 3, 4], [2, 3], cfg, np.random.default_rng(seed))
        assert got[0] == 3 and len(got) == 3 and set(got) <= {2, 3}
    assert choose_classes([1], [1, 2], [], cfg, np.random.default_rng(0)) == []
    assert choose_classes([], [], [1, 2], cfg, np.random.default_rng(0)) == []


# ---------------------------------------------------------------- step 3


def test_pack_instance_cuts_the_tight_box():
    img = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    mask = np.zeros((5, 7), bool)
    mask[1, 2] = mask[3, 4] = True  # box rows 1..3, columns 2..4
    packed = pack_instance(img, mask)
    assert packed.shape == (3, 3, 4) and packed.dtype == np.uint8
    np.testing.assert_array_equal(packed[..., :3], img[1:4, 2:5])
    np.testing.assert_array_equal(packed[..., 3], mask[1:4, 2:5].astype(np.uint8))
    assert pack_instance(img, np.zeros((5, 7), bool)) is None
    with pytest.raises(ValueError, match="hxwx3 uint8"):
        pack_instance(img[..., :2], mask)
    with pytest.raises(ValueError, match="hxwx3 uint8"):
        pack_instance(img, mask[:4])


def test_rescale_instance_and_its_size():
    img = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    packed = pack_instance(img, np.ones((4, 6), bool))
    assert rescaled_size(4, 6, cell=13, img_h=100, img_w=100) == (8, 12)  # longer side cell - 1
    assert rescaled_size(4, 6, cell=13, img_h=100, img_w=9) == (6, 9)  # never wider than the image
    rgb, mask = rescale_instance(packed, (8, 12))
    np.testing.assert_array_equal(rgb, img.repeat(2, axis=0).repeat(2, axis=1))  # nearest, x2
    assert mask.dtype == np.uint8 and mask.shape == (8, 12) and (mask == 1).all()
    rgb, mask = rescale_instance(packed, (4, 6))  # same size: a split, no resampling
    np.testing.assert_array_equal(rgb, img)


def test_augment_instance_flip():
    img, mask = two_colour_instance(4, 6)
    mask = mask.copy()
    mask[:, 0] = False
    img0, mask0 = img.copy(), mask.copy()
    fi, fm = augment_instance(img, mask, np.random.default_rng(0), flip_prob=1.0)
    np.testing.assert_array_equal(fi, img[:, ::-1])
    np.testing.assert_array_equal(fm, mask[:, ::-1])
    assert fm.dtype == bool
    si, sm = augment_instance(img, mask, np.random.default_rng(0), flip_prob=0.0)
    np.testing.assert_array_equal(si, img)
    np.testing.assert_array_equal(sm, mask)
    np.testing.assert_array_equal(img, img0)
    np.testing.assert_array_equal(mask, mask0)
    fi, fm = augment_instance(img, mask.astype(np.uint8), np.random.default_rng(0), flip_prob=1.0)
    assert fm.dtype == np.uint8 and fm[0, -1] == 0 and fm[0, 0] == 1  # a uint8 mask stays uint8
    flips = [augment_instance(img, mask, np.random.default_rng(s), 0.5)[1][0, 0] for s in range(400)]
    assert 150 < sum(flips) < 250  # flipped: column 0 becomes the masked column
    r1, r2 = np.random.default_rng(5), np.random.default_rng(5)  # one draw per call, flipped or not
    augment_instance(img, mask, r1, 1.0)
    augment_instance(img, mask, r2, 0.0)
    assert r1.random() == r2.random()


# ---------------------------------------------------------------- step 5


def test_copy_paste_exact_pixels():
    image = np.full((100, 120, 3), 7, np.uint8)
    label = np.zeros((100, 120), np.uint8)
    label[90:, :] = 1
    inst = two_colour_instance(10, 20)
    image0, label0 = image.copy(), label.copy()
    out, lab, pc, pa = paste_instances(image, label, [(*inst, 5)], [(0, 41)], cell=41, mode="copy")
    # longer side 20 -> 40, so the instance becomes 20 x 40 at rows 0-19, cols 41-80
    expected = image.copy()
    expected[0:20, 41:61] = RED
    expected[0:20, 61:81] = BLUE
    np.testing.assert_array_equal(out, expected)
    exp_pc = np.zeros((100, 120), np.uint8)
    exp_pc[0:20, 41:81] = 5
    np.testing.assert_array_equal(pc, exp_pc)
    np.testing.assert_array_equal(pa, exp_pc.astype(np.float32) / 5)
    assert pa.dtype == np.float32 and pc.dtype == np.uint8 and out.dtype == np.uint8
    np.testing.assert_array_equal(lab, label0)  # a single paste leaves the label beneath unchanged
    np.testing.assert_array_equal(image, image0)  # inputs untouched
    np.testing.assert_array_equal(label, label0)


def test_onto_background_keeps_labelled_pixels_in_front():
    """onto="background": the instance covers label-0 pixels only; a labelled object and the
    void border (255) beneath it keep their pixels, and no paste map is written there."""
    image = np.full((100, 120, 3), 7, np.uint8)
    label = np.zeros((100, 120), np.uint8)
    label[5:15, 50:70] = 3
    label[15, 50:70] = 255
    inst = two_colour_instance(10, 20)
    out_any, _, pc_any, _ = paste_instances(image, label, [(*inst, 5)], [(0, 41)], cell=41, mode="copy")
    out, lab, pc, pa = paste_instances(image, label, [(*inst, 5)], [(0, 41)], cell=41, mode="copy",
                                       onto="background")
    covered = label != 0
    np.testing.assert_array_equal(out[covered], image[covered])
    assert not pc[covered].any() and not pa[covered].any()
    np.testing.assert_array_equal(out[~covered], out_any[~covered])  # elsewhere the default paste
    np.testing.assert_array_equal(pc[~covered], pc_any[~covered])
    assert (pc_any[covered] == 5).any()  # the default covers the object
    np.testing.assert_array_equal(lab, label)


def test_inplace_paste_writes_into_the_inputs_with_the_same_result():
    image = np.full((100, 120, 3), 7, np.uint8)
    label = np.zeros((100, 120), np.uint8)
    label[90:, :] = 1
    inst = two_colour_instance(10, 20)
    ref = paste_instances(image, label, [(*inst, 5)], [(0, 41)], cell=41, mode="copy")
    out = paste_instances(image, label, [(*inst, 5)], [(0, 41)], cell=41, mode="copy", inplace=True)
    assert out[0] is image and out[1] is label
    for a, b in zip(ref, out):
        np.testing.assert_array_equal(a, b)
    assert image[0, 41].tolist() == list(RED)  # the input itself now holds the paste


def test_paste_uses_the_tight_mask_box_and_mask_only():
    crop = np.zeros((12, 12, 3), np.uint8)
    crop[:] = (10, 20, 30)  # colour outside the mask must never be pasted
    mask = np.zeros((12, 12), bool)
    mask[2:6, 3:5] = True  # 4 x 2 box
    mask[2, 3] = False  # one hole
    crop[mask] = (200, 100, 50)
    image = np.zeros((40, 40, 3), np.uint8)
    label = np.zeros((40, 40), np.uint8)
    out, _, pc, _ = paste_instances(image, label, [(crop, mask, 2)], [(5, 5)], cell=9, mode="copy")
    # box 4 x 2 -> 8 x 4 (scale 2): each mask pixel becomes a 2 x 2 block
    exp_mask = np.kron(mask[2:6, 3:5], np.ones((2, 2), bool))
    np.testing.assert_array_equal(pc[5:13, 5:9] == 2, exp_mask)
    assert (pc > 0).sum() == exp_mask.sum()
    assert np.all(out[5:13, 5:9][exp_mask] == (200, 100, 50))
    assert np.all(out[pc == 0] == 0)


@pytest.mark.parametrize("hw,cell,expected", [
    ((30, 12), 51, (50, 20)),
    ((12, 30), 51, (20, 50)),
    ((7, 3), 50, (49, 21)),
    ((100, 100), 250, (249, 249)),
    ((400, 210), 250, (249, 131)),  # shrink: 210 * 249 / 400 = 130.7 -> 131
])
def test_rescale_size_longer_side_is_cell_minus_one(hw, cell, expected):
    h, w = hw
    img = np.full((h, w, 3), 9, np.uint8)
    out, _, pc, _ = paste_instances(
        np.zeros((512, 512, 3), np.uint8), np.zeros((512, 512), np.uint8),
        [(img, np.ones((h, w), bool), 1)], [(0, 0)], cell=cell, mode="copy",
    )
    ys, xs = np.nonzero(pc)
    assert (ys.max() + 1, xs.max() + 1) == expected
    assert max(expected) == cell - 1
    assert abs(expected[0] / expected[1] - h / w) < 0.05 * h / w  # aspect kept


def test_instance_larger_than_image_is_shrunk_to_fit():
    img = np.full((300, 400, 3), 50, np.uint8)
    out, _, pc, pa = paste_instances(
        np.zeros((64, 80, 3), np.uint8), np.zeros((64, 80), np.uint8),
        [(img, np.ones((300, 400), bool), 4)], [(30, 30)], cell=250, mode="copy",
    )
    # scale = min(249/400, 64/300, 80/400) = 0.2 -> 60 x 80, clamped to start at (4, 0)
    exp = np.zeros((64, 80), bool)
    exp[4:64, 0:80] = True
    np.testing.assert_array_equal(pc == 4, exp)
    assert np.all(out[exp] == 50) and np.all(pa[exp] == 1.0)


def test_paste_position_is_clamped_inside_the_image():
    inst = two_colour_instance(10, 10)
    _, _, pc, _ = paste_instances(
        np.zeros((30, 50, 3), np.uint8), np.zeros((30, 50), np.uint8),
        [(*inst, 3)], [(25, 45)], cell=21, mode="copy",
    )
    exp = np.zeros((30, 50), bool)
    exp[10:30, 30:50] = True
    np.testing.assert_array_equal(pc == 3, exp)


def test_mixup_blend_formula():
    rng = np.random.default_rng(123)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    label = np.zeros((64, 64), np.uint8)
    inst_img = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    inst = (inst_img, np.ones((16, 16), bool), 6)
    out, lab, pc, pa = paste_instances(
        image, label, [inst], [(0, 0)], cell=17, mode="mixup", rng=np.random.default_rng(7)
    )
    lam = float(pa[0, 0])
    assert lam == pytest.approx(np.random.default_rng(7).beta(1.0, 1.0), abs=1e-6)
    assert 0.0 < lam < 1.0
    assert np.all(pa[:16, :16] == pa[0, 0]) and np.all(pa[16:] == 0) and np.all(pa[:, 16:] == 0)
    exp = lam * inst_img.astype(np.float64) + (1 - lam) * image[:16, :16].astype(np.float64)
    assert np.abs(out[:16, :16].astype(np.float64) - exp).max() <= 0.5 + 1e-3
    np.testing.assert_array_equal(out[16:], image[16:])
    np.testing.assert_array_equal(lab, label)
    assert np.all(pc[:16, :16] == 6)


def test_overlapping_pastes_fold_the_earlier_class_where_alpha_at_least_half():
    image = np.zeros((40, 40, 3), np.uint8)
    label = np.zeros((40, 40), np.uint8)
    a = (np.full((10, 10, 3), 100, np.uint8), np.ones((10, 10), bool), 3)
    b = (np.full((10, 10, 3), 200, np.uint8), np.ones((10, 10), bool), 4)
    cells = [(0, 0), (5, 5)]  # b covers a's rows 5-9, cols 5-9
    overlap = np.zeros((40, 40), bool)
    overlap[5:10, 5:10] = True
    only_a = np.zeros((40, 40), bool)
    only_a[0:10, 0:10] = True
    only_a &= ~overlap
    only_b = np.zeros((40, 40), bool)
    only_b[5:15, 5:15] = True
    only_b &= ~overlap

    for lam_a, folded in ((0.75, True), (0.5, True), (0.25, False)):
        out, lab, pc, pa = paste_instances(
            image, label, [a, b], cells, cell=11, mode="mixup", rng=FixedLam([lam_a, 0.6])
        )
        assert np.all(pc[overlap] == 4) and np.all(pc[only_a] == 3) and np.all(pc[only_b] == 4)
        assert np.all(pa[overlap] == np.float32(0.6)) and np.all(pa[only_a] == np.float32(lam_a))
        assert np.all(lab[overlap] == (3 if folded else 0))
        assert np.all(lab[~overlap] == 0)  # only the covered part of an earlier paste is folded
        # image: sequential blends
        exp_a = np.rint(lam_a * 100)
        assert np.all(out[only_a] == exp_a)
        assert np.all(out[overlap] == np.rint(0.6 * 200 + 0.4 * exp_a))

    # copy mode: the earlier class is always folded, the top layer wins the image
    out, lab, pc, pa = paste_instances(image, label, [a, b], cells, cell=11, mode="copy")
    assert np.all(lab[overlap] == 3) and np.all(out[overlap] == 200) and np.all(pa[overlap] == 1)


def test_empty_mask_instance_is_skipped():
    image = np.full((30, 30, 3), 5, np.uint8)
    label = np.zeros((30, 30), np.uint8)
    empty = (np.full((8, 8, 3), 99, np.uint8), np.zeros((8, 8), bool), 2)
    full = (np.full((8, 8, 3), 99, np.uint8), np.ones((8, 8), bool), 3)
    out, lab, pc, pa = paste_instances(image, label, [empty], [(0, 0)], cell=9, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(out, image)
    assert not pc.any() and not pa.any()
    out, _, pc, _ = paste_instances(image, label, [empty, full], [(0, 0), (10, 10)], cell=9,
                                    mode="copy")
    assert set(np.unique(pc)) == {0, 3}


def test_paste_instances_rejects_bad_input():
    image = np.zeros((20, 20, 3), np.uint8)
    label = np.zeros((20, 20), np.uint8)
    inst = two_colour_instance(4, 4)
    with pytest.raises(ValueError, match="rng"):
        paste_instances(image, label, [(*inst, 1)], [(0, 0)], cell=5)
    with pytest.raises(ValueError, match="cell"):
        paste_instances(image, label, [(*inst, 1)], [], cell=5, mode="copy")
    with pytest.raises(ValueError, match="image"):
        paste_instances(image.astype(np.float32), label, [], [], cell=5, mode="copy")
    with pytest.raises(ValueError, match="label"):
        paste_instances(image, label[:10], [], [], cell=5, mode="copy")
    with pytest.raises(ValueError, match="mode"):
        paste_instances(image, label, [], [], cell=5, mode="blend")


# ---------------------------------------------------------------- steps 1-5


def make_bank():
    rng = np.random.default_rng(0)
    per_class = {}
    for c in (1, 2, 3):
        lst = []
        for _ in range(3):
            h, w = rng.integers(5, 30, 2)
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            m = np.zeros((h, w), bool)
            m[1:-1, 1:-1] = True
            lst.append((img, m))
        per_class[c] = lst
    return FakeBank(per_class)


def test_paste_from_bank_pastes_detected_classes_in_the_free_cell():
    bank = make_bank()
    image = np.full((64, 64, 3), 30, np.uint8)
    label = np.zeros((64, 64), np.uint8)
    label[:, :32] = 9  # the new class fills the left half
    pseudo = np.zeros((64, 64), np.uint8)
    pseudo[40:, 40:] = 2  # old class 2 detected bottom-right
    pseudo[0:4, 32:36] = 3
    cfg = PasteConfig(cell_size=32, mode="copy")
    out, lab, pc, pa = paste_from_bank(image, label, pseudo, bank, [1, 2, 3], cfg,
                                       np.random.default_rng(0))
    assert set(np.unique(pc)) == {0, 2, 3}  # found 2 classes: no fallback
    # the freest cells: (32, 32) holds pseudo 2 partially, (0, 32) only 16 px -> (0, 32) first
    ys, xs = np.nonzero(pc)
    assert xs.min() >= 32
    np.testing.assert_array_equal(lab, label)
    np.testing.assert_array_equal(pa > 0, pc > 0)


def test_paste_from_bank_fallback_and_pseudo_none():
    bank = make_bank()
    image = np.zeros((100, 100, 3), np.uint8)
    label = np.zeros((100, 100), np.uint8)
    cfg = PasteConfig(cell_size=50, mode="copy", flip_prob=0.0)
    out, lab, pc, pa = paste_from_bank(image, label, None, bank, [1, 2, 3], cfg, np.random.default_rng(1))
    assert len(bank.calls) == 3  # nothing detected: 3 random old classes
    assert set(np.unique(pc)) - {0} <= {1, 2, 3} and pc.any()


def test_paste_from_bank_never_pastes_skipped_classes():
    """skip_classes: neither a detected class nor a fallback draw is ever one of them."""
    bank = make_bank()
    label = np.zeros((100, 100), np.uint8)
    pseudo = np.full((100, 100), 2, np.uint8)  # class 2 detected everywhere
    cfg = PasteConfig(cell_size=50, mode="copy", skip_classes=(2,))
    for seed in range(20):
        _, _, pc, _ = paste_from_bank(np.zeros((100, 100, 3), np.uint8), label, pseudo, bank, [1, 2, 3], cfg,
                                      np.random.default_rng(seed))
        assert pc.any() and 2 not in np.unique(pc)
    assert PasteConfig(skip_classes=[6]).scaled_to(128).skip_classes == (6,)


def test_paste_from_bank_is_deterministic():
    image = np.random.default_rng(5).integers(0, 256, (80, 96, 3), dtype=np.uint8)
    label = np.zeros((80, 96), np.uint8)
    label[:20] = 255
    pseudo = np.zeros((20, 24), np.uint8)
    pseudo[5:10, 5:10] = 1
    cfg = PasteConfig(cell_size=40)
    runs = [paste_from_bank(image, label, pseudo, make_bank(), [1, 2, 3], cfg, np.random.default_rng(s))
            for s in (11, 11, 12)]
    for x, y in zip(runs[0], runs[1]):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(runs[0], runs[2]))


def test_paste_from_bank_degenerate_cases():
    image = np.full((50, 60, 3), 3, np.uint8)
    label = np.zeros((50, 60), np.uint8)
    rng = np.random.default_rng(0)

    def unchanged(res):
        out, lab, pc, pa = res
        np.testing.assert_array_equal(out, image)
        np.testing.assert_array_equal(lab, label)
        assert pc.shape == pa.shape == (50, 60) and not pc.any() and not pa.any()
        assert pc.dtype == np.uint8 and pa.dtype == np.float32
        assert out is not image and lab is not label

    # no old classes
    unchanged(paste_from_bank(image, label, None, make_bank(), [], PasteConfig(), rng))
    # bank empty for every old class
    unchanged(paste_from_bank(image, label, None, FakeBank({}), [1, 2], PasteConfig(), rng))
    # class 2 has no entries: detected but never pasted, the fallback draws only class 1
    bank = FakeBank({1: [(np.full((6, 6, 3), 8, np.uint8), np.ones((6, 6), bool))]})
    pseudo = np.full((50, 60), 2, np.uint8)
    for seed in range(10):
        _, _, pc, _ = paste_from_bank(image, label, pseudo, bank, [1, 2], PasteConfig(),
                                      np.random.default_rng(seed))
        assert set(np.unique(pc)) == {0, 1}
    # image smaller than the cell (S = 250 on a 50 x 60 image): instances shrink to fit
    out, _, pc, _ = paste_from_bank(image, label, None, make_bank(), [1, 2, 3],
                                    PasteConfig(mode="copy"), np.random.default_rng(3))
    assert pc.any() and out.shape == image.shape
    # only empty-mask instances in the bank: nothing pasted
    empty = FakeBank({1: [(np.zeros((5, 5, 3), np.uint8), np.zeros((5, 5), bool))]})
    unchanged(paste_from_bank(image, label, None, empty, [1], PasteConfig(), rng))


# ---------------------------------------------------------------- fast paths


@pytest.mark.parametrize("num_values", [0, 1, 5, 12, 13, 40, 255])
def test_nonzero_values_matches_unique(num_values):
    from eir.data.paste import _nonzero_values

    rng = np.random.default_rng(num_values)
    values = rng.choice(np.arange(1, 256), size=num_values, replace=False)
    arr = np.zeros((37, 53), np.uint8)
    arr.flat[rng.choice(arr.size, size=num_values, replace=False)] = values
    before = arr.copy()
    assert _nonzero_values(arr) == sorted(values.tolist(), reverse=True)
    np.testing.assert_array_equal(arr, before)  # peeling works in a scratch buffer


def test_potential_classes_many_classes_uses_the_histogram_path():
    pseudo = np.arange(0, 50, dtype=np.uint8).reshape(5, 10)
    label = np.zeros((5, 10), np.uint8)
    label.flat[:20] = np.arange(1, 21)  # 20 label values: past the peeling limit as well
    got = potential_classes(pseudo, label, list(range(1, 60)), k=100, rng=np.random.default_rng(0))
    assert sorted(got) == list(range(21, 50))


def test_best_cells_accepts_uint8_occupancy_any_nonzero():
    rng = np.random.default_rng(3)
    for shape, cell in (((37, 53), 10), ((100, 90), 7)):  # few-cells and integral paths
        values = rng.integers(0, 4, shape).astype(np.uint8) * 85  # 0, 85, 170, 255
        assert best_cells(values, cell, 5) == best_cells_reference(values != 0, cell, 5)


def test_masked_copy_fallback_gives_the_same_result(monkeypatch):
    import eir.data.paste as paste

    image = np.random.default_rng(1).integers(0, 256, (60, 70, 3), dtype=np.uint8)
    label = np.zeros((60, 70), np.uint8)
    inst = [(*two_colour_instance(6, 9), 2), (*two_colour_instance(9, 4), 3)]
    cells = [(3, 5), (10, 12)]
    fast = paste.paste_instances(image, label, inst, cells, 21, rng=np.random.default_rng(4))
    monkeypatch.setattr(paste, "_VIEWS_IN_PLACE", False)
    slow = paste.paste_instances(image, label, inst, cells, 21, rng=np.random.default_rng(4))
    for x, y in zip(fast, slow):
        np.testing.assert_array_equal(x, y)
    assert set(np.unique(fast[2])) == {0, 2, 3}


def test_mixup_blend_formula_after_rescale_and_instance_untouched():
    rng = np.random.default_rng(9)
    image = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    inst_img = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    inst_copy = inst_img.copy()
    mask = np.ones((8, 8), bool)
    out, _, pc, pa = paste_instances(image, np.zeros((40, 40), np.uint8), [(inst_img, mask, 1)],
                                     [(4, 4)], cell=17, mode="mixup", rng=np.random.default_rng(2))
    lam = float(pa[4, 4])
    big = np.kron(inst_img, np.ones((2, 2, 1), np.uint8)).astype(np.float64)  # nearest x2: 16 x 16
    exp = lam * big + (1 - lam) * image[4:20, 4:20].astype(np.float64)
    assert np.abs(out[4:20, 4:20].astype(np.float64) - exp).max() <= 0.5 + 1e-3
    assert (pc == 1).sum() == 256
    np.testing.assert_array_equal(inst_img, inst_copy)
