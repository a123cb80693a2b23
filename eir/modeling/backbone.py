"""The DeepLabV3 ResNet body, built from Detectron2's ResNet pieces (Detectron2 layer).

EIR (METHOD.md section 3) uses a ResNet-101 at output stride 16: res5 is not
strided but dilated by 2. Output stride 8 (res4 dilated by 2, res5 by 4, as in DeepLab)
suits small inputs such as the synthetic dataset's 128-pixel images. The blocks are Detectron2's ``BottleneckBlock`` (it takes a
dilation; the R18/R34 ``BasicBlock`` does not), with the stride in the 3x3 conv
(``stride_in_1x1=False``), which is the layout of torchvision's ImageNet weights that
``tools/convert_torchvision_r101.py`` converts.

``freeze_at`` defaults to 0: like DeepLab and the CSS methods EIR compares with, the
whole ResNet is fine-tuned at step 0. Incremental steps freeze BatchNorm through
:func:`eir.modeling.meta_arch.freeze_for_incremental`, not through ``freeze_at``.
"""
from __future__ import annotations

import eir.require_detectron2  # noqa: F401  (first: says how to install a missing Detectron2)

# isort: split
from typing import Sequence

from detectron2.modeling.backbone import BasicStem, BottleneckBlock, ResNet

from eir.modeling.norm import resolve_norm

__all__ = ["SMALL_RESNET", "build_resnet_deeplab", "resnet_out_channels"]

_BLOCKS_PER_DEPTH = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}

#: Keyword arguments of a tiny bottleneck ResNet (res5 has 256 channels) for the
#: synthetic CPU runs and the tests: ``build_resnet_deeplab(**SMALL_RESNET)``.
SMALL_RESNET = dict(
    num_blocks=(1, 1, 1, 1), stem_out_channels=16, width_per_group=8, res2_out_channels=32
)


def resnet_out_channels(res2_out_channels: int = 256, stage: str = "res5") -> int:
    """Channels of a stage's output (each stage doubles res2's), e.g. for the head's ``in_channels``."""
    stages = ("res2", "res3", "res4", "res5")
    if stage not in stages:
        raise ValueError(f"stage must be one of {stages}, got {stage!r}")
    return res2_out_channels * 2 ** stages.index(stage)


def build_resnet_deeplab(
    depth: int | None = 101,
    norm: str = "BN",
    output_stride: int = 16,
    stem_out_channels: int = 64,
    width_per_group: int = 64,
    res2_out_channels: int = 256,
    num_blocks: Sequence[int] | None = None,
    freeze_at: int = 0,
    out_features: Sequence[str] = ("res5",),
    in_channels: int = 3,
) -> ResNet:
    """A Detectron2 ``ResNet`` (BasicStem + 4 bottleneck stages) for DeepLabV3.

    Args:
        depth: 50, 101 or 152 picks the standard number of blocks per stage; ignored
            when ``num_blocks`` is given.
        norm: Detectron2 norm name for every conv ("BN", "SyncBN", "FrozenBN", "GN", ...);
            a synchronised BatchNorm is plain "BN" in a one-process run
            (:func:`eir.modeling.norm.resolve_norm`).
        output_stride: 16 (res5 keeps res4's resolution and dilates its 3x3 convs by 2),
            8 (res4 and res5 keep res3's resolution, dilated by 2 and 4) or 32 (plain).
        stem_out_channels, width_per_group, res2_out_channels: widths; the defaults are
            ResNet-101's. Stage k (res2..res5) has ``res2_out_channels * 2**k`` output
            and ``width_per_group * 2**k`` bottleneck channels.
        num_blocks: blocks in res2..res5, e.g. ``(1, 1, 1, 1)`` for a tiny test model
            (see :data:`SMALL_RESNET`).
        freeze_at: Detectron2's ``ResNet.freeze``: 0 trains everything (default,
            DeepLab convention), 1 freezes the stem, 2 the stem and res2, ...
        out_features: which stages the backbone returns (the head reads "res5").
    """
    if num_blocks is None:
        if depth not in _BLOCKS_PER_DEPTH:
            raise ValueError(
                f"depth must be one of {sorted(_BLOCKS_PER_DEPTH)} (bottleneck ResNets, the only "
                f"ones whose blocks take a dilation), or give num_blocks; got depth={depth!r}"
            )
        num_blocks = _BLOCKS_PER_DEPTH[depth]
    num_blocks = tuple(int(n) for n in num_blocks)
    if len(num_blocks) != 4 or min(num_blocks) < 1:
        raise ValueError(f"num_blocks needs 4 positive counts (res2..res5), got {num_blocks}")
    dilations = {32: (1, 1, 1, 1), 16: (1, 1, 1, 2), 8: (1, 1, 2, 4)}
    if output_stride not in dilations:
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride!r}")

    norm = resolve_norm(norm)
    stem = BasicStem(in_channels=in_channels, out_channels=stem_out_channels, norm=norm)
    stages = []
    stage_in = stem_out_channels
    for k, n in enumerate(num_blocks):
        dilation = dilations[output_stride][k]
        # res2 follows the stem's max-pool and keeps its resolution; a dilated stage does too.
        first_stride = 1 if k == 0 or dilation > 1 else 2
        out_ch = res2_out_channels * 2**k
        stages.append(
            ResNet.make_stage(
                BottleneckBlock,
                n,
                in_channels=stage_in,
                out_channels=out_ch,
                bottleneck_channels=width_per_group * 2**k,
                stride_per_block=[first_stride] + [1] * (n - 1),
                norm=norm,
                stride_in_1x1=False,
                dilation=dilation,
            )
        )
        stage_in = out_ch
    return ResNet(stem, stages, out_features=list(out_features), freeze_at=freeze_at)
