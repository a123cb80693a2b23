"""EIRCriterion: the training objective of a step, as one object a config declares (core module).

METHOD.md section 4: targets from the step's labels (pseudo-labelled where the old model is
sure, blended with the pasted instances), BCE over every channel, and region-specific
distillation (RSKD) from the old model's logits. The config holds it as
``eir.criterion = L(EIRCriterion)(tau=..., w_bce=..., w_kd=..., ...)``; an ablation is a
field of it (``tau=None``: no pseudo-labels; ``w_kd=0``: no distillation), and whether a
step needs the old model in its training step is the criterion's to say
(:attr:`EIRCriterion.needs_old_model`), not a condition repeated where it is used.

Memory: the loss block works on full-resolution float32 tensors of every channel (the soft
targets, the old model's softmax, RSKD's log-probabilities), which autograd would keep until
the backward pass: at ADE20K's 111 channels, about three times the logits themselves. The
block is therefore recomputed in the backward pass (``torch.utils.checkpoint``): what it keeps
is its inputs, the logits and the old logits (and the per-pixel labels and pastes). It holds no
parameter and no randomness, so the recomputation gives the same values bit for bit.
"""
from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from eir.constants import IGNORE_LABEL
from eir.modeling.losses import (
    DISTILLATION_RULES,
    RSKD_NORMALIZATIONS,
    bce_loss,
    distillation_mask,
    pseudo_labels,
    rskd_loss,
    soft_targets,
)

__all__ = ["EIRCriterion", "PASTED_BCE"]

#: Which channels take BCE on pasted pixels (:class:`EIRCriterion`'s ``pasted_bce``).
PASTED_BCE = ("all", "old_channels", "none")


