"""The run's summary: old / new / all / hIoU of every step as JSON, a Markdown table and a plot.

Definitions (the same as in :func:`eir.evaluation.metrics.summarize`, in percent):
old = mean IoU over background and the step-0 classes; new = mean IoU over the classes
added after step 0 and seen so far; all = mean IoU over background and every seen class;
hIoU = harmonic mean of old and new. Classes absent from both ground truth and prediction
are n/a and left out of the means.
"""
from __future__ import annotations

import io
from pathlib import Path

from eir.fileio import atomic_write, atomic_write_json, atomic_write_text
from eir.tasks import Task

COLUMNS = ("old", "new", "all", "hiou", "pixel_acc")
HEADERS = ("old mIoU", "new mIoU", "all mIoU", "hIoU", "pixel acc")


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def summary_markdown(task: Task, step_summaries: dict[int, dict]) -> str:
    """A Markdown table with one row per finished step."""
    lines = [
        f"# {task}",
        "",
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
    return "\n".join(lines)


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


def write_summary(output_dir, task: Task, step_summaries: dict[int, dict]) -> None:
    """Write summary.json, summary.md and steps.png into ``output_dir`` (atomically)."""
    output_dir = Path(output_dir)
    data = {
        "task": task.to_dict(),
        "steps": {str(t): {k: step_summaries[t][k] for k in COLUMNS} for t in sorted(step_summaries)},
        "final": {k: step_summaries[max(step_summaries)][k] for k in COLUMNS} if step_summaries else None,
    }
    atomic_write_json(output_dir / "summary.json", data)
    atomic_write_text(output_dir / "summary.md", summary_markdown(task, step_summaries))
    if step_summaries:
        png = plot_steps(task, step_summaries)
        atomic_write(output_dir / "steps.png", lambda f: f.write(png))
