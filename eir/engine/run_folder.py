"""What keeps one output folder one run: its lock, its recorded config, its steps' DONE records.

* ``run.lock`` (pid, host, start time) is taken when a command starts training into the
  folder and removed when it ends; a second command is refused while the holder lives. A
  lock whose process is gone (same host, pid not running) is taken over.
* ``run_config.json`` records the config keys that change results (:func:`results_config`);
  a rerun with other values is refused, naming the keys, unless it opts in with
  ``train.allow_config_change=True``.
* ``step_t/DONE`` holds a line of text, then the SHA-256 of every artifact the step wrote
  (``sha256sum`` format); a done step whose artifacts are missing or changed is reported,
  never skipped silently.
"""
from __future__ import annotations

import datetime
import difflib
import hashlib
import json
import logging
import os
import socket
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping

from eir.fileio import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
CONFIG_RECORD = "run_config.json"
DONE_FILE = "DONE"

#: Config keys (dotted prefixes) that do not change a run's results: where it runs and
#: what it logs. Every other key of the config is compared on a rerun.
RESULT_NEUTRAL_KEYS = (
    "train.output_dir",  # the folder itself
    "train.device",  # the same run on another device
    "train.step",  # which steps this command runs
    "train.eval_checkpoint",  # --eval-only only
    "train.log_period",  # logging
    "train.checkpointer",  # resumption is exact, so checkpoint period and count do not matter
    "train.ddp.find_unused_parameters",  # a DDP bookkeeping switch
    "train.allow_config_change",  # the opt-in itself
    "dataloader.train.num_workers",  # sample streams do not depend on workers
    "dataloader.test.num_workers",
)


class RunFolderError(RuntimeError):
    """The output folder is held by another run, or records another config."""


# --------------------------------------------------------------------------- lock


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user
        return True
    return True


class RunLock:
    """An exclusive claim on an output folder (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / LOCK_FILE
        self.info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "token": uuid.uuid4().hex,
        }
        self.held = False

    def describe(self, info: Mapping[str, Any]) -> str:
        return f"pid {info.get('pid')} on {info.get('host')} (started {info.get('started')})"

    def _read(self, path: Path) -> dict | None:
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def _create(self) -> bool:
        """Create the lock file with our info in one step (hard link of a written temp file)."""
        tmp = self.path.with_name(f".{LOCK_FILE}.{self.info['token']}.tmp")
        tmp.write_text(json.dumps(self.info) + "\n")
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink()

    def _take_over(self, stale: dict) -> None:
        """Move a dead holder's lock away; put it back if it turned out to be a live one."""
        moved = self.path.with_name(f".{LOCK_FILE}.{self.info['token']}.stale")
        try:
            os.rename(self.path, moved)
        except FileNotFoundError:
            return
        if self._read(moved) == stale:
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
            if holder.get("host") == self.info["host"] and isinstance(holder.get("pid"), int) and not _pid_alive(
                holder["pid"]
            ):
                self._take_over(holder)
                continue
            raise RunFolderError(
                f"{self.path.parent} is in use by another run: {self.describe(holder)}, lock file "
                f"{self.path}. Wait for it to finish or choose another train.output_dir; if that "
                f"process is gone (e.g. it ran on another machine), delete {self.path}."
            )
        raise RunFolderError(f"could not take the lock {self.path}: it keeps changing hands")

    def release(self) -> None:
        if self.held and self._read(self.path) == self.info:
            self.path.unlink()
        self.held = False


# --------------------------------------------------------------------------- config


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
    """Dotted key -> JSON leaf value of a (LazyConfig) config tree."""
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


def results_config(cfg) -> dict[str, Any]:
    """The dotted keys of ``cfg`` that change results (all but :data:`RESULT_NEUTRAL_KEYS`)."""
    return {k: v for k, v in flatten(cfg).items() if not _neutral(k)}


def config_differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``key: recorded -> current`` for every key whose value differs (or exists in one only)."""
    missing = "(absent)"
    return [
        f"{k}: {json.dumps(recorded.get(k, missing))} -> {json.dumps(current.get(k, missing))}"
        for k in sorted(set(recorded) | set(current))
        if recorded.get(k, missing) != current.get(k, missing)
    ]


def check_recorded_config(folder: Path, cfg, allow_change: bool) -> dict | None:
    """Compare ``cfg`` with the folder's record; raise unless equal or ``allow_change``.

    Returns the record to write (None when the folder's record already matches).
    """
    current = results_config(cfg)
    path = folder / CONFIG_RECORD
    if not path.is_file():
        return current
    try:
        recorded = json.loads(path.read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RunFolderError(
            f"{path} is damaged ({e}): restore it, or delete it to record this command's config"
        ) from e
    diff = config_differences(recorded, current)
    if not diff:
        return None
    listing = "\n  ".join(diff)
    if not allow_change:
        raise RunFolderError(
            f"{folder} holds a run of another config; these keys differ (folder -> command):\n  "
            f"{listing}\nChoose another train.output_dir, or add train.allow_config_change=True to "
            "continue this run under the new config (finished steps keep their results)."
        )
    logger.warning("train.allow_config_change=True: continuing %s under a changed config:\n  %s", folder, listing)
    return current


def write_config_record(folder: Path, record: Mapping[str, Any]) -> None:
    atomic_write_json(
        folder / CONFIG_RECORD,
        {"about": "config keys that change results, checked on every rerun", "config": dict(record)},
    )


def check_override_keys(cfg, overrides: Iterable[str]) -> None:
    """Every ``key=value`` override must name a key of ``cfg``; else name the nearest known key."""
    known = set()
    for key in flatten(cfg):
        parts = key.split(".")
        known.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key in known:
            continue
        near = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
        hint = f"; did you mean {near[0]}?" if near else ""
        raise ValueError(f"unknown config key {key!r} in override {item!r}{hint}")


# --------------------------------------------------------------------------- DONE records


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_done(step_dir: Path, message: str, artifacts: Iterable[str]) -> None:
    """Mark the step done: ``message``, then ``<sha256>  <file>`` for each artifact (relative)."""
    lines = [message.rstrip("\n")]
    for rel in artifacts:
        path = step_dir / rel
        if not path.is_file():
            raise FileNotFoundError(f"cannot mark {step_dir} done: its artifact {path} is missing")
        lines.append(f"{sha256_file(path)}  {rel}")
    atomic_write_text(step_dir / DONE_FILE, "\n".join(lines) + "\n")


def done_problems(step_dir: Path, required: Iterable[str]) -> list[str]:
    """What is wrong with a done step's artifacts: each ``required`` file must exist and each
    file recorded in DONE must still have its recorded SHA-256."""
    problems = []
    recorded = {}
    for line in (step_dir / DONE_FILE).read_text().splitlines()[1:]:
        digest, _, rel = line.partition("  ")
        if rel:
            recorded[rel] = digest
    for rel in sorted(set(required) | set(recorded)):
        path = step_dir / rel
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif rel in recorded and sha256_file(path) != recorded[rel]:
            problems.append(f"{path} is damaged or was changed (its SHA-256 differs from the one in DONE)")
    return problems
