"""A command's claim of its run folder across processes, and the data check that goes with it.

:class:`~eir.engine.run_folder.RunFolder` knows nothing of processes; here the main process
claims the folder once every rank has checked its inputs, and a failure on any rank stops every
rank at once (:func:`stop_together`) instead of leaving the others at the next barrier.
"""
from __future__ import annotations

import eir.require_detectron2  # noqa: F401  (first: says how to install a missing Detectron2)

# isort: split
from typing import Callable

from detectron2.data import DatasetCatalog
from detectron2.utils import comm

from eir.data.datasets import data_fingerprint
from eir.engine.run_folder import RunFolder

__all__ = ["OtherRankError", "check_run_data", "claim_together", "stop_together"]


class OtherRankError(RuntimeError):
    """Another process of the run stopped at start-up; its message is repeated here."""


def stop_together(error: BaseException | None) -> None:
    """Raise on every rank when any rank failed: each tells the others whether it failed
    (a gather over the gloo group), so a refusal on one rank (a held lock, another config,
    bad data) does not leave the other ranks waiting at the next barrier for the collective
    timeout (30 minutes with NCCL). The failing rank raises its own error; the others an
    :class:`OtherRankError` that repeats it."""
    mine = None if error is None else f"{type(error).__name__}: {error}"
    failures = [(rank, text) for rank, text in enumerate(comm.all_gather(mine)) if text is not None]
    if error is not None:
        raise error
    if failures:
        rank, text = failures[0]
        raise OtherRankError(f"rank {rank} stopped at start-up: {text}")


def claim_together(folder: RunFolder, cfg, check_inputs: Callable[[], None]) -> None:
    """Every rank runs ``check_inputs``; then the main process claims ``folder`` for ``cfg``
    (:meth:`RunFolder.claim`, with the number of processes). Any rank's failure stops all."""
    error = None
    try:
        check_inputs()
        if comm.is_main_process():
            folder.claim(cfg, world_size=comm.get_world_size())
    except Exception as e:
        error = e
    try:
        stop_together(error)
    except OtherRankError:
        folder.release()  # rank 0 took the folder, another rank cannot start
        raise


def check_run_data(folder: RunFolder, cfg, write: bool = True, fingerprints: dict | None = None) -> dict:
    """Refuse datasets whose files changed since the run recorded them (``run_data.json``):
    checked when a command starts and before each step trains; the record is written (by the
    main process) only with ``write``. ``fingerprints``: the datasets' files as just read
    (else they are read now); returns them."""
    if fingerprints is None:
        names = dict.fromkeys([cfg.dataloader.train.dataset, cfg.dataloader.test.dataset])
        fingerprints = {name: data_fingerprint(DatasetCatalog.get(name)) for name in names}
    allow = bool(cfg.train.get("allow_data_change", False))
    folder.check_data(fingerprints, allow, write=write and comm.is_main_process())
    if write:
        comm.synchronize()  # the other ranks wait for the record
    return fingerprints
