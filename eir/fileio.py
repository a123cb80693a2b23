"""Atomic file writes: every artifact goes to a temporary name and is renamed into place.

A crash (or a killed job) therefore leaves either the previous file or the new one, never a
truncated file that a rerun would mistake for a finished artifact; what a killed write leaves
under a temporary name is removed by :func:`remove_temp_files` when the next run starts.
Files get the permissions ``open()`` would give them (0o666 less the umask), not the
owner-only ones of :func:`tempfile.mkstemp`. A write that fails for a full disk says so,
naming the file, whatever layer raised it (``torch.save`` turns the system's ENOSPC into a
``RuntimeError`` about zip positions).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        kept = "its previous version, if any, is kept"
        if _disk_full(e):
            raise OSError(
                errno.ENOSPC, f"no space left on device: {path} was not written ({kept}); free space and rerun"
            ) from e
        if isinstance(e, OSError) and e.filename is None:  # say which file
            raise OSError(e.errno, f"{e.strerror or e}; {path} was not written ({kept})") from e
        raise
    return path


def _disk_full(error: BaseException | None) -> bool:
    """Whether ``error`` or an exception it was raised from is a full disk (or quota)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        error = error.__cause__ or error.__context__
    return False


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text), mode="w")


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is a temporary name of an interrupted write: :func:`atomic_write`'s
    ``.NAME.*.tmp`` files, and the bank's ``.NAME.tmp-*`` / ``.NAME.old-*`` folders."""
    return name.startswith(".") and (name.endswith(".tmp") or ".tmp-" in name or ".old-" in name)


def remove_temp_files(root: str | os.PathLike) -> list[Path]:
    """Delete what killed writes left under ``root`` (see :func:`is_temp_name`); returns the
    paths removed. Call it only while no other process writes there."""
    removed = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in list(dirnames) + filenames:
            if not is_temp_name(name):
                continue
            path = Path(dirpath) / name
            if name in dirnames:
                dirnames.remove(name)
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


#: The prefix of a checkpoint's digest in a DONE record: a digest of what it holds, not of its bytes.
TENSOR_DIGEST_PREFIX = "tensors-sha256:"


def tensor_digest(path: str | os.PathLike) -> str:
    """The SHA-256 (hex) of what a ``torch.save`` file holds: every tensor's name, dtype, shape
    and values, and the other values, in key order. Not of its bytes: torch writes a
    per-process serialization id into each file, so equal weights saved by an uninterrupted
    and by a resumed run differ in bytes but not in this digest."""
    import torch

    data = load_pth(path)
    h = hashlib.sha256()

    def update(obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().contiguous().cpu()
            h.update(f"tensor {t.dtype} {tuple(t.shape)}\n".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(obj, dict):
            h.update(f"dict {len(obj)}\n".encode())
            for key in sorted(obj, key=repr):
                h.update(f"{key!r}\n".encode())
                update(obj[key])
        elif isinstance(obj, (list, tuple)):
            h.update(f"{type(obj).__name__} {len(obj)}\n".encode())
            for item in obj:
                update(item)
        else:
            h.update(f"{type(obj).__name__} {obj!r}\n".encode())

    update(data)
    return h.hexdigest()


class PickledObjectsError(ValueError):
    """A ``.pth`` file holds pickled objects other than tensors and plain values."""


def load_pth(path: str | os.PathLike) -> Any:
    """What ``torch.save`` wrote to ``path``, read with ``torch.load(weights_only=True)``: tensors,
    numbers, strings and containers of them only. A checkpoint is data, not code: a file that
    needs other pickled objects (unpickling them could run code from the file) is refused with
    :class:`PickledObjectsError`, naming it; other errors (a damaged file) pass through."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e).lower()
        if "weights only" not in text or not any(w in text for w in ("global", "can only build", "reduce")):
            raise  # not a refused object: a damaged file, or no torch.save file at all
        reason = next((line.strip() for line in str(e).splitlines() if "GLOBAL" in line), "")
        raise PickledObjectsError(
            f"{path} holds pickled Python objects other than tensors and plain values"
            f"{f' ({reason})' if reason else ''}. EIR reads .pth files with torch.load(weights_only=True), "
            "because unpickling such objects can run code from the file; it was not loaded. Use a "
            "checkpoint written by EIR, or, only if you trust where the file comes from, save its "
            "tensors again (torch.save({'model': state_dict, ...}, new_path)) and use that file"
        ) from None
