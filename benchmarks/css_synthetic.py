#!/usr/bin/env python
"""Does EIR beat its baselines? The synthetic continual benchmark.

Every variant below is the same code and the same synthetic config with a few LazyConfig
overrides (the baseline configs in ``projects/EIR/configs/baselines/`` set the same keys on
Pascal VOC 15-1; ``tests/test_baselines.py`` checks the two agree). Each (task, variant,
seed) is one ``tools/train_net.py`` run in a subprocess, seed by seed, under
``--work/<task>/<variant>/seed_<seed>`` (the joint upper bound does not depend on the task:
it runs once per seed under ``--work/joint/seed_<seed>``). Finished runs are skipped and an
interrupted run resumes where it stopped, so rerunning the command is cheap; a run folder
made with other overrides is refused. Step 0 is the same in every continual variant (their
switches act from step 1 on), so by default it is trained once per task and seed: later
variants copy that run's ``step_0/model_final.pth`` in, and the runner (as when it resumes
a step whose training had finished) evaluates it and builds the variant's own bank. A variant
that swaps the method (``method=...``, mib) trains its own step 0 (its loss and head differ).
``--no-share-step0`` trains it in every run.

After the last step of every run, the script reads ``summary.json`` / ``step_t/metrics.json``
and writes ``css_synthetic.md`` (per task: old / new / all / hIoU after the last step, mean
± sample standard deviation over seeds, per-run wall times, the command, the machine) and
``css_synthetic.png`` (all-class mIoU per step, one panel per task, one line per variant,
mean over seeds with a shaded ± std band). The joint run has one step with every class; its
old / new / all / hIoU are its final per-class IoUs grouped like the task's (old: background
and the task's step-0 classes; new: the rest), as :func:`eir.evaluation.metrics.summarize`
groups them.

    python benchmarks/css_synthetic.py                       # 6-1 and 4-2, 3 seeds, every variant
    python benchmarks/css_synthetic.py --jobs 2              # two (task, seed) groups at a time
    python benchmarks/css_synthetic.py --tasks 6-1 --seeds 0 --variants eir image_replay
    python benchmarks/css_synthetic.py --quick               # smoke test: tiny data and schedule
    python benchmarks/css_synthetic.py schedule.incremental_epochs=30   # overrides for every run

Run it with the Python that has Detectron2 (the runs use ``sys.executable``). By default one
run at a time; ``--jobs N`` runs N (task, seed) groups side by side (each in order: its
variants share its step 0; the joint run belongs to the first task's group). Each run gets
its job's share of the cores for its PyTorch threads (``--threads``); on a CPU the synthetic
config loads data in the training process, so nothing else needs a core. OpenMP threads that
compete with other processes for the cores stall each other (on a busy 2-core machine, 2
threads trained up to 25x slower than 1).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # this checkout's eir, as the runs get (PYTHONPATH)

from benchmarks.machine import cpu_model, load_average, num_cores  # noqa: E402
from eir.engine.run_files import FINAL_CHECKPOINT  # noqa: E402
from eir.evaluation.metrics import group_means  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TRAIN_NET = ROOT / "tools" / "train_net.py"
CONFIGS = ROOT / "projects" / "EIR" / "configs" / "synthetic"

#: The variants: name -> LazyConfig overrides (Hydra's grammar: ``null`` is None; a
#: command-line ``None`` would be the string "None"). The baseline configs set the same keys.
VARIANTS: dict[str, list[str]] = {
    "finetune": ["method.memory=0", "method.paste=null", "method.criterion.tau=null", "method.criterion.w_kd=0"],
    "distill": ["method.memory=0", "method.paste=null"],
    "image_replay": ["method.storage=image", "method.paste=null"],
    "eir_no_paste": ["method.paste=null"],
    "eir_paste_only": ["method.storage=image"],
    "eir": [],
    # Another method: the whole node replaced (emptied first, as an override merges into a node).
    "mib": ["method=null", "method={_target_:eir.methods.mib.MiB,w_kd:10.0}"],
    "joint": ["task.name=joint"],
}

#: What each variant is, for the tables.
DESCRIPTIONS: dict[str, str] = {
    "finetune": "fine-tuning: no bank, no pseudo-labels, no distillation",
    "distill": "distillation only: pseudo-labels + RSKD, no bank",
    "image_replay": "image replay: whole images with their step labels, no pasting",
    "eir_no_paste": "EIR without pasting (instance storage only)",
    "eir_paste_only": "EIR without instance storage (pasting only, whole images replayed)",
    "eir": "EIR, full",
    "mib": "MiB (Cermelli et al. 2020): unbiased CE and distillation, background-shared init, no bank",
    "joint": "joint training on all classes (upper bound)",
}

#: The baseline config file (under projects/EIR/configs/) that sets each variant on VOC 15-1.
BASELINE_FILES: dict[str, str] = {
    "finetune": "baselines/finetune.py",
    "distill": "baselines/distill.py",
    "image_replay": "baselines/image_replay.py",
    "eir_no_paste": "baselines/eir_no_paste.py",
    "eir_paste_only": "baselines/eir_paste_only.py",
    "eir": "voc/15-1_overlap.py",
    "mib": "mib/voc/15-1_overlap.py",
    "joint": "baselines/joint.py",
}

DEFAULT_TASKS = ("6-1", "4-2")
DEFAULT_SEEDS = (0, 1, 2)
METRICS = ("old", "new", "all", "hiou")

#: --quick: a tiny dataset and a two-iteration schedule, to check that everything runs.
QUICK_DATA = dict(num_train=40, num_val=10, size=128, seed=0)
QUICK_OVERRIDES = [
    "schedule.max_iter=2",
    "dataloader.train.total_batch_size=4",
    "method.memory=6",
    "train.log_period=1",
]


# --------------------------------------------------------------------------- results


def _mean(values) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def regroup(per_class: dict[str, float | None], task) -> dict[str, float | None]:
    """old / new / all / hIoU of final per-class IoUs (keyed by class name) grouped like ``task``.

    old: background and the task's step-0 classes; new: the classes added later; the rules
    of :func:`eir.evaluation.metrics.group_means`, which ``summarize`` uses too.
    """
    names = task.class_names
    first = task.steps[0]
    old_names = [names[0]] + [names[c] for c in first]
    new_names = [names[c] for step in task.steps[1:] for c in step]
    missing = [n for n in old_names + new_names if n not in per_class]
    if missing:
        raise ValueError(f"per-class IoUs lack classes {missing} of {task}")
    return group_means(per_class, old_names, new_names)


def step_wall_times(run_dir: Path) -> list[float]:
    """Seconds of each finished step, from the runner's ``step_t/DONE`` markers."""
    out = []
    for done in sorted(run_dir.glob("step_*/DONE"), key=lambda p: int(p.parent.name.split("_")[1])):
        m = re.search(r"done in (\d+(?:\.\d+)?) s", done.read_text())
        out.append(float(m.group(1)) if m else math.nan)
    return out


