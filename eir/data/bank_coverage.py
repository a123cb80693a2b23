"""What each step's bank can hold, counted from labels before any training.

A bank that stays empty, or lacks classes, turns EIR into distillation with pseudo-labels
for those classes (nothing to replay, nothing to paste) without any error. The instance
rule depends on labels only, and so does the bank's selection, so both can be run at
start-up: :func:`step_coverage` counts, per class of a step, the training images that
contain it and those that give it an instance; :func:`predict_bank_counts` replays the
selection of every step's bank (exactly what :meth:`InstanceBank.build` will credit);
:func:`coverage_warnings` says which banks would be empty or lack classes, naming them
(:func:`step_warnings`: what one step's labels tell alone, at a run's start-up).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eir.data.bank import InstanceBank, pool_items, scan_labels, select_entries
from eir.data.bank_rule import RegionRule, rule_record, rule_text

__all__ = [
    "StepCoverage",
    "built_bank_record",
    "coverage_record",
    "coverage_warnings",
    "predict_bank_counts",
    "step_coverage",
    "step_warnings",
]


@dataclass(frozen=True)
class StepCoverage:
    """Labels-only counts of one step under one instance rule.

    ``images[c]``: training images of the step whose step label contains class c;
    ``qualifying[c]``: those that give c an instance (paper's rule: candidates containing c;
    region rule: images with a large enough region of c); both over the step's new classes.
    ``pool``: the classes of each pool entry the step adds, in :meth:`InstanceBank.build`'s order.
    """

    step: int
    num_images: int
    images: dict[int, int]
    qualifying: dict[int, int]
    pool: tuple[tuple[int, ...], ...]
    instances: RegionRule | None


def step_coverage(
    samples: Sequence[dict],
    task: Any,
    step: int,
    *,
    instances: RegionRule | None = None,
    num_workers: int = 0,
    found=None,
) -> StepCoverage:
    """Count what ``samples`` (the step's training dicts, as :meth:`InstanceBank.build` takes
    them) give the bank under ``instances`` (None: the paper's rule). Reads labels only, unless
    ``found`` is their scan already (:func:`~eir.data.bank.scan_labels`, or a built bank's
    ``label_scan``)."""
    if found is None:
        found = scan_labels(samples, task, step, instances=instances, num_workers=num_workers)
    new = [int(c) for c in task.new_classes(step)]
    images = dict.fromkeys(new, 0)
    qualifying = dict.fromkeys(new, 0)
    for present, eligible in found:
        for c in present:
            if c in images:
                images[c] += 1
        for c in eligible or ():
            if c in qualifying:
                qualifying[c] += 1
    pool = tuple(classes for _, classes in pool_items(found, instances))
    return StepCoverage(task.check_step(step), len(found), images, qualifying, pool, instances)


def predict_bank_counts(
    coverages: Sequence[StepCoverage],
    task: Any,
    budget: int,
    seed: int,
    previous: InstanceBank | None = None,
) -> dict[int, dict[int, int]]:
    """Per step of ``coverages``: entries credited to each seen class in the bank that step builds.

    ``coverages``: consecutive steps from 0, or from ``previous.step + 1`` when ``previous``
    (an existing bank, e.g. on a resumed run) is given. The selection is
    :func:`~eir.data.bank.select_entries` over the previous bank's entries and the step's
    pool, as in :meth:`InstanceBank.build`, so the counts are the build's own.
    """
    held = [e.classes for e in previous.entries] if previous is not None else []
    expected = start = previous.step + 1 if previous is not None else 0
    counts: dict[int, dict[int, int]] = {}
    for cov in coverages:
        if cov.step != expected:
            raise ValueError(
                f"coverages must be of consecutive steps from step {start} (0, or the step after "
                f"the previous bank's): got step {cov.step} where step {expected} was due"
            )
        if previous is not None and cov.instances != previous.instances:
            raise ValueError(
                f"coverage of step {cov.step} counts {rule_text(cov.instances)}, but the previous bank "
                f"holds {rule_text(previous.instances)}"
            )
        seen = [int(c) for c in task.seen_classes(cov.step)]
        pool = list(held) + list(cov.pool)
        chosen = select_entries(pool, seen, int(budget), int(seed), cov.step)
        held = [pool[p] for p, _ in chosen]
        step_counts = dict.fromkeys(seen, 0)
        for _, c in chosen:
            step_counts[c] += 1
        counts[cov.step] = step_counts
        expected += 1
    return counts


def coverage_warnings(
    task: Any,
    coverages: Sequence[StepCoverage],
    bank_counts: dict[int, dict[int, int]],
    *,
    built: bool = False,
) -> list[str]:
    """One message per step whose bank would be empty or lack classes (none: an empty list).

    A class lacks when no entry would be credited to it: pasting never draws it, and replay
    shows it only inside other classes' entries. Each missing class is named with the counts of
    the step that learns it (when that step is among ``coverages``). ``built``: the counts are
    of banks already built (a built bank's :meth:`~InstanceBank.class_counts`), not predicted.
    """
    builds, is_empty, holds, runs = (
        ("built", "is empty", "holds", "will run") if built else ("builds", "would be empty", "would hold", "would run")
    )
    by_step = {cov.step: cov for cov in coverages}
    messages = []
    for step in sorted(bank_counts):
        counts = bank_counts[step]
        cov = by_step.get(step)
        rule = rule_text(cov.instances) if cov is not None else "its instance rule"
        serves = f"the bank that step {step} {builds} for step {step + 1}"
        if not any(counts.values()):
            found = f", from {cov.num_images} training images" if cov is not None else ""
            messages.append(
                f"{serves} {is_empty}: nothing qualifies under {rule}{found}; step {step + 1} {runs} "
                f"without replay or pasting, i.e. as distillation with pseudo-labels.{_hint(cov)}"
            )
            continue
        missing = [c for c, n in counts.items() if n == 0]
        if missing:
            named = ", ".join(_class_counts(task, c, by_step) for c in missing)
            messages.append(
                f"{serves} {holds} no entry of {len(missing)} of its {len(counts)} classes under "
                f"{rule}: {named}; these classes are never pasted.{_hint(cov)}"
            )
    return messages


def step_warnings(task: Any, coverage: StepCoverage) -> list[str]:
    """The warning of one step known from its own labels (none: an empty list): the step's
    classes that no training image gives an instance under the rule, each with its counts.

    It needs no other step: at step 0 it is the empty bank :func:`coverage_warnings` predicts;
    later the bank also keeps entries of earlier steps, whose classes the previous bank's record
    tells. Whether the budget leaves a class out is told when the bank is built.
    """
    step = coverage.step
    missing = [c for c, n in coverage.qualifying.items() if n == 0]
    if not missing:
        return []
    by_step = {step: coverage}
    named = ", ".join(_class_counts(task, c, by_step) for c in missing)
    serves = f"the bank that step {step} builds for step {step + 1}"
    rule = rule_text(coverage.instances)
    if len(missing) < len(coverage.qualifying):
        message = (
            f"{serves} would hold no entry of {len(missing)} of the step's {len(coverage.qualifying)} "
            f"classes under {rule}: {named}; these classes are never pasted."
        )
    elif step == 0:
        message = (
            f"{serves} would be empty: nothing qualifies under {rule}: {named}; step 1 would run "
            "without replay or pasting, i.e. as distillation with pseudo-labels."
        )
    else:
        message = (
            f"{serves} would get no entry from step {step}'s {coverage.num_images} training images "
            f"under {rule}: {named}; its classes are never pasted, and the bank holds the earlier "
            "steps' entries only."
        )
    return [message + _hint(coverage)]


def _class_counts(task: Any, c: int, by_step: dict[int, StepCoverage]) -> str:
    learnt = task.step_of(c)
    cov = by_step.get(learnt)
    if cov is None:
        return f"{task.class_names[c]}"
    return (
        f"{task.class_names[c]} ({cov.qualifying[c]} of the {cov.images[c]} step-{learnt} "
        "training images with it qualify)"
    )


def _hint(cov: StepCoverage | None) -> str:
    if cov is None or cov.instances is not None:
        return ""
    return (
        " Where classes come in several pieces, the region rule (eir.data.bank_rule.RegionRule) "
        "stores each class's largest region instead."
    )


def coverage_record(
    task: Any, coverage: StepCoverage, bank_counts: dict[int, int] | None = None
) -> dict[str, Any]:
    """JSON record of one step (for its ``metrics.json``): the rule, the number of training
    images, and per class of the step its images and qualifying images; with ``bank_counts``
    (a bank's :meth:`~InstanceBank.class_counts` or a prediction) also the entries credited
    to every class of the bank, by name."""
    record: dict[str, Any] = {
        "instances": rule_record(coverage.instances),
        "training_images": coverage.num_images,
        "pool_entries": len(coverage.pool),
        "classes": {
            task.class_names[c]: {"images": coverage.images[c], "qualifying": coverage.qualifying[c]}
            for c in coverage.images
        },
    }
    if bank_counts is not None:
        record["bank_entries"] = {task.class_names[c]: int(n) for c, n in bank_counts.items()}
    return record


def built_bank_record(task: Any, bank: InstanceBank, coverage: StepCoverage | None = None) -> dict[str, Any]:
    """JSON record of the bank a step built (its ``metrics.json``'s ``"bank"``): the step it
    serves, storage, budget, entries, entries per class by name; with ``coverage`` (the
    step's, instance storage) also :func:`coverage_record`'s counts and, under ``"warnings"``,
    :func:`coverage_warnings` of the built bank: the run's own account of what it replayed."""
    counts = bank.class_counts()
    record: dict[str, Any] = {
        "serves_step": bank.step + 1,
        "storage": bank.storage,
        "budget": bank.budget,
        "entries": len(bank),
    }
    if coverage is None:
        record["bank_entries"] = {task.class_names[c]: int(n) for c, n in counts.items()}
        return record
    record.update(coverage_record(task, coverage, counts))
    record["warnings"] = coverage_warnings(task, [coverage], {bank.step: counts}, built=True)
    return record
