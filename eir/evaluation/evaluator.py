"""ContinualSemSegEvaluator: Detectron2's evaluator interface over the core confusion matrix.

It differs from Detectron2's SemSegEvaluator in three ways that matter for continual
segmentation: the confusion matrix stays on the model's device (no per-image copy to the
CPU), ground truth comes from the mapper (already remapped to the step's test labels and
transformed like the image), and the report has EIR's groups: old / new / all / hIoU.
"""
from __future__ import annotations

import eir.require_detectron2  # noqa: F401  (first: says how to install a missing Detectron2)

# isort: split
import logging
import math
from collections import OrderedDict

import torch
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils.events import EventStorage, TensorboardXWriter

from eir.evaluation.metrics import ConfusionMatrix, format_table, summarize
from eir.tasks import Task

logger = logging.getLogger(__name__)


class ContinualSemSegEvaluator(DatasetEvaluator):
    """Evaluates the predictions of one continual step.

    Inputs must carry ``sem_seg`` (the mapper's test label, class ids, 255 ignored); outputs
    are the model's ``[{"sem_seg": scores}]`` in class-id order, whose argmax is the prediction.
    After :meth:`evaluate`, :attr:`summary` holds the full report of
    :func:`eir.evaluation.metrics.summarize`.
    """

    def __init__(self, task: Task, step: int, distributed: bool = True):
        task.check_step(step)
        self.task = task
        self.step = step
        self.distributed = distributed
        self.summary: dict | None = None
        self._matrix: ConfusionMatrix | None = None

    def reset(self):
        self._matrix = None
        self.summary = None

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            scores = out["sem_seg"]
            if self._matrix is None:
                self._matrix = ConfusionMatrix(self.task.num_classes + 1, device=scores.device)
            pred = scores.argmax(dim=0)
            gt = inp["sem_seg"].to(pred.device, non_blocking=True)
            if gt.shape != pred.shape:
                raise ValueError(
                    f"prediction of {inp.get('file_name', 'an image')} has size {tuple(pred.shape)} "
                    f"but its label {tuple(gt.shape)}: the mapper's height/width must be the "
                    "evaluated label's size"
                )
            self._matrix.update(pred, gt)

    def evaluate(self):
        matrix = self._matrix
        if matrix is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
            matrix = ConfusionMatrix(self.task.num_classes + 1, device=device)
        if self.distributed:
            matrix.all_reduce()
        first = self.task.steps[0]
        added = [c for c in self.task.seen_classes(self.step) if c not in set(first)]
        self.summary = summarize(matrix.matrix, first, added, self.task.class_names)
        logger.info(
            "Evaluation of step %d of %s:\n%s",
            self.step,
            self.task,
            format_table(self.summary, title=f"step {self.step}"),
        )
        return OrderedDict(sem_seg=detectron2_results(self.summary))


def detectron2_results(summary: dict) -> dict:
    """Flatten a summary into Detectron2's ``{metric: float}`` format (n/a as NaN).

    The keys without a dash (mIoU, mIoU_old, mIoU_new, hIoU, pACC) are the ones
    Detectron2's ``print_csv_format`` prints.
    """
    nan = float("nan")

    def num(value):
        return nan if value is None else float(value)

    res = {
        "mIoU": num(summary["all"]),
        "mIoU_old": num(summary["old"]),
        "mIoU_new": num(summary["new"]),
        "hIoU": num(summary["hiou"]),
        "pACC": num(summary["pixel_acc"]),
    }
    for name, iou in summary["per_class"].items():
        res[f"IoU-{name}"] = num(iou)
    return {k: v for k, v in res.items() if not (k in ("mIoU_new", "hIoU") and math.isnan(v))}


def write_eval_events(log_dir, summary: dict, step: int) -> None:
    """Write a step's evaluation as TensorBoard scalars into ``log_dir`` (the step's folder).

    Tags ``eval/{mIoU, mIoU_old, mIoU_new, hIoU, pACC}`` and ``eval_per_class/<class>``, at
    x = the continual step, so with ``tensorboard --logdir OUTPUT_DIR`` the step folders'
    points line up as the sequence. n/a values are left out.
    """
    scalars = {
        (f"eval_per_class/{k[4:]}" if k.startswith("IoU-") else f"eval/{k}"): v
        for k, v in detectron2_results(summary).items()
        if not math.isnan(v)
    }
    writer = TensorboardXWriter(str(log_dir))
    try:
        with EventStorage(step) as storage:
            storage.put_scalars(**scalars, smoothing_hint=False)
            writer.write()
    finally:
        writer.close()
