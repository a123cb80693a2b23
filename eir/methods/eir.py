"""EIR as a :class:`~eir.methods.base.ContinualMethod` (core module), and its baselines.

METHOD.md sections 3-6: an instance bank of ``memory`` entries (``storage="instance"``, or
whole images with ``"image"``: image replay) replayed in every incremental step; its instances
pasted into the step's images (``paste``, guided by the old model's ``prepass`` maps); the
loss ``criterion`` (an :class:`~eir.modeling.criterion.EIRCriterion`: pseudo-labels, BCE,
RSKD); a background channel on detached features; the sigmoid prediction rule. The baselines
are settings of it (configs/common/methods/eir.py, projects/EIR/configs/baselines): fine-tuning
is ``memory=0, paste=None, criterion.tau=None, criterion.w_kd=0``; distillation only
``memory=0, paste=None``; image replay ``storage="image", paste=None``.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from eir.constants import NEW_HEAD_INITS
from eir.data.bank import STORAGE_MODES
from eir.data.bank_coverage import built_bank_record, step_coverage, step_warnings
from eir.data.bank_rule import RegionRule
from eir.data.paste import PasteConfig
from eir.engine.step_plan import StepPlan
from eir.methods.base import ContinualMethod, LossInputs, StepLoss, sigmoid_rule_scores
from eir.modeling.criterion import EIRCriterion
from eir.tasks import Task

__all__ = ["EIR"]

#: The keys of :attr:`EIR.prepass`.
PREPASS_KEYS = ("tau", "short_side", "stride")


def _integer(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        hint = " (on the command line, write a number without quotes)" if isinstance(value, str) else ""
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}{hint}")
    return value


def _one_of(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


class EIR(ContinualMethod):
    """Enhanced Instance Replay (see the module docstring); every argument is checked here.

    Args:
        memory: the bank's budget in entries; 0: no bank (no replay, no pasting).
        storage: what the bank stores, one of ``STORAGE_MODES``.
        instances: which parts of a label become the bank's instances (``storage="instance"``):
            None, the paper's rule; a :class:`~eir.data.bank_rule.RegionRule`, each class's
            largest region (METHOD.md section 9, item 14).
        paste: the pasting settings (:class:`~eir.data.paste.PasteConfig`), or None: no pasting.
        criterion: the loss of every step (:class:`~eir.modeling.criterion.EIRCriterion`).
        new_head_init: how a new step's classifier starts, one of ``NEW_HEAD_INITS``.
        prepass: the old model's pass that tells pasting what it hides: ``tau`` (its detection
            threshold), ``short_side`` and ``stride`` (the stored maps' resolution).
    """

    detach_background = True

    def __init__(
        self,
        *,
        memory: int,
        storage: str,
        instances: RegionRule | None = None,
        paste: PasteConfig | None,
        criterion: EIRCriterion,
        new_head_init: str,
        prepass: Mapping,
    ):
        self.memory = _integer("memory (the bank budget, in entries)", memory, 0)
        _one_of("storage", storage, STORAGE_MODES)
        _one_of("new_head_init", new_head_init, NEW_HEAD_INITS)
        if paste is not None and not isinstance(paste, PasteConfig):
            raise ValueError(
                f"paste must be a PasteConfig or None, got {paste!r} (on the command line, write null for None)"
            )
        if instances is not None and (not isinstance(instances, RegionRule) or storage != "instance"):
            raise ValueError(
                f"instances must be None or a RegionRule (eir.data.bank_rule) with storage='instance', "
                f"got {instances!r} with storage={storage!r}"
            )
        if not isinstance(criterion, EIRCriterion):
            raise ValueError(f"criterion must be an EIRCriterion, got {criterion!r}")
        prepass = dict(prepass)
        if sorted(prepass) != sorted(PREPASS_KEYS):
            raise ValueError(f"prepass needs the keys {PREPASS_KEYS}, got {sorted(prepass)}")
        for key in ("short_side", "stride"):
            _integer(f"prepass.{key}", prepass[key], 1)
        self.storage = storage
        self.instances = instances
        self.paste = paste
        self.eir_criterion = criterion  # criterion() is the method's question, this its answer's terms
        self.new_head_init = new_head_init
        self.prepass = prepass
        if self.pastes:
            tau = prepass["tau"]
            if tau is None:
                raise ValueError(
                    "prepass.tau is None (by default it follows criterion.tau), but pasting needs the "
                    "threshold at which the old model detects a class: set method.prepass.tau=0.7"
                )
            if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0.0 <= tau <= 1.0 or math.isnan(tau):
                raise ValueError(f"prepass.tau is a sigmoid-score threshold in [0, 1], got {tau!r}")

    @property
    def pastes(self) -> bool:
        """Whether incremental steps paste: a bank to paste from, and pasting settings."""
        return self.memory > 0 and self.paste is not None

    def plan(self, task: Task, step: int) -> StepPlan:
        step = task.check_step(step)
        incremental = step > 0
        memory = self.memory > 0
        return StepPlan(
            step=step,
            last=step + 1 == task.num_steps,
            teacher=incremental and self.eir_criterion.needs_old_model,
            replay=incremental and memory,
            paste=incremental and self.pastes,
            save_bank=memory and step + 1 < task.num_steps,
        )

    def check_step_data(self, task: Task, step: int, train_dicts: Sequence[dict]) -> list[str]:
        """The step's classes that no training image gives an instance under ``instances``
        (an empty bank at step 0), counted from labels (:mod:`eir.data.bank_coverage`)."""
        if self.storage != "instance" or not self.plan(task, step).save_bank:
            return []
        return step_warnings(task, step_coverage(train_dicts, task, step, instances=self.instances))

    def bank_record(self, task: Task, step: int, train_dicts: Sequence[dict], bank) -> dict:
        """The built bank's entries per class; with instances, the step's counts and warnings;
        and what a step replaying an empty bank trains as (the summary says so)."""
        coverage = None
        if self.storage == "instance":
            found = getattr(bank, "label_scan", None)  # the build's own pass over these labels
            coverage = step_coverage(train_dicts, task, step, instances=self.instances, found=found)
        return {**built_bank_record(task, bank, coverage), "method": "EIR", "without_bank": self.without_bank}

    @property
    def without_bank(self) -> str:
        """What EIR is with nothing to replay or paste: its criterion alone."""
        criterion = self.eir_criterion
        training = "distillation" if criterion.w_kd > 0 else "fine-tuning"
        return training + (" with pseudo-labels" if criterion.tau is not None else "")

    def criterion(self, task: Task, step: int) -> StepLoss:
        loss = self.eir_criterion

        def eir_loss(inputs: LossInputs):
            return loss(inputs.logits, inputs.labels, inputs.paste_class, inputs.paste_alpha, inputs.old_logits)

        return eir_loss

    def init_new_classifier(self, head, step: int) -> None:
        head.init_classifier(head.cls[-1], self.new_head_init)

    def class_scores(self, channel_logits, channel_to_class, num_classes: int):
        return sigmoid_rule_scores(channel_logits, channel_to_class, num_classes)

    def __repr__(self) -> str:
        return (
            f"EIR(memory={self.memory}, storage={self.storage!r}, instances={self.instances!r}, "
            f"paste={self.paste!r}, criterion={self.eir_criterion!r}, new_head_init={self.new_head_init!r}, prepass={self.prepass})"
        )
