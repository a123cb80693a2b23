"""RunFolder: one output folder holds one run; its records say what it holds and whether a
step's files can be trusted.

* ``run.lock`` (pid, host, start time, and on Linux the process's identity: boot id and
  the kernel's start time of the pid) is taken when a command starts training into the
  folder and removed when it ends; a second command is refused while the holder lives. A
  lock whose process is gone (same host, and the pid not running or now another process, as
  in a restarted container) is taken over; a damaged one is named, with what to do. The lock
  is made atomically with a hard link; on a filesystem that refuses hard links (some network
  filesystems) with an exclusive create.
* ``task.json`` names the folder's task; a command of another task is refused.
* ``run_config.json`` records the config keys that change results (:func:`results_config`),
  the number of processes among them; a rerun with other values is refused, naming the keys,
  unless it opts in with ``train.allow_config_change=True``. Records of older versions of the config schema are
  read through :func:`upgrade_record`.
* ``run_data.json`` records the datasets' files (size and modification time of every image
  and label); a step that finds them changed is refused, naming the files, unless the
  command opts in with ``train.allow_data_change=True``.
* ``step_t/DONE`` holds a line of text, then the digest of every artifact the step wrote
  (``sha256sum`` format; a checkpoint's is the digest of its tensors, :func:`artifact_digest`);
  a done step whose artifacts are missing or changed is reported, never skipped silently. A
  DONE that is empty or unreadable vouches for nothing: the step is not done.
* ``step_t/metrics.json`` is the step's evaluation; ``step_t/training_log.json`` its
  per-iteration log, trimmed on resume so that each iteration appears once.

This module does not know about processes: the runner claims the folder on the main process.
"""
from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping

from eir.fileio import (
    TENSOR_DIGEST_PREFIX,
    atomic_write_json,
    atomic_write_text,
    remove_temp_files,
    sha256_file,
    tensor_digest,
)
from eir.tasks import Task, same_task, task_text

logger = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
TASK_FILE = "task.json"
CONFIG_RECORD = "run_config.json"
DATA_RECORD = "run_data.json"
DONE_FILE = "DONE"
METRICS_FILE = "metrics.json"
TRAINING_LOG = "training_log.json"

#: Config keys (dotted prefixes) that do not change a run's results: where it runs and
#: what it logs. Every other key of the config is compared on a rerun.
RESULT_NEUTRAL_KEYS = (
    "train.output_dir",  # the folder itself
    "train.device",  # the same run on another device
    "train.step",  # which steps this command runs
    "train.eval_checkpoint",  # --eval-only only
    "train.log_period",  # logging
    "train.gather_metric_period",  # logging (and when a NaN loss is noticed)
    "train.checkpointer",  # resumption is exact, so checkpoint period and count do not matter
    "train.ddp.find_unused_parameters",  # a DDP bookkeeping switch
    "train.allow_config_change",  # the opt-in itself
    "train.allow_data_change",  # the opt-in for data
    "train.cudnn_benchmark",  # the choice of cuDNN algorithms: speed (GPU runs are not bitwise reproducible anyway)
    "dataloader.train.num_workers",  # sample streams do not depend on workers
    "dataloader.test.num_workers",
)

#: The record's key for the number of processes (``--num-gpus`` x ``--num-machines``): with
#: ``dataloader.train.total_batch_size`` it fixes each process's batch, and so BatchNorm's
#: statistics and the samples' order; it is not a config key.
WORLD_SIZE_KEY = "launch.world_size"


class RunFolderError(RuntimeError):
    """The output folder is held by another run, or records another task or config."""


# --------------------------------------------------------------------------- lock


def _valid_pid(pid: Any) -> bool:
    """A process id as a lock records it (os.kill reads 0 and negative numbers as groups)."""
    return isinstance(pid, int) and not isinstance(pid, bool) and 0 < pid < 2**31


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user
        return True
    return True


