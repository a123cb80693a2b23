"""The forgetting figure: how every step's model segments the same validation images.

``OUTPUT_DIR/predictions.png`` has one row per image: the image, its ground truth, then the
prediction of each trained step's model (its ``model_final.pth``, with that step's channel
layout), all coloured with the dataset's class colours by Detectron2's ``Visualizer``. Old
classes that a later model paints as background, or as a new class, are forgetting.

The images are a seeded choice among the validation images that hold classes of at least
two steps (others fill in when there are too few), so a row shows both old and new classes.
The figure is built in two parts that tests can inspect: :func:`prediction_grid` (the
images, label maps and column titles) and :func:`grid_panels` (the rendered panels);
:func:`render_prediction_figure` lays them out with matplotlib.
"""
from __future__ import annotations

import eir.require_detectron2  # noqa: F401  (first: says how to install a missing Detectron2)

# isort: split
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from detectron2.data.catalog import Metadata
from detectron2.utils.visualizer import Visualizer

from eir.data.datasets import class_presence
from eir.fileio import atomic_write
from eir.tasks import IGNORE_LABEL, Task

logger = logging.getLogger(__name__)

#: Colour of ignored pixels (255) in label panels: VOC's void colour.
IGNORE_COLOR = (224, 224, 192)
#: Rows of the figure written at the end of a run.
NUM_IMAGES = 6
#: Size of one panel in the figure (inches at 100 dpi).
PANEL_INCHES = 1.5


@dataclass
class PredictionGrid:
    """What the forgetting figure shows, before any drawing.

    ``labels[r]`` holds the class-id maps of row r: the ground truth (255 = ignore), then the
    prediction of each step in ``steps``. ``titles`` has one entry per column: "image",
    "ground truth", then one per step naming the classes that step adds.
    """

    task: Task
    steps: list[int]
    image_ids: list[str]
    images: list[np.ndarray]
    labels: list[list[np.ndarray]]
    titles: list[str]


def classes_by_step(presence: np.ndarray, task: Task) -> np.ndarray:
    """How many steps' classes each image holds: ``presence`` is bool [N, num_classes + 1]."""
    one_hot = np.zeros((presence.shape[1], task.num_steps), dtype=np.int64)
    for t, classes in enumerate(task.steps):
        one_hot[classes, t] = 1
    return ((presence.astype(np.int64) @ one_hot) > 0).sum(axis=1)


def choose_images(presence: np.ndarray, task: Task, num: int, seed: int) -> list[int]:
    """Indices of ``num`` images, seeded: those with classes of >= 2 steps first, then the rest."""
    spans = classes_by_step(presence, task)
    order = np.random.default_rng(seed).permutation(len(spans))
    several = [int(i) for i in order if spans[i] >= 2]
    others = [int(i) for i in order if spans[i] == 1]
    return (several + others)[:num]


def step_title(task: Task, step: int) -> str:
    """A step's column title, with the classes it learns ("+" after step 0; counted when many)."""
    new = [task.class_names[c] for c in task.new_classes(step)]
    listed = ", ".join(new) if len(new) <= 4 else f"{len(new)} classes"
    return f"step {step}\n{listed}" if step == 0 else f"step {step}\n+ {listed}"


@torch.no_grad()
def predict(model, sample: dict) -> np.ndarray:
    """The model's class-id map of one mapped test sample (argmax of the class scores)."""
    model.eval()
    inputs = {k: sample[k] for k in ("image", "height", "width")}
    scores = model([inputs])[0]["sem_seg"]
    return scores.argmax(dim=0).to(torch.uint8).cpu().numpy()


def prediction_grid(runner, num_images: int = NUM_IMAGES, seed: int = 0) -> PredictionGrid:
    """Choose the images and predict them with every step's model that is done.

    The images and ground truth come from the last step's test mapper (every class is
    seen there; the test augmentations are the same at every step).
    """
    task = runner.task
    steps = [t for t in range(task.num_steps) if runner.folder.is_done(t)]
    if not steps:
        raise ValueError(f"{runner.output_dir} has no finished step (no step_*/DONE): nothing to show")
    dicts, mapper = runner.test_data(task.num_steps - 1)
    if not dicts:
        raise ValueError(f"the test set {runner.cfg.dataloader.test.dataset} has no image of {task}")
    presence = class_presence(dicts, task.spec, verbose=False)
    samples = [mapper(dicts[i]) for i in choose_images(presence, task, num_images, seed)]
    labels = [[s["sem_seg"].numpy().astype(np.uint8)] for s in samples]
    for t in steps:
        model = runner.trained_model(t)
        for row, sample in zip(labels, samples):
            row.append(predict(model, sample))
        del model
    return PredictionGrid(
        task=task,
        steps=steps,
        image_ids=[s["image_id"] for s in samples],
        images=[s["image"].permute(1, 2, 0).numpy() for s in samples],
        labels=labels,
        titles=["image", "ground truth"] + [step_title(task, t) for t in steps],
    )


