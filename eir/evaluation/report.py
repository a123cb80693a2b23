"""The run's summary: old / new / all / hIoU of every step as JSON, a Markdown table and a plot,
and the per-class map (every class's IoU after every step).

Definitions (the same as in :func:`eir.evaluation.metrics.summarize`, in percent):
old = mean IoU over background and the step-0 classes; new = mean IoU over the classes
added after step 0 and seen so far; all = mean IoU over background and every seen class;
hIoU = harmonic mean of old and new. Classes absent from both ground truth and prediction
are n/a and left out of the means. summary.md also shows the instance banks the steps built
(their ``metrics.json`` records), and says first when a step replayed an empty one.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import NamedTuple

import numpy as np

from eir.data.bank_rule import rule_from_record, rule_text
from eir.fileio import atomic_write, atomic_write_json, atomic_write_text
from eir.tasks import Task

COLUMNS = ("old", "new", "all", "hiou", "pixel_acc")
HEADERS = ("old mIoU", "new mIoU", "all mIoU", "hIoU", "pixel acc")


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def summary_markdown(task: Task, step_summaries: dict[int, dict], banks: dict[int, dict] | None = None) -> str:
    """A Markdown table with one row per finished step; with ``banks`` (the ``"bank"`` records of
    the steps' ``metrics.json``) first the steps that replayed an empty bank, and after the table
    the banks' entries per class (:func:`bank_markdown`)."""
    banks = banks or {}
    lines = [f"# {task}", ""]
    lines += empty_bank_lines(step_summaries, banks)
    lines += [
        "| step | classes | " + " | ".join(HEADERS) + " |",
        "|---|---|" + "---|" * len(HEADERS),
    ]
    for step in sorted(step_summaries):
        s = step_summaries[step]
        new = task.new_classes(step)
        classes = f"{new[0]}-{new[-1]}" if len(new) > 1 else str(new[0])
        lines.append(
            f"| {step} | {classes} | " + " | ".join(_fmt(s[k]) for k in COLUMNS) + " |"
        )
    lines += [
        "",
        "old: mean IoU over background and the step-0 classes; new: mean IoU over the classes",
        "added after step 0 and seen so far; all: mean IoU over background and every seen class;",
        "hIoU: harmonic mean of old and new; all in percent. Classes absent from both ground",
        "truth and prediction are n/a and left out of the means. Step 0 has no new classes.",
        "",
    ]
    if banks:
        lines += bank_markdown(task, banks)
    return "\n".join(lines)


def empty_bank_lines(step_summaries: dict[int, dict], banks: dict[int, dict]) -> list[str]:
    """A warning for every finished step whose method replays a bank that was built empty: its
    numbers are not the method's (EIR without instances is its criterion alone)."""
    lines = []
    for step in sorted(step_summaries):
        record = banks.get(step - 1)
        if record is None or record.get("entries") != 0:
            continue
        method = record.get("method", "the method")
        trained = f"trained as {record['without_bank']}" if "without_bank" in record else "trained without them"
        lines += [
            f"**Step {step} ran without instances: its bank was empty (0 of {record.get('budget')} "
            f"entries), so {method} {trained}.** Its numbers are not {method}'s; see the instance "
            "bank below.",
            "",
        ]
    return lines


def bank_markdown(task: Task, banks: dict[int, dict]) -> list[str]:
    """The entries per class of the bank each step built (the ``"bank"`` records): one column per
    bank, one row per class in task order; where a record counts the step's images, the class's
    qualifying images of the step that learnt it; then the warnings recorded at the build."""
    steps = sorted(banks)
    first = banks[steps[0]]
    rule = ""
    if "instances" in first:
        rule = f" under {rule_text(rule_from_record(first['instances']))}"
    lines = [
        "## Instance bank",
        "",
        f"Entries per class of the bank each step built for the next; {first.get('storage')} storage{rule}.",
        "In brackets: the step's training images with the class, and those that qualify.",
        "",
        "| class | " + " | ".join(f"after step {t}" for t in steps) + " |",
        "|---|" + "---|" * len(steps),
    ]
    names = [task.class_names[c] for s in task.steps for c in s]
    for name in names:
        if not any(name in banks[t].get("bank_entries", {}) for t in steps):
            continue
        cells = []
        for t in steps:
            n = banks[t].get("bank_entries", {}).get(name)
            counted = banks[t].get("classes", {}).get(name)
            cell = "-" if n is None else str(n)
            if counted is not None:
                cell += f" ({counted['qualifying']} of {counted['images']})"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    totals = (f"{banks[t].get('entries')} of {banks[t].get('budget')}" for t in steps)
    lines.append("| all | " + " | ".join(totals) + " |")
    warnings = [(t, w) for t in steps for w in banks[t].get("warnings", ())]
    if warnings:
        lines += ["", "Warnings when the banks were built:", ""]
        lines += [f"- step {t}: {w}" for t, w in warnings]
    lines.append("")
    return lines


def plot_steps(task: Task, step_summaries: dict[int, dict]) -> bytes:
    """PNG bytes of old / new / all mIoU against the step index."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted(step_summaries)
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    for key, style in (("old", "o-"), ("new", "s-"), ("all", "^-")):
        xs = [t for t in steps if step_summaries[t][key] is not None]
        ax.plot(xs, [step_summaries[t][key] for t in xs], style, label=f"{key} mIoU")
    ax.set_xlabel("step")
    ax.set_ylabel("mIoU (%)")
    ax.set_xticks(steps)
    ax.set_ylim(0, 100)
    ax.set_title(str(task), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


class PerClassGrid(NamedTuple):
    """The per-class map's numbers: one row per class, one column per finished step.

    ``iou[r, j]`` is the IoU (percent) of class ``class_ids[r]`` after step ``steps[j]``, NaN
    where there is no number; ``learnt[r, j]`` tells the two kinds of NaN apart: False before
    the class is learnt (a blank cell), True where it was learnt but is absent from ground
    truth and prediction (n/a).
    """

    class_ids: list[int]
    names: list[str]
    learnt_at: list[int]
    steps: list[int]
    iou: np.ndarray
    learnt: np.ndarray


def per_class_grid(task: Task, step_summaries: dict[int, dict]) -> PerClassGrid:
    """Rows: background, then the task's classes in the order the steps learn them."""
    steps = sorted(step_summaries)
    class_ids = [0] + [c for s in task.steps for c in s]
    names = [task.class_names[c] for c in class_ids]
    learnt_at = [0] + [task.step_of(c) for c in class_ids[1:]]
    iou = np.full((len(class_ids), len(steps)), np.nan)
    learnt = np.zeros(iou.shape, dtype=bool)
    for j, t in enumerate(steps):
        per_class = step_summaries[t].get("per_class")
        if per_class is None:
            raise ValueError(f"the summary of step {t} has no per_class IoUs (metrics.json 'summary')")
        for r, (name, first) in enumerate(zip(names, learnt_at)):
            if first > t:
                continue
            if name not in per_class:
                raise ValueError(
                    f"the summary of step {t} has no IoU for class {name!r}, which {task} learns "
                    f"at step {first}: is it a summary of another task?"
                )
            learnt[r, j] = True
            if per_class[name] is not None:
                iou[r, j] = float(per_class[name])
    return PerClassGrid(class_ids, names, learnt_at, steps, iou, learnt)


def plot_per_class(task: Task, step_summaries: dict[int, dict]) -> bytes:
    """PNG bytes of the per-class map: IoU colour-coded, blank before a class is learnt."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = per_class_grid(task, step_summaries)
    rows, cols = grid.iou.shape
    numbers = rows <= 40  # cell text stays legible up to VOC's 21 rows and a bit beyond
    fig, ax = plt.subplots(figsize=(2.2 + 0.95 * cols, 1.2 + 0.28 * rows), dpi=120)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    image = ax.imshow(np.ma.masked_invalid(grid.iou), cmap=cmap, vmin=0, vmax=100, aspect="auto")
    for r, j in zip(*np.nonzero(grid.learnt)):
        value = grid.iou[r, j]
        if np.isnan(value):
            ax.add_patch(plt.Rectangle((j - 0.5, r - 0.5), 1, 1, color="0.85"))
            label, colour = "n/a", "0.3"
        else:
            label, colour = f"{value:.1f}", "black" if value > 60 else "white"
        if numbers:
            ax.text(j, r, label, ha="center", va="center", fontsize=7, color=colour)
    for r in range(1, rows):  # a line where the classes of the next step begin
        if grid.learnt_at[r] != grid.learnt_at[r - 1]:
            ax.axhline(r - 0.5, color="0.4", linewidth=0.8)
    ax.set_xticks(range(cols), [f"step {t}" for t in grid.steps], fontsize=8)
    ax.set_yticks(
        range(rows), [f"{n} ({t})" for n, t in zip(grid.names, grid.learnt_at)], fontsize=7
    )
    ax.tick_params(length=0)
    ax.set_ylabel("class (step that learns it)", fontsize=8)
    ax.set_title(f"{task}: IoU per class after each step", fontsize=9)
    bar = fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
    bar.set_label("IoU (%)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_per_class(output_dir, task: Task, step_summaries: dict[int, dict]) -> Path:
    """Write the per-class map ``output_dir/per_class.png`` (atomically)."""
    png = plot_per_class(task, step_summaries)
    return atomic_write(Path(output_dir) / "per_class.png", lambda f: f.write(png))


def write_summary(
    output_dir, task: Task, step_summaries: dict[int, dict], banks: dict[int, dict] | None = None
) -> None:
    """Write summary.json, summary.md, steps.png and per_class.png into ``output_dir`` (atomically);
    ``banks``: the steps' bank records, shown in summary.md only."""
    output_dir = Path(output_dir)
    data = {
        "task": task.to_dict(),
        "steps": {str(t): {k: step_summaries[t][k] for k in COLUMNS} for t in sorted(step_summaries)},
        "final": {k: step_summaries[max(step_summaries)][k] for k in COLUMNS} if step_summaries else None,
    }
    atomic_write_json(output_dir / "summary.json", data)
    atomic_write_text(output_dir / "summary.md", summary_markdown(task, step_summaries, banks))
    if step_summaries:
        png = plot_steps(task, step_summaries)
        atomic_write(output_dir / "steps.png", lambda f: f.write(png))
        write_per_class(output_dir, task, step_summaries)
