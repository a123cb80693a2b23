"""Checkpoints that know their task and step, written atomically.

Every checkpoint the runner writes carries ``{"eir": {"task": ..., "step": ...}}`` so that
loading a step's weights into another task or step fails with a clear message instead of a
shape error deep inside ``load_state_dict``. A step's periodic checkpoints
(``model_<iteration>.pth``) hold the trainer's state too (iteration, optimizer, schedule,
grad scaler), which an exact resume needs; its ``model_final.pth`` holds the weights and the
tag only, since no later step reads the rest (for ResNet-101 the SGD momentum alone is as
large as the weights). Final checkpoints written with the trainer state (before this rule)
load the same way. Every checkpoint is read with ``torch.load(weights_only=True)``
(:func:`eir.fileio.load_pth`): a file that needs other pickled objects is refused, not run.
"""
from __future__ import annotations

import eir.require_detectron2  # noqa: F401  (first: says how to install a missing Detectron2)

# isort: split
import itertools
import os
import re
from pathlib import Path

import torch
from detectron2.checkpoint import DetectionCheckpointer

from eir.engine.run_files import FINAL_CHECKPOINT
from eir.fileio import PickledObjectsError, atomic_write, load_pth
from eir.tasks import Task, same_task, task_text

#: The name of a step's last checkpoint (:data:`~eir.engine.run_files.FINAL_CHECKPOINT` without
#: its suffix, as Detectron2's checkpointers name them): weights and tag only.
FINAL = Path(FINAL_CHECKPOINT).stem


class StepCheckpointer(DetectionCheckpointer):
    """A DetectionCheckpointer for one step's folder; adds the task/step tag, writes atomically,
    and leaves the trainer state out of ``model_final.pth`` (see the module docstring)."""

    def __init__(self, model, save_dir, *, task: Task, step: int, **checkpointables):
        super().__init__(model, str(save_dir), **checkpointables)
        self.task = task
        self.step = step
        self.eir_tag = {"task": task.to_dict(), "step": step}

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        if name != FINAL:
            for key, obj in self.checkpointables.items():
                data[key] = obj.state_dict()
            data.update(kwargs)
        data["eir"] = self.eir_tag
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def _torch_load(self, f):
        return load_pth(f)

    def _load_file(self, filename: str):
        try:
            data = super()._load_file(filename)
        except PickledObjectsError:
            raise
        except Exception as e:
            raise ValueError(
                f"checkpoint {filename} cannot be read ({type(e).__name__}: {e}); it is damaged: "
                "delete it to resume from the step's previous checkpoint (or from the step's start)"
            ) from e
        tag = data.get("eir")
        if tag is not None and not _tagged(tag, self.task, self.step):
            raise ValueError(
                f"{filename} belongs to {_describe(tag)}, not {_describe(self.eir_tag)}"
                f"{_class_differences(tag.get('task'), self.task)}: "
                "move it out of the step's folder"
            )
        return data

    def resume_from(self, path: Path) -> None:
        """Load weights and trainer state (iteration, optimizer, schedule) of the checkpoint
        ``path`` named ``model_<iteration>.pth`` (see :func:`latest_checkpoint`)."""
        self.load(str(path))
        iteration = int(_CHECKPOINT_NAME.fullmatch(Path(path).name).group(1))
        trainer = self.checkpointables.get("trainer")
        if trainer is not None and trainer.iter != iteration:
            raise ValueError(
                f"checkpoint {path} holds the state after iteration {trainer.iter}, not {iteration} as "
                "its name says: delete it to resume from the previous checkpoint"
            )


_CHECKPOINT_NAME = re.compile(r"model_(\d+)\.pth")


def periodic_checkpoints(step_dir) -> list[Path]:
    """The periodic checkpoints (``model_<iteration>.pth``) in ``step_dir``, oldest first."""
    found = []
    for path in Path(step_dir).glob("model_*.pth"):
        m = _CHECKPOINT_NAME.fullmatch(path.name)
        if m:
            found.append((int(m.group(1)), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(step_dir) -> tuple[Path, int] | None:
    """The periodic checkpoint of the latest iteration in ``step_dir`` and that iteration.

    Chosen by file name rather than Detectron2's ``last_checkpoint`` (which is written in
    place and names one file only), so deleting a damaged checkpoint falls back to the one
    before it."""
    found = periodic_checkpoints(step_dir)
    if not found:
        return None
    return found[-1], int(_CHECKPOINT_NAME.fullmatch(found[-1].name).group(1))


def read_step_checkpoint(path, task: Task, step: int) -> dict:
    """The model state dict of a runner checkpoint, after checking it belongs to (task, step)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        data = load_pth(path)
    except PickledObjectsError:
        raise
    except Exception as e:
        raise ValueError(
            f"{path} cannot be read as a checkpoint ({type(e).__name__}: {e}): it is damaged or not a "
            "checkpoint. For a step's model_final.pth: delete it and that step's DONE, then rerun to "
            "train the step again"
        ) from e
    tag = data.get("eir") if isinstance(data, dict) else None
    if tag is None:
        raise ValueError(
            f"{path} has no EIR task/step tag, so it was not written by the continual runner. "
            "An ImageNet backbone goes to train.init_checkpoint (used at step 0 only)."
        )
    if not _tagged(tag, task, step):
        want = {"task": task.to_dict(), "step": step}
        raise ValueError(
            f"{path} belongs to {_describe(tag)}, but {_describe(want)} is needed"
            f"{_class_differences(tag.get('task'), task)}: "
            "point to the checkpoint of that task and step (or fix task.* / train.step)."
        )
    return data["model"]


def _tagged(tag: dict, task: Task, step: int) -> bool:
    """Whether a checkpoint's tag names ``task`` and ``step``."""
    return same_task(tag.get("task"), task) and str(tag.get("step")) == str(step)


def _class_differences(stored, task: Task, shown: int = 5) -> str:
    """The class names a stored task and ``task`` give differently, for a message (the two
    tasks' descriptions read alike when only their class tables differ); "" when none do."""
    try:
        theirs = Task.from_dict(stored).class_names
    except (ValueError, TypeError, KeyError, AttributeError):
        return ""
    ours = task.class_names
    differ = [
        f"class {c}: {a!r} in the checkpoint, {b!r} in the config"
        for c, (a, b) in enumerate(itertools.zip_longest(theirs, ours, fillvalue="(none)"))
        if a != b
    ]
    if not differ:
        return ""
    more = f" and {len(differ) - shown} more" if len(differ) > shown else ""
    return f" (their class names differ: {'; '.join(differ[:shown])}{more})"


def _describe(tag: dict) -> str:
    return f"{task_text(tag['task'])} step {tag['step']}"
