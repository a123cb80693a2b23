"""The start-up checks' messages in the run's ``log.txt``.

A command checks its inputs before it claims its output folder, so that a refused command
writes nothing there; ``log.txt`` is the folder's and so does not exist yet while those
checks warn (files a dataset leaves out, a bank that would be empty). :func:`held_startup_records`
keeps their records (and prints the warnings, as Python does for a logger without handlers);
:func:`write_to_log_files` gives them to the log file once the run's logger has one, so the
log holds them as the console did.
"""
from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

#: The project's logger: every module's logger is a child of it.
LOGGER = "eir"


class _Held(logging.Handler):
    """Keeps every record; prints the warnings and errors (message only) to stderr."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if record.levelno >= logging.WARNING:
            sys.stderr.write(self.format(record) + "\n")


@contextlib.contextmanager
def held_startup_records(name: str = LOGGER) -> Iterator[list[logging.LogRecord]]:
    """Within the block, the records of logger ``name`` (and its children) are kept in the
    yielded list; warnings still reach the console."""
    logger, held = logging.getLogger(name), _Held()
    level = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)  # the information lines are the log's too
    logger.addHandler(held)
    try:
        yield held.records
    finally:
        logger.removeHandler(held)
        logger.setLevel(level)


def write_to_log_files(records: list[logging.LogRecord], name: str = LOGGER) -> int:
    """Hand ``records`` to the handlers of logger ``name`` that write a file (not the console
    ones: they printed them already); returns how many handlers took them."""
    console = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    files = [h for h in logging.getLogger(name).handlers
             if isinstance(h, logging.StreamHandler) and h.stream not in console]
    for handler in files:
        for record in records:
            if record.levelno >= handler.level:
                handler.handle(record)
        handler.flush()
    return len(files)
