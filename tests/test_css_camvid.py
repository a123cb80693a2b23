"""The CamVid benchmark's route, on a tiny dataset in CamVid's layout (CamVid itself is the
user's: CI never needs it): the layout, its registration through the catalog, and a whole
benchmark run scored on the test split."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import load_script, requires_detectron2
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
bench = load_script("benchmarks/css_benchmark.py")
CAMVID = bench.DATASETS["camvid"]
CLASSES = ("sky", "building", "pole", "road", "pavement", "tree", "sign-symbol", "fence", "car", "pedestrian",
           "bicyclist")


@pytest.fixture(scope="module")
def camvid_root(tmp_path_factory):
    return bench.write_camvid_layout(tmp_path_factory.mktemp("datasets") / "CamVid")


def test_the_tiny_layout_is_camvids(camvid_root):
    for split, count in (("train", 40), ("val", 10), ("test", 10)):
        images = sorted(p.name for p in (camvid_root / split).glob("*.png"))
        labels = sorted(p.name for p in (camvid_root / f"{split}annot").glob("*.png"))
        assert len(images) == count and images == labels, split
    label = np.array(Image.open(camvid_root / "trainannot" / "train_0000.png"))
    image = Image.open(camvid_root / "train" / "train_0000.png")
    assert label.dtype == np.uint8 and label.shape == (image.height, image.width) and image.mode == "RGB"
    assert set(np.unique(label)) <= set(range(12))  # 0..10 the classes, 11 unlabelled
    assert (label[:2] == 11).all() and (label[:, -2:] == 11).all()  # the unlabelled frame
    values = set()
    for path in (camvid_root / "trainannot").glob("*.png"):
        values |= set(np.unique(np.array(Image.open(path))).tolist())
    assert values == set(range(12))  # every class is in the training labels: every step has images
    before = {p: p.stat().st_mtime_ns for p in camvid_root.rglob("*.png")}
    bench.write_camvid_layout(camvid_root)  # already there: nothing is rewritten
    assert {p: p.stat().st_mtime_ns for p in camvid_root.rglob("*.png")} == before


@pytest.fixture
def camvid_catalog(camvid_root, monkeypatch):
    """The CamVid config's registrations, made afresh for ``camvid_root`` (a config registers
    its datasets once per process, with the DETECTRON2_DATASETS of that moment)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    def drop():
        for split in ("train", "val", "test"):
            if f"camvid_{split}" in DatasetCatalog.list():
                DatasetCatalog.remove(f"camvid_{split}")
                MetadataCatalog.remove(f"camvid_{split}")

    drop()
    monkeypatch.setenv("DETECTRON2_DATASETS", str(camvid_root.parent))
    yield camvid_root
    drop()


@requires_detectron2
def test_camvid_tasks_come_from_the_catalog_route(camvid_catalog):
    from detectron2.data import DatasetCatalog

    task = CAMVID.task("8-3")
    assert task.class_names == ("background",) + CLASSES  # value v is class v + 1; unlabelled: 0
    assert task.steps == [list(range(1, 9)), [9, 10, 11]]
    assert CAMVID.task("8-1").steps == [list(range(1, 9)), [9], [10], [11]]
    assert CAMVID.config("8-1").name == "8-1_overlap.py" and CAMVID.config("4-7").name == "8-3_overlap.py"
    dicts = DatasetCatalog.get("camvid_test")
    assert len(dicts) == 10
    assert {Path(d["file_name"]).name for d in dicts} == {p.name for p in (camvid_catalog / "test").glob("*.png")}
    assert all(Path(d["sem_seg_file_name"]).parent.name == "testannot" for d in dicts)


