"""The start-up check of a run's image files, from their headers: a damaged image, or one of
another size than its label, is found before training rather than in the middle of a step (or,
for a test image, after the step has trained).

:func:`check_image_files` opens every image and label of a step's dicts as far as its header and
its last bytes (:func:`eir.data.io.header_size`: a format PIL reads, a label of a label mode, the
end marker of a JPEG or PNG, PIL's decompression-bomb guard) and compares the two sizes. Pixels
are not decoded: that a file decodes to its end is found when it is read. The pairs that passed
are cached by name, size and modification time (as the run's data record keys the files), so a
rerun checks only the files that changed.

Core layer: PIL (through :mod:`eir.data.io`), tqdm and the standard library.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from eir.data.io import header_size
from eir.fileio import atomic_write_json

__all__ = ["check_image_files"]

#: Pairs to check from which a progress bar is shown.
BAR_FROM = 500

#: Pairs checked for a cache file that was not to be written yet (a command checks its data
#: before it claims its run folder): cache file -> keys. The next call that may write it does.
_unwritten: dict[str, set[str]] = {}


def _pair_key(image: str, label: str) -> str:
    """A pair's key: both files' names, sizes and modification times."""
    parts = []
    for f in (image, label):
        try:
            st = os.stat(f)
            parts.append(f"{f}\t{st.st_size}\t{st.st_mtime_ns}")
        except OSError:
            parts.append(f"{f}\t-1\t-1")  # missing: checked (and refused, naming it) every time
    return hashlib.sha1("\n".join(parts).encode("utf-8", "surrogateescape")).hexdigest()


def _read_cache(path: Path) -> set[str]:
    try:
        return set(json.loads(path.read_bytes())["checked"])
    except (OSError, ValueError, KeyError, TypeError):
        return set()  # none yet, or damaged: check again


def check_pair(image: str, label: str) -> None:
    """Raise, naming the file, when ``image`` or ``label`` fails its header check or the two
    differ in size (as displayed: EXIF orientation applied)."""
    image_size, label_size = header_size(image, "image"), header_size(label, "label")
    if image_size != label_size:
        raise ValueError(
            f"label {label} is {label_size[0]}x{label_size[1]} but image {image} is "
            f"{image_size[0]}x{image_size[1]} (as displayed: its EXIF orientation applied); image "
            "and label must have the same size"
        )


def check_image_files(
    dicts: Sequence[dict], cache_file: str | os.PathLike | None = None, write_cache: bool = True,
    verbose: bool = True, desc: str = "checking image headers",
) -> None:
    """Check the image and label of every dict (:func:`check_pair`), skipping the pairs that
    ``cache_file`` (a JSON file) records as checked with the same names, sizes and modification
    times; record the pairs checked there when ``write_cache`` (else keep them in memory for
    the next call that writes). A progress bar is shown (``verbose``) from :data:`BAR_FROM` pairs."""
    pairs = {_pair_key(str(d["file_name"]), str(d["sem_seg_file_name"])): d for d in dicts}
    checked: set[str] = set()
    if cache_file is not None:
        cache_file = Path(cache_file)
        checked = _read_cache(cache_file) | _unwritten.get(str(cache_file), set())
    pending = [(key, d) for key, d in pairs.items() if key not in checked]
    for _, d in tqdm(pending, desc=desc, unit="img", disable=not verbose or len(pending) < BAR_FROM):
        check_pair(str(d["file_name"]), str(d["sem_seg_file_name"]))
    if cache_file is None:
        return
    checked |= {key for key, _ in pending}
    if write_cache:
        if pending or str(cache_file) in _unwritten:
            atomic_write_json(cache_file, {"about": "image/label pairs whose headers passed the start-up check",
                                           "checked": sorted(checked)})
        _unwritten.pop(str(cache_file), None)
    elif pending:
        _unwritten[str(cache_file)] = checked
