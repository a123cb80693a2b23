"""What a run shows a researcher: TensorBoard events, the forgetting figure, the per-class map.

The per-class map is core (hand-made metrics, no Detectron2); the rest needs Detectron2 and a
tiny synthetic run (8 iterations a step).
"""
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import load_script, requires_detectron2, synthetic_datasets

from eir.evaluation.report import per_class_grid, summary_markdown, write_per_class, write_summary
from eir.tasks import build_task

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = ROOT / "projects/EIR/configs/synthetic/4-2_overlap.py"
TINY = [
    "dataloader.train.total_batch_size=8",
    "dataloader.train.num_workers=0",
    "dataloader.test.num_workers=0",
    "method.memory=12",
    "schedule.max_iter=8",
    "train.device=cpu",
    "train.log_period=4",
]


# --------------------------------------------------------------------------- per-class map


def hand_made_summaries():
    """Three steps of task synthetic 4-2: disc is forgotten at step 1, triangle is n/a at step 2."""
    return {
        0: {"per_class": {"background": 90.0, "disc": 80.0, "square": 70.0, "triangle": 60.0, "ring": 50.0}},
        1: {"per_class": {"background": 88.0, "disc": 10.0, "square": 65.0, "triangle": 55.0, "ring": 45.0,
                          "cross": 40.0, "star": 30.0}},
        2: {"per_class": {"background": 85.0, "disc": 5.0, "square": 60.0, "triangle": None, "ring": 42.0,
                          "cross": 35.0, "star": 25.0, "hexagon": 20.0, "crescent": 15.0}},
    }


def test_per_class_grid_has_a_cell_per_class_and_step_blank_before_the_class_is_learnt(tmp_path):
    task = build_task("synthetic", "4-2")
    grid = per_class_grid(task, hand_made_summaries())
    assert grid.steps == [0, 1, 2]
    assert grid.names == ["background", "disc", "square", "triangle", "ring", "cross", "star",
                          "hexagon", "crescent", "bar", "diamond"]
    assert grid.learnt_at == [0, 0, 0, 0, 0, 1, 1, 2, 2, 3, 3]
    nan = np.nan
    expected = np.array([
        [90, 88, 85], [80, 10, 5], [70, 65, 60], [60, 55, nan], [50, 45, 42],
        [nan, 40, 35], [nan, 30, 25], [nan, nan, 20], [nan, nan, 15], [nan, nan, nan], [nan, nan, nan],
    ])
    np.testing.assert_array_equal(grid.iou, expected)
    learnt = np.array([[1, 1, 1]] * 5 + [[0, 1, 1]] * 2 + [[0, 0, 1]] * 2 + [[0, 0, 0]] * 2, dtype=bool)
    np.testing.assert_array_equal(grid.learnt, learnt)
    assert grid.learnt[3, 2] and np.isnan(grid.iou[3, 2])  # learnt but n/a, not blank

    path = write_per_class(tmp_path, task, hand_made_summaries())
    png = cv2.imread(str(path))
    assert path == tmp_path / "per_class.png" and png is not None and png.std() > 10


def hand_made_banks():
    """The bank records of steps 0 and 1 of synthetic 4-2 (memory 4): step 0's lacks ring, step
    1's is empty (by hand, not a real selection), so step 2 ran without instances."""
    def record(step, entries, classes, warnings=()):
        return {"serves_step": step + 1, "storage": "instance", "budget": 4, "entries": sum(entries.values()),
                "instances": {"rule": "one_region"}, "classes": classes, "bank_entries": entries,
                "warnings": list(warnings), "method": "EIR", "without_bank": "distillation with pseudo-labels"}

    return {
        0: record(0, {"disc": 1, "square": 1, "triangle": 2, "ring": 0},
                  {n: {"images": 10, "qualifying": 0 if n == "ring" else 3} for n in ("disc", "square", "triangle", "ring")},
                  ["the bank that step 0 built for step 1 holds no entry of 1 of its 4 classes ..."]),
        1: record(1, dict.fromkeys(("disc", "square", "triangle", "ring", "cross", "star"), 0),
                  {"cross": {"images": 5, "qualifying": 0}, "star": {"images": 4, "qualifying": 0}}),
    }


