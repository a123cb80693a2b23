"""EIRDatasetMapper and the augmentations of EIR's recipe (Detectron2 layer)."""
import cv2
import numpy as np
import pytest
from conftest import DETECTRON2_SKIP_REASON

pytest.importorskip("detectron2", reason=DETECTRON2_SKIP_REASON)

import torch  # noqa: E402
from detectron2.data import transforms as T  # noqa: E402

from eir.data import paste as eir_paste  # noqa: E402
from eir.data.bank import BankEntry, InstanceBank  # noqa: E402
from eir.data.mapper import (  # noqa: E402
    EIRDatasetMapper,
    PadTransform,
    RandomResizedCrop,
    RandomResizedCropPad,
    build_test_augmentations,
    build_train_augmentations,
)
from eir.data.paste import InstancePaster, PasteConfig  # noqa: E402
from eir.data.prepass import PrepassStore  # noqa: E402
from eir.tasks import build_task  # noqa: E402

TASK = build_task("voc", "15-1")  # steps: 1-15 | 16 | 17 | 18 | 19 | 20
INSTANCE_COLOR = (10, 200, 30)
H, W = 40, 60


def _image():
    """Known content: a horizontal ramp in R, a vertical ramp in G, constant B."""
    ys, xs = np.mgrid[0:H, 0:W]
    return np.stack([xs * 4, ys * 6, np.full_like(xs, 77)], axis=-1).astype(np.uint8)


def _label():
    label = np.zeros((H, W), np.uint8)
    label[8:16, 12:24] = 16  # the new class of step 1
    label[20:28, 4:12] = 3  # an old class
    label[24:32, 40:52] = 17  # a future class
    label[0, :] = 255
    return label


