"""Bad input fails when the run starts, naming the field or file, not after a step has trained."""
import numpy as np
import pytest
from conftest import requires_detectron2, tiny_cfg, tiny_datasets
from PIL import Image

pytestmark = requires_detectron2


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.seed=-1", "train.seed must be an integer >= 0, got -1"),
        ("train.step=abc", "train.step must be a step number.*'abc'"),
        ("train.step=5", "step"),
        ("method.paste.mode=foo", "method.paste: PasteConfig.mode must be one of.*'foo'"),
        ("method.prepass.stride=0", "method: prepass.stride must be an integer >= 1, got 0"),
        ("method.prepass.short_side=-4", "method: prepass.short_side must be an integer >= 1"),
        ("method.prepass.tau=null", r"method: prepass.tau is None .*set method.prepass.tau=0.7"),
        ("method.new_head_init=zeros", r"method: new_head_init must be one of \('random', 'aux'\), got 'zeros'"),
        ("train.allow_config_change=maybe", "train.allow_config_change must be True or False"),
        # wrong types: the field, not a conversion error
        ("method.memory=abc", r"method: memory \(the bank budget, in entries\) must be an integer >= 0, got 'abc' "
                              r"\(on the command line, write a number without quotes\)"),
        ("schedule.lr=abc", r"schedule.lr \(a learning rate\) must be a number > 0, got 'abc'"),
        ("method.criterion.tau=abc", r"method.criterion: tau is a sigmoid-score threshold in \[0, 1\] \(or None: "
                                     r"no pseudo-labels\), got 'abc'"),
        ("method.criterion.tau=None", r"method.criterion: tau .*got 'None' \(the string 'None': on the command line, "
                                      r"write null for None\)"),
        ("train.output_dir=null", "train.output_dir must be a folder's path, got None"),
        ("train.device=gpu", 'train.device must be "auto", "cpu", "cuda" or "cuda:N", got \'gpu\''),
        # ranges, named with the accepted one
        ("schedule.max_iter=-5", r"schedule.max_iter \(iterations per step\) must be an integer >= 1, or None "
                                 r"\(the epochs set the iterations\), got -5"),
        ("schedule.max_iter=0.5", r"schedule.max_iter .*must be an integer >= 1.*got 0.5"),
        ("train.checkpointer.period=0", r"train.checkpointer.period \(iterations\) must be an integer >= 1, got 0"),
        ("method.memory=2.7", r"method: memory .*must be an integer >= 0, got 2.7"),
        ("method.criterion.w_kd=-1", r"method.criterion: w_kd must be a number >= 0, got -1"),
        ("dataloader.train.total_batch_size=0", r"dataloader.train.total_batch_size \(over all processes\) must "
                                                r"be an integer >= 1, got 0"),
        ("schedule.warmup_fraction=1.0", r"schedule.warmup_fraction .*must be a number >= 0 and < 1, got 1.0"),
        ("dataloader.train.num_workers=-2", "dataloader.train.num_workers must be an integer >= 0, got -2"),
    ],
)
def test_bad_fields_fail_when_the_runner_is_built(override, message, tmp_path):
    from eir.engine.runner import ContinualRunner

    with pytest.raises(ValueError, match=message):
        ContinualRunner(tiny_cfg(tmp_path / "run", override))
    assert not (tmp_path / "run").exists()


