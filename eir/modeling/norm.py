"""Which BatchNorm a layer gets: synchronised across processes, or plain (Detectron2 layer).

EIR trains step 0 with BatchNorm synchronised across GPUs, as the authors' release does
(METHOD.md, "Model"), and every later step freezes the statistics learned then
(:func:`eir.modeling.meta_arch.freeze_for_incremental`), so they must be the statistics of
the whole batch, not of one GPU's share of it. The configs therefore name a synchronised
norm: "SyncBN" (torch's ``SyncBatchNorm``, CUDA only) or "naiveSyncBN" (Detectron2's
all-reduce ``NaiveSyncBatchNorm``, which also runs in CPU processes under gloo). With one
process there is nothing to synchronise and :func:`resolve_norm` gives plain "BN". The
state dict keys are the same for all of them and for the frozen BatchNorm of later steps.
"""
from __future__ import annotations

import eir.require_detectron2  # noqa: F401  (first: says how to install a missing Detectron2)

# isort: split
from detectron2.utils import comm

__all__ = ["SYNC_NORMS", "resolve_norm"]

#: Detectron2 ``get_norm`` names of the BatchNorms synchronised across processes.
SYNC_NORMS = ("SyncBN", "nnSyncBN", "naiveSyncBN", "naiveSyncBN_N")


def resolve_norm(norm, world_size: int | None = None):
    """``norm``, except a synchronised BatchNorm becomes "BN" when the run has one process.

    ``world_size`` defaults to the number of processes of the run (Detectron2's
    ``comm.get_world_size()``, 1 outside ``launch``). Other norms, callables included, are
    returned unchanged.
    """
    if world_size is None:
        world_size = comm.get_world_size()
    if isinstance(norm, str) and norm in SYNC_NORMS and int(world_size) == 1:
        return "BN"
    return norm