def test_summary_shows_each_banks_entries_and_says_first_where_a_step_had_none(tmp_path):
    task = build_task("synthetic", "4-2")
    summaries = {t: {k: 50.0 for k in ("old", "new", "all", "hiou", "pixel_acc")} for t in range(3)}
    lines = summary_markdown(task, summaries, hand_made_banks()).splitlines()
    assert lines[2] == (
        "**Step 2 ran without instances: its bank was empty (0 of 4 entries), so EIR trained as distillation "
        "with pseudo-labels.** Its numbers are not EIR's; see the instance bank below."
    )
    assert sum("without instances" in line for line in lines) == 1  # step 1's bank held entries
    table = lines[lines.index("| class | after step 0 | after step 1 |"):]
    assert table[2:9] == [
        "| disc | 1 (3 of 10) | 0 |", "| square | 1 (3 of 10) | 0 |", "| triangle | 2 (3 of 10) | 0 |",
        "| ring | 0 (0 of 10) | 0 |", "| cross | - | 0 (0 of 5) |", "| star | - | 0 (0 of 4) |",
        "| all | 4 of 4 | 0 of 4 |",
    ]
    assert "- step 0: the bank that step 0 built for step 1 holds no entry of 1 of its 4 classes ..." in lines
    assert summary_markdown(task, summaries) == summary_markdown(task, summaries, {})  # no record, no bank section
    assert "Instance bank" not in summary_markdown(task, summaries)
    # summary.json is the same with or without the banks
    for folder, banks in (("plain", None), ("banks", hand_made_banks())):
        (tmp_path / folder).mkdir()
        write_summary(tmp_path / folder, task, {t: dict(s, per_class=hand_made_summaries()[t]["per_class"])
                                                for t, s in summaries.items()}, banks)
    assert (tmp_path / "plain/summary.json").read_bytes() == (tmp_path / "banks/summary.json").read_bytes()


def test_per_class_grid_names_a_summary_that_lacks_a_learnt_class():
    task = build_task("synthetic", "4-2")
    summaries = hand_made_summaries()
    del summaries[1]["per_class"]["star"]
    with pytest.raises(ValueError, match="step 1 has no IoU for class 'star'"):
        per_class_grid(task, summaries)


# --------------------------------------------------------------------------- forgetting figure


def steps_spanned(label: np.ndarray, task) -> int:
    present = set(np.unique(label).tolist())
    return sum(bool(present & set(classes)) for classes in task.steps)


@requires_detectron2
def test_choose_images_prefers_classes_of_several_steps_and_is_seeded():
    from eir.evaluation.prediction_figure import choose_images

    task = build_task("synthetic", "4-2")  # steps 1-4 | 5-6 | 7-8 | 9-10
    presence = np.zeros((8, 11), dtype=bool)
    presence[:, 0] = True
    for i, classes in enumerate([[1], [1, 5], [2], [3, 4], [6, 9], [10], [1, 7, 9], [8]]):
        presence[i, classes] = True
    several = {1, 4, 6}  # images 3 (1 step: 3, 4) and the single-class ones are not
    chosen = choose_images(presence, task, 5, seed=3)
    assert len(chosen) == 5 == len(set(chosen))
    assert set(chosen[:3]) == several and not set(chosen[3:]) & several
    assert choose_images(presence, task, 5, seed=3) == chosen
    assert choose_images(presence, task, 2, seed=3) == chosen[:2]
    assert len({tuple(choose_images(presence, task, 5, seed=s)) for s in range(6)}) > 1


@pytest.fixture(scope="module")
def metadata():
    pytest.importorskip("detectron2")
    from detectron2.data import MetadataCatalog

    from eir.data.datasets import register_eir_datasets

    register_eir_datasets()
    return MetadataCatalog.get("eir_synthetic_val")


def interior(mask: np.ndarray) -> np.ndarray:
    """Pixels whose 7x7 neighbourhood lies in ``mask`` (outside the image counts as outside):
    away from the segment edges, which the Visualizer draws in off-white, antialiased, up to
    3 pixels into a segment."""
    kernel = np.ones((7, 7), np.uint8)
    return cv2.erode(mask.astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)


def assert_drawn_in_class_colours(panel, label, metadata):
    """Every class of ``label`` is drawn in its dataset colour, checked away from edges."""
    checked = 0
    for c in np.unique(label):
        inside = interior(label == c)
        colour = (224, 224, 192) if c == 255 else metadata.stuff_colors[c]
        if inside.any():
            diff = np.abs(panel[inside].astype(int) - np.asarray(colour)).max()
            assert diff <= 2, (int(c), diff)
            checked += 1
    return checked


