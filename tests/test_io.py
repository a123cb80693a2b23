"""eir.data.io: one reader for every stage (EXIF orientation applied, palette labels as indices).

The cross-stage test writes an EXIF-rotated JPEG and a palette label and checks that the
mapper, the prepass, the bank build and the class-presence table all see the same pixels.
"""
import cv2
import numpy as np
import pytest
import torch
from conftest import requires_detectron2
from PIL import Image, ImageOps

from eir.data.io import check_same_size, header_size, read_image, read_label
from eir.tasks import build_task

TASK = build_task("voc", "15-1")  # step 0: classes 1..15; step 1: class 16
# Stored pixel grid 32 x 48 (h x w); EXIF orientation 6 ("rotate 90 degrees clockwise to
# display") makes the displayed image 48 x 32.
STORED_H, STORED_W = 32, 48
H, W = STORED_W, STORED_H
GREY, RED, YELLOW, BLUE = (128, 128, 128), (230, 20, 20), (230, 230, 20), (20, 20, 230)


def _displayed_scene():
    """The image as displayed (48 x 32) and its label: 16-pixel blocks, so JPEG edges stay clean."""
    image = np.empty((H, W, 3), np.uint8)
    image[...] = GREY
    image[0:16, 0:16] = RED  # an old class (3) the old model finds
    image[16:32, 16:32] = YELLOW  # class 3 scores high there too, but background scores higher
    image[32:48, 0:16] = BLUE  # the new class of step 1 (16), labelled
    label = np.zeros((H, W), np.uint8)
    label[32:48, 0:16] = 16
    label[47, 16:] = 255
    return image, label


def _write_exif_jpeg(path, displayed, orientation=6):
    """Store ``displayed`` turned back (the camera's grid) with an EXIF orientation tag."""
    stored = np.ascontiguousarray(np.rot90(displayed, k=1))  # orientation 6 undone
    assert stored.shape[:2] == (STORED_H, STORED_W)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(path, "JPEG", quality=95, subsampling=0, exif=exif)


def _write_palette_label(path, label):
    """A palette PNG whose colours are nothing like its indices (as VOC's SegmentationClass)."""
    im = Image.fromarray(label, mode="P")
    palette = np.zeros((256, 3), np.uint8)
    palette[3] = (200, 10, 10)
    palette[16] = (0, 64, 128)
    palette[255] = (224, 224, 192)
    im.putpalette(palette.ravel().tolist())
    im.save(path)


@pytest.fixture()
def exif_sample(tmp_path):
    image, label = _displayed_scene()
    jpg, png = tmp_path / "rotated.jpg", tmp_path / "rotated_label.png"
    _write_exif_jpeg(jpg, image)
    _write_palette_label(png, label)
    return {"file_name": str(jpg), "sem_seg_file_name": str(png), "image_id": "rotated"}, image, label


# --------------------------------------------------------------------------- the reader


def test_read_image_applies_exif_orientation(exif_sample):
    d, displayed, _ = exif_sample
    image = read_image(d["file_name"])
    assert image.shape == (H, W, 3) and image.dtype == np.uint8
    with Image.open(d["file_name"]) as im:
        assert im.size == (STORED_W, STORED_H)  # the file really is stored turned
        raw = np.array(im.convert("RGB"))
        np.testing.assert_array_equal(image, np.array(ImageOps.exif_transpose(im).convert("RGB")))
    np.testing.assert_array_equal(image, np.rot90(raw, k=-1))  # a lossless turn of the decoded grid
    assert np.abs(image.astype(int) - displayed).mean() < 3  # and the right way round
    # OpenCV (which also applies the orientation by default) agrees up to decoder rounding
    bgr = cv2.imread(d["file_name"], cv2.IMREAD_COLOR)
    assert np.abs(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(int) - image).max() <= 2