def read_run(run_dir: Path, task, joint: bool) -> dict:
    """Final old / new / all / hIoU and all-class mIoU per step of a finished run."""
    if joint:
        summary = json.loads((run_dir / "step_0" / "metrics.json").read_text())["summary"]
        final = regroup(summary["per_class"], task)
        per_step = [final["all"]]
    else:
        data = json.loads((run_dir / "summary.json").read_text())
        steps = data["steps"]
        final = {k: data["final"][k] for k in METRICS}
        per_step = [steps[str(t)]["all"] for t in range(len(steps))]
    return {"final": final, "per_step": per_step, "seconds": sum(step_wall_times(run_dir))}


def mean_std(values) -> tuple[float | None, float | None, int]:
    """Mean, sample standard deviation (0 for one value) and count of the present values."""
    v = [x for x in values if x is not None]
    if not v:
        return None, None, 0
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v)


def fmt_mean_std(values) -> str:
    mean, std, n = mean_std(values)
    if mean is None:
        return "n/a"
    return f"{mean:.2f} ± {std:.2f}" if n > 1 else f"{mean:.2f}"


# --------------------------------------------------------------------------- machine




def machine() -> str:
    text = f"{cpu_model()}, {num_cores()} cores available"
    try:
        import torch

        text += f"; torch {torch.__version__}"
        if torch.cuda.is_available():
            text += f"; GPU: {torch.cuda.get_device_name(0)} (runs use it: train.device=auto)"
        else:
            text += "; no GPU (runs on the CPU)"
    except ImportError:
        pass
    return text + f"; python {platform.python_version()}"


# --------------------------------------------------------------------------- runs


