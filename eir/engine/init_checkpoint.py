"""The ImageNet backbone of step 0: required unless a run says it trains from scratch.

ImageNet weights are part of EIR's recipe (METHOD.md, "Hyperparameters"). Detectron2's
``DetectionCheckpointer.load`` accepts an empty path (random weights) and a checkpoint whose
names do not match the model (it logs the unmatched keys and goes on), so either mistake
would train a paper config from scratch for hours without a word. :func:`check_init_checkpoint`
runs at start-up, before the runner writes into the output folder: it refuses a run whose
``train.init_checkpoint`` is empty unless ``train.from_scratch`` is True, and a checkpoint
that leaves any backbone weight unloaded, naming the missing keys and the expected prefix.
"""
from __future__ import annotations

import eir.require_detectron2  # noqa: F401  (first: says how to install a missing Detectron2)

# isort: split
import logging
import os
import warnings

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import instantiate
from torch import nn

from eir.fileio import load_pth

logger = logging.getLogger(__name__)

#: Attribute of the backbone in ``EIRSegmentor``: its weights are named ``backbone.*``.
BACKBONE_PREFIX = "backbone."
_SHOWN = 5  # missing keys quoted in the error


class _KeyRecordingCheckpointer(DetectionCheckpointer):
    """A DetectionCheckpointer that keeps what ``load`` only logs: the keys it could not load
    (the error names them; the real load at step 0 logs them as usual)."""

    incompatible = None
    checkpoint_keys: tuple = ()

    def _torch_load(self, f):
        return load_pth(f)  # weights_only=True: a .pth is data, not code

    def _load_model(self, checkpoint):
        self.checkpoint_keys = tuple(sorted(checkpoint.get("model", {})))
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible

    def _log_incompatible_keys(self, incompatible) -> None:
        pass


def unloaded_backbone_keys(backbone_cfg, path: str) -> tuple[list[str], tuple[str, ...]]:
    """Load ``path`` as ``DetectionCheckpointer`` does into the backbone built from ``backbone_cfg``.

    The backbone is built on the meta device (no memory, no weights copied) inside a module
    that names it like ``EIRSegmentor`` does. Returns ``(unloaded, checkpoint_keys)``: the
    backbone's weights the checkpoint does not fill (missing or of another shape; BatchNorm's
    ``num_batches_tracked`` counters aside) and the checkpoint's own keys, sorted.
    """
    with torch.device("meta"):
        holder = nn.Module()
        holder.add_module(BACKBONE_PREFIX.rstrip("."), instantiate(backbone_cfg))
    checkpointer = _KeyRecordingCheckpointer(holder)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*meta parameter.*")  # copies into meta are no-ops
        checkpointer.load(path, checkpointables=[])
    missing = checkpointer.incompatible.missing_keys
    unloaded = sorted(k for k in missing if not k.endswith("num_batches_tracked"))
    return unloaded, checkpointer.checkpoint_keys


def _top_level(keys) -> list[str]:
    """The distinct first components of dotted names: ``["backbone.", "head."]``."""
    return sorted({k.split(".")[0] + "." for k in keys})


def check_init_checkpoint(cfg) -> None:
    """Refuse to start step 0 without a fully loading backbone checkpoint (see the module doc).

    ``cfg.train.from_scratch`` True: ``cfg.train.init_checkpoint`` must be empty (random
    backbone on purpose). False: it must name a file that fills every backbone weight of
    ``cfg.model.backbone`` (tools/convert_torchvision_r101.py writes one).
    """
    train = cfg.train
    path = str(train.get("init_checkpoint") or "")
    from_scratch = train.get("from_scratch")
    if not isinstance(from_scratch, bool):
        raise ValueError(
            f"train.from_scratch must be True or False, got {from_scratch!r} "
            "(configs/common/train.py)"
        )
    if from_scratch:
        if path:
            raise ValueError(
                f"train.from_scratch=True but train.init_checkpoint={path!r}: a run either trains "
                "its backbone from scratch or starts it from a checkpoint; clear one of the two"
            )
        logger.info("Step 0 trains the backbone from scratch (train.from_scratch=True)")
        return
    if not path:
        raise ValueError(
            "step 0 needs ImageNet backbone weights and train.init_checkpoint is empty. Convert "
            "torchvision's ResNet-101 (python tools/convert_torchvision_r101.py resnet101.pth "
            "R-101.pkl) and add train.init_checkpoint=R-101.pkl, or add train.from_scratch=True "
            "to train from random weights on purpose"
        )
    if "://" not in path and not os.path.isfile(path):
        raise FileNotFoundError(f"train.init_checkpoint={path!r} does not exist")
    unloaded, checkpoint_keys = unloaded_backbone_keys(cfg.model.backbone, path)
    if unloaded:
        raise ValueError(
            f"train.init_checkpoint={path!r} leaves {len(unloaded)} backbone weights unloaded, "
            f"e.g. {', '.join(unloaded[:_SHOWN])}. The model expects Detectron2 ResNet names with "
            f"the prefix {BACKBONE_PREFIX!r}; the checkpoint's {len(checkpoint_keys)} keys have the "
            f"prefixes {', '.join(_top_level(checkpoint_keys)) or '(none)'}; convert torchvision "
            "weights with tools/convert_torchvision_r101.py (default --prefix backbone.) and check "
            "that model.backbone matches them (depth, widths)"
        )
    logger.info("train.init_checkpoint=%s fills every backbone weight", path)
