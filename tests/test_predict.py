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


def _png_inputs(finished, folder, names):
    """Synthetic validation images saved under ``names`` (PNG, BMP, ... by extension), distinct images."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted((finished / "eir_synthetic/JPEGImages").glob("val_*.jpg"))
    for source, name in zip(sources, names):
        Image.open(source).convert("RGB").save(folder / name)
    return [folder / n for n in names]


def test_predict_never_overwrites_a_file_it_did_not_write(finished, tmp_path):
    """The issue's case: --output equal to the folder of PNG photos. Refused before anything is
    written; so is a folder holding a file of an output's name from elsewhere, and --output naming
    a file. predict's own files are overwritten by a rerun."""
    photos = _png_inputs(finished, tmp_path / "photos", ["a.png", "b.png"])
    before = {p: p.read_bytes() for p in photos}
    with pytest.raises(ValueError, match=r"--output \S*photos holds input images \(a.png, b.png\)"):
        run_predict(finished, [tmp_path / "photos"], tmp_path / "photos")
    assert {p: p.read_bytes() for p in photos} == before and sorted(os.listdir(tmp_path / "photos")) == ["a.png", "b.png"]
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.png").write_bytes(b"the user's own file")
    with pytest.raises(ValueError, match=r"already holds 1 file\(s\) .* that it did not write .*e.g. b.png"):
        run_predict(finished, [tmp_path / "photos"], out)
    assert (out / "b.png").read_bytes() == b"the user's own file" and sorted(os.listdir(out)) == ["b.png"]
    (out / "b.png").unlink()
    first = run_predict(finished, [tmp_path / "photos"], out)
    assert [p.name for p in first] == ["a.png", "b.png"]
    assert run_predict(finished, [tmp_path / "photos"], out) == first  # its own files: rewritten
    (out / "a_overlay.jpg").write_bytes(b"edited since")
    with pytest.raises(ValueError, match="e.g. a_overlay.jpg"):
        run_predict(finished, [tmp_path / "photos"], out)
    with pytest.raises(ValueError, match=r"--output \S*a.png is a file, not a folder"):
        run_predict(finished, [photos[1]], photos[0])


def test_inputs_of_one_stem_get_outputs_of_their_own(finished, tmp_path):
    """im.png and im.bmp (two different images) each get their own label, equal to the one each
    gets alone, instead of the later replacing the earlier."""
    both = _png_inputs(finished, tmp_path / "both", ["im.bmp", "im.png"])
    written = run_predict(finished, [tmp_path / "both"], tmp_path / "out")
    assert [p.name for p in written] == ["im.bmp.png", "im.png.png"]
    assert sorted(os.listdir(tmp_path / "out")) == [
        "eir_predictions.json", "im.bmp.png", "im.bmp_overlay.jpg", "im.png.png", "im.png_overlay.jpg"
    ]
    for path, label in zip(both, written):
        (alone,) = run_predict(finished, [path], tmp_path / f"alone_{path.suffix[1:]}")
        np.testing.assert_array_equal(np.array(Image.open(label)), np.array(Image.open(alone)))
    overlays = [np.array(Image.open(tmp_path / "out" / f"{p.name}_overlay.jpg")) for p in both]
    assert np.abs(overlays[0].astype(int) - overlays[1]).mean() > 10  # each drawn on its own image
