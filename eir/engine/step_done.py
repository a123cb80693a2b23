"""A step's DONE record: the step is finished, and these are its artifacts.

``step_t/DONE`` holds a line of text, then the digest of every artifact the step wrote
(``sha256sum`` format; a checkpoint's is the digest of its tensors, :func:`artifact_digest`);
a done step whose artifacts are missing or changed is reported, never skipped silently. A DONE
that is empty or unreadable vouches for nothing: the step is not done.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from eir.engine.run_files import DONE_FILE
from eir.fileio import TENSOR_DIGEST_PREFIX, atomic_write_text, sha256_file, tensor_digest


def artifact_digest(path: Path) -> str:
    """How DONE records an artifact: the SHA-256 of a file's bytes, or for a checkpoint (.pth)
    of the tensors it holds (:func:`eir.fileio.tensor_digest`, prefixed), so that a step
    finished after a resume records what the uninterrupted step records."""
    if path.suffix == ".pth":
        return TENSOR_DIGEST_PREFIX + tensor_digest(path)
    return sha256_file(path)


def digest_matches(path: Path, recorded: str) -> bool:
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
        elif not digest_matches(path, recorded[rel]):
            problems.append(f"{path} is damaged or was changed (its SHA-256 differs from the one in DONE)")
    return problems
