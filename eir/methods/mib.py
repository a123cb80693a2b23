"""MiB: the background modelled across steps (Cermelli et al., CVPR 2020), as a continual method.

Core module (torch only). Written from the paper, "Modeling the Background for Incremental
Learning in Semantic Segmentation"; projects/EIR/METHOD.md, section "MiB", gives the equations,
the hyperparameters and where each comes from. Channel 0 is the background, a class like the
others under one softmax over every channel, trained through the body. At step t the labels
name only the classes C_t, so a pixel labelled background may be an old class, and a pixel the
old model called background may be a new class; MiB models both shifts:

- unbiased cross-entropy (:func:`unbiased_cross_entropy`): a background label asks for
  "background or any old class", the summed probability of channels 0 .. C_old - 1;
- unbiased distillation: the old model's background probability is matched to the new model's
  "background or any new class" (:func:`eir.modeling.losses.rskd_loss`, the distillation EIR
  took from MiB, here over every pixel);
- the new classifier starts as the background's, with its bias and the background's lowered by
  log(|C_t| + 1), so that they share equally what the background scored before;
- prediction: the softmax argmax over every channel (:func:`~eir.methods.base.softmax_scores`).

No bank, replay, pasting or prepass; the old model runs at incremental steps when w_kd > 0.
"""
from __future__ import annotations

import math

import torch
from torch.utils.checkpoint import checkpoint

from eir.constants import IGNORE_LABEL
from eir.methods.base import ContinualMethod, LossInputs, StepPlan, softmax_scores
from eir.modeling.losses import check_labels, check_logits, check_same_pixels, rskd_loss
from eir.tasks import Task

__all__ = ["MiB", "MiBLoss", "unbiased_cross_entropy"]


def unbiased_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, background_channels: int
) -> torch.Tensor:
    """MiB's cross-entropy, the mean over the labelled pixels (255 ignored) of -log p~(label).

    p is the softmax over every channel of ``logits`` [N, C, H, W]; ``labels`` [N, H, W] are
    channel indices. For a pixel labelled c > 0, p~ = p_c; for a pixel labelled 0, p~ is the
    sum of p over channels 0 .. ``background_channels`` - 1 (the background and the old
    classes: logsumexp of their logits minus logsumexp of all). ``background_channels`` = 1
    is the plain cross-entropy (step 0). Float32 whatever the input dtype; 0, still attached
    to the graph, when no pixel is labelled.
    """
    check_logits(logits, "logits")
    check_labels(labels)
    check_same_pixels(labels, logits, "unbiased_cross_entropy")
    num_channels = logits.shape[1]
    if not 1 <= background_channels < num_channels:
        raise ValueError(
            f"background_channels must be in 1..{num_channels - 1} (the background and the old "
            f"classes, fewer than the logits' {num_channels} channels), got {background_channels}"
        )
    counted = labels != IGNORE_LABEL
    if labels.device.type == "cpu" and counted.any():
        low, high = int(labels[counted].min()), int(labels[counted].max())
        if low < 0 or high >= num_channels:
            raise ValueError(
                f"labels must be channel indices in [0, {num_channels}) or 255, found {low}..{high}"
            )
    z = logits.float()
    index = torch.where(counted, labels, 0).long()
    picked = z.gather(1, index.unsqueeze(1)).squeeze(1)
    background = torch.logsumexp(z[:, :background_channels], dim=1)
    log_p = torch.where(index == 0, background, picked) - torch.logsumexp(z, dim=1)
    return -torch.where(counted, log_p, 0.0).sum() / counted.sum().clamp_min(1)


def _check_weight(w_kd) -> float:
    if isinstance(w_kd, bool) or not isinstance(w_kd, (int, float)) or not 0 <= w_kd < math.inf:
        raise ValueError(f"w_kd (lambda, the distillation's weight) must be a finite number >= 0, got {w_kd!r}")
    return float(w_kd)