def test_read_image_without_exif_and_grey_files(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgb)
    grey = np.arange(35, dtype=np.uint8).reshape(5, 7)
    Image.fromarray(grey).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), np.repeat(grey[..., None], 3, axis=2))
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        read_image(tmp_path / "missing.jpg")
    (tmp_path / "junk.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="junk.jpg"):
        read_image(tmp_path / "junk.jpg")


def test_read_label_gives_stored_indices(tmp_path):
    _, label = _displayed_scene()
    _write_palette_label(tmp_path / "p.png", label)
    got = read_label(tmp_path / "p.png")
    assert got.dtype == np.uint8 and got.shape == (H, W)
    np.testing.assert_array_equal(got, label)  # indices 0, 16, 255, not palette colours
    assert cv2.imread(str(tmp_path / "p.png"), cv2.IMREAD_UNCHANGED).shape == (H, W, 3)  # OpenCV's view
    Image.fromarray(label).save(tmp_path / "l.png")  # grayscale
    np.testing.assert_array_equal(read_label(tmp_path / "l.png"), label)
    Image.fromarray(label.astype(np.uint16)).save(tmp_path / "i16.png")  # 16-bit, values <= 255
    np.testing.assert_array_equal(read_label(tmp_path / "i16.png"), label)
    Image.fromarray(np.stack([label] * 3, axis=-1)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match=r"rgb.png is a colour \(RGB\) image, not class ids"):
        read_label(tmp_path / "rgb.png")
    Image.fromarray(np.full((2, 2), 300, np.uint16)).save(tmp_path / "big.png")
    with pytest.raises(ValueError, match="outside 0..255"):
        read_label(tmp_path / "big.png")


def test_16_bit_images_are_scaled_to_8_bits(tmp_path):
    """A 16-bit grayscale PNG (PIL mode I;16) reads as v / 257 rounded in all three channels,
    not as 255 wherever v > 255 (PIL's own conversion)."""
    values = np.array([[0, 257, 1000], [32768, 65000, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "camera.png")
    assert Image.open(tmp_path / "camera.png").mode.startswith("I")
    expected = np.array([[0, 1, 4], [128, 253, 255]], np.uint8)  # 1000/257 = 3.9, 65000/257 = 252.9
    got = read_image(tmp_path / "camera.png")
    assert got.dtype == np.uint8 and got.shape == (2, 3, 3)
    for channel in range(3):
        np.testing.assert_array_equal(got[..., channel], expected)
    Image.fromarray(np.zeros((2, 2), np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(ValueError, match="float.tif has floating-point pixels"):
        read_image(tmp_path / "float.tif")


def test_labels_of_other_modes_are_described_as_what_they_are(tmp_path):
    Image.fromarray(np.eye(4, dtype=bool)).save(tmp_path / "mask.png")
    with pytest.raises(ValueError, match=r"mask.png is a 1-bit \(black and white\) image.*mode 1\)"):
        read_label(tmp_path / "mask.png")
    Image.fromarray(np.zeros((4, 4, 2), np.uint8), mode="LA").save(tmp_path / "la.png")
    with pytest.raises(ValueError, match="la.png is a grayscale image with an alpha channel"):
        read_label(tmp_path / "la.png")
    with pytest.raises(ValueError, match="la.png is a grayscale image with an alpha channel"):
        header_size(tmp_path / "la.png", "label")


def test_an_image_above_pil_s_bomb_guard_is_named_with_how_to_allow_it(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 400 pixels > 2 x 100: PIL's error
    allow = r"huge.png is larger than PIL opens by default .*Image.MAX_IMAGE_PIXELS = None"
    with pytest.raises(ValueError, match=allow):
        read_image(tmp_path / "huge.png")
    with pytest.raises(ValueError, match=allow):
        header_size(tmp_path / "huge.png", "image")


def test_header_size_reads_the_displayed_size_and_refuses_damaged_files(exif_sample, tmp_path):
    d, _, _ = exif_sample
    assert header_size(d["file_name"], "image") == (H, W)  # EXIF orientation 6: 48 x 32 as displayed
    assert header_size(d["sem_seg_file_name"], "label") == (H, W)
    data = open(d["file_name"], "rb").read()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.jpg (is truncated|cannot be decoded)"):
        header_size(tmp_path / "cut.jpg", "image")
    (tmp_path / "no_end.jpg").write_bytes(data[:-2])  # the header whole, the end marker lost
    with pytest.raises(ValueError, match="no_end.jpg is truncated"):
        header_size(tmp_path / "no_end.jpg", "image")
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="junk.png is not an image PIL can read"):
        header_size(tmp_path / "junk.png", "image")


def test_check_same_size_names_both_files():
    check_same_size(np.zeros((4, 5, 3)), np.zeros((4, 5)), "a.jpg", "a.png")
    with pytest.raises(ValueError, match=r"label a.png is 5x4 but image a.jpg is 4x5.*EXIF"):
        check_same_size(np.zeros((4, 5, 3)), np.zeros((5, 4)), "a.jpg", "a.png")


# --------------------------------------------------------------------------- every stage


class _ColourOldModel:
    """A stand-in for the step-0 model of VOC 15-1 (16 channels), reading colours.

    Red: class 3 at sigmoid 0.95, background channel low. Yellow: class 3 the same, but the
    background channel higher (sigmoid 0.998), so the pixel must stay background.
    """

    device = torch.device("cpu")

    def preprocess_image(self, inputs):
        from detectron2.structures import ImageList

        return ImageList.from_tensors([x["image"].float() for x in inputs])

    def logits(self, images):
        r, g = images[:, 0], images[:, 1]
        z = torch.full((images.shape[0], 16) + tuple(images.shape[2:]), -8.0)
        z[:, 0] = torch.where(g > 128, 6.0, -8.0)
        z[:, 3] = torch.where(r > 128, float(np.log(0.95 / 0.05)), -8.0)
        return z


@requires_detectron2
def test_every_stage_reads_an_exif_rotated_jpeg_and_palette_label_alike(exif_sample):
    from eir.data.bank import InstanceBank
    from eir.data.datasets import class_presence
    from eir.data.mapper import EIRDatasetMapper
    from eir.engine.prepass import run_prepass

    d, _, label = exif_sample
    image = read_image(d["file_name"])

    # the mapper, training and evaluation (no augmentation: the pixels as read)
    for is_train in (True, False):
        out = EIRDatasetMapper(is_train=is_train, task=TASK, step=1, augmentations=[])(d)
        np.testing.assert_array_equal(out["image"].permute(1, 2, 0).numpy(), image)
        np.testing.assert_array_equal(out["sem_seg"].numpy(), np.where(label == 3, 0, label))

    # the class-presence table: indices 0 and 16 (255 is not a class)
    expected = np.zeros(21, bool)
    expected[[0, 16]] = True
    np.testing.assert_array_equal(class_presence([d], TASK.spec, verbose=False)[0], expected)

    # the bank: the entry is the labelled block, its pixels those the mapper reads
    bank = InstanceBank.build([d], TASK, 1, budget=1, seed=0, verbose=False)
    (entry,) = bank.entries
    assert entry.source_size == (H, W) and entry.offset == (32, 0) and entry.classes == (16,)
    np.testing.assert_array_equal(entry.image, image[32:48, 0:16])
    np.testing.assert_array_equal(entry.label, label[32:48, 0:16])

    # the prepass: full resolution (short side 32, stride 1), so its map must line up with
    # the displayed image pixel for pixel: class 3 on red, nothing on yellow (channel 0 wins)
    store = run_prepass(_ColourOldModel(), [d], TASK, 1, tau=0.7, short_side=W, stride=1)
    pseudo = store.lookup("rotated")
    assert pseudo.shape == (H, W)
    want = np.zeros((H, W), np.uint8)
    want[0:16, 0:16] = 3
    np.testing.assert_array_equal(pseudo, want)
