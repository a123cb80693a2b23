"""Incremental DeepLabV3 head: ASPP, one 3x3 conv, and one 1x1 classifier per step (Detectron2 layer).

METHOD.md section 3. Output channel 0 is the background classifier: EIR's reads the
*detached* feature (its BCE term trains only itself, never the body), a method whose
background is a class like the others (``detach_background=False``, the method's
:attr:`~eir.methods.base.ContinualMethod.detach_background`) reads it as it is; then one
block of channels per step, in task order.

Parameter names are stable across steps so checkpoints load into the next step's
model: ``aspp.*``, ``conv.*``, ``aux.{weight,bias}``, ``cls.<s>.{weight,bias}``.

Dropout: ASPP's output dropout (``aspp_dropout``, 0.1 as in DeepLabV3) is active in
training mode only; incremental steps switch it off for good with
:func:`eir.modeling.meta_arch.freeze_for_incremental`.
"""
from __future__ import annotations

import eir.require_detectron2  # noqa: F401  (first: says how to install a missing Detectron2)

# isort: split
import math
from typing import List, Sequence

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.layers import ASPP, Conv2d, get_norm
from torch import nn

from eir.constants import NEW_HEAD_INITS
from eir.modeling.norm import resolve_norm

__all__ = ["IncrementalHead", "NEW_HEAD_INITS"]

_CLASSIFIER_STD = 0.01


def _check_init(init: str) -> str:
    if init not in NEW_HEAD_INITS:
        raise ValueError(f"new head init must be one of {NEW_HEAD_INITS}, got {init!r}")
    return init


class IncrementalHead(nn.Module):
    """DeepLabV3 head whose classifier grows by one 1x1 conv per step.

    ``forward(x)`` maps the backbone feature [N, in_channels, h, w] to logits
    [N, 1 + sum(step_sizes), h, w] = cat(aux, cls_0, ..., cls_t) at feature resolution.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        step_sizes: Sequence[int],
        channels: int = 256,
        aspp_dilations: Sequence[int] = (6, 12, 18),
        norm: str = "BN",
        aspp_dropout: float = 0.1,
        pool_kernel_size=None,
        detach_background: bool = True,
        prior_prob: float | None = None,
    ):
        """
        Args:
            in_channels: channels of the backbone feature (2048 for ResNet-101 res5).
            step_sizes: number of classes of each step up to the current one
                (``task.step_sizes(t)``).
            channels: width of ASPP and of the 3x3 conv (256 in DeepLabV3).
            aspp_dilations: the three atrous rates (6, 12, 18 at output stride 16).
            norm: Detectron2 norm name for ASPP and the 3x3 conv; a synchronised
                BatchNorm is plain "BN" in a one-process run (:func:`~eir.modeling.norm.resolve_norm`).
            aspp_dropout: dropout on ASPP's output in training mode.
            pool_kernel_size: Detectron2 ASPP's image-pooling window; None = global
                average pooling at any input size (the DeepLabV3 definition).
            detach_background: channel 0's classifier reads the detached feature (its loss
                trains it alone), or the feature itself (its loss trains the body too).
            prior_prob: None keeps "random" biases at 0 (the paper's init). A probability
                p sets class biases to log(p / (1 - p)) and the aux (background) bias to
                its opposite, so sigmoid scores start near p instead of 0.5: training from
                scratch (the synthetic runs) then skips a long phase of pushing every
                class score down on the background that fills most pixels.
        """
        super().__init__()
        step_sizes = [int(n) for n in step_sizes]
        if not step_sizes or min(step_sizes) < 1:
            raise ValueError(
                f"step_sizes must list at least one step, each with >= 1 class; got {step_sizes}"
            )
        if len(aspp_dilations) != 3:
            raise ValueError(f"aspp_dilations needs 3 rates, got {tuple(aspp_dilations)}")
        self.detach_background = bool(detach_background)
        norm = resolve_norm(norm)
        if prior_prob is not None and not 0.0 < float(prior_prob) < 1.0:
            raise ValueError(f"prior_prob must be in (0, 1) or None, got {prior_prob!r}")
        self.prior_bias = (
            0.0 if prior_prob is None else math.log(float(prior_prob) / (1.0 - float(prior_prob)))
        )
        self.in_channels = int(in_channels)
        self.channels = int(channels)
        self.step_sizes: List[int] = []

        self.aspp = ASPP(
            self.in_channels,
            self.channels,
            list(aspp_dilations),
            norm=norm,
            activation=nn.ReLU(),
            pool_kernel_size=pool_kernel_size,
            dropout=float(aspp_dropout),
        )
        self.conv = Conv2d(
            self.channels,
            self.channels,
            kernel_size=3,
            padding=1,
            bias=not norm,
            norm=get_norm(norm, self.channels),
            activation=nn.ReLU(),
        )
        weight_init.c2_msra_fill(self.conv)
        self.aux = nn.Conv2d(self.channels, 1, kernel_size=1)
        self.init_classifier(self.aux, "random")
        with torch.no_grad():
            self.aux.bias.fill_(-self.prior_bias)
        self.cls = nn.ModuleList()
        for n in step_sizes:
            self.add_step(n, init="random")

    @property
    def num_steps(self) -> int:
        return len(self.step_sizes)

    @property
    def num_channels(self) -> int:
        """1 (aux background) + every class seen so far."""
        return 1 + sum(self.step_sizes)

    def init_classifier(self, conv: nn.Conv2d, init: str) -> None:
        """(Re)initialise a 1x1 classifier: "random" (N(0, 0.01), bias from ``prior_prob``) or
        "aux" (copy aux rows)."""
        with torch.no_grad():
            if _check_init(init) == "aux":
                conv.weight.copy_(self.aux.weight.expand_as(conv.weight))
                conv.bias.copy_(self.aux.bias.expand_as(conv.bias))
            else:
                nn.init.normal_(conv.weight, std=_CLASSIFIER_STD)
                nn.init.constant_(conv.bias, self.prior_bias)

    def add_step(self, num_classes: int, init: str = "random") -> nn.Conv2d:
        """Append the classifier of a new step (``num_classes`` channels) and return it."""
        num_classes = int(num_classes)
        if num_classes < 1:
            raise ValueError(f"a step needs at least one class, got num_classes={num_classes}")
        ref = self.aux.weight
        conv = nn.Conv2d(self.channels, num_classes, kernel_size=1).to(ref.device, ref.dtype)
        self.init_classifier(conv, init)
        self.cls.append(conv)
        self.step_sizes.append(num_classes)
        return conv

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The shared 256-channel feature the classifiers read."""
        return self.conv(self.aspp(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.features(x)
        outs = [self.aux(feat.detach() if self.detach_background else feat)]
        outs.extend(cls(feat) for cls in self.cls)
        return torch.cat(outs, dim=1)
