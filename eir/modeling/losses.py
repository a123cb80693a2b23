"""EIR's training targets and losses (METHOD.md, section 4), in channel space.

Core module: torch only. Logits are [N, C, H, W] with channel 0 the auxiliary
background and the classes in task order after it; labels are [N, H, W] long
channel indices with 255 = ignore. Everything is vectorised and computed in
float32 whatever the input dtype, so it is safe under AMP; nothing here reads a
value back to the host on an accelerator.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from eir.constants import IGNORE_LABEL

DISTILLATION_RULES = ("not_new", "background", "all")
#: Names the rule :func:`pseudo_labels` implements; stored artifacts made with another rule
#: (the prepass maps) are recomputed. Change it whenever the rule changes.
PSEUDO_LABEL_RULE = "argmax over all old channels, channel 0 included; class if >= tau"
RSKD_NORMALIZATIONS = ("mask", "all")


def check_labels(labels: torch.Tensor, name: str = "labels") -> None:
    """Refuse what is no [N, H, W] integer label map (every method's losses take these checks)."""
    if labels.dim() != 3:
        raise ValueError(f"{name} must be [N, H, W], got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got {labels.dtype}")


def check_logits(logits: torch.Tensor, name: str) -> None:
    """Refuse what is no [N, C, H, W] logit map."""
    if logits.dim() != 4:
        raise ValueError(f"{name} must be [N, C, H, W], got shape {tuple(logits.shape)}")


def check_same_pixels(labels: torch.Tensor, logits: torch.Tensor, what: str) -> None:
    """Refuse labels and logits of different pixels (logits not yet upsampled to the labels)."""
    n, _, h, w = logits.shape
    if tuple(labels.shape) != (n, h, w):
        raise ValueError(
            f"{what}: labels {tuple(labels.shape)} and logits {tuple(logits.shape)} disagree on "
            "N, H, W; upsample the logits to the label size first"
        )


def pseudo_labels(
    labels: torch.Tensor,
    old_logits: torch.Tensor,
    threshold: float = 0.7,
    old_channels: int | None = None,
) -> torch.Tensor:
    """Fill background pixels with the old model's confident class (a new tensor).

    The argmax runs over all old channels 0..old_channels-1, channel 0 (the auxiliary
    background) included (METHOD.md section 4, Decision): where `labels` is 0 and
    that argmax is an old class channel (not 0) whose sigmoid score is >= `threshold`,
    the label becomes that channel (old channels keep their index in the new model
    since heads are appended). Where channel 0 scores highest (ties included) the pixel
    stays background, however confident a class channel is. Ignore (255) and non-zero
    labels are kept.
    """
    check_labels(labels)
    check_logits(old_logits, "old_logits")
    check_same_pixels(labels, old_logits, "pseudo_labels")
    if old_channels is None:
        old_channels = old_logits.shape[1]
    if not 1 <= old_channels <= old_logits.shape[1]:
        raise ValueError(
            f"old_channels must be in 1..{old_logits.shape[1]} (old_logits' channels), got {old_channels}"
        )
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a sigmoid score and must be in [0, 1], got {threshold}")
    if old_channels < 2:
        return labels.clone()
    scores = torch.sigmoid(old_logits[:, :old_channels].detach().float())
    best, index = scores.max(dim=1)
    take = (labels == 0) & (index > 0) & (best >= threshold)
    return torch.where(take, index.to(labels.dtype), labels)


def soft_targets(
    labels: torch.Tensor,
    num_channels: int,
    paste_class: torch.Tensor | None = None,
    paste_alpha: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-pixel BCE target vectors, float32 [N, C, H, W].

    One-hot of `labels`, all zero for ignore (255). Where `paste_class` > 0 the
    pasted instance is mixed in: alpha * onehot(paste_class) + (1 - alpha) *
    onehot(label), which is alpha * onehot(paste_class) when the label beneath
    is 255. Labels and paste classes must be channel indices < num_channels:
    checked on CPU; on an accelerator a bad index trips scatter's device assert
    rather than costing a sync per step.
    """
    check_labels(labels)
    if num_channels < 1:
        raise ValueError(f"num_channels must be >= 1, got {num_channels}")
    if (paste_class is None) != (paste_alpha is None):
        raise ValueError("give paste_class and paste_alpha together, or neither")
    n, h, w = labels.shape
    counted = labels != IGNORE_LABEL
    index = torch.where(counted, labels, 0).long()
    if labels.device.type == "cpu" and counted.any():
        low, high = int(labels[counted].min()), int(labels[counted].max())
        if low < 0 or high >= num_channels:
            raise ValueError(
                f"labels must be channel indices in [0, {num_channels}) or 255, found {low}..{high}"
            )
    targets = torch.zeros(n, num_channels, h, w, dtype=torch.float32, device=labels.device)
    targets.scatter_(1, index.unsqueeze(1), counted.unsqueeze(1).float())
    if paste_class is None:
        return targets

    check_labels(paste_class, "paste_class")
    if paste_class.shape != labels.shape or paste_alpha.shape != labels.shape:
        raise ValueError(
            f"paste_class {tuple(paste_class.shape)} and paste_alpha {tuple(paste_alpha.shape)} "
            f"must have the labels' shape {tuple(labels.shape)}"
        )
    pasted = paste_class > 0
    if paste_class.device.type == "cpu" and pasted.any():
        high = int(paste_class[pasted].max())
        if high >= num_channels:
            raise ValueError(
                f"paste_class must be channel indices < {num_channels} (0 = no paste), found {high}"
            )
    alpha = torch.where(pasted, paste_alpha.float(), 0.0).unsqueeze(1)
    targets = targets * (1.0 - alpha)
    paste_index = torch.where(pasted, paste_class, 0).long().unsqueeze(1)
    return targets.scatter_add(1, paste_index, alpha)


def bce_loss(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy over every channel (channel 0 included).

    Summed over channels and averaged over the pixels whose target vector is
    not all zero; 0, still attached to the graph, when no pixel counts. ``weight``
    ([N, C, H, W], e.g. of 0 / 1) scales each channel's term of each pixel; a pixel whose
    weights are all 0 does not count either (it leaves the mean's denominator).
    """
    check_logits(logits, "logits")
    if logits.shape != targets.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must have one shape"
        )
    targets = targets.float()
    per_element = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none")
    per_pixel = (per_element if weight is None else per_element * weight).sum(dim=1)
    counted = (targets != 0).any(dim=1)
    if weight is not None:
        counted = counted & (weight != 0).any(dim=1)
    total = torch.where(counted, per_pixel, 0.0).sum()
    return total / counted.sum().clamp_min(1)


def distillation_mask(
    labels: torch.Tensor, num_old_channels: int, rule: str = "not_new"
) -> torch.Tensor:
    """Pixels where RSKD applies, bool [N, H, W]; ignore (255) never counts.

    "not_new" (default): the step label is not a class of the current step,
    i.e. < num_old_channels (background, pseudo-labelled or pasted old
    classes); "background": label 0 only; "all": every labelled pixel.
    """
    check_labels(labels)
    if rule not in DISTILLATION_RULES:
        raise ValueError(f"unknown distillation rule {rule!r}; use one of {list(DISTILLATION_RULES)}")
    if num_old_channels < 1:
        raise ValueError(f"num_old_channels must be >= 1, got {num_old_channels}")
    labelled = labels != IGNORE_LABEL
    if rule == "not_new":
        return labelled & (labels < num_old_channels)
    if rule == "background":
        return labels == 0
    return labelled


def rskd_loss(
    new_logits: torch.Tensor,
    old_logits: torch.Tensor,
    mask: torch.Tensor,
    normalize: str = "mask",
) -> torch.Tensor:
    """Region-specific unbiased distillation (section 4, with its Decisions).

    With z the new logits (Cn channels) and y the old ones (Co < Cn):
    l_c = z_c - logsumexp(z) for old classes c = 1..Co-1; the background
    log-prob l_bg = logsumexp(z over channel 0 and the new channels Co..Cn-1)
    - logsumexp(z), finite even when one class is added; q = softmax(y);
    pixel term = (q_0 l_bg + sum_c q_c l_c) / Co. The loss is -sum(mask * term)
    over the mask's pixel count ("mask", 0 for an empty mask) or over N*H*W
    ("all"). The old logits are a fixed teacher: no gradient reaches them.
    """
    check_logits(new_logits, "new_logits")
    check_logits(old_logits, "old_logits")
    if normalize not in RSKD_NORMALIZATIONS:
        raise ValueError(f"unknown normalize {normalize!r}; use one of {list(RSKD_NORMALIZATIONS)}")
    n, cn, h, w = new_logits.shape
    co = old_logits.shape[1]
    if old_logits.shape[0] != n or old_logits.shape[2:] != new_logits.shape[2:]:
        raise ValueError(
            f"old_logits {tuple(old_logits.shape)} and new_logits {tuple(new_logits.shape)} "
            "disagree on N, H, W"
        )
    if cn <= co:
        raise ValueError(
            f"the new model must have more channels than the old one, got {cn} <= {co}"
        )
    if tuple(mask.shape) != (n, h, w):
        raise ValueError(f"mask must be [N, H, W] = {(n, h, w)}, got {tuple(mask.shape)}")

    z = new_logits.float()
    q = torch.softmax(old_logits.detach().float(), dim=1)
    den = torch.logsumexp(z, dim=1)
    log_old = z[:, 1:co] - den.unsqueeze(1)
    log_bg = torch.logsumexp(torch.cat([z[:, :1], z[:, co:]], dim=1), dim=1) - den
    term = (q[:, 0] * log_bg + (q[:, 1:] * log_old).sum(dim=1)) / co
    mask = mask.bool()
    total = torch.where(mask, -term, 0.0).sum()
    if normalize == "mask":
        return total / mask.sum().clamp_min(1)
    return total / (n * h * w)
