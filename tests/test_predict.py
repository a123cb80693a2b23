"""tools/predict.py: the written labels are the model's own argmax; inputs are named when bad."""
import os
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


class _RunsCode:
    """Unpickling it calls ``os.mkdir(marker)``: what a malicious checkpoint could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_a_checkpoint_whose_unpickling_runs_code_is_refused_unrun(finished, tmp_path):
    """Evaluation, predict --checkpoint, the backbone check and DONE's digests read a .pth with
    weights_only=True: the file is refused, naming it, and its code never runs."""
    from eir.engine.init_checkpoint import unloaded_backbone_keys
    from eir.fileio import PickledObjectsError, tensor_digest

    marker = tmp_path / "code_ran"
    good = torch.load(finished / "run/step_0/model_final.pth", weights_only=True)
    evil = tmp_path / "shared.pth"
    torch.save({**good, "extra": _RunsCode(marker)}, evil)
    runner = ContinualRunner(tiny_cfg(finished / "run"))
    refused = "shared.pth holds pickled Python objects other than tensors and plain values"
    with pytest.raises(PickledObjectsError, match=refused):
        runner.evaluate_checkpoint(0, evil)
    with pytest.raises(PickledObjectsError, match=refused):
        image = next((finished / "eir_synthetic/JPEGImages").glob("val_*.jpg"))
        run_predict(finished, [image], tmp_path / "out", "--checkpoint", str(evil))
    with pytest.raises(PickledObjectsError, match=refused):
        unloaded_backbone_keys(runner.cfg.model.backbone, str(evil))
    with pytest.raises(PickledObjectsError, match=refused):
        tensor_digest(evil)
    assert not marker.exists()
    assert not (tmp_path / "out").exists()
