"""ContinualMethod: everything a continual method decides, asked of one object (core module).

A run's LazyConfig describes its method like its model (``method = L(EIR)(...)``,
``method = L(MiB)(...)``). The runner, the trainer, the model builder, the evaluator and the
start-up checks ask that object; none of them tests which method runs. What a method decides:

- the step plan (:class:`StepPlan`): old model in training, replay, pasting, prepass, bank;
- the loss of a step, and the tensors it reads (:class:`LossInputs`);
- what the background channel 0 is (:attr:`ContinualMethod.detach_background`);
- how the new classes' classifier starts (:meth:`ContinualMethod.init_new_classifier`);
- how scores become a prediction (:meth:`ContinualMethod.class_scores`);
- what it needs from the data, as start-up warnings (:meth:`ContinualMethod.check_step_data`);
- what a step's ``metrics.json`` records of the bank it built (:meth:`ContinualMethod.bank_record`).

A new method is a subclass in one file and a config entry; projects/EIR/METHOD.md ("Adding
a method") walks through one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch

from eir.engine.step_plan import StepPlan
from eir.tasks import Task

__all__ = ["ContinualMethod", "LossInputs", "StepPlan", "sigmoid_rule_scores", "softmax_scores"]


@dataclass
class LossInputs:
    """What the trainer hands a method's loss for one batch, in channel space (channel k of the
    step's model holds ``task.channel_classes(step)[k]``; channel 0 is the background).

    Attributes:
        logits: the step model's logits [N, C, H, W] (float32, the padded batch size).
        labels: the step's labels as channel indices [N, H, W]; 255 is ignored.
        paste_class: the channel of the instance pasted at each pixel (0: none) [N, H, W], or
            None when the step does not paste.
        paste_alpha: the pasted instance's weight at each pixel [N, H, W], or None.
        old_logits: the frozen previous-step model's logits on the same batch
            [N, C_old, H, W], when the step's plan has a teacher; else None.
        num_old_channels: channels of the previous step's model (background included);
            0 at step 0.
    """

    logits: torch.Tensor
    labels: torch.Tensor
    paste_class: torch.Tensor | None = None
    paste_alpha: torch.Tensor | None = None
    old_logits: torch.Tensor | None = None
    num_old_channels: int = 0


#: A step's loss: the weighted terms of one batch (``{"loss_...": scalar}``, summed by the trainer).
StepLoss = Callable[[LossInputs], Mapping[str, torch.Tensor]]


class ContinualMethod:
    """The decisions of a continual method; subclasses answer each (see the module docstring)."""

    #: Channel 0 is an auxiliary background classifier on detached features, trained by its
    #: loss alone (EIR), or a class like the others whose loss trains the body (MiB: False).
    detach_background: bool = True

    #: What the builders read where the plan asks for it: a plan that replays or saves a bank,
    #: the bank's budget in entries, what it stores (``"instance"`` or ``"image"``) and, for
    #: instances, which parts of a label (None: the paper's rule; a
    #: :class:`~eir.data.bank_rule.RegionRule`); a plan that pastes, the pasting settings (a
    #: :class:`~eir.data.paste.PasteConfig`) and the prepass's (a mapping of ``tau``,
    #: ``short_side``, ``stride``).
    memory: int = 0
    storage: str = "instance"
    instances = None
    paste = None
    prepass: Mapping | None = None

    def plan(self, task: Task, step: int) -> StepPlan:
        """What ``step`` runs: old model, replay, pasting, prepass, bank."""
        raise NotImplementedError

    def criterion(self, task: Task, step: int) -> StepLoss:
        """The loss of ``step``: called on every training batch's :class:`LossInputs`."""
        raise NotImplementedError

    def init_new_classifier(self, head, step: int) -> None:
        """Initialise the newest classifier ``head.cls[-1]`` of an ``IncrementalHead`` whose
        older weights were just loaded from step ``step - 1`` (the background one included)."""
        raise NotImplementedError

    def class_scores(
        self, channel_logits: torch.Tensor, channel_to_class: torch.Tensor, num_classes: int
    ) -> torch.Tensor:
        """Channel logits [..., C, H, W] -> scores in class-id order [..., num_classes + 1, H, W]
        whose argmax is the method's prediction (Detectron2's ``sem_seg`` convention)."""
        raise NotImplementedError

    def check_step_data(self, task: Task, step: int, train_dicts: Sequence[dict]) -> list[str]:
        """Warnings about what ``step``'s training images cannot give the method (e.g. a bank
        that would stay empty), raised at start-up before any training; none by default."""
        return []

    def bank_record(self, task: Task, step: int, train_dicts: Sequence[dict], bank) -> Mapping | None:
        """What ``step``'s ``metrics.json`` records of ``bank``, the bank it built from
        ``train_dicts`` (JSON; its ``"warnings"`` are also logged, and the run's summary shows
        its ``"entries"`` of ``"budget"`` and ``"bank_entries"`` per class); None by default."""
        return None


def _class_scores(
    values: torch.Tensor, channel_to_class: torch.Tensor, num_classes: int, background
) -> torch.Tensor:
    """Scatter per-channel ``values`` [..., C, H, W] to class-id order; channel 0's value goes to
    class 0 unless ``background`` gives a constant; classes without a channel get 0."""
    cdim = values.dim() - 3
    if values.shape[cdim] != len(channel_to_class):
        raise ValueError(
            f"expected {len(channel_to_class)} channels at dim {cdim}, got shape {tuple(values.shape)}"
        )
    shape = list(values.shape)
    shape[cdim] = num_classes + 1
    scores = values.new_zeros(shape)
    index = channel_to_class.to(values.device)
    if background is None:
        scores.index_copy_(cdim, index, values)
    else:
        scores.select(cdim, 0).fill_(background)
        scores.index_copy_(cdim, index[1:], values.narrow(cdim, 1, len(channel_to_class) - 1))
    return scores


def sigmoid_rule_scores(
    channel_logits: torch.Tensor, channel_to_class: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """EIR's rule (METHOD.md section 3): seen class c scores sigmoid(z of c's channel),
    background the constant 0.5, unseen classes 0; so argmax is the class with the highest
    sigmoid score, or background when none exceeds 0.5 (an exact tie at 0.5 goes to
    background: argmax takes the first maximum). Channel 0 is not used. In float32."""
    return _class_scores(torch.sigmoid(channel_logits.float()), channel_to_class, num_classes, 0.5)


def softmax_scores(
    channel_logits: torch.Tensor, channel_to_class: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """A softmax over every channel, background channel 0 included (MiB's rule): argmax is the
    channel with the highest logit; unseen classes score 0. In float32."""
    cdim = channel_logits.dim() - 3
    return _class_scores(torch.softmax(channel_logits.float(), dim=cdim), channel_to_class, num_classes, None)