@requires_detectron2
def test_label_panel_draws_every_class_in_its_dataset_colour(metadata):
    from eir.evaluation.prediction_figure import label_panel

    label = np.zeros((96, 128), np.uint8)
    label[10:40, 10:50] = 1
    label[50:90, 20:60] = 5
    label[60:70, 30:40] = 9  # a hole in class 5
    label[20:80, 80:120] = 255
    label[35:60, 90:110] = 10
    panel = label_panel(label, metadata)
    assert panel.shape == (96, 128, 3) and panel.dtype == np.uint8
    assert len({tuple(metadata.stuff_colors[c]) for c in (0, 1, 5, 9, 10)}) == 5  # the check can tell them apart
    assert assert_drawn_in_class_colours(panel, label, metadata) == 6


# --------------------------------------------------------------------------- a tiny run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    pytest.importorskip("detectron2")
    import torch
    from detectron2.config import LazyConfig

    from eir.engine.runner import ContinualRunner

    with synthetic_datasets(tmp_path_factory.mktemp("datasets"), 120, 30) as root:
        torch.manual_seed(0)
        out = tmp_path_factory.mktemp("run")
        cfg = LazyConfig.apply_overrides(LazyConfig.load(str(SYNTHETIC)), TINY + [f"train.output_dir={out}"])
        runner = ContinualRunner(cfg)
        summaries = runner.run()
        yield runner, summaries, root


