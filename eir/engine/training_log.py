"""A step's per-iteration log (``step_t/training_log.json``), trimmed on resume so that each
iteration appears once."""
from __future__ import annotations

import json
from pathlib import Path

from eir.fileio import atomic_write_text


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
