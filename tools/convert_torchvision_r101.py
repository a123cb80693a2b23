#!/usr/bin/env python
"""Convert torchvision's ImageNet ResNet-101 weights into a Detectron2 checkpoint for EIR.

    python tools/convert_torchvision_r101.py resnet101-63fe2227.pth R-101-torchvision.pkl

The input is a torchvision ResNet state dict (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer1.0.downsample.0/1``, ``fc``; a ``{"state_dict": ...}`` or ``{"model": ...}``
wrapper and a ``module.`` prefix are accepted); nothing is downloaded. The output is
Detectron2's pickle format, ``{"model": {name: numpy array}, "__author__": ...,
"matching_heuristics": False}``, with names of Detectron2's ResNet inside the
segmentor (``backbone.stem.conv1.weight``, ``backbone.stem.conv1.norm.*``,
``backbone.res2.0.conv1.*``, ``backbone.res2.0.shortcut.*``, ...) so that
``DetectionCheckpointer(model).load(OUT)`` fills the whole backbone of
``EIRSegmentor``; ``--prefix ""`` gives names for a bare backbone. ``fc`` is dropped.

torchvision puts the stride in the 3x3 conv, so the backbone must be built with
``stride_in_1x1=False`` (``eir.modeling.backbone.build_resnet_deeplab`` does). The
mapping works for any torchvision bottleneck ResNet (50/101/152). This script imports
neither detectron2 nor torchvision.
"""
from __future__ import annotations

import argparse
import os
import pickle
import re
import sys
from collections import Counter
from typing import Dict, Mapping

import numpy as np
import torch

_BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_STEM_RE = re.compile(r"^(conv1|bn1)\.(\w+)$")
_BLOCK_RE = re.compile(r"^layer([1-4])\.(\d+)\.(conv[1-3]|bn[1-3]|downsample\.[01])\.(\w+)$")


def _rename(key: str) -> str | None:
    """Detectron2 ResNet name of a torchvision key; None for the classifier ``fc``."""
    if key.startswith("fc."):
        return None
    m = _STEM_RE.match(key)
    if m:
        base, (layer, suffix) = "stem.", m.groups()
    else:
        m = _BLOCK_RE.match(key)
        if not m:
            raise ValueError(
                f"unexpected key {key!r}: this is not a torchvision bottleneck ResNet state dict "
                "(expected conv1, bn1, layer1..4.<block>.conv1-3/bn1-3/downsample.0-1, fc)"
            )
        stage, block, layer, suffix = m.groups()
        base = f"res{int(stage) + 1}.{block}."
    is_conv = layer.startswith("conv") or layer == "downsample.0"
    if (is_conv and suffix != "weight") or (not is_conv and suffix not in _BN_SUFFIXES):
        raise ValueError(f"unexpected parameter {key!r} (ResNet convs have only a weight)")
    if layer.startswith("downsample"):
        conv = "shortcut"
    else:
        conv = "conv" + layer[-1]
    return base + conv + ("." if is_conv else ".norm.") + suffix


def torchvision_to_detectron2(
    state_dict: Mapping[str, torch.Tensor], prefix: str = "backbone."
) -> Dict[str, np.ndarray]:
    """Rename a torchvision ResNet state dict to Detectron2's names (values as numpy arrays)."""
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
        state_dict = state_dict["state_dict"]
    elif "model" in state_dict and isinstance(state_dict["model"], Mapping):
        state_dict = state_dict["model"]
    out: Dict[str, np.ndarray] = {}
    for key, value in state_dict.items():
        if key.startswith("module."):
            key = key[len("module.") :]
        name = _rename(key)
        if name is None:
            continue
        out[prefix + name] = torch.as_tensor(value).detach().cpu().numpy()
    if prefix + "stem.conv1.weight" not in out:
        raise ValueError("no conv1.weight found: is this a torchvision ResNet state dict?")
    return out


def blocks_per_stage(converted: Mapping[str, np.ndarray], prefix: str = "backbone.") -> list[int]:
    """Number of residual blocks in res2..res5 (e.g. [3, 4, 23, 3] for ResNet-101)."""
    pat = re.compile(re.escape(prefix) + r"res([2-5])\.(\d+)\.conv1\.weight$")
    counts = Counter(m.group(1) for m in map(pat.match, converted) if m)
    return [counts.get(str(s), 0) for s in range(2, 6)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="torchvision ResNet .pth state dict")
    parser.add_argument("output", help="Detectron2 .pkl checkpoint to write")
    parser.add_argument(
        "--prefix",
        default="backbone.",
        help='key prefix (default "backbone." for EIRSegmentor; "" for a bare backbone)',
    )
    args = parser.parse_args(argv)
    if not args.output.endswith(".pkl"):
        parser.error("OUTPUT must end with .pkl (Detectron2 reads .pkl files in its own format)")
    if not os.path.isfile(args.input):
        raise FileNotFoundError(f"input weights not found: {args.input}")
    state_dict = torch.load(args.input, map_location="cpu", weights_only=True)
    converted = torchvision_to_detectron2(state_dict, prefix=args.prefix)
    blocks = blocks_per_stage(converted, args.prefix)
    if blocks != [3, 4, 23, 3]:
        print(f"note: blocks per stage {blocks}, not ResNet-101's [3, 4, 23, 3]", file=sys.stderr)
    payload = {
        "model": converted,
        "__author__": "torchvision (converted by eir tools/convert_torchvision_r101.py)",
        "matching_heuristics": False,
    }
    tmp = args.output + ".tmp"
    with open(tmp, "wb") as f:
        pickle.dump(payload, f)
    os.replace(tmp, args.output)
    print(f"wrote {len(converted)} tensors (blocks per stage {blocks}) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