@requires_detectron2
@pytest.mark.slow
def test_every_step_writes_tensorboard_events_with_losses_and_its_evaluation(tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runner, summaries, _ = tiny_run
    for t in range(runner.task.num_steps):
        step_dir = runner.step_dir(t)
        assert list(step_dir.glob("events.out.tfevents.*")), step_dir
        events = EventAccumulator(str(step_dir))
        events.Reload()
        tags = set(events.Tags()["scalars"])
        assert {"total_loss", "lr", "eval/mIoU", "eval/mIoU_old", "eval/pACC"} <= tags
        assert ("eval/hIoU" in tags) == (t > 0) and ("loss_rskd" in tags) == (t > 0)
        iterations = [e.step for e in events.Scalars("total_loss")]
        assert iterations == [3, 7]  # log_period 4 over 8 iterations
        summary = json.loads((step_dir / "metrics.json").read_text())["summary"]
        (miou,) = events.Scalars("eval/mIoU")
        assert miou.step == t and miou.value == pytest.approx(summary["all"])
        for name, iou in summary["per_class"].items():
            tag = f"eval_per_class/{name}"
            if iou is None:
                assert tag not in tags
            else:
                assert events.Scalars(tag)[0].value == pytest.approx(iou)


@requires_detectron2
@pytest.mark.slow
def test_run_ends_with_both_figures(tiny_run):
    runner, summaries, _ = tiny_run
    for name in ("predictions.png", "per_class.png"):
        png = cv2.imread(str(runner.output_dir / name))
        assert png is not None and png.std() > 10, name
    grid = per_class_grid(runner.task, summaries)
    assert grid.steps == [0, 1, 2, 3]
    learnt = [name for name, ok in zip(grid.names, grid.learnt[:, 3]) if ok]
    assert learnt == ["background"] + [runner.task.class_names[c] for c in runner.task.seen_classes(3)]


@requires_detectron2
@pytest.mark.slow
def test_forgetting_figure_shows_each_steps_model_on_the_chosen_images(tiny_run, metadata):
    from eir.data.io import read_image, read_label
    from eir.evaluation.prediction_figure import (
        grid_panels,
        predict,
        prediction_grid,
        render_prediction_figure,
    )

    runner, _, root = tiny_run
    task = runner.task
    grid = prediction_grid(runner, num_images=4, seed=runner.cfg.train.seed)
    assert grid.steps == [0, 1, 2, 3]
    assert grid.titles == ["image", "ground truth", "step 0\ndisc, square, triangle, ring",
                           "step 1\n+ cross, star", "step 2\n+ hexagon, crescent", "step 3\n+ bar, diamond"]
    val = root / "eir_synthetic"
    ids = (val / "ImageSets/Segmentation/val.txt").read_text().split()
    assert len(grid.image_ids) == 4 and set(grid.image_ids) <= set(ids)
    raw = {i: read_label(val / "SegmentationClassAug" / f"{i}.png") for i in ids}
    if sum(steps_spanned(lab, task) >= 2 for lab in raw.values()) >= 4:
        assert all(steps_spanned(raw[i], task) >= 2 for i in grid.image_ids)

    dicts, _ = runner.test_data(task.num_steps - 1)
    by_id = {d["image_id"]: d for d in dicts}
    for r, image_id in enumerate(grid.image_ids):
        np.testing.assert_array_equal(grid.images[r], read_image(val / "JPEGImages" / f"{image_id}.jpg"))
        assert len(grid.labels[r]) == 1 + len(grid.steps)
        np.testing.assert_array_equal(grid.labels[r][0], raw[image_id])
    for t in grid.steps:
        # Each column is that step's own model, with its channel layout, on the step's test input.
        model = runner.trained_model(t)
        _, mapper = runner.test_data(t)
        seen = {0, *task.seen_classes(t)}
        for r, image_id in enumerate(grid.image_ids):
            predicted = grid.labels[r][1 + t]
            assert set(np.unique(predicted).tolist()) <= seen
            np.testing.assert_array_equal(predicted, predict(model, mapper(by_id[image_id])))

    panels = grid_panels(grid, metadata)
    assert len(panels) == 4 and all(len(row) == 2 + len(grid.steps) for row in panels)
    for r, row in enumerate(panels):
        np.testing.assert_array_equal(row[0], grid.images[r])
        for label, panel in zip(grid.labels[r], row[1:]):
            assert panel.shape == label.shape + (3,)
            assert assert_drawn_in_class_colours(panel, label, metadata) >= 1

    figure = render_prediction_figure(grid, panels, metadata)
    written = cv2.cvtColor(cv2.imread(str(runner.output_dir / "predictions.png")), cv2.COLOR_BGR2RGB)
    assert figure.ndim == 3 and figure.shape[2] == 3
    # The run's figure has NUM_IMAGES = 6 rows of the same width; this one 4.
    assert written.shape[1] == figure.shape[1] and written.shape[0] > figure.shape[0]


@requires_detectron2
@pytest.mark.slow
def test_each_column_is_its_steps_model_through_its_channel_layout(tiny_run, metadata, monkeypatch):
    """Step t's model is marked to score its first new class high everywhere: column t must be
    that class (read through step t's channels) and drawn in that class's colour."""
    import torch

    from eir.evaluation.prediction_figure import grid_panels, prediction_grid

    runner, _, _ = tiny_run
    task = runner.task
    original = runner.trained_model

    def marked(step, checkpoint=None):
        model = original(step, checkpoint)
        with torch.no_grad():
            conv = model.head.cls[step]  # the classifier of the classes step t adds
            conv.weight.zero_()
            conv.bias.fill_(-20.0)
            conv.bias[0] = 20.0
        return model

    monkeypatch.setattr(runner, "trained_model", marked)
    grid = prediction_grid(runner, num_images=3, seed=1)
    panels = grid_panels(grid, metadata)
    for t in grid.steps:
        first_new = task.new_classes(t)[0]
        for r in range(3):
            assert (grid.labels[r][1 + t] == first_new).all(), (t, np.unique(grid.labels[r][1 + t]))
            panel = panels[r][2 + t]
            inside = interior(np.ones(panel.shape[:2], bool))
            colour = np.asarray(metadata.stuff_colors[first_new])
            assert np.abs(panel[inside].astype(int) - colour).max() <= 2, (t, r)


@requires_detectron2
@pytest.mark.slow
def test_visualize_run_tool_draws_the_figures_of_any_run_folder(tiny_run, tmp_path):
    runner, _, _ = tiny_run
    tool = load_script("tools/visualize_run.py")
    copy = tmp_path / "moved_run"
    shutil.copytree(runner.output_dir, copy)
    for name in ("predictions.png", "per_class.png"):
        (copy / name).unlink()
    with pytest.raises(SystemExit, match="config.yaml"):
        tool.main([str(copy)])
    written = tool.main([str(copy), "--config-file", str(SYNTHETIC), "--num-images", "2", *TINY])
    assert written == [copy / "predictions.png", copy / "per_class.png"]
    two_rows = cv2.imread(str(copy / "predictions.png"))
    six_rows = cv2.imread(str(runner.output_dir / "predictions.png"))
    assert two_rows.shape[1] == six_rows.shape[1] and two_rows.shape[0] < six_rows.shape[0] - 300
    np.testing.assert_array_equal(
        cv2.imread(str(copy / "per_class.png")), cv2.imread(str(runner.output_dir / "per_class.png"))
    )
