"""StepPlan: what one step of a continual run does (core module).

Whether a step runs the old model, replays the bank, pastes, runs the prepass and writes a
bank for the next step are switches that the runner, the trainer and the mapper builder all
act on; the run's method decides them (:meth:`eir.methods.base.ContinualMethod.plan`), in
one place, and everything else reads the plan.
"""
from __future__ import annotations

from dataclasses import dataclass

from eir.engine.run_files import BANK_MANIFEST, FINAL_CHECKPOINT, METRICS_FILE, PREPASS_FILE

__all__ = ["StepPlan"]


@dataclass(frozen=True)
class StepPlan:
    """The switches of step ``step``.

    Attributes:
        step: the step.
        last: the task's last step.
        teacher: the frozen old model runs in every training iteration (pseudo-labels, RSKD).
        replay: the bank written when step - 1 ended is loaded; its entries join the
            training set as replayed samples.
        paste: instances of that bank are pasted into the training samples, which needs the
            prepass (the old model's pseudo-label maps of the step's images).
        save_bank: a bank for step + 1 is built and saved when the step ends.
    """

    step: int
    last: bool
    teacher: bool
    replay: bool
    paste: bool
    save_bank: bool

    @property
    def old_model(self) -> bool:
        """Whether the step builds the frozen model of step - 1 (for the teacher or the prepass)."""
        return self.teacher or self.paste

    @property
    def prepass(self) -> bool:
        """Whether the step runs the prepass (``step_t/prepass.npz``): pasting needs it."""
        return self.paste

    @property
    def artifacts(self) -> tuple[str, ...]:
        """The files (relative to the step's folder) a finished step holds, recorded in its DONE."""
        names = [FINAL_CHECKPOINT, METRICS_FILE]
        if self.save_bank:
            names.append(BANK_MANIFEST)
        if self.prepass:
            names.append(PREPASS_FILE)
        return tuple(names)
