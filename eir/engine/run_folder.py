"""RunFolder: one output folder holds one run; its records say what it holds and whether a
step's files can be trusted.

Each record is its own module, behind :class:`RunFolder`:

* the lock, ``run.lock`` (:mod:`eir.engine.run_lock`): one command at a time;
* ``task.json`` names the folder's task; a command of another task is refused (here);
* ``run_config.json`` and ``run_data.json`` (:mod:`eir.engine.run_records`): the config keys
  that change results and the datasets' files, compared on every rerun;
* ``step_t/DONE`` (:mod:`eir.engine.step_done`): a finished step and the digests of its artifacts;
* ``step_t/metrics.json`` is the step's evaluation; ``step_t/training_log.json`` its
  per-iteration log, trimmed on resume (:mod:`eir.engine.training_log`).

The files' names are in :mod:`eir.engine.run_files`. This module does not know about
processes: the runner claims the folder on the main process.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from eir.engine.run_files import DATA_RECORD, DONE_FILE, METRICS_FILE, TASK_FILE, TRAINING_LOG
from eir.engine.run_lock import RunFolderError, RunLock
from eir.engine.run_records import (
    check_recorded_config,
    data_differences,
    json_mapping,
    write_config_record,
)
from eir.engine.step_done import digest_matches, done_problems, read_done, write_done
from eir.engine.training_log import trim_training_log
from eir.fileio import atomic_write_json, remove_temp_files
from eir.tasks import Task, same_task, task_text

__all__ = ["RunFolder", "RunFolderError"]

logger = logging.getLogger(__name__)


class RunFolder:
    """The output folder of a run of ``task``: its lock, records, step folders and their files.

    :meth:`claim` takes the folder for a command (checks first, writes only once every check
    passed) and :meth:`release` gives it up; :meth:`check_done` / :meth:`mark_done` keep a
    step's DONE record; :meth:`finished_summaries` reads the evaluations of the done steps.
    """

    def __init__(self, path: str | os.PathLike, task: Task):
        self.path = Path(path).expanduser().resolve()
        self.task = task
        self.lock: RunLock | None = None

    # ----------------------------------------------------------------- paths
    def step_dir(self, step: int) -> Path:
        return self.path / f"step_{step}"

    def is_done(self, step: int) -> bool:
        """Whether the step's DONE records its artifacts (an empty or unreadable DONE does not:
        the step is finished again, from its model_final.pth when there is one)."""
        return read_done(self.step_dir(step)) is not None

    def require_done(self, step: int, needed_by: int) -> None:
        """Raise unless ``step`` is done: step ``needed_by`` starts from it."""
        if not self.is_done(step):
            raise RuntimeError(
                f"step {needed_by} needs step {step}, which is not trained "
                f"({self.step_dir(step) / DONE_FILE} is missing, empty or unreadable): run the steps "
                "in order (leave train.step unset to run them all)."
            )

    # ----------------------------------------------------------------- claim
    def claim(self, cfg, world_size: int = 1) -> None:
        """Take the lock; refuse a folder of another task or config (``cfg`` run by
        ``world_size`` processes); record ours.

        Everything is checked before anything is written, so a refused command leaves the
        folder as it found it. Temporary files of killed writes (and of failed starts) are
        removed once the lock is held.
        """
        existed = self.path.exists()
        lock = RunLock(self.path)
        lock.acquire()
        try:
            self.check_task()
            record, changes = check_recorded_config(
                self.path, cfg, bool(cfg.train.get("allow_config_change", False)), world_size
            )
        except BaseException:
            lock.release()
            if not existed:
                self.path.rmdir()
            raise
        self.lock = lock
        for path in remove_temp_files(self.path):
            logger.info("Removed %s, left by an interrupted write", path)
        if not (self.path / TASK_FILE).is_file():
            atomic_write_json(self.path / TASK_FILE, self.task.to_dict())
        if changes:
            self.restart_unfinished_steps()  # before the record: a kill in between restarts them again
        if record is not None:
            write_config_record(self.path, record)

    def restart_unfinished_steps(self) -> None:
        """Delete the checkpoints of every step that is not done, so that it trains again from its
        first iteration: they were written under the config a change just replaced, and resuming
        from them would mix the two (the old schedule's state, the old weights)."""
        for step in range(self.task.num_steps):
            step_dir = self.step_dir(step)
            if self.is_done(step) or not step_dir.is_dir():
                continue
            stale = sorted(step_dir.glob("model_*.pth")) + sorted(step_dir.glob("last_checkpoint"))
            for path in stale:
                path.unlink()
            if stale:
                logger.warning(
                    "Step %d restarts from its first iteration under the changed config: removed %s",
                    step, ", ".join(p.name for p in stale),
                )

    def check_data(self, current: Mapping[str, Any], allow_change: bool, write: bool = True) -> None:
        """Compare the datasets' files (``{dataset: data_fingerprint}``) with the folder's data
        record, written by the command that first trained here; refuse a difference, naming it,
        unless ``allow_change`` (then the record is rewritten). While no step is done nothing was
        trained on the recorded files (a file restored after a failed start, say), so the record is
        simply renewed. Datasets not yet recorded are
        added to the record (written when ``write``: by the main process)."""
        path = self.path / DATA_RECORD
        recorded = {}
        if path.is_file():
            try:
                recorded = json_mapping(path, "datasets")
            except (OSError, ValueError) as e:
                raise RunFolderError(
                    f"{path} is damaged ({e}): restore it, or delete it to record the data as it is now"
                ) from e
        known = [name for name in current if name in recorded]
        diff = data_differences({k: recorded[k] for k in known}, {k: current[k] for k in known})
        if diff and not any(self.is_done(step) for step in range(self.task.num_steps)):
            logger.info("No step of %s is done: its data record is renewed:\n  %s", self.path, "\n  ".join(diff))
            recorded = {k: v for k, v in recorded.items() if k not in current}
        elif diff and allow_change:
            logger.warning("train.allow_data_change=True: continuing on changed data:\n  %s", "\n  ".join(diff))
        elif diff:
            listing = "\n  ".join(diff)
            raise RunFolderError(
                f"the data of the run in {self.path} changed since it was recorded in {path}:\n  {listing}\n"
                "Its finished steps were trained on the recorded files. Restore them, or add "
                "train.allow_data_change=True to continue on the data as it is now."
            )
        merged = {**recorded, **current}
        if merged != recorded and write:
            atomic_write_json(path, {"about": "the datasets' files (size, mtime_ns), checked at every step", "datasets": merged})

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
        self.lock = None

    def check_task(self) -> None:
        """Refuse a folder that holds a run of another task."""
        marker = self.path / TASK_FILE
        if not marker.is_file():
            return
        try:
            theirs = json.loads(marker.read_bytes())
            Task.from_dict(theirs)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise ValueError(
                f"{marker} is damaged ({e}): restore it, or delete it to record this command's task "
                "(run_config.json still refuses a command of another task), or choose another "
                "train.output_dir"
            ) from e
        if not same_task(theirs, self.task):
            raise ValueError(
                f"{self.path} holds a run of task {theirs}, not {self.task.to_dict()}: "
                "choose another train.output_dir"
            )

    # ----------------------------------------------------------------- steps
    def check_done(self, step: int, artifacts: Iterable[str]) -> None:
        """Raise, naming the files and what to do, when done step ``step``'s artifacts fail their checks."""
        problems = done_problems(self.step_dir(step), artifacts)
        if problems:
            done = self.step_dir(step) / DONE_FILE
            raise RuntimeError(
                f"step {step} is marked done ({done}), but " + "; ".join(problems) + ". Restore the "
                f"file(s), or delete {done} and the damaged file(s) and rerun to rebuild them "
                "(a kept model_final.pth is not retrained)."
            )

    def mark_done(self, step: int, message: str, artifacts: Iterable[str]) -> None:
        write_done(self.step_dir(step), message, artifacts)

    def write_metrics(self, step: int, summary: Mapping[str, Any], bank: Mapping[str, Any] | None = None) -> None:
        """``step_t/metrics.json``: the step's evaluation ``summary``, and the method's record of
        the ``bank`` the step built (when it built one and the method records it)."""
        metrics = {"task": self.task.to_dict(), "step": step, "summary": summary}
        if bank is not None:
            metrics["bank"] = bank
        atomic_write_json(self.step_dir(step) / METRICS_FILE, metrics)

    def trim_training_log(self, step: int, start_iter: int) -> None:
        trim_training_log(self.step_dir(step) / TRAINING_LOG, start_iter)

    def finished_summaries(self) -> dict[int, dict]:
        """The metrics of every done step, read back from their ``metrics.json`` (checked
        against the digest in DONE: a step this command did not run is read too)."""
        return self._finished_metrics("summary")

    def finished_bank_records(self) -> dict[int, dict]:
        """The ``"bank"`` records of the done steps' ``metrics.json`` (checked like
        :meth:`finished_summaries`); steps without one are left out."""
        return self._finished_metrics("bank", required=False)

    def _finished_metrics(self, key: str, required: bool = True) -> dict[int, dict]:
        out = {}
        for step in range(self.task.num_steps):
            path = self.step_dir(step) / METRICS_FILE
            recorded = read_done(self.step_dir(step))
            if recorded is None or not path.is_file():
                continue
            try:
                if METRICS_FILE in recorded and not digest_matches(path, recorded[METRICS_FILE]):
                    raise ValueError("its digest differs from the one in DONE")
                if not required and key not in json.loads(path.read_bytes()):
                    continue
                out[step] = json_mapping(path, key)
            except (OSError, ValueError) as e:
                raise ValueError(
                    f"{path} is damaged or was changed ({e}): restore it, or delete it and "
                    f"{self.step_dir(step) / DONE_FILE}, then rerun to evaluate the step again"
                ) from e
        return out

    def __repr__(self) -> str:
        return f"RunFolder({self.path}, {task_text(self.task.to_dict())})"