def _without_output_dir(overrides: list[str]) -> list[str]:
    """The overrides that define a run, in today's config keys (a record written before a key
    was renamed names the same run): its folder's own path is not one (a --work folder reached
    through another path, or moved, holds the same runs)."""
    from eir.engine.config_schema import renamed_key

    today = []
    for item in overrides:
        key, sep, value = item.partition("=")
        today.append(f"{renamed_key(key) or key}{sep}{value}")
    return [o for o in today if not o.startswith("train.output_dir=")]


class Run:
    """One (task, variant, seed): where it lives, its command, whether it is finished."""

    def __init__(self, task_name: str, variant: str, seed: int, args, overrides: list[str]):
        from eir.tasks import build_task

        self.task_name, self.variant, self.seed = task_name, variant, seed
        self.joint = variant == "joint"
        self.task = build_task("synthetic", task_name)  # the grouping of the results
        self.run_task = build_task("synthetic", "joint") if self.joint else self.task
        self.dir = (
            args.work / "joint" / f"seed_{seed}"
            if self.joint
            else args.work / task_name / variant / f"seed_{seed}"
        )
        config = CONFIGS / f"{task_name}_overlap.py"
        if self.joint or not config.is_file():
            config = CONFIGS / "4-2_overlap.py"  # same base; the task comes from task.name
        # The variant's switches come after the overrides for every run, so that e.g. a
        # global method.memory=... cannot give fine-tuning a bank. The joint run is the same
        # command whatever the task.
        self.overrides = (
            ([] if self.joint else [f"task.name={task_name}"])
            + overrides
            + VARIANTS[variant]
            + [f"train.output_dir={self.dir}", f"train.seed={seed}"]
        )
        self.cmd = [sys.executable, str(TRAIN_NET), "--config-file", str(config), *self.overrides]
        # What step 0 depends on: the variants' switches (method.*) act only after step 0; a
        # variant that swaps the method (method=...) trains its own.
        swap = [o for o in VARIANTS[variant] if o.startswith("method=")]
        self.step0_key = [f"task.name={task_name}", *overrides, f"train.seed={seed}", *swap]

    @property
    def label(self) -> str:
        if self.joint:
            return f"joint (every task) / seed {self.seed}"
        return f"{self.task_name} / {self.variant} / seed {self.seed}"

    def is_finished(self) -> bool:
        last = self.run_task.num_steps - 1
        if not (self.dir / f"step_{last}" / "DONE").is_file():
            return False
        return self.joint or (self.dir / "summary.json").is_file()

    def check_record(self) -> None:
        """Refuse a run folder made by another command (its finished steps would be reused)."""
        record = self.dir / "bench.json"
        if record.is_file():
            theirs = json.loads(record.read_text())["overrides"]
            if _without_output_dir(theirs) != _without_output_dir(self.overrides):
                raise SystemExit(
                    f"{self.dir} holds a run made with other overrides:\n  {theirs}\nnot\n  "
                    f"{self.overrides}\nchoose another --work, or delete that folder"
                )

    def write_record(self, step0_from: Path | None = None) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        record_file = self.dir / "bench.json"
        record = json.loads(record_file.read_text()) if record_file.is_file() else {}
        record.update(overrides=self.overrides, step0_key=self.step0_key, command=shlex.join(self.cmd))
        if step0_from is not None:
            record["step0_from"] = str(step0_from)
        record_file.write_text(json.dumps(record, indent=2) + "\n")

    def step0_donor(self, work: Path) -> Path | None:
        """A finished run of the same task, seed and common overrides whose step-0 model this
        run can reuse (step 0 is the same in every continual variant; only the bank differs)."""
        if self.joint:
            return None
        for variant in VARIANTS:
            other = work / self.task_name / variant / f"seed_{self.seed}"
            if variant in ("joint", self.variant) or not (other / "step_0" / "DONE").is_file():
                continue
            record = other / "bench.json"
            if not (other / "step_0" / FINAL_CHECKPOINT).is_file() or not record.is_file():
                continue
            if _without_output_dir(json.loads(record.read_text()).get("step0_key", [])) == self.step0_key:
                return other
        return None

    def adopt_step0(self, donor: Path) -> None:
        """Copy the donor's step-0 weights in: the runner then evaluates them and builds this
        variant's bank instead of training step 0 again (its resume path)."""
        target = self.dir / "step_0" / FINAL_CHECKPOINT
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        shutil.copyfile(donor / "step_0" / FINAL_CHECKPOINT, tmp)
        os.replace(tmp, target)
        self.write_record(step0_from=donor)

    def needs_step0(self) -> bool:
        step0 = self.dir / "step_0"
        return not ((step0 / "DONE").is_file() or (step0 / FINAL_CHECKPOINT).is_file())

    def execute(self, env: dict) -> tuple[int, float]:
        """Run (or resume) it in a subprocess; returns (exit code, seconds)."""
        self.write_record()
        log = self.dir / "train_net.log"
        start = time.perf_counter()
        with open(log, "a") as f:
            f.write(f"\n$ {shlex.join(self.cmd)}\n")
            f.flush()
            proc = subprocess.run(self.cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        return proc.returncode, time.perf_counter() - start


def child_env(args) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(args.threads)
    if args.datasets is not None:
        env["DETECTRON2_DATASETS"] = str(args.datasets)
    pythonpath = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + pythonpath if pythonpath else "")
    return env


def tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# --------------------------------------------------------------------------- report


def plot(tasks, results, variants, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, len(tasks), figsize=(5.6 * len(tasks), 4.0), dpi=120, squeeze=False)
    colors = plt.get_cmap("tab10")
    for ax, task_name in zip(axes[0], tasks):
        for i, variant in enumerate(variants):
            runs = [r for r in results.get((task_name, variant), []) if r is not None]
            if not runs:
                continue
            color = colors(i % 10)
            if variant == "joint":
                mean, std, _ = mean_std([r["per_step"][-1] for r in runs])
                if mean is None:
                    continue
                ax.axhline(mean, color=color, ls="--", lw=1.2, label="joint (upper bound)")
                ax.axhspan(mean - std, mean + std, color=color, alpha=0.12, lw=0)
                continue
            n = max(len(r["per_step"]) for r in runs)
            xs, means, stds = [], [], []
            for t in range(n):
                m, s, _ = mean_std([r["per_step"][t] for r in runs if t < len(r["per_step"])])
                if m is not None:
                    xs.append(t)
                    means.append(m)
                    stds.append(s)
            means, stds = np.asarray(means), np.asarray(stds)
            ax.plot(xs, means, "o-", color=color, ms=3.5, lw=1.4, label=variant)
            ax.fill_between(xs, means - stds, means + stds, color=color, alpha=0.15, lw=0)
        ax.set_title(f"synthetic {task_name} overlap", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("all-class mIoU (%)")
        ax.set_ylim(0, 100)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
        else:
            ax.text(0.5, 0.5, "no finished run yet", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle("mean over seeds, band: ± 1 sample std", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def comparison(results, task_name, variants) -> list[str]:
    """EIR's final old and hIoU minus each baseline's, with the seeds' spreads."""
    if "eir" not in variants:
        return []
    eir_runs = [r for r in results.get((task_name, "eir"), []) if r is not None]
    lines = []
    for other in ("finetune", "distill", "image_replay", "eir_no_paste", "eir_paste_only", "mib"):
        runs = [r for r in results.get((task_name, other), []) if r is not None]
        if other not in variants or not runs or not eir_runs:
            continue
        parts = []
        for key, name in (("old", "old"), ("hiou", "hIoU")):
            a, sa, na = mean_std([r["final"][key] for r in eir_runs])
            b, sb, nb = mean_std([r["final"][key] for r in runs])
            if a is None or b is None:
                parts.append(f"{name} n/a")
                continue
            d = a - b
            if min(na, nb) < 2:
                verdict = "one seed: no spread to judge by"
            else:
                verdict = "beats" if d > sa + sb else ("loses to" if -d > sa + sb else "within the spread")
            parts.append(f"{name} {d:+.2f} ({verdict})")
        lines.append(f"- EIR vs {other}: " + ", ".join(parts))
    if lines:
        lines.insert(0, "EIR minus each baseline after the last step (\"beats\": the difference "
                     "exceeds the sum of the two standard deviations):")
        lines.append("")
    return lines


def report(args, runs, results, outcomes, command: str, png_name: str) -> str:
    from eir.tasks import build_task

    lines = [
        "# css_synthetic: EIR against its baselines on the synthetic continual benchmark",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- machine: {machine()}; " + (
            "report only: the runs were made by earlier invocations (their wall times are in "
            "the Runs table)"
            if args.report_only
            else f"{args.threads} PyTorch threads per run, "
            f"{'one run' if args.jobs == 1 else f'{args.jobs} runs'} at a time; "
            f"load average at the start {args.load_at_start}, at the end {load_average()}"
        ),
        f"- command: `{command}`",
        f"- seeds: {', '.join(map(str, args.seeds))} (train.seed: model init, sampling, "
        "augmentation, pasting, bank selection)",
        f"- dataset: {dataset_note(args)}",
        f"- overrides for every run: {' '.join(args.overrides) if args.overrides else 'none'}"
        + (" (--quick)" if args.quick else ""),
        "- configs: `projects/EIR/configs/synthetic/<task>_overlap.py` plus the variant's "
        "overrides (the table below; the same keys as `projects/EIR/configs/baselines/`)",
        "- step 0: "
        + (
            "trained once per task and seed (by the first variant run) and reused by the other "
            "continual variants, which evaluate it and build their own bank (the variants differ "
            "only after step 0; a variant that swaps the method, mib, trains its own)"
            if args.share_step0
            else "trained in every run (--no-share-step0)"
        ),
        "",
        "Numbers after the last step, in percent, mean ± sample standard deviation over seeds. "
        "old: background and the step-0 classes; new: the classes added later; all: every class; "
        "hIoU: harmonic mean of old and new. The joint upper bound trains every class in one step; "
        "its per-class IoUs are grouped like the task's.",
        "",
    ]
    for task_name in args.tasks:
        task = build_task("synthetic", task_name)
        lines += [f"## {task_name} overlap ({task.describe().splitlines()[0]})", ""]
        lines += [
            "| variant | what it is | overrides | old | new | all | hIoU | seeds | time per run (s) |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for variant in args.variants:
            found = [r for r in results.get((task_name, variant), []) if r is not None]
            failed = [o for o in outcomes if o[0] == (task_name, variant) and o[1] != 0]
            cells = [fmt_mean_std([r["final"][k] for r in found]) for k in METRICS]
            seconds = _mean(r["seconds"] for r in found)
            note = f"{len(found)}" + (f" ({len(failed)} failed)" if failed else "")
            overrides = " ".join(f"`{o}`" for o in VARIANTS[variant]) or "(none)"
            lines.append(
                f"| {variant} | {DESCRIPTIONS[variant]} | {overrides} | " + " | ".join(cells)
                + f" | {note} | {'-' if seconds is None else f'{seconds:.0f}'} |"
            )
        lines.append("")
        lines += comparison(results, task_name, args.variants)
    lines += [f"![all-class mIoU per step]({png_name})", "", "## Runs", ""]
    lines += [
        "| run | folder | steps | wall time (s) | step 0 model from | status |",
        "|---|---|---:|---:|---|---|",
    ]
    for run in runs:
        key = (run.task_name, run.variant)
        status = next((o[2] for o in outcomes if o[0] == key and o[3] == run.seed), "")
        times = step_wall_times(run.dir) if run.dir.is_dir() else []
        total = f"{sum(times):.0f}" if times else "-"
        lines.append(
            f"| {run.label} | `{shown_run_dir(run, args)}` | {len(times)} | {total} | {step0_source(run)} | {status} |"
        )
    lines += [
        "",
        "Wall time: the sum of the steps' times recorded by the runner (`step_t/DONE`: "
        "training, prepass, evaluation, bank), without process start-up; a run whose step-0 "
        "model came from another run counts only that step's evaluation and bank there.",
        "",
    ]
    return "\n".join(lines)


#: How the report names a folder outside the repository: the committed report must not
#: carry the absolute paths of the machine that made it.
PLACEHOLDERS = {"--work": "<work>", "--datasets": "<datasets>", "--out": "<out>"}


def shown_path(path, placeholder: str) -> str:
    """``path`` relative to the repository when inside it, else ``placeholder``."""
    path = Path(path).expanduser().resolve()
    try:
        return path.relative_to(ROOT).as_posix()
    except ValueError:
        return placeholder


def shown_command(argv: list[str]) -> str:
    """The command line, with the folders of --work, --datasets and --out as :func:`shown_path`."""
    words, pending = ["python", "benchmarks/css_synthetic.py"], None
    for a in argv:
        option, eq, value = a.partition("=")
        if pending is not None:
            words.append(shown_path(a, PLACEHOLDERS[pending]))
            pending = None
        elif a in PLACEHOLDERS:
            words.append(a)
            pending = a
        elif eq and option in PLACEHOLDERS:
            words.append(f"{option}={shown_path(value, PLACEHOLDERS[option])}")
        else:
            words.append(shlex.quote(a))
    return " ".join(words)


def shown_run_dir(run: Run, args) -> str:
    return f"{shown_path(args.work, PLACEHOLDERS['--work'])}/{run.dir.relative_to(args.work).as_posix()}"


def step0_source(run: Run) -> str:
    """Where a run's step-0 model came from: the donor variant, "(trained here)", or "-" while
    step 0 is not finished."""
    record = run.dir / "bench.json"
    donor = json.loads(record.read_text()).get("step0_from") if record.is_file() else None
    if donor:
        return Path(donor).parent.name
    return "(trained here)" if (run.dir / "step_0" / "DONE").is_file() else "-"


def dataset_note(args) -> str:
    if args.datasets is not None:
        parent, placeholder = Path(args.datasets), PLACEHOLDERS["--datasets"]
        if parent.is_relative_to(args.work):  # --quick: the runs' own folder
            placeholder = f"{shown_path(args.work, PLACEHOLDERS['--work'])}/{parent.relative_to(args.work).as_posix()}"
    else:
        parent, placeholder = Path(os.environ.get("DETECTRON2_DATASETS", "datasets")), "$DETECTRON2_DATASETS"
    root = parent / "eir_synthetic"
    shown = f"{shown_path(parent, placeholder)}/eir_synthetic"
    meta = root / "meta.json"
    if meta.is_file():
        a = json.loads(meta.read_text()).get("args", {})
        return (
            f"`{shown}` ({a.get('num_train')} training / {a.get('num_val')} validation images of "
            f"{a.get('size')} px, generator seed {a.get('seed')})"
        )
    return f"`{shown}` (generated by the first run with the generator's defaults)"


# --------------------------------------------------------------------------- main


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """LazyConfig ``key=value`` overrides apart from the script's own options."""
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    return [a for a in argv if a not in overrides], overrides


def parse_args(argv: list[str]):
    own, overrides = split_argv(argv)
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Any key=value argument is a LazyConfig override passed to every run.",
    )
    p.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS), help="synthetic tasks (B-I names)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds (default 0 1 2; --quick: 0)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="NAME",
                   help=f"variants to run, of {', '.join(VARIANTS)} (default: all)")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for css_synthetic.md/.png (default benchmarks/results; --quick: --work)")
    p.add_argument("--work", type=Path, default=None,
                   help="folder of the runs (default output/css_synthetic; --quick: output/css_synthetic_quick)")
    p.add_argument("--datasets", type=Path, default=None,
                   help="DETECTRON2_DATASETS for the runs (default: inherited; --quick: WORK/datasets)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at a time (default 1): the (task, seed) groups run side by side, each "
                   "in order, since its variants share its step 0; give each job its cores with --threads")
    p.add_argument("--threads", type=int, default=None,
                   help="PyTorch threads per run (default: the cores divided by --jobs; on a busy "
                   "2-core machine 2 threads trained up to 25x slower than 1)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: a tiny dataset (40/10 images) and 2 iterations per step")
    p.add_argument("--no-share-step0", dest="share_step0", action="store_false",
                   help="train step 0 in every run (default: once per task and seed; the other "
                   "variants start from that step-0 model and build their own bank)")
    p.add_argument("--report-only", action="store_true", help="run nothing; report the finished runs")
    args = p.parse_args(own)
    args.overrides = overrides
    if args.jobs < 1:
        p.error("--jobs must be >= 1")
    if args.threads is None:
        args.threads = max(1, num_cores() // args.jobs)
    if args.seeds is None:
        args.seeds = [0] if args.quick else list(DEFAULT_SEEDS)
    if args.work is None:
        args.work = Path("output/css_synthetic_quick" if args.quick else "output/css_synthetic")
    args.work = args.work.expanduser().resolve()
    if args.out is None:
        args.out = args.work if args.quick else RESULTS
    if args.quick:
        args.overrides = QUICK_OVERRIDES + args.overrides
        if args.datasets is None:
            args.datasets = args.work / "datasets"
    if args.datasets is not None:
        args.datasets = args.datasets.expanduser().resolve()
    from eir.tasks import build_task

    for name in args.tasks:
        try:
            task = build_task("synthetic", name)
        except ValueError as e:
            p.error(f"--tasks {name}: {e}")
        if task.num_steps < 2:
            p.error(f"--tasks {name}: a continual task needs at least two steps")
    return args


_SAY_LOCK = threading.Lock()


def say(message: str) -> None:
    """Print ``message`` as whole lines: with ``--jobs`` several threads report at once."""
    with _SAY_LOCK:
        sys.stdout.write(message + "\n")
        sys.stdout.flush()


def execute(run: Run, i: int, total: int, args, env: dict) -> tuple:
    """Run (or skip) one run; its outcome ``((task, variant), exit code, status, seed)``."""
    key = (run.task_name, run.variant)
    if run.is_finished():
        say(f"[{i}/{total}] {run.label}: finished before, skipped")
        return key, 0, "finished before", run.seed
    if args.report_only:
        return key, 0, "not run", run.seed
    if args.share_step0 and run.needs_step0():
        donor = run.step0_donor(args.work)
        if donor is not None:
            run.adopt_step0(donor)
            say(f"[{i}/{total}] {run.label}: step 0 model from {donor}")
    say(f"[{i}/{total}] {run.label}: running ({run.dir / 'train_net.log'})")
    code, seconds = run.execute(env)
    if code == 0 and run.is_finished():
        final = read_run(run.dir, run.task, run.joint)["final"]
        text = ", ".join(f"{k} {'n/a' if final[k] is None else f'{final[k]:.1f}'}" for k in METRICS)
        say(f"    {run.label}: done in {seconds:.0f} s: {text}")
        return key, 0, f"ran in {seconds:.0f} s", run.seed
    say(f"    {run.label}: FAILED (exit code {code}) after {seconds:.0f} s; log tail:\n"
        f"{tail(run.dir / 'train_net.log')}")
    return key, code or 1, f"failed (exit {code or 1})", run.seed


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.load_at_start = load_average()
    command = shown_command(argv)
    if args.quick and not args.report_only:
        from eir.data.synthetic import generate

        generate(args.datasets / "eir_synthetic", verbose=False, **QUICK_DATA)

    runs, seen = [], set()
    for seed in args.seeds:  # seed by seed, so a benchmark cut short has whole seeds
        for task_name in args.tasks:
            for variant in args.variants:
                run = Run(task_name, variant, seed, args, args.overrides)
                if run.dir in seen:  # the joint run serves every task
                    continue
                seen.add(run.dir)
                run.check_record()
                runs.append(run)

    env = child_env(args)
    print(f"css_synthetic: {len(runs)} runs into {args.work}"
          + (f", {args.jobs} at a time" if args.jobs > 1 else ""), flush=True)
    numbered = list(enumerate(runs, 1))
    # A (task, seed) group runs in order (its variants share its step 0); groups run side by side.
    groups: dict[tuple[str, int], list] = {}
    for item in numbered:
        groups.setdefault((item[1].task_name, item[1].seed), []).append(item)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        done = pool.map(lambda group: [execute(run, i, len(runs), args, env) for i, run in group],
                        groups.values())
        by_index = {i: o for group, outs in zip(groups.values(), done) for (i, _), o in zip(group, outs)}
    outcomes = [by_index[i] for i, _ in numbered]  # ((task, variant), exit code, status, seed)

    # Results per (task, variant); the joint runs are grouped once per task.
    results: dict[tuple[str, str], list] = {}
    for task_name in args.tasks:
        for variant in args.variants:
            for seed in args.seeds:
                run = Run(task_name, variant, seed, args, args.overrides)
                value = read_run(run.dir, run.task, run.joint) if run.is_finished() else None
                results.setdefault((task_name, variant), []).append(value)
    # A joint outcome is recorded under the first task; count it for every task.
    for o in list(outcomes):
        if o[0][1] == "joint":
            outcomes += [((t, "joint"), o[1], o[2], o[3]) for t in args.tasks if t != o[0][0]]

    args.out.mkdir(parents=True, exist_ok=True)
    png = args.out / "css_synthetic.png"
    plot(args.tasks, results, args.variants, png)
    md = args.out / "css_synthetic.md"
    md.write_text(report(args, runs, results, outcomes, command, png.name))
    print(f"wrote {md} and {png}", flush=True)
    failed = [o for o in outcomes if o[1] != 0]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