def test_total_batch_must_split_evenly_over_the_processes(tmp_path, monkeypatch):
    from detectron2.utils import comm

    from eir.engine.runner import ContinualRunner

    monkeypatch.setattr(comm, "get_world_size", lambda: 3)
    with pytest.raises(ValueError, match=r"total_batch_size \(4\) must be a multiple of the number of processes \(3\)"):
        ContinualRunner(tiny_cfg(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


@pytest.fixture
def datasets(tmp_path):
    with tiny_datasets(tmp_path / "datasets") as root:
        yield root / "eir_synthetic"


@pytest.mark.slow
def test_bad_validation_label_fails_before_training(datasets, tmp_path):
    from eir.engine.runner import ContinualRunner

    first = (datasets / "ImageSets/Segmentation/val.txt").read_text().split()[0]
    label = datasets / "SegmentationClassAug" / f"{first}.png"
    bad = np.array(Image.open(label))
    bad[0, 0] = 77  # not a class of the synthetic dataset (0..10, 255)
    Image.fromarray(bad).save(label)
    with pytest.raises(ValueError, match=f"{label}.*77"):
        ContinualRunner(tiny_cfg(tmp_path / "run")).run()
    assert not (tmp_path / "run" / "step_0").exists()


@pytest.mark.slow
def test_empty_validation_list_fails_before_training(datasets, tmp_path):
    from eir.engine.runner import ContinualRunner

    (datasets / "ImageSets/Segmentation/val.txt").write_text("")
    with pytest.raises((ValueError, FileNotFoundError), match="val"):
        ContinualRunner(tiny_cfg(tmp_path / "run")).run()
    assert not (tmp_path / "run" / "step_0").exists()
    assert not (tmp_path / "run" / "run.lock").exists()


@pytest.mark.slow
def test_a_later_step_without_training_images_fails_before_anything_is_written(datasets, tmp_path):
    """Step 1 of 8-2 learns classes 9 and 10; with no training label holding them, the run
    stops at start-up, naming the step, not after step 0 has trained."""
    from eir.engine.runner import ContinualRunner

    for name in (datasets / "ImageSets/Segmentation/train_aug.txt").read_text().split():
        path = datasets / "SegmentationClassAug" / f"{name}.png"
        label = np.array(Image.open(path))
        label[(label == 9) | (label == 10)] = 0
        Image.fromarray(label).save(path)
    with pytest.raises(ValueError, match="no image of eir_synthetic_train qualifies for step 1"):
        ContinualRunner(tiny_cfg(tmp_path / "run")).run()
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_class_without_training_images_in_its_step_fails_before_anything_is_written(datasets, tmp_path):
    """Step 1 of 8-2 learns classes 9 and 10; with class 10 in no training label (its pixels made
    class 9), step 1 still has images, but class 10's channel would see negatives only: refused at
    start-up, naming the class, not trained."""
    from eir.engine.runner import ContinualRunner
    from eir.tasks import build_task

    for name in (datasets / "ImageSets/Segmentation/train_aug.txt").read_text().split():
        path = datasets / "SegmentationClassAug" / f"{name}.png"
        label = np.array(Image.open(path))
        label[label == 10] = 9
        Image.fromarray(label).save(path)
    name = build_task("synthetic", "8-2").class_names[10]
    with pytest.raises(ValueError, match=rf"for step 1 of .* holds class 10 \({name}\) \(overlap setting\)"):
        ContinualRunner(tiny_cfg(tmp_path / "run")).run()
    assert not (tmp_path / "run").exists()


def test_file_that_is_no_checkpoint_is_named(tmp_path):
    from eir.engine.checkpoint import read_step_checkpoint
    from eir.tasks import build_task

    path = tmp_path / "weights.pth"
    path.write_text("not a checkpoint\n")
    with pytest.raises(ValueError, match=f"{path} cannot be read as a checkpoint"):
        read_step_checkpoint(path, build_task("synthetic", "8-2", "overlap"), 0)


def test_truncated_jpeg_and_png_are_errors_naming_the_file(tmp_path):
    import cv2

    from eir.data.io import read_image, read_label

    image = np.zeros((32, 32, 3), np.uint8)
    image[:, 16:] = 200
    ok, jpeg = cv2.imencode(".jpg", image)
    whole, cut = tmp_path / "whole.jpg", tmp_path / "cut.jpg"
    whole.write_bytes(jpeg.tobytes())
    cut.write_bytes(jpeg.tobytes()[:-2])  # OpenCV still decodes this, filling the rest with grey
    assert read_image(whole).shape == (32, 32, 3)
    with pytest.raises(ValueError, match=f"image {cut} is truncated"):
        read_image(cut)
    label = tmp_path / "label.png"
    Image.fromarray((image[..., 0] > 0).astype(np.uint8)).save(label)
    data = label.read_bytes()
    label.write_bytes(data[:-12])  # the IEND chunk lost: PIL alone decodes it without a word
    with pytest.raises(ValueError, match=f"label {label} is truncated"):
        read_label(label)