class MiBLoss:
    """The loss of one step: ``{"loss_ce": unbiased CE}`` plus, when the step has a teacher,
    ``{"loss_kd": w_kd * unbiased distillation}``.

    Args:
        num_old_channels: channels of the previous step's model (background included); 0 at
            step 0, where the cross-entropy is the plain one.
        w_kd: lambda, the distillation's weight; 0 leaves the distillation out.

    The distillation runs over every pixel of the batch, labelled or not (the paper's sum over
    the image's pixels: it reads no label). When gradients flow the block is recomputed in the
    backward pass (``torch.utils.checkpoint``), as EIR's criterion does, so that the
    full-resolution log-probabilities are not kept: it holds no parameter and no randomness.
    """

    def __init__(self, num_old_channels: int, w_kd: float):
        if isinstance(num_old_channels, bool) or not isinstance(num_old_channels, int) or num_old_channels < 0:
            raise ValueError(f"num_old_channels must be an integer >= 0, got {num_old_channels!r}")
        if num_old_channels == 1:
            raise ValueError("num_old_channels is 0 at step 0, else the background and >= 1 old class")
        self.num_old_channels = num_old_channels
        self.w_kd = _check_weight(w_kd)

    @property
    def distils(self) -> bool:
        """Whether the step distils, so the trainer must hand the old model's logits."""
        return self.num_old_channels > 0 and self.w_kd > 0

    def __call__(self, inputs: LossInputs) -> dict[str, torch.Tensor]:
        if inputs.num_old_channels != self.num_old_channels:
            raise ValueError(
                f"this step's loss was built for a previous model of {self.num_old_channels} channels, "
                f"but the batch says {inputs.num_old_channels} (LossInputs.num_old_channels)"
            )
        old_logits = inputs.old_logits if self.distils else None
        if self.distils:
            if old_logits is None:
                raise ValueError(
                    f"MiB's distillation (w_kd={self.w_kd}) needs the old model's logits at an "
                    "incremental step: the step's plan has a teacher, so the trainer must fill "
                    "LossInputs.old_logits"
                )
            if old_logits.dim() != 4 or old_logits.shape[1] != self.num_old_channels:
                raise ValueError(
                    f"old_logits must be [N, {self.num_old_channels}, H, W], got {tuple(old_logits.shape)}"
                )
        if torch.is_grad_enabled() and inputs.logits.requires_grad:
            return checkpoint(
                self.losses, inputs.logits, inputs.labels, old_logits,
                use_reentrant=False, preserve_rng_state=False,
            )
        return self.losses(inputs.logits, inputs.labels, old_logits)

    def losses(self, logits, labels, old_logits=None) -> dict[str, torch.Tensor]:
        """The terms of :meth:`__call__`, computed directly (autograd keeps every intermediate)."""
        out = {"loss_ce": unbiased_cross_entropy(logits, labels, max(self.num_old_channels, 1))}
        if old_logits is not None:
            n, _, h, w = logits.shape
            every_pixel = torch.ones(n, h, w, dtype=torch.bool, device=logits.device)
            out["loss_kd"] = self.w_kd * rskd_loss(logits, old_logits, every_pixel, normalize="all")
        return out

    def __repr__(self) -> str:
        return f"MiBLoss(num_old_channels={self.num_old_channels}, w_kd={self.w_kd})"


class MiB(ContinualMethod):
    """MiB (module docstring): the unbiased cross-entropy and distillation, the background-shared
    initialisation of new classifiers, softmax prediction; no memory.

    Args:
        w_kd: lambda, the weight of the unbiased distillation (10, see METHOD.md's MiB section);
            0 runs no old model and leaves the unbiased cross-entropy and the initialisation.
    """

    detach_background = False

    def __init__(self, *, w_kd: float = 10.0):
        self.w_kd = _check_weight(w_kd)

    def plan(self, task: Task, step: int) -> StepPlan:
        step = task.check_step(step)
        return StepPlan(
            step=step,
            last=step + 1 == task.num_steps,
            teacher=step > 0 and self.w_kd > 0,
            replay=False,
            paste=False,
            save_bank=False,
        )

    def criterion(self, task: Task, step: int) -> MiBLoss:
        step = task.check_step(step)
        return MiBLoss(task.num_channels(step - 1) if step else 0, self.w_kd)

    def init_new_classifier(self, head, step: int) -> None:
        """The new classes' weights become the background's; their biases and the background's
        become b_bg - log(|C_t| + 1). A pixel's softmax then gives each of them 1 / (|C_t| + 1)
        of the background probability the previous model gave it; the old classes' probabilities
        are unchanged."""
        if step < 1 or head.num_steps != step + 1:
            raise ValueError(
                f"init_new_classifier(step={step}) needs the head of an incremental step "
                f"(step >= 1) with step + 1 classifiers; this one has {head.num_steps}"
            )
        shift = math.log(head.step_sizes[-1] + 1)
        with torch.no_grad():
            head.init_classifier(head.cls[-1], "aux")  # rows copied from the background's
            head.cls[-1].bias.sub_(shift)
            head.aux.bias.sub_(shift)

    def class_scores(
        self, channel_logits: torch.Tensor, channel_to_class: torch.Tensor, num_classes: int
    ) -> torch.Tensor:
        return softmax_scores(channel_logits, channel_to_class, num_classes)

    def __repr__(self) -> str:
        return f"MiB(w_kd={self.w_kd})"
