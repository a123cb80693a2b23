"""RunLock: one command at a time trains into a run folder.

``run.lock`` (pid, host, start time, and on Linux the process's identity: boot id and the
kernel's start time of the pid) is taken when a command starts training into the folder and
removed when it ends; a second command is refused while the holder lives. A lock whose process
is gone (same host, and the pid not running or now another process, as in a restarted
container) is taken over; a damaged one is named, with what to do. The lock is made atomically
with a hard link; on a filesystem that refuses hard links (some network filesystems) with an
exclusive create.
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
from typing import Any, Mapping

from eir.engine.run_files import LOCK_FILE

logger = logging.getLogger(__name__)


class RunFolderError(RuntimeError):
    """The output folder is held by another run, or records another task or config."""



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
