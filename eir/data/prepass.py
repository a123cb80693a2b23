"""The prepass artifact: what the old model sees in each training image of a step.

At the start of an incremental step t the frozen old model (step t-1) runs once
over step t's training images (METHOD.md section 6, implementation choice).
Per image it leaves a low-resolution pseudo-label map: uint8 class ids, where the
step label is 0 the old class whose sigmoid score is the highest of all old channels
(the background channel included) and at least tau, and 0 (nothing detected)
elsewhere (the rule of ``eir.modeling.losses.pseudo_labels``). The data loader then transforms that map
with the image's augmentation and passes it to pasting, so pasting runs on CPU
workers without the old model.

:class:`PrepassStore` holds the maps of one step in a single concatenated uint8
buffer (an index of offsets and shapes beside it), merges the parts that
distributed ranks contribute, and saves to / loads from one ``.npz`` file whose
JSON header names the task and step, so a store from another run is rejected, and
the store's *key*: everything else the maps depend on (:func:`prepass_key`: tau,
stride, the old model's input short side, the pseudo-label rule, the old checkpoint's
SHA-256, the image list). Loading with another key raises :class:`StalePrepassError`,
on which the runner recomputes the maps rather than reuse ones that no longer match.
Core layer: NumPy only.

The prepass lives in two modules along one line: this one is the artifact (its format, its
key, when it is stale); :mod:`eir.engine.prepass` runs the old model to make it, with the
method's prepass settings (``method.prepass``: ``tau``, ``short_side``, ``stride``).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from eir.fileio import atomic_write, tensor_digest
from eir.tasks import task_text

__all__ = ["PrepassStore", "StalePrepassError", "prepass_key", "FORMAT", "VERSION"]

FORMAT = "eir-prepass"
VERSION = 2  # 2: the header holds the key


class StalePrepassError(ValueError):
    """A prepass file that another configuration, old model or image list produced."""


def prepass_key(
    *, tau: float, stride: int, short_side: int, rule: str, old_checkpoint: str | os.PathLike,
    dataset_dicts: Any, device: str = "cpu", precision: str = "float32",
) -> dict[str, Any]:
    """What a step's prepass maps depend on besides the task and step (stored in the file).

    ``rule`` names the pseudo-label rule (``eir.modeling.losses.PSEUDO_LABEL_RULE``);
    ``old_checkpoint`` is the old model's weights file, hashed by what it holds
    (:func:`eir.fileio.tensor_digest`: the same after a resume); the image list
    is hashed from each dict's ``image_id``, ``file_name`` and ``sem_seg_file_name``;
    ``device`` (its type: "cpu", "cuda") and ``precision`` ("float32", "float16") are where
    and how the old model ran: maps near the threshold differ between them, so a map made on
    one is not reused by a run on the other.
    """
    images = hashlib.sha256()
    for d in dataset_dicts:
        line = "\t".join(str(d.get(k, "")) for k in ("image_id", "file_name", "sem_seg_file_name"))
        images.update(line.encode("utf-8", "surrogateescape") + b"\n")
    return {
        "tau": float(tau),
        "stride": int(stride),
        "short_side": int(short_side),
        "pseudo_label_rule": str(rule),
        "old_checkpoint_tensors_sha256": tensor_digest(old_checkpoint),
        "images_sha256": images.hexdigest(),
        "device": str(device),
        "precision": str(precision),
    }


def _key_changes(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> str:
    """The fields in which two keys differ, as 'field stored -> wanted'."""
    fields = list(wanted) + [k for k in stored if k not in wanted]
    return ", ".join(
        f"{k} {stored.get(k, '(none)')} -> {wanted.get(k, '(none)')}"
        for k in fields
        if stored.get(k) != wanted.get(k)
    )


def _task_dict(task: Any) -> dict[str, Any]:
    """A task as its plain dict (accepts a :class:`eir.tasks.Task` or its ``to_dict()``)."""
    if hasattr(task, "to_dict"):
        return task.to_dict()
    if isinstance(task, Mapping):
        from eir.tasks import Task

        return Task.from_dict(task).to_dict()  # canonical form, and validated
    raise ValueError(f"task must be an eir.tasks.Task or its to_dict(), got {task!r}")


class PrepassStore:
    """Low-resolution pseudo-label maps of one step's training images, keyed by image id.

    Args:
        task_dict: the run's task (``Task`` or ``Task.to_dict()``), recorded and checked on load.
        step: the step whose training images the maps describe (the old model is step - 1).
        stride: how many input pixels one map pixel spans (informative; the mapper
            resizes each map to its image with nearest interpolation anyway).
        key: what produced the maps (:func:`prepass_key`), a JSON-able dict; saved with
            the store and compared by :meth:`load`.

    Maps are stored back to back in one growing uint8 buffer; :meth:`lookup` returns
    a read-only view into it.
    """

    def __init__(self, task_dict: Any, step: int, stride: int, key: Mapping[str, Any] | None = None):
        self.task = _task_dict(task_dict)
        self.key = json.loads(json.dumps(dict(key or {})))  # JSON-normalised, as when loaded
        self.path: Path | None = None  # the file it was saved to or loaded from
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"step must be an integer >= 0, got {step!r}")
        if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
            raise ValueError(f"stride must be an integer >= 1, got {stride!r}")
        self.step = int(step)
        self.stride = int(stride)
        self._buffer = np.zeros(0, dtype=np.uint8)
        self._used = 0
        self._index: dict[str, tuple[int, int, int]] = {}  # id -> (offset, h, w)

    # ----------------------------------------------------------------- filling
    def add(self, image_id: str, low_res_map: np.ndarray) -> None:
        """Store the map of ``image_id`` (2-D, class ids 0..254).

        Adding an id again is allowed only with an identical map (ranks may see an
        image twice when a sampler pads); a different map raises ValueError.
        """
        image_id = str(image_id)
        arr = np.asarray(low_res_map)
        if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
            raise ValueError(
                f"prepass map of {image_id!r} must be a non-empty 2-D array of class ids, "
                f"got shape {arr.shape}"
            )
        if arr.dtype != np.uint8:
            if arr.dtype.kind not in "iu":
                raise ValueError(
                    f"prepass map of {image_id!r} must hold integer class ids, got dtype {arr.dtype}"
                )
            if arr.min() < 0 or arr.max() > 254:
                raise ValueError(
                    f"prepass map of {image_id!r} holds values outside 0..254 "
                    f"(min {arr.min()}, max {arr.max()}); store class ids, 0 = nothing detected"
                )
            arr = arr.astype(np.uint8)
        elif arr.size and arr.max() == 255:
            raise ValueError(
                f"prepass map of {image_id!r} holds 255; store class ids, 0 = nothing detected "
                "(ignore has no meaning in a pseudo-label map)"
            )
        if image_id in self._index:
            if not np.array_equal(self.lookup(image_id), arr):
                raise ValueError(
                    f"prepass map of {image_id!r} added twice with different contents; "
                    "image ids must be unique within a step"
                )
            return
        n = arr.size
        need = self._used + n
        if need > self._buffer.size:
            grown = np.empty(max(need, 2 * self._buffer.size, 1 << 16), dtype=np.uint8)
            grown[: self._used] = self._buffer[: self._used]
            self._buffer = grown
        self._buffer[self._used : need] = arr.ravel()
        self._index[image_id] = (self._used, arr.shape[0], arr.shape[1])
        self._used = need

    def merge(self, other: PrepassStore) -> PrepassStore:
        """Add every map of ``other`` (same task, step, stride and key) to this store; returns self."""
        if not isinstance(other, PrepassStore):
            raise ValueError(f"can only merge a PrepassStore, got {type(other).__name__}")
        if (other.task, other.step, other.stride, other.key) != (self.task, self.step, self.stride, self.key):
            raise ValueError(
                f"cannot merge prepass parts of different runs: this store is "
                f"{task_text(self.task)} step {self.step} stride {self.stride}, the other is "
                f"{task_text(other.task)} step {other.step} stride {other.stride}"
            )
        for image_id in other._index:
            self.add(image_id, other.lookup(image_id))
        return self

    # ----------------------------------------------------------------- reading
    def lookup(self, image_id: str) -> np.ndarray | None:
        """The map of ``image_id`` (a read-only view), or None when the prepass did not see it."""
        entry = self._index.get(str(image_id))
        if entry is None:
            return None
        offset, h, w = entry
        view = self._buffer[offset : offset + h * w].reshape(h, w)
        view.flags.writeable = False
        return view

    def classes(self, image_id: str) -> list[int]:
        """Sorted class ids detected in ``image_id`` (empty when none, or when it is unknown)."""
        m = self.lookup(image_id)
        if m is None:
            return []
        present = np.flatnonzero(np.bincount(m.ravel(), minlength=256))
        return [int(c) for c in present if c != 0]

    def image_ids(self) -> list[str]:
        return list(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, image_id: object) -> bool:
        return str(image_id) in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    @property
    def nbytes(self) -> int:
        """Bytes of map data held (the buffer's used part)."""
        return self._used

    def __repr__(self) -> str:
        return (
            f"PrepassStore({task_text(self.task)}, step={self.step}, stride={self.stride}, "
            f"images={len(self)}, {self._used / 1e6:.1f} MB)"
        )

    # ----------------------------------------------------------------- pickling / files
    def _arrays(self) -> dict[str, np.ndarray]:
        ids = list(self._index)
        index = np.array([self._index[i] for i in ids], dtype=np.int64).reshape(-1, 3)
        # Re-pack in id order so the saved buffer has no gaps and no spare capacity.
        data = np.empty(self._used, dtype=np.uint8)
        offsets = np.zeros(len(ids), dtype=np.int64)
        pos = 0
        for k, (offset, h, w) in enumerate(index):
            n = int(h * w)
            data[pos : pos + n] = self._buffer[offset : offset + n]
            offsets[k] = pos
            pos += n
        return {
            "data": data,
            "offsets": offsets,
            "shapes": index[:, 1:].astype(np.int32),
            "ids": np.array(ids, dtype=np.str_) if ids else np.zeros(0, dtype="<U1"),
        }

    def _header(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "task": self.task,
            "step": self.step,
            "stride": self.stride,
            "key": self.key,
            "count": len(self),
        }

    def __getstate__(self) -> dict[str, Any]:
        # Compact form for torch.distributed gathers: no spare buffer capacity.
        return {"header": self._header(), **self._arrays()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        header = state["header"]
        self.task = header["task"]
        self.step = header["step"]
        self.stride = header["stride"]
        self.key = header["key"]
        self.path = None
        self._fill(state["data"], state["offsets"], state["shapes"], state["ids"])

    def _fill(self, data, offsets, shapes, ids) -> None:
        self._buffer = np.ascontiguousarray(data, dtype=np.uint8)
        self._used = int(self._buffer.size)
        self._index = {
            str(i): (int(o), int(s[0]), int(s[1])) for i, o, s in zip(ids, offsets, shapes)
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the store to ``path`` (one .npz; written to a temporary name, then renamed)."""
        arrays = self._arrays()
        header = np.frombuffer(json.dumps(self._header()).encode("utf-8"), dtype=np.uint8)

        def write(f):
            buf = io.BytesIO()
            np.savez_compressed(buf, header=header, **arrays)
            f.write(buf.getvalue())

        self.path = atomic_write(path, write)
        return self.path

    @classmethod
    def load(
        cls, path: str | os.PathLike, task: Any = None, step: int | None = None,
        key: Mapping[str, Any] | None = None,
    ) -> PrepassStore:
        """Read a store written by :meth:`save`; checks it belongs to ``task`` and ``step`` if given.

        A file of an older format version, or (with ``key``) written with another key,
        raises :class:`StalePrepassError` saying what differs: recompute it then.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"prepass file {path} not found; it is written at the start of an incremental "
                "step (delete the step's folder to have it recomputed)"
            )
        try:
            with np.load(path, allow_pickle=False) as z:
                header = json.loads(z["header"].tobytes().decode("utf-8"))
                arrays = {k: z[k] for k in ("data", "offsets", "shapes", "ids")}
        except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(
                f"{path} is not a prepass file written by PrepassStore.save ({e}); delete it to "
                "have the prepass recomputed"
            ) from None
        if header.get("format") != FORMAT:
            raise ValueError(
                f"{path} is not a prepass file (format {header.get('format')!r}); delete it to "
                "have the prepass recomputed"
            )
        if header.get("version") != VERSION:
            raise StalePrepassError(
                f"{path} has prepass format version {header.get('version')!r}, not {VERSION} "
                "(version 2 records what produced the maps); it must be recomputed"
            )
        if task is not None:
            expected = _task_dict(task)
            if header["task"] != expected:
                raise ValueError(
                    f"prepass file {path} was made for task {task_text(header['task'])} "
                    f"(order {header['task'].get('order')}), but this run is task "
                    f"{task_text(expected)} (order {expected.get('order')}); point the run "
                    "at its own output folder or delete the file"
                )
        if step is not None and header["step"] != step:
            raise ValueError(
                f"prepass file {path} was made for step {header['step']}, but step {step} is "
                "running; each step writes its own prepass file (step_<t>/prepass.npz)"
            )
        if key is not None and header["key"] != json.loads(json.dumps(dict(key))):
            raise StalePrepassError(
                f"prepass file {path} was made with other settings ({_key_changes(header['key'], key)})"
            )
        n = len(arrays["ids"])
        if not (len(arrays["offsets"]) == len(arrays["shapes"]) == n == header.get("count")):
            raise ValueError(f"prepass file {path} is inconsistent (index lengths differ); delete it")
        store = cls.__new__(cls)
        store.task = header["task"]
        store.step = int(header["step"])
        store.stride = int(header["stride"])
        store.key = header["key"]
        store.path = path
        store._fill(arrays["data"], arrays["offsets"], arrays["shapes"], arrays["ids"])
        return store