def process_identity(pid: int) -> str | None:
    """What tells process ``pid`` from an earlier one with the same pid on this host: the
    kernel's boot id and the process's start time (clock ticks since boot, field 22 of
    ``/proc/PID/stat``). None where /proc does not say (not Linux, or no such process)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ": fields 3, 4, ...
    return f"{boot}:{fields[19]}" if len(fields) > 19 else None


#: errno values with which a filesystem refuses hard links (then the lock is made by an
#: exclusive create).
_NO_HARD_LINKS = {errno.EPERM, errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK}

#: How long an empty lock file is taken for one being written by an exclusive create.
_WRITING_GRACE_S = 5.0


class RunLock:
    """An exclusive claim on an output folder (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / LOCK_FILE
        pid = os.getpid()
        self.info = {
            "pid": pid,
            "host": socket.gethostname(),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "token": uuid.uuid4().hex,
            "process": process_identity(pid),
        }
        self.held = False

    def describe(self, info: Mapping[str, Any]) -> str:
        return f"pid {info['pid']} on {info['host']} (started {info.get('started')})"

    def _read(self, path: Path) -> dict | None:
        """The holder's info in the lock file ``path``; None when there is none. A file that
        is not a lock (it is always written whole, so only damage makes one) is an error that
        says what to do."""
        try:
            text = path.read_bytes()
            if not text and time.time() - path.stat().st_mtime < _WRITING_GRACE_S:
                time.sleep(0.2)  # an exclusive create between its open and its write
                text = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise RunFolderError(f"cannot read the lock file {path} ({e.strerror or e})") from e
        try:
            info = json.loads(text)
        except ValueError:
            info = None
        if isinstance(info, dict) and _valid_pid(info.get("pid")) and isinstance(info.get("host"), str):
            return info
        raise RunFolderError(
            f"the lock file {path} is damaged: it does not hold the pid and host of a command. If "
            f"no command is training in {path.parent}, delete it to take the folder."
        )

    def _read_or_none(self, path: Path) -> dict | None:
        try:
            return self._read(path)
        except RunFolderError:
            return None

    def _create(self) -> bool:
        """Create the lock file with our info in one step (hard link of a written temp file)."""
        tmp = self.path.with_name(f".{LOCK_FILE}.{self.info['token']}.tmp")
        try:
            tmp.write_text(json.dumps(self.info) + "\n")
            os.link(tmp, self.path)
            return True
        except (FileExistsError, FileNotFoundError):  # held; or our temp file removed by the holder
            return False
        except OSError as e:
            if e.errno in _NO_HARD_LINKS:
                return self._create_exclusive()
            raise RunFolderError(f"cannot take the lock {self.path}: {e.strerror or e}") from e
        finally:
            tmp.unlink(missing_ok=True)

    def _create_exclusive(self) -> bool:
        """Create the lock file with O_EXCL, then write our info (for filesystems without hard
        links; a reader that finds it still empty waits :data:`_WRITING_GRACE_S` at most)."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return False
        except OSError as e:
            raise RunFolderError(f"cannot take the lock {self.path}: {e.strerror or e}") from e
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(self.info) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            self.path.unlink(missing_ok=True)
            raise RunFolderError(f"cannot take the lock {self.path}: {e.strerror or e}") from e
        return True

    @staticmethod
    def holder_gone(holder: Mapping[str, Any]) -> bool:
        """Whether the process of a lock on this host has ended: its pid runs no more, or runs
        another process (a restarted container, a reused pid), as its identity says."""
        if not _pid_alive(holder["pid"]):
            return True
        recorded = holder.get("process")
        return recorded is not None and process_identity(holder["pid"]) not in (None, recorded)

    def _take_over(self, stale: dict) -> None:
        """Move a dead holder's lock away; put it back if it turned out to be a live one."""
        moved = self.path.with_name(f".{LOCK_FILE}.{self.info['token']}.stale")
        try:
            os.rename(self.path, moved)
        except FileNotFoundError:
            return
        if self._read_or_none(moved) == stale:
            logger.warning("Taking over %s from %s, which is no longer running", self.path, self.describe(stale))
            moved.unlink()
            return
        try:  # another command replaced the lock meanwhile: give it back
            os.link(moved, self.path)
        except FileExistsError:
            pass
        moved.unlink()

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(10):
            if self._create():
                self.held = True
                return
            holder = self._read(self.path)
            if holder is None:
                continue  # released meanwhile
            if holder["host"] == self.info["host"] and self.holder_gone(holder):
                self._take_over(holder)
                continue
            raise RunFolderError(
                f"{self.path.parent} is in use by another run: {self.describe(holder)}, lock file "
                f"{self.path}. Wait for it to finish or choose another train.output_dir; if that "
                f"process is gone (e.g. it ran on another machine), delete {self.path}."
            )
        raise RunFolderError(f"could not take the lock {self.path}: it keeps changing hands")

    def release(self) -> None:
        if self.held and self._read_or_none(self.path) == self.info:
            self.path.unlink()
        self.held = False


# --------------------------------------------------------------------------- config record


def _json_mapping(path: Path, key: str) -> dict:
    """The mapping under ``key`` of the JSON object in ``path``; OSError or ValueError (the
    reason, for a message naming the file) when the file holds none."""
    data = json.loads(path.read_bytes())
    if not isinstance(data, dict) or key not in data:
        raise ValueError(f"no {key!r} in it")
    if not isinstance(data[key], dict):
        raise ValueError(f"its {key!r} is a {type(data[key]).__name__}, not a mapping")
    return data[key]


def _plain(value: Any) -> Any:
    """A JSON value standing for ``value`` (callables by their import path)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{value.__module__}.{value.__qualname__}"
    return repr(value)


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> JSON leaf value of a (LazyConfig) config tree, interpolations resolved."""
    if hasattr(node, "keys") and not isinstance(node, str):
        out: dict[str, Any] = {}
        for key in node.keys():
            out.update(flatten(node[key], f"{prefix}{key}."))
        if not out and prefix:
            out[prefix[:-1]] = {}
        return out
    return {prefix[:-1]: _plain(node)}


def _neutral(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESULT_NEUTRAL_KEYS)


def results_config(cfg, world_size: int = 1) -> dict[str, Any]:
    """The dotted keys of ``cfg`` that change results (all but :data:`RESULT_NEUTRAL_KEYS`),
    and :data:`WORLD_SIZE_KEY`: the number of processes."""
    record = {k: v for k, v in flatten(cfg).items() if not _neutral(k)}
    record[WORLD_SIZE_KEY] = int(world_size)
    return record


#: Keys of the first config schema, before the losses became ``eir.criterion`` (an
#: EIRCriterion) and the prepass got its own threshold: old key -> new key.
_RENAMED_V1 = {
    "eir.w_bce": "eir.criterion.w_bce",
    "eir.w_kd": "eir.criterion.w_kd",
    "eir.rskd_mask": "eir.criterion.rskd_mask",
    "eir.rskd_normalize": "eir.criterion.rskd_normalize",
}


#: Result-changing keys added to the config after runs were recorded, with the value that
#: describes what those runs did.
_ADDED_KEYS = {"train.float32_precision": ""}
#: The same for keys inside a node (``eir.criterion``, ``eir.paste``, which a run may have set
#: to None): added only where the record has the node.
_ADDED_NODE_KEYS = {"eir.criterion.pasted_bce": "all", "eir.paste.onto": "any", "eir.paste.skip_classes": "[]"}


def upgrade_record(recorded: Mapping[str, Any]) -> dict[str, Any]:
    """A recorded config in today's keys. A record of the first schema (``eir.pseudo_label``
    and ``eir.tau``, loss weights directly under ``eir``) means the same run as today's
    ``eir.criterion.*`` and ``eir.prepass.tau``: pseudo-labels off is ``tau=None``, and the
    prepass always detected at ``eir.tau``. A record with ``task.dataset`` (before the classes
    came from the datasets' ``MetadataCatalog``) ran a built-in dataset: its value 0 is the
    background, and ADE20K's unseen classes are ignored. Keys added since (:data:`_ADDED_KEYS`,
    :data:`_ADDED_NODE_KEYS`) get the value that describes the recorded run."""
    return _with_added_node_keys(_upgrade_schema({**_ADDED_KEYS, **recorded}))


def _with_added_node_keys(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with :data:`_ADDED_NODE_KEYS` where it has their node: a run with
    ``eir.paste=null`` has no paste keys today either, so adding them would read as a change."""
    for key, value in _ADDED_NODE_KEYS.items():
        if f"{key.rsplit('.', 1)[0]}._target_" in record:
            record.setdefault(key, value)
    # eir.instances (the bank's instance rule, beside eir.storage): a run recorded before it
    # existed used the paper's rule, None
    if "eir.storage" in record and not any(
        k == "eir.instances" or k.startswith("eir.instances.") for k in record
    ):
        record["eir.instances"] = None
    return record


def _upgrade_schema(record: dict[str, Any]) -> dict[str, Any]:
    """:func:`upgrade_record`'s renames: ``task.dataset`` and the first schema's keys."""
    if "task.dataset" in record:  # before the classes came from the datasets' MetadataCatalog
        dataset = record.pop("task.dataset")
        record["task.background"] = True  # every built-in dataset's value 0 is its background
        record["task.unseen_test_label"] = 255 if dataset == "ade" else None
    if "eir.pseudo_label" not in record:
        return record
    pseudo_label = record.pop("eir.pseudo_label")
    tau = record.pop("eir.tau")
    record["eir.criterion.tau"] = tau if pseudo_label else None
    record["eir.prepass.tau"] = tau
    for old, new in _RENAMED_V1.items():
        if old in record:
            record[new] = record.pop(old)
    record["eir.criterion._target_"] = "eir.modeling.criterion.EIRCriterion"
    return record


def config_differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``key: recorded -> current`` for every key whose value differs (or exists in one only)."""
    missing = "(absent)"
    return [
        f"{k}: {json.dumps(recorded.get(k, missing))} -> {json.dumps(current.get(k, missing))}"
        for k in sorted(set(recorded) | set(current))
        if recorded.get(k, missing) != current.get(k, missing)
    ]


def check_recorded_config(
    folder: Path, cfg, allow_change: bool, world_size: int = 1
) -> tuple[dict | None, list[str]]:
    """Compare ``cfg`` run by ``world_size`` processes with the folder's record; raise unless
    equal or ``allow_change``.

    Returns the record to write (None when the folder's record already matches) and the
    differences (``key: recorded -> current``) that ``allow_change`` let through. A record
    written before the number of processes was recorded says nothing of it: any number is
    accepted, and recorded from then on.
    """
    current = results_config(cfg, world_size)
    path = folder / CONFIG_RECORD
    if not path.is_file():
        return current, []
    try:
        stored = _json_mapping(path, "config")
        recorded = upgrade_record(stored)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RunFolderError(
            f"{path} is damaged ({e}): restore it, or delete it to record this command's config "
            "(the folder's finished steps are kept)"
        ) from e
    recorded.setdefault(WORLD_SIZE_KEY, int(world_size))
    diff = config_differences(recorded, current)
    if not diff:
        return (None if recorded == stored else current), []
    listing = "\n  ".join(diff)
    if not allow_change:
        raise RunFolderError(
            f"{folder} holds a run of another config; these keys differ (folder -> command):\n  "
            f"{listing}\nChoose another train.output_dir, or add train.allow_config_change=True to "
            "continue this run under the new config (finished steps keep their results)."
        )
    logger.warning("train.allow_config_change=True: continuing %s under a changed config:\n  %s", folder, listing)
    return current, diff


def write_config_record(folder: Path, record: Mapping[str, Any]) -> None:
    atomic_write_json(
        folder / CONFIG_RECORD,
        {"about": "config keys that change results, checked on every rerun", "config": dict(record)},
    )


# --------------------------------------------------------------------------- data record


def data_differences(recorded: Mapping[str, Any], current: Mapping[str, Any], shown: int = 5) -> list[str]:
    """What changed between two data records (``{dataset: {file: [size, mtime_ns]}}``): per
    dataset, the counts of files added, removed and changed, with the first ``shown`` names."""
    lines = []
    for name in sorted(set(recorded) | set(current)):
        old, new = recorded.get(name, {}), current.get(name, {})
        for what, files in (
            ("added", sorted(set(new) - set(old))),
            ("removed", sorted(set(old) - set(new))),
            ("changed (size or modification time)", sorted(f for f in set(old) & set(new) if old[f] != new[f])),
        ):
            if files:
                more = f" and {len(files) - shown} more" if len(files) > shown else ""
                lines.append(f"{name}: {len(files)} file(s) {what}: {', '.join(files[:shown])}{more}")
    return lines


# --------------------------------------------------------------------------- DONE records


def artifact_digest(path: Path) -> str:
    """How DONE records an artifact: the SHA-256 of a file's bytes, or for a checkpoint (.pth)
    of the tensors it holds (:func:`eir.fileio.tensor_digest`, prefixed), so that a step
    finished after a resume records what the uninterrupted step records."""
    if path.suffix == ".pth":
        return TENSOR_DIGEST_PREFIX + tensor_digest(path)
    return sha256_file(path)


def _digest_matches(path: Path, recorded: str) -> bool:
    """Whether ``path`` still has ``recorded`` (either form: DONE records of earlier versions
    hold the file SHA-256 of checkpoints too)."""
    try:
        if recorded.startswith(TENSOR_DIGEST_PREFIX):
            return TENSOR_DIGEST_PREFIX + tensor_digest(path) == recorded
        return sha256_file(path) == recorded
    except Exception:  # a checkpoint torch cannot read is damaged
        return False


def write_done(step_dir: Path, message: str, artifacts: Iterable[str]) -> None:
    """Mark the step done: ``message``, then ``<digest>  <file>`` for each artifact (relative;
    :func:`artifact_digest`)."""
    lines = [message.rstrip("\n")]
    for rel in artifacts:
        path = step_dir / rel
        if not path.is_file():
            raise FileNotFoundError(f"cannot mark {step_dir} done: its artifact {path} is missing")
        lines.append(f"{artifact_digest(path)}  {rel}")
    atomic_write_text(step_dir / DONE_FILE, "\n".join(lines) + "\n")


def read_done(step_dir: Path) -> dict[str, str] | None:
    """The artifacts recorded in ``step_dir``'s DONE (``{file: digest}``), or None when there is
    no DONE or it records nothing (empty, cut short, unreadable): such a step is not done, and
    its artifacts are not trusted."""
    try:
        lines = (step_dir / DONE_FILE).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    recorded = {}
    for line in lines[1:]:
        digest, _, rel = line.partition("  ")
        if rel and len(digest.removeprefix(TENSOR_DIGEST_PREFIX)) == 64:
            recorded[rel] = digest
    return recorded or None


def done_problems(step_dir: Path, required: Iterable[str]) -> list[str]:
    """What is wrong with a done step's artifacts: each ``required`` file must be recorded in
    DONE and exist, and each recorded file must still have its recorded digest."""
    problems = []
    recorded = read_done(step_dir) or {}
    for rel in sorted(set(required) | set(recorded)):
        path = step_dir / rel
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif rel not in recorded:
            problems.append(f"{path} is not recorded in DONE")
        elif not _digest_matches(path, recorded[rel]):
            problems.append(f"{path} is damaged or was changed (its SHA-256 differs from the one in DONE)")
    return problems


def trim_training_log(path: Path, start_iter: int) -> None:
    """Drop the rows of iterations >= ``start_iter`` (written before an interruption, about to
    be trained again), so the log of a resumed step has each iteration once."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a row cut short by the interruption
        iteration = row.get("iteration") if isinstance(row, dict) else None
        if isinstance(iteration, int) and not isinstance(iteration, bool) and iteration < start_iter:
            kept.append(line if line.endswith("\n") else line + "\n")
    if kept != lines:
        atomic_write_text(path, "".join(kept))


# --------------------------------------------------------------------------- the folder


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
        unless ``allow_change`` (then the record is rewritten). Datasets not yet recorded are
        added to the record (written when ``write``: by the main process)."""
        path = self.path / DATA_RECORD
        recorded = {}
        if path.is_file():
            try:
                recorded = _json_mapping(path, "datasets")
            except (OSError, ValueError) as e:
                raise RunFolderError(
                    f"{path} is damaged ({e}): restore it, or delete it to record the data as it is now"
                ) from e
        known = [name for name in current if name in recorded]
        diff = data_differences({k: recorded[k] for k in known}, {k: current[k] for k in known})
        if diff and not allow_change:
            listing = "\n  ".join(diff)
            raise RunFolderError(
                f"the data of the run in {self.path} changed since it was recorded in {path}:\n  {listing}\n"
                "Its finished steps were trained on the recorded files. Restore them, or add "
                "train.allow_data_change=True to continue on the data as it is now."
            )
        if diff:
            logger.warning("train.allow_data_change=True: continuing on changed data:\n  %s", "\n  ".join(diff))
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

    def write_metrics(self, step: int, summary: Mapping[str, Any]) -> None:
        atomic_write_json(
            self.step_dir(step) / METRICS_FILE, {"task": self.task.to_dict(), "step": step, "summary": summary}
        )

    def trim_training_log(self, step: int, start_iter: int) -> None:
        trim_training_log(self.step_dir(step) / TRAINING_LOG, start_iter)

    def finished_summaries(self) -> dict[int, dict]:
        """The metrics of every done step, read back from their ``metrics.json`` (checked
        against the digest in DONE: a step this command did not run is read too)."""
        out = {}
        for step in range(self.task.num_steps):
            path = self.step_dir(step) / METRICS_FILE
            recorded = read_done(self.step_dir(step))
            if recorded is None or not path.is_file():
                continue
            try:
                if METRICS_FILE in recorded and not _digest_matches(path, recorded[METRICS_FILE]):
                    raise ValueError("its digest differs from the one in DONE")
                summary = _json_mapping(path, "summary")
            except (OSError, ValueError) as e:
                raise ValueError(
                    f"{path} is damaged or was changed ({e}): restore it, or delete it and "
                    f"{self.step_dir(step) / DONE_FILE}, then rerun to evaluate the step again"
                ) from e
            out[step] = summary
        return out

    def __repr__(self) -> str:
        return f"RunFolder({self.path}, {task_text(self.task.to_dict())})"