def _weight(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    if not value >= 0:  # also refuses NaN
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


class EIRCriterion:
    """The weighted loss terms of one batch, in channel space.

    Args:
        tau: pseudo-label threshold on the old model's sigmoid scores (0.7 in the paper);
            None turns pseudo-labels off.
        w_bce, w_kd: weights of BCE and RSKD; ``w_kd=0`` turns distillation off.
        rskd_mask: the pixels RSKD distils (:func:`eir.modeling.losses.distillation_mask`).
        rskd_normalize: RSKD's mean over the mask's pixels or all pixels
            (:func:`eir.modeling.losses.rskd_loss`).
        pasted_bce: which channels take BCE on pasted pixels (those under a paste whose label is
            not a class of the step): ``"all"`` (METHOD.md section 4, the paper's), ``"old_channels"``
            (the new classes' channels leave them out, so a pasted instance tells no new class
            "not here") or ``"none"`` (they leave the BCE, its mean included). Ablations, not the
            paper's; the latter two need the old model's logits (they give the number of old
            channels).
    """

    def __init__(
        self,
        tau: float | None = 0.7,
        w_bce: float = 1.0,
        w_kd: float = 5.0,
        rskd_mask: str = "not_new",
        rskd_normalize: str = "mask",
        pasted_bce: str = "all",
    ):
        if tau is not None:
            if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0.0 <= tau <= 1.0:
                raise ValueError(
                    f"tau is a sigmoid-score threshold in [0, 1] (or None: no pseudo-labels), got {tau!r}"
                )
            tau = float(tau)
        if rskd_mask not in DISTILLATION_RULES:
            raise ValueError(f"rskd_mask must be one of {DISTILLATION_RULES}, got {rskd_mask!r}")
        if rskd_normalize not in RSKD_NORMALIZATIONS:
            raise ValueError(f"rskd_normalize must be one of {RSKD_NORMALIZATIONS}, got {rskd_normalize!r}")
        self.tau = tau
        self.w_bce = _weight("w_bce", w_bce)
        self.w_kd = _weight("w_kd", w_kd)
        self.rskd_mask = rskd_mask
        self.rskd_normalize = rskd_normalize
        if pasted_bce not in PASTED_BCE:
            raise ValueError(f"pasted_bce must be one of {PASTED_BCE}, got {pasted_bce!r}")
        self.pasted_bce = pasted_bce

    @property
    def needs_old_model(self) -> bool:
        """Whether an incremental step's training step runs the old model (for pseudo-labels or RSKD)."""
        return self.tau is not None or self.w_kd > 0

    def __call__(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        paste_class: torch.Tensor | None = None,
        paste_alpha: torch.Tensor | None = None,
        old_logits: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``{"loss_bce": ..., "loss_rskd": ...}`` (weighted) of a batch.

        ``logits`` [N, C, H, W]; ``labels`` [N, H, W] channel indices (255 ignore);
        ``paste_class`` / ``paste_alpha`` the pasted instances' channels and alphas (or None);
        ``old_logits`` the frozen old model's logits on the same batch [N, C_old, H, W], or None
        at step 0 and in runs that need no old model. RSKD is left out when ``w_kd`` is 0.
        When gradients flow, the terms are recomputed in the backward pass (module docstring).
        """
        if torch.is_grad_enabled() and logits.requires_grad:
            return checkpoint(
                self.losses, logits, labels, paste_class, paste_alpha, old_logits,
                use_reentrant=False, preserve_rng_state=False,
            )
        return self.losses(logits, labels, paste_class, paste_alpha, old_logits)

    def losses(self, logits, labels, paste_class=None, paste_alpha=None, old_logits=None) -> dict[str, torch.Tensor]:
        """The terms of :meth:`__call__`, computed directly (autograd keeps every intermediate)."""
        num_channels = logits.shape[1]
        if old_logits is None:
            if self.pasted_bce != "all" and paste_class is not None:
                raise ValueError(f"pasted_bce={self.pasted_bce!r} needs the old model's logits (its channel count)")
            targets = soft_targets(labels, num_channels, paste_class, paste_alpha)
            return {"loss_bce": self.w_bce * bce_loss(logits, targets)}
        num_old = old_logits.shape[1]
        hard = labels if self.tau is None else pseudo_labels(labels, old_logits, self.tau, num_old)
        targets = soft_targets(hard, num_channels, paste_class, paste_alpha)
        weight = self.bce_weight(labels, paste_class, num_old, num_channels)
        losses = {"loss_bce": self.w_bce * bce_loss(logits, targets, weight)}
        if self.w_kd > 0:
            mask = distillation_mask(labels, num_old, self.rskd_mask)
            losses["loss_rskd"] = self.w_kd * rskd_loss(logits, old_logits, mask, normalize=self.rskd_normalize)
        return losses

    def bce_weight(self, labels, paste_class, num_old: int, num_channels: int) -> torch.Tensor | None:
        """The BCE's per-channel weights that ``pasted_bce`` asks for ([N, C, H, W] of 0 / 1),
        or None (every channel of every pixel: the paper's)."""
        if self.pasted_bce == "all" or paste_class is None:
            return None
        return _pasted_bce_weight(labels, paste_class, num_old, num_channels, self.pasted_bce)

    def __repr__(self) -> str:
        return (
            f"EIRCriterion(tau={self.tau}, w_bce={self.w_bce}, w_kd={self.w_kd}, "
            f"rskd_mask={self.rskd_mask!r}, rskd_normalize={self.rskd_normalize!r}, "
            f"pasted_bce={self.pasted_bce!r})"
        )


def _pasted_bce_weight(labels, paste_class, num_old: int, num_channels: int, rule: str) -> torch.Tensor:
    """BCE weights [N, C, H, W]: 0 on the channels ``rule`` leaves out (the new ones, >=
    ``num_old``, or all) at pixels under a paste whose label is not a new class, 1 elsewhere."""
    off = (paste_class > 0) & ~((labels >= num_old) & (labels != IGNORE_LABEL))
    channels = torch.arange(num_channels, device=labels.device) >= (num_old if rule == "old_channels" else 0)
    return (~(off.unsqueeze(1) & channels[None, :, None, None])).float()