@requires_detectron2
def test_tasks_with_the_same_first_step_share_its_model(camvid_catalog, tmp_path):
    """8-3 and 8-1 train the same step 0 (same classes, task files that differ only in the
    task's name): a run of one adopts the other's step-0 model, tagged with its own task."""
    import torch

    from eir.engine.checkpoint import read_step_checkpoint

    args = SimpleNamespace(work=tmp_path / "work", out=tmp_path / "results", data=CAMVID)
    donor, taker = bench.Run("8-3", "eir", 0, args, []), bench.Run("8-1", "distill", 0, args, [])
    assert donor.step0_key == taker.step0_key
    assert bench.Run("4-7", "eir", 0, args, []).step0_key != donor.step0_key  # other step-0 classes
    assert bench.Run("8-1", "mib", 0, args, []).step0_key != donor.step0_key  # another method's step 0
    weights = {"head.weight": torch.arange(6.0).reshape(2, 3)}
    (donor.dir / "step_0").mkdir(parents=True)
    torch.save({"model": weights, "eir": {"task": donor.task.to_dict(), "step": 0}},
               donor.dir / "step_0" / bench.FINAL_CHECKPOINT)
    donor.write_record()
    assert taker.step0_donor(args.work) is None  # step 0 not done yet
    (donor.dir / "step_0" / "DONE").write_text("{}")
    assert bench.Run("8-1", "distill", 1, args, []).step0_donor(args.work) is None  # another seed
    assert taker.step0_donor(args.work) == donor.dir

    taker.adopt_step0(donor.dir)
    adopted = taker.dir / "step_0" / bench.FINAL_CHECKPOINT
    assert torch.equal(read_step_checkpoint(adopted, taker.task, 0)["head.weight"], weights["head.weight"])
    with pytest.raises(ValueError, match="belongs to"):  # tagged with 8-1, no longer with 8-3
        read_step_checkpoint(adopted, donor.task, 0)
    read_step_checkpoint(donor.dir / "step_0" / bench.FINAL_CHECKPOINT, donor.task, 0)  # the donor's untouched
    (taker.dir / "step_0" / "DONE").write_text("{}")
    assert bench.step0_source(taker) == "8-3 eir" and bench.step0_source(donor) == "(trained here)"


@requires_detectron2
@pytest.mark.slow
def test_a_camvid_benchmark_run_is_scored_on_the_test_split(camvid_root, tmp_path):
    work = tmp_path / "work"
    cmd = [sys.executable, str(ROOT / "benchmarks/css_benchmark.py"), "--dataset", "camvid", "--quick",
           "--tasks", "8-3", "--variants", "finetune", "eir_regions", "--work", str(work),
           "--datasets", str(camvid_root.parent), "--threads", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    args = SimpleNamespace(work=work, out=work, data=CAMVID)  # --quick reports into --work
    for variant in ("finetune", "eir_regions"):
        run = bench.Run("8-3", variant, 0, args, bench.QUICK_OVERRIDES)
        assert run.is_finished()
        scored = [json.loads(run.test_file(t).read_text()) for t in (0, 1)]
        # the test split's numbers, not the validation split's the run recorded
        assert [len(s["per_class"]) for s in scored] == [9, 12]  # background and the classes seen
        val = json.loads((run.dir / "step_1" / "metrics.json").read_text())["summary"]
        assert scored[1]["per_class"] != val["per_class"]
        result = bench.read_run(run)
        assert result["final"] == {k: scored[1][k] for k in bench.METRICS}
        assert result["per_step"] == [scored[0]["all"], scored[1]["all"]]
        assert result["old_per_step"] == [scored[0]["old"], scored[1]["old"]]
        record = run.recorded()  # what the report is made from
        assert {k: record[k] for k in result} == result and len(record["step_seconds"]) == 2
        assert record["made"]["threads"] == 1
        assert record["loss_peak_ratio"][1] == bench.loss_peak_ratio(run.dir / "step_1") >= 1.0
    # the region rule gives the bank instances on these frames
    manifest = json.loads((work / "8-3" / "eir_regions" / "seed_0" / "step_0" / "bank" / "manifest.json").read_text())
    assert manifest["storage"] == "instance" and len(manifest["entries"]) > 0
    report = (work / "css_camvid.md").read_text()
    assert "scored on: the test split (`camvid_test`)" in report
    assert "| variant | background | sky | building | pole | road |" in report
    assert (work / "css_camvid.png").is_file()
    # paste_diagnostics reads the run once the file that registers its datasets is loaded
    diag = [sys.executable, str(ROOT / "benchmarks/paste_diagnostics.py"), str(work / "8-3" / "eir_regions" / "seed_0"),
            "--step", "1", "--num-images", "8", "--datasets", str(camvid_root.parent)]
    refused = subprocess.run(diag, capture_output=True, text=True, env=env, timeout=300)
    assert refused.returncode != 0 and "camvid_train" in refused.stderr and "--register" in refused.stderr
    looked = subprocess.run(diag + ["--register", str(ROOT / "projects/EIR/configs/base_camvid.py")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert looked.returncode == 0, looked.stderr[-3000:]
    assert "- 8 training samples (new images and bank entries, seed 0)" in looked.stdout, looked.stdout
    # a rerun finds everything done, the test scores included
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0 and again.stdout.count("recorded before, skipped") == 2, again.stdout
    # ... and so does one without the run folders (continued elsewhere): the records stand in
    def tables(text):  # the results, without the header's date and load average
        return text[text.index("\n## "):text.index("![")]

    shutil.rmtree(work / "8-3")
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0 and again.stdout.count("recorded before, skipped") == 2, again.stdout
    assert tables((work / "css_camvid.md").read_text()) == tables(report)
