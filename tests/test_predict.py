"""tools/predict.py: the written labels are the model's own argmax; inputs are named when bad."""
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_RUN, requires_detectron2, tiny_cfg, tiny_datasets
from PIL import Image

pytest.importorskip("detectron2")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import predict  # noqa: E402

from eir.engine.runner import ContinualRunner  # noqa: E402

pytestmark = requires_detectron2


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A tiny two-step synthetic run (its step 0 alone), and its validation images."""
    root = tmp_path_factory.mktemp("predict")
    with tiny_datasets(root):
        ContinualRunner(tiny_cfg(root / "run", "train.step=0")).run()
        yield root


def run_predict(finished, inputs, out, *extra):
    overrides = [o for o in TINY_RUN] + [f"train.output_dir={finished / 'run'}"]
    return predict.main(["--step", "0", "--input", *map(str, inputs), "--output", str(out), *extra, *overrides])


def test_labels_are_the_model_s_argmax_in_any_batch_size(finished, tmp_path):
    images = sorted((finished / "eir_synthetic/JPEGImages").glob("val_*.jpg"))[:5]
    folder = tmp_path / "images"
    folder.mkdir()
    for p in images:
        shutil.copy(p, folder / p.name)
    one = run_predict(finished, [folder], tmp_path / "b1", "--batch-size", "1")
    three = run_predict(finished, [folder], tmp_path / "b3", "--batch-size", "3")
    assert [p.name for p in one] == [p.stem + ".png" for p in images]  # every image of the folder
    runner = ContinualRunner(tiny_cfg(finished / "run"))
    model = runner.trained_model(0).eval()
    for path, a, b in zip(images, one, three):
        label = np.array(Image.open(a))
        np.testing.assert_array_equal(label, np.array(Image.open(b)))
        image = np.array(Image.open(path).convert("RGB"))
        with torch.no_grad():  # the synthetic config evaluates at full resolution: no resize
            scores = model([{"image": torch.from_numpy(image.transpose(2, 0, 1).copy())}])[0]["sem_seg"]
        np.testing.assert_array_equal(label, scores.argmax(0).numpy())
        assert Image.open(a).mode == "P" and Image.open(a).getpalette()[3:6] == list(runner.task.spec.colors[1])
        assert (a.parent / f"{path.stem}_overlay.jpg").is_file()


def test_a_missing_or_undecodable_input_is_named(finished, tmp_path):
    with pytest.raises(FileNotFoundError, match="input .*nothing.jpg does not exist"):
        run_predict(finished, [tmp_path / "nothing.jpg"], tmp_path / "out")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(Exception, match="broken.jpg"):
        run_predict(finished, [broken], tmp_path / "out")
    assert not (tmp_path / "out").exists()