def _write_sample(tmp_path, image_id="img0", image=None, label=None):
    img_file = tmp_path / f"{image_id}.png"  # PNG: lossless, so pixels can be compared
    seg_file = tmp_path / f"{image_id}_label.png"
    cv2.imwrite(str(img_file), cv2.cvtColor(_image() if image is None else image, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(seg_file), _label() if label is None else label)
    return {"file_name": str(img_file), "sem_seg_file_name": str(seg_file), "image_id": image_id}


def _bank(storage="instance"):
    """A hand-made bank serving step 1: one entry, class 3, a plus-shaped region of one colour."""
    mask = np.zeros((10, 12), bool)
    mask[3:7, :] = True
    mask[:, 4:8] = True
    image = np.zeros((10, 12, 3), np.uint8)
    image[mask] = INSTANCE_COLOR
    image[~mask] = (250, 0, 250)  # outside the instance: must never be pasted
    entry = BankEntry(
        image=image, label=np.where(mask, 3, 0).astype(np.uint8), source_size=(H, W),
        offset=(5, 7), classes=(3,), credited=3, source="hand_made",
    )
    return InstanceBank(
        [entry], task=TASK.to_dict(), step=0, budget=1, seed=0, storage=storage,
        classes=TASK.seen_classes(0), class_names={c: TASK.class_names[c] for c in TASK.seen_classes(0)},
    )


def _paster(bank, cfg, prepass=None):
    """Step 1's pasting from ``bank`` (a mapper's ``paste`` callable)."""
    return InstancePaster(bank, prepass, cfg, TASK.old_classes(1))


def test_train_outputs_shapes_dtypes(tmp_path):
    d = _write_sample(tmp_path)
    mapper = EIRDatasetMapper(is_train=True, task=TASK, step=1, augmentations=build_train_augmentations(32))
    out = mapper(dict(d, eir_step=1))
    assert out["image"].shape == (3, 32, 32) and out["image"].dtype == torch.uint8
    assert out["image"].is_contiguous()
    assert out["sem_seg"].shape == (32, 32) and out["sem_seg"].dtype == torch.int64
    assert out["paste_class"].dtype == torch.int64 and not out["paste_class"].any()
    assert out["paste_alpha"].dtype == torch.float32 and not out["paste_alpha"].any()
    assert (out["height"], out["width"]) == (32, 32)
    assert out["file_name"] == d["file_name"] and out["image_id"] == "img0" and out["eir_step"] == 1
    assert set(np.unique(out["sem_seg"].numpy())) <= {0, 16, 255}


def test_train_and_test_label_remapping(tmp_path):
    d = _write_sample(tmp_path)
    label = _label()
    train = EIRDatasetMapper(is_train=True, task=TASK, step=1, augmentations=[])(d)
    np.testing.assert_array_equal(train["image"].permute(1, 2, 0).numpy(), _image())
    expected = np.where(label == 16, 16, 0)
    expected[label == 255] = 255
    np.testing.assert_array_equal(train["sem_seg"].numpy(), expected)  # 3 (old) and 17 (future) -> 0

    test = EIRDatasetMapper(is_train=False, task=TASK, step=1, augmentations=[])(d)
    expected = label.astype(np.int64)
    expected[label == 17] = 0  # VOC: not yet seen -> background
    np.testing.assert_array_equal(test["sem_seg"].numpy(), expected)
    assert (test["height"], test["width"]) == (H, W)

    # ADE20K: unseen classes are ignored in test labels
    ade = build_task("ade", "100-50")
    ade_label = np.zeros((H, W), np.uint8)
    ade_label[5:10, 5:10] = 120
    ade_label[20:30, 20:30] = 7
    d_ade = _write_sample(tmp_path, "ade0", label=ade_label)
    out = EIRDatasetMapper(is_train=False, task=ade, step=0, augmentations=[])(d_ade)
    expected = ade_label.astype(np.int64)
    expected[ade_label == 120] = 255
    np.testing.assert_array_equal(out["sem_seg"].numpy(), expected)


def test_eval_transform_sizes(tmp_path):
    d = _write_sample(tmp_path)  # 40 x 60
    up = np.repeat(np.repeat(_label(), 2, axis=0), 2, axis=1)  # shorter side 40 -> 80: exactly x2
    up = np.where(up == 17, 0, up)
    mapper = EIRDatasetMapper(is_train=False, task=TASK, step=1,
                              augmentations=build_test_augmentations(short_side=80, crop=80))
    out = mapper(d)
    assert out["image"].shape == (3, 80, 80) and (out["height"], out["width"]) == (80, 80)
    np.testing.assert_array_equal(out["sem_seg"].numpy(), up[:, 20:100])  # centre: x0 = (120-80)/2

    full = EIRDatasetMapper(is_train=False, task=TASK, step=1,
                            augmentations=build_test_augmentations(short_side=80, crop=None))(d)
    assert full["image"].shape == (3, 80, 120) and (full["height"], full["width"]) == (80, 120)
    np.testing.assert_array_equal(full["sem_seg"].numpy(), up)
    native = EIRDatasetMapper(is_train=False, task=TASK, step=1,
                              augmentations=build_test_augmentations(None, None))(d)
    assert (native["height"], native["width"]) == (H, W)

    # the paper's default: shorter side 512, then the centre 512 x 512
    default = EIRDatasetMapper(is_train=False, task=TASK, step=1)(d)
    assert default["image"].shape == (3, 512, 512) and (default["height"], default["width"]) == (512, 512)


def _crop_window(tfm, h, w):
    """(x0, y0, width, height) of the window a crop transform list takes from an h x w image."""
    crops = [t for t in tfm.transforms if isinstance(t, T.CropTransform)]
    if not crops:
        return 0, 0, w, h
    (c,) = crops
    return c.x0, c.y0, c.w, c.h


def test_default_crop_never_pads_voc_sized_images():
    """500 x 375 (VOC's usual size): every window lies inside the image, nothing is padded."""
    aug = T.AugmentationList(build_train_augmentations(512))
    image = np.full((375, 500, 3), 7, np.uint8)  # not the padding colour
    np.random.seed(0)
    for _ in range(300):
        inp = T.AugInput(image, sem_seg=np.ones((375, 500), np.uint8))
        tfm = aug(inp)
        assert inp.image.shape == (512, 512, 3) and inp.sem_seg.shape == (512, 512)
        assert (inp.sem_seg == 1).all()  # no ignore fill
        assert (inp.image == 7).all()  # no mean-colour fill
        assert not any(isinstance(t, PadTransform) for t in tfm.transforms)
        x0, y0, ww, wh = _crop_window(tfm, 375, 500)
        assert 0 <= x0 and x0 + ww <= 500 and 0 <= y0 and y0 + wh <= 375


def test_crop_falls_back_to_the_central_crop():
    """When no draw can fit, torchvision's central crop (hand-computed windows)."""
    # 10 x 100 (h x w): a window has area >= 0.5 x 1000 and aspect <= 4/3, so height >=
    # sqrt(500 * 3/4) = 19.4 > 10: nothing fits. Aspect 10 > 4/3: full height, width
    # round(10 * 4/3) = 13, centred: x0 = (100 - 13) // 2 = 43.
    wide = RandomResizedCrop(crop_size=(20, 30))
    np.random.seed(1)
    for _ in range(20):
        assert wide.window(10, 100) == (43, 0, 13, 10)
        # 100 x 10: aspect 0.1 < 3/4: full width, height round(10 / (3/4)) = 13, y0 = 43
        assert wide.window(100, 10) == (0, 43, 10, 13)
    inp = T.AugInput(np.zeros((10, 100, 3), np.uint8), sem_seg=np.zeros((10, 100), np.uint8))
    tfm = wide(inp)
    assert _crop_window(tfm, 10, 100) == (43, 0, 13, 10) and inp.sem_seg.shape == (20, 30)
    # aspect within the range but every area too large: the whole image, resized
    whole = RandomResizedCrop(crop_size=16, scale=(1.5, 2.0))
    assert whole.window(30, 40) == (0, 0, 40, 30)
    tfm = whole.get_transform(np.zeros((30, 40, 3), np.uint8))
    assert [type(t) for t in tfm.transforms] == [T.ResizeTransform]


def test_crop_window_distribution():
    """Seeded draws on 375 x 500 against hand-computed values and torchvision's own crop.

    With s ~ U(0.5, 2) and log r ~ U(log 3/4, log 4/3), a window fits 500 x 375 iff
    s r <= 4/3 and s / r <= 3/4, i.e. s <= 3r/4 (the tighter one over the whole range).
    For log-uniform r: E[r] = (4/3 - 3/4) / ln(16/9) = 1.01385, E[r^2] = (16/9 - 9/16) /
    (2 ln(16/9)) = 1.05609. So P(fit) = (3/4 E[r] - 1/2) / 1.5 = 0.17359 per draw,
    P(all 10 draws fail: the whole image) = 0.82641^10 = 0.1487; for a fitting window
    E[s] = (9/16 E[r^2] - 1/4) / 3 / P(fit) = 0.6607 and E[r] = (3/4 E[r^2] - 1/2 E[r]) /
    1.5 / P(fit) = 1.0951.
    """
    tv = pytest.importorskip("torchvision.transforms")
    n, h, w = 6000, 375, 500
    aug = RandomResizedCrop(512)
    np.random.seed(0)
    ours = np.array([aug.window(h, w) for _ in range(n)], dtype=float)
    torch.manual_seed(0)
    image = torch.zeros(1, h, w)
    theirs = np.array([tv.RandomResizedCrop.get_params(image, [0.5, 2.0], [3 / 4, 4 / 3])
                       for _ in range(n)], dtype=float)[:, [1, 0, 3, 2]]  # (i, j, h, w) -> (x, y, w, h)

    def stats(windows):
        whole = (windows[:, 2] == w) & (windows[:, 3] == h)
        fit = windows[~whole]
        return whole.mean(), fit[:, 2] * fit[:, 3] / (h * w), fit[:, 2] / fit[:, 3]

    fallback, area, aspect = stats(ours)
    assert (ours[:, 2] <= w).all() and (ours[:, 3] <= h).all()
    assert (ours[:, :2] >= 0).all() and (ours[:, 0] + ours[:, 2] <= w).all() and (ours[:, 1] + ours[:, 3] <= h).all()
    assert abs(fallback - 0.1487) < 0.015  # 3 standard errors: 0.0046
    assert 0.5 - 0.01 < area.min() and area.max() <= 1.0 + 1e-9
    assert abs(area.mean() - 0.6607) < 0.006 and abs(aspect.mean() - 1.0951) < 0.008  # ~4 SE
    assert 3 / 4 - 0.01 < aspect.min() and aspect.max() < 4 / 3 + 0.01

    tv_fallback, tv_area, tv_aspect = stats(theirs)
    assert abs(fallback - tv_fallback) < 0.02

    def ks(a, b):  # two-sample Kolmogorov-Smirnov statistic
        grid = np.sort(np.concatenate([a, b]))
        return np.abs(np.searchsorted(np.sort(a), grid, "right") / a.size
                      - np.searchsorted(np.sort(b), grid, "right") / b.size).max()

    # critical value at the 0.1% level for ~5100 samples each: 1.95 * sqrt(2 / 5100) = 0.039
    assert ks(area, tv_area) < 0.039 and ks(aspect, tv_aspect) < 0.039
    # the window's position is uniform over the places it fits
    x_frac = ours[:, 0] / np.maximum(w - ours[:, 2], 1)
    assert abs(x_frac[ours[:, 2] < w - 50].mean() - 0.5) < 0.02


def test_crop_mode_selects_the_variant():
    assert isinstance(build_train_augmentations(32)[0], RandomResizedCrop)
    assert isinstance(build_train_augmentations(32, crop_mode="pad")[0], RandomResizedCropPad)
    with pytest.raises(ValueError, match="crop_mode must be one of"):
        build_train_augmentations(32, crop_mode="letterbox")


def test_padded_crop_variant_geometry():
    """crop_mode="pad": windows of U(scale) x the image area are kept even when larger, and padded."""
    aug = RandomResizedCropPad(crop_size=(24, 32), scale=(0.5, 2.0), ratio=(3 / 4, 4 / 3))
    image = np.zeros((30, 45, 3), np.uint8)
    np.random.seed(0)
    areas, aspects, padded = [], [], 0
    for _ in range(300):
        inp = T.AugInput(image, sem_seg=np.zeros((30, 45), np.uint8))
        tfm = aug(inp)
        assert inp.image.shape == (24, 32, 3) and inp.sem_seg.shape == (24, 32)
        resize = [t for t in tfm.transforms if isinstance(t, T.ResizeTransform)]
        fx, fy = (resize[0].new_w / resize[0].w, resize[0].new_h / resize[0].h) if resize else (1, 1)
        # the window maps onto the crop: its size is crop / scale factor
        areas.append(24 * 32 / (fx * fy) / (30 * 45))
        aspects.append((32 / fx) / (24 / fy))
        pad = inp.sem_seg == 255
        if pad.any():
            padded += 1
            assert (inp.image[pad] == (124, 116, 104)).all()  # padding: the mean colour
    areas, aspects = np.array(areas), np.array(aspects)
    assert 0.45 <= areas.min() < 0.6 and 1.85 < areas.max() <= 2.1
    assert 0.72 <= aspects.min() < 0.8 and 1.25 < aspects.max() <= 1.38
    assert 30 < padded < 270  # windows larger than the image leave padding


def test_pasting_copy_mode(tmp_path):
    d = _write_sample(tmp_path)
    bank = _bank()
    cfg = PasteConfig(mode="copy", cell_size=20, flip_prob=0.5)
    mapper = EIRDatasetMapper(is_train=True, task=TASK, step=1, augmentations=build_train_augmentations(48),
                              bank=bank, paste=_paster(bank, cfg), seed=5)
    for _ in range(3):
        out = mapper(d)
        pc = out["paste_class"].numpy()
        pasted = pc == 3
        assert pasted.any() and set(np.unique(pc)) == {0, 3}  # fallback: only class 3 has entries
        np.testing.assert_array_equal(out["paste_alpha"].numpy()[pasted], 1.0)
        assert not out["paste_alpha"].numpy()[~pasted].any()
        image = out["image"].permute(1, 2, 0).numpy()
        assert (image[pasted] == INSTANCE_COLOR).all()
        assert not (image == (250, 0, 250)).all(axis=-1).any()  # outside the mask never pasted

    # no pasting without a paster (whether a step pastes is its plan's to say)
    m = EIRDatasetMapper(is_train=True, task=TASK, step=1, bank=bank, paste=None, augmentations=[])
    assert not m(d)["paste_class"].any()


def test_prepass_map_follows_the_augmentation(tmp_path, monkeypatch):
    """The low-res map is resized to the image, then cropped / flipped / padded with it."""
    d = _write_sample(tmp_path)
    store = PrepassStore(TASK, 1, stride=4)
    low = np.zeros((H // 4, W // 4), np.uint8)
    low[2:4, 3:6] = 5  # = rows 8:16, cols 12:24 at full resolution: where class 16 is
    store.add("img0", low)
    seen = []

    def spy(image, label, pseudo_map, bank, old_classes, cfg, rng, inplace=False):
        seen.append((label.copy(), pseudo_map.copy(), list(old_classes)))
        h, w = label.shape
        return image, label, np.zeros((h, w), np.uint8), np.zeros((h, w), np.float32)

    monkeypatch.setattr(eir_paste, "paste_from_bank", spy)
    bank = _bank()
    mapper = EIRDatasetMapper(is_train=True, task=TASK, step=1, augmentations=build_train_augmentations(32),
                              bank=bank, paste=_paster(bank, PasteConfig(cell_size=12), store), seed=1)
    for _ in range(30):
        mapper(d)
        mapper({"bank_index": 0, "image_id": "bank_0"})
    labels_with_16 = 0
    for k, (label, pseudo, old) in enumerate(seen):
        assert old == list(range(1, 16))
        assert pseudo.shape == label.shape and pseudo.dtype == np.uint8
        if k % 2:  # replayed entry: nothing detected
            assert not pseudo.any()
            continue
        np.testing.assert_array_equal(pseudo == 5, label == 16)
        assert set(np.unique(pseudo)) <= {0, 5}  # padding reads 0, not 255
        labels_with_16 += (label == 16).any()
    assert labels_with_16 > 3


def test_an_image_missing_from_the_prepass_is_an_error(tmp_path):
    """A training image the store has no map for must not silently get an empty map."""
    d = _write_sample(tmp_path, "img1")
    store = PrepassStore(TASK, 1, stride=4)
    store.add("img0", np.zeros((H // 4, W // 4), np.uint8))
    path = store.save(tmp_path / "step_1" / "prepass.npz")
    bank = _bank()
    for prepass, where in ((store, path), (PrepassStore.load(path), path)):
        mapper = EIRDatasetMapper(is_train=True, task=TASK, step=1, augmentations=build_train_augmentations(32),
                                  bank=bank, paste=_paster(bank, PasteConfig(cell_size=12), prepass))
        with pytest.raises(ValueError, match=rf"training image img1 \({d['file_name']}\) has no map in the "
                                             rf"prepass store {where}"):
            mapper(d)
        assert mapper({"bank_index": 0, "image_id": "bank_0"})["bank_index"] == 0  # replay: needs no map


def test_replay_entries(tmp_path):
    bank = _bank()
    render_image, render_label = bank.render_replay(0, (123.675, 116.28, 103.53))
    mapper = EIRDatasetMapper(is_train=True, task=TASK, step=1, augmentations=[], bank=bank)
    out = mapper({"bank_index": 0, "image_id": "bank_0"})
    np.testing.assert_array_equal(out["image"].permute(1, 2, 0).numpy(), render_image)
    np.testing.assert_array_equal(out["sem_seg"].numpy(), render_label)  # class 3 kept, not remapped
    assert (out["sem_seg"] == 3).sum() == 4 * 12 + 10 * 4 - 4 * 4  # the plus-shaped instance
    assert out["bank_index"] == 0 and out["image_id"] == "bank_0" and (out["height"], out["width"]) == (H, W)
    assert (out["image"].permute(1, 2, 0).numpy()[0, 0] == (124, 116, 104)).all()

    # with the training augmentation and pasting on, the entry's class survives
    aug = EIRDatasetMapper(is_train=True, task=TASK, step=1, augmentations=build_train_augmentations(64),
                           bank=bank, paste=_paster(bank, PasteConfig(mode="copy", cell_size=20)), seed=0)
    assert any((aug({"bank_index": 0, "image_id": "bank_0"})["sem_seg"] == 3).any() for _ in range(5))
    with pytest.raises(ValueError, match="no bank"):
        EIRDatasetMapper(is_train=True, task=TASK, step=1, augmentations=[])({"bank_index": 0, "image_id": "b"})


def test_determinism_given_the_seed(tmp_path):
    dicts = [_write_sample(tmp_path, f"img{i}") for i in range(3)] + [{"bank_index": 0, "image_id": "bank_0"}]

    def run(seed):
        bank = _bank()
        m = EIRDatasetMapper(is_train=True, task=TASK, step=1, augmentations=build_train_augmentations(32),
                             bank=bank, paste=_paster(bank, PasteConfig(cell_size=12)), seed=seed)
        return [m(d) for d in dicts * 2]

    a, b, c = run(7), run(7), run(8)
    for x, y in zip(a, b):
        for key in ("image", "sem_seg", "paste_class", "paste_alpha"):
            assert torch.equal(x[key], y[key])
    assert any(not torch.equal(x["image"], y["image"]) for x, y in zip(a, c))
    # the same image met again (next epoch) gets a fresh draw
    assert any(not torch.equal(a[i]["image"], a[i + 4]["image"]) for i in range(4))
    # the global numpy state is untouched by the mapper
    np.random.seed(123)
    expected = np.random.random()
    np.random.seed(123)
    run(7)
    assert np.random.random() == expected


def test_bad_label_values_raise(tmp_path):
    label = _label()
    label[30, 30] = 21
    d = _write_sample(tmp_path, "bad", label=label)
    mapper = EIRDatasetMapper(is_train=True, task=TASK, step=1, augmentations=[])
    with pytest.raises(ValueError, match=r"bad_label.png holds values \[21\]"):
        mapper(d)
    cv2.imwrite(d["sem_seg_file_name"], np.zeros((H, W + 1), np.uint8))
    with pytest.raises(ValueError, match="same size"):
        mapper(d)


def test_lazy_instantiation(tmp_path):
    """A mapper declared in a LazyConfig: keyword arguments only, nested configs instantiated."""
    from detectron2.config import LazyCall as L
    from detectron2.config import instantiate

    d = _write_sample(tmp_path)
    lazy = L(EIRDatasetMapper)(
        is_train=True, task=L(build_task)(dataset="voc", name="15-1"), step=1,
        augmentations=[L(RandomResizedCrop)(crop_size=16)], seed=3,
    )
    mapper = instantiate(lazy)
    assert mapper.task == TASK and mapper.seed == 3 and mapper.paste is None
    assert mapper(d)["image"].shape == (3, 16, 16)
    with pytest.raises(TypeError):
        EIRDatasetMapper(True, TASK, 1)  # keyword-only
    with pytest.raises(TypeError, match="eir.tasks.Task"):
        EIRDatasetMapper(is_train=True, task=TASK.to_dict(), step=1)