def task_metadata(task) -> Metadata:
    """Detectron2 metadata indexed by the task's class ids (``stuff_classes``, ``stuff_colors``),
    for ``Visualizer``: a dataset's own entry is indexed by its label values, which differ from
    class ids when it has no background value."""
    spec = task.spec
    return Metadata(name=spec.name).set(
        stuff_classes=list(spec.class_names), stuff_colors=[list(c) for c in spec.colors]
    )


def label_panel(label: np.ndarray, metadata) -> np.ndarray:
    """A class-id map drawn by Detectron2's Visualizer: opaque class colours, ignore in void colour."""
    canvas = np.empty(label.shape + (3,), dtype=np.uint8)
    canvas[...] = IGNORE_COLOR
    vis = Visualizer(canvas, metadata=metadata)
    return vis.draw_sem_seg(label, alpha=1.0, draw_text=False).get_image()


def grid_panels(grid: PredictionGrid, metadata) -> list[list[np.ndarray]]:
    """The figure's RGB panels, row by row: the image, then every label map of the row drawn."""
    return [
        [image] + [label_panel(label, metadata) for label in row]
        for image, row in zip(grid.images, grid.labels)
    ]


def shown_classes(grid: PredictionGrid) -> list[int]:
    """Class ids that appear in some label map of the figure, in the order the task learns them."""
    present = np.zeros(256, dtype=bool)
    for row in grid.labels:
        for label in row:
            present[np.unique(label)] = True
    order = [0] + [c for s in grid.task.steps for c in s]
    return [c for c in order if present[c]]


def render_prediction_figure(grid: PredictionGrid, panels: list[list[np.ndarray]], metadata) -> np.ndarray:
    """The figure as an RGB array: panels in a grid, column titles, a legend of the classes shown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    task = grid.task
    step_of = {0: 0, **{c: t for t, s in enumerate(task.steps) for c in s}}
    handles = [
        Patch(
            facecolor=np.asarray(metadata.stuff_colors[c]) / 255, edgecolor="0.5",
            label=f"{task.class_names[c]} ({step_of[c]})",
        )
        for c in shown_classes(grid)
    ]
    if any((label == IGNORE_LABEL).any() for row in grid.labels for label in row):
        handles.append(Patch(facecolor=np.asarray(IGNORE_COLOR) / 255, edgecolor="0.5", label="ignored"))
    rows, cols = len(panels), len(grid.titles)
    width = PANEL_INCHES * cols
    ncol = max(1, min(len(handles), int(width / 1.05)))  # legend entries that fit in a row
    legend_h = 0.2 * -(-len(handles) // ncol) + 0.15  # inches
    fig, axes = plt.subplots(
        rows, cols, figsize=(width, PANEL_INCHES * rows + 0.6 + legend_h), dpi=100, squeeze=False
    )
    for r, row in enumerate(panels):
        for j, panel in enumerate(row):
            ax = axes[r, j]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(grid.titles[j], fontsize=6.5)
        axes[r, 0].set_ylabel(grid.image_ids[r], fontsize=7)
    fig.suptitle(
        f"{task}\nevery step's model on the same images; legend: class (step that learns it)",
        fontsize=7.5,
    )
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=6.5, frameon=False,
               handlelength=1.2, columnspacing=1.0)
    fig.tight_layout(rect=(0, legend_h / fig.get_figheight(), 1, 1), h_pad=0.3, w_pad=0.3)
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return rgb


def write_prediction_figure(runner, num_images: int = NUM_IMAGES, seed: int = 0) -> Path:
    """Build and write ``OUTPUT_DIR/predictions.png`` (atomically); returns its path."""
    grid = prediction_grid(runner, num_images, seed)
    metadata = task_metadata(runner.task)
    rgb = render_prediction_figure(grid, grid_panels(grid, metadata), metadata)
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise RuntimeError("OpenCV could not encode the forgetting figure as PNG")
    path = atomic_write(runner.output_dir / "predictions.png", lambda f: f.write(png.tobytes()))
    logger.info(
        "Forgetting figure (%d images x %d steps) written to %s", len(grid.images), len(grid.steps), path
    )
    return path
