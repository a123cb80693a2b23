#!/usr/bin/env python
"""Does EIR beat its baselines? The continual benchmark, on synthetic shapes or CamVid photographs.

One runner over datasets (``--dataset``, the table ``DATASETS``): each has its task configs
(``projects/EIR/configs/<dataset>/<task>_overlap.py``), its default tasks and variants, and
optionally a test split scored after the runs. Every variant below is the same code and the
dataset's config with a few LazyConfig overrides (the baseline configs in
``projects/EIR/configs/baselines/`` set the same keys on Pascal VOC 15-1;
``tests/test_baselines.py`` checks the two agree). Each (task, variant, seed) is one
``tools/train_net.py`` run in a subprocess, seed by seed, under
``--work/<task>/<variant>/seed_<seed>`` (the joint upper bound does not depend on the task:
it runs once per seed under ``--work/joint/seed_<seed>``). Finished runs are skipped and an
interrupted run resumes where it stopped, so rerunning the command is cheap; a run folder
made with other overrides is refused. Step 0 is the same in every continual variant (their
switches act from step 1 on) and in every task with the same first step (CamVid's 8-3 and
8-1), so by default it is trained once per seed and first step: later runs copy that run's
``step_0/model_final.pth`` in (tagged with their own task), and the runner (as when it
resumes a step whose training had finished) evaluates it and builds the variant's own bank.
A variant that swaps the method (``method=...``, mib) trains its own step 0 (its loss and
head differ). ``--no-share-step0`` trains it in every run.

Each finished run's numbers are written to ``css_<dataset>_runs/<task>/<variant>/seed_<s>.json``
beside the report (with its step times and loss peaks, where its step 0 came from, the
config file's digest, the date, machine and threads): the report is made from these records, and a run recorded there is not made again,
so a benchmark can be continued on another machine or in another session without its run
folders.

After the last step of every run, a dataset with a test split (CamVid) has every step's
checkpoint scored on it (``--eval-only`` with ``dataloader.test.dataset`` set to the test split,
``train.eval_output`` under the run's ``bench_test/``); the runs themselves evaluate on the
validation split, where choices are made. The script then writes ``css_<dataset>.md`` (per task:
old / new / all / hIoU after the last step, mean ± sample standard deviation over seeds, each
class's IoU after the last step, per-run wall times, the command, the machine; on the test
split when there is one) and ``css_<dataset>.png`` (all-class and old-class mIoU per step, one
column per task, one line per variant, mean over seeds with a shaded ± std band). The joint run
has one step with every class; its old / new / all / hIoU are its final per-class IoUs grouped
like the task's (old: background and the task's step-0 classes; new: the rest), as
:func:`eir.evaluation.metrics.summarize` groups them.

    python benchmarks/css_benchmark.py                       # synthetic 6-1 and 4-2, 3 seeds, every variant
    python benchmarks/css_benchmark.py --dataset camvid --datasets D   # CamVid 8-3 and 8-1 (D/CamVid)
    python benchmarks/css_benchmark.py --jobs 2              # two groups (seed, first step) at a time
    python benchmarks/css_benchmark.py --tasks 6-1 --seeds 0 --variants eir image_replay
    python benchmarks/css_benchmark.py --quick               # smoke test: tiny data and schedule
    python benchmarks/css_benchmark.py schedule.incremental_epochs=30   # overrides for every run

Run it with the Python that has Detectron2 (the runs use ``sys.executable``). By default one
run at a time; ``--jobs N`` runs N groups side by side, a group being the runs of one seed
and first step (each in order: they share its step 0; the joint run belongs to the first
task's group). Each run gets
its job's share of the cores for its PyTorch threads (``--threads``); on a CPU the configs
load data in the training process, so nothing else needs a core. OpenMP threads that
compete with other processes for the cores stall each other (on a busy 2-core machine, 2
threads trained up to 25x slower than 1). Until 2026-12-08 this script was
``benchmarks/css_synthetic.py`` (synthetic data only); the results it wrote keep that name.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # this checkout's eir, as the runs get (PYTHONPATH)

from benchmarks.machine import cpu_model, load_average, num_cores  # noqa: E402
from eir.engine.run_files import FINAL_CHECKPOINT  # noqa: E402
from eir.evaluation.metrics import group_means  # noqa: E402
from eir.fileio import atomic_write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TRAIN_NET = ROOT / "tools" / "train_net.py"
CONFIGS = ROOT / "projects" / "EIR" / "configs"


QUICK_DATA = dict(num_train=40, num_val=10, size=128, seed=0)


def make_quick_synthetic(root: Path) -> None:
    """--quick's synthetic data: 40 training and 10 validation images of 128 px."""
    from eir.data.synthetic import generate

    generate(root, verbose=False, **QUICK_DATA)


def write_camvid_layout(root: Path, num_train: int = 40, num_val: int = 10, num_test: int = 10,
                        size: int = 96, seed: int = 0) -> Path:
    """A tiny dataset in CamVid's layout (``{train,val,test}/`` PNG images, ``*annot/`` labels
    of values 0..10 and 11 unlabelled), made from synthetic shapes: value 0 (the shapes'
    background) plays sky, 1..10 the other classes, and a 2-pixel frame is unlabelled. For
    --quick and the tests: CamVid itself is the user's copy. Nothing is done when ``root``
    holds it already."""
    import tempfile

    from PIL import Image

    from eir.data.synthetic import generate

    splits = {"train": num_train, "val": num_val, "test": num_test}
    if all(len(list((root / s).glob("*.png"))) == n for s, n in splits.items()):
        return root
    with tempfile.TemporaryDirectory() as tmp:
        shapes = generate(Path(tmp) / "shapes", num_train=num_train + num_test, num_val=num_val, size=size,
                          seed=seed, verbose=False)
        images = sorted((shapes / "JPEGImages").glob("*.jpg"))
        named = {"train": [p for p in images if p.stem.startswith("train")][:num_train],
                 "test": [p for p in images if p.stem.startswith("train")][num_train:],
                 "val": [p for p in images if p.stem.startswith("val")]}
        for split, paths in named.items():
            (root / split).mkdir(parents=True, exist_ok=True)
            (root / f"{split}annot").mkdir(parents=True, exist_ok=True)
            for i, path in enumerate(paths):
                label = np.array(Image.open(shapes / "SegmentationClassAug" / f"{path.stem}.png"))
                label = np.where(label > 10, 11, label).astype(np.uint8)
                label[:2], label[-2:], label[:, :2], label[:, -2:] = 11, 11, 11, 11
                name = f"{split}_{i:04d}.png"
                Image.open(path).convert("RGB").save(root / split / name)
                Image.fromarray(label).save(root / f"{split}annot" / name)
    return root


@dataclass(frozen=True)
class BenchmarkData:
    """What the runner needs of one dataset: its task configs, tasks, variants and splits."""

    name: str  # --dataset; the results are css_<name>.md / .png, the runs under output/css_<name>
    title: str  # how the tables and the figure name it
    folder: str  # its folder under DETECTRON2_DATASETS
    base_config: str  # the task file whose config a task without its own file uses (task.name set)
    default_tasks: tuple[str, ...]
    default_variants: tuple[str, ...]
    builtin: str | None = None  # the built-in dataset key of eir.tasks, else the classes come from the config
    test_dataset: str | None = None  # a split scored after the runs (None: the runs' own evaluation)
    design: str = ""  # the results file that fixed its model and schedule
    make_quick: Callable[[Path], object] = make_quick_synthetic  # --quick's tiny data in its layout

    def config(self, task_name: str) -> Path:
        """The config file of a task: its own, else the base one (the task comes from task.name)."""
        own = CONFIGS / self.name / f"{task_name}_overlap.py"
        return own if own.is_file() else CONFIGS / self.name / self.base_config

    def task(self, task_name: str):
        """The :class:`~eir.tasks.Task` a run of ``task_name`` trains: the built-in dataset's, or
        the one the config builds from its datasets' catalog entries (as the runner does)."""
        return _dataset_task(self, task_name)


@functools.cache  # every Run asks; a Task is immutable, and a config load is not free
def _dataset_task(data: BenchmarkData, task_name: str):
    from eir.tasks import build_task

    if data.builtin is not None:
        return build_task(data.builtin, task_name)
    from eir.engine.builders import build_run_task
    from eir.engine.config_checks import load_config

    return build_run_task(load_config(str(data.config(task_name)), [f"task.name={task_name}"]))



@functools.cache
def config_digest(path: Path, for_step0: bool = False) -> str:
    """A digest of the config file ``path`` as loaded, with the task's name and output folder
    blanked: task files that differ only there (``camvid/8-3_overlap.py`` and ``8-1_overlap.py``)
    describe the same runs. ``for_step0``: also without the schedule's ``incremental_*`` keys,
    which act from step 1 on (what step 0 depends on)."""
    import hashlib

    from detectron2.config import LazyConfig
    from omegaconf import OmegaConf

    cfg = LazyConfig.load(str(path))
    cfg.task.name, cfg.train.output_dir = "", ""
    if for_step0:
        for key in [k for k in cfg.schedule if k.startswith("incremental_")]:
            cfg.schedule[key] = None
    return hashlib.sha256(OmegaConf.to_yaml(cfg).encode()).hexdigest()[:16]


@functools.cache
def _step0_setting(data: BenchmarkData, task_name: str) -> tuple[str, str]:
    """What a task's config decides about step 0: its classes, and the config's step-0 digest
    (:func:`config_digest`): tasks that start alike train the same step 0."""
    task = data.task(task_name)
    step0 = ",".join(task.class_names[c] for c in task.steps[0])
    return f"step0_classes={step0}", f"config_sha256={config_digest(data.config(task_name), for_step0=True)}"

#: The datasets: synthetic shapes (generated on first use) and CamVid (the user's copy of
#: the SegNet tutorial's folder, under DETECTRON2_DATASETS/CamVid; nothing is downloaded).
DATASETS: dict[str, BenchmarkData] = {
    "synthetic": BenchmarkData(
        name="synthetic", title="synthetic", folder="eir_synthetic", base_config="4-2_overlap.py",
        default_tasks=("6-1", "4-2"),
        default_variants=("finetune", "distill", "image_replay", "eir_no_paste", "eir_paste_only", "eir",
                          "mib", "joint"),
        builtin="synthetic", design="synthetic_design.md",
    ),
    "camvid": BenchmarkData(
        name="camvid", title="CamVid", folder="CamVid", base_config="8-3_overlap.py",
        default_tasks=("8-3", "8-1"),
        default_variants=("finetune", "distill", "image_replay", "eir", "eir_regions", "mib", "joint"),
        test_dataset="camvid_test", design="camvid_design.md", make_quick=write_camvid_layout,
    ),
}

#: The variants: name -> LazyConfig overrides (Hydra's grammar: ``null`` is None; a
#: command-line ``None`` would be the string "None"). The baseline configs set the same keys.
VARIANTS: dict[str, list[str]] = {
    "finetune": ["method.memory=0", "method.paste=null", "method.criterion.tau=null", "method.criterion.w_kd=0"],
    "distill": ["method.memory=0", "method.paste=null"],
    "image_replay": ["method.storage=image", "method.paste=null"],
    "eir_no_paste": ["method.paste=null"],
    "eir_paste_only": ["method.storage=image"],
    "eir": [],
    # EIR with the instance rule for classes that are not one blob (METHOD.md, departure 14)
    "eir_regions": ["method.instances={_target_:eir.data.bank_rule.RegionRule,min_area:0.001}"],
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
    "eir_regions": "EIR, instances by the region rule (each large region of a class)",
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
    "eir_regions": "baselines/eir_regions.py",
    "mib": "mib/voc/15-1_overlap.py",
    "joint": "baselines/joint.py",
}

DEFAULT_SEEDS = (0, 1, 2)
METRICS = ("old", "new", "all", "hiou")

#: --quick: a tiny dataset (make_quick) and a two-iteration schedule, to check that everything runs.
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


def loss_peak_ratio(step_dir: Path) -> float | None:
    """The largest logged total loss of a step over its first logged one (``training_log.json``:
    medians over ``train.log_period`` iterations): above 2, the step diverged for a while
    (``camvid_design.md``, criterion 5). None for a step that did not train here."""
    log = step_dir / "training_log.json"
    losses = [json.loads(line)["total_loss"] for line in log.read_text().splitlines() if line.strip()] \
        if log.is_file() else []
    return max(losses) / losses[0] if losses and losses[0] > 0 else None


def read_run(run) -> dict:
    """Final old / new / all / hIoU, each class's IoU after the last step, and all-class and
    old-class mIoU per step of a finished :class:`Run`: on the test split when the dataset has
    one (:meth:`Run.test_file`), else as the run evaluated itself (``step_t/metrics.json``)."""
    if run.data.test_dataset:
        steps = [json.loads(run.test_file(t).read_text()) for t in run.test_steps()]
    else:
        steps = [json.loads((run.dir / f"step_{t}" / "metrics.json").read_text())["summary"]
                 for t in range(run.num_steps)]
    per_class = steps[-1]["per_class"]
    if run.joint:
        final = regroup(per_class, run.task)
        per_step, old_per_step = [final["all"]], [final["old"]]
    else:
        final = {k: steps[-1][k] for k in METRICS}
        per_step, old_per_step = [s["all"] for s in steps], [s["old"] for s in steps]
    return {"final": final, "per_class": per_class, "per_step": per_step, "old_per_step": old_per_step,
            "seconds": sum(step_wall_times(run.dir))}


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
        self.task_name, self.variant, self.seed = task_name, variant, seed
        self.data: BenchmarkData = args.data
        self.joint = variant == "joint"
        self.task = self.data.task(task_name)  # the grouping of the results
        self.num_steps = 1 if self.joint else self.task.num_steps
        self.dir = (
            args.work / "joint" / f"seed_{seed}"
            if self.joint
            else args.work / task_name / variant / f"seed_{seed}"
        )
        # its numbers once finished, kept beside the report (see save_result)
        self.result_file = args.out / f"css_{self.data.name}_runs" / f"{self.dir.relative_to(args.work)}.json"
        # the joint run is one command whatever the task (the task comes from task.name)
        config = self.data.config(self.data.default_tasks[0] if self.joint else task_name)
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
        self.config_sha256 = config_digest(config)  # a record of another version of the file is refused
        # What step 0 depends on: its classes and the config apart from the task's name (tasks
        # with the same first step, 8-3 and 8-1, share it); the variants' switches (method.*)
        # act only after step 0; a variant that swaps the method (method=...) trains its own.
        swap = [o for o in VARIANTS[variant] if o.startswith("method=")]
        self.step0_key = [*_step0_setting(self.data, task_name), *overrides, f"train.seed={seed}", *swap]

    @property
    def label(self) -> str:
        if self.joint:
            return f"joint (every task) / seed {self.seed}"
        return f"{self.task_name} / {self.variant} / seed {self.seed}"

    def is_finished(self) -> bool:
        """Trained and evaluated: every step done, the summary written, and on a dataset with
        a test split every step scored on it."""
        if not (self.dir / f"step_{self.num_steps - 1}" / "DONE").is_file():
            return False
        if not (self.joint or (self.dir / "summary.json").is_file()):
            return False
        return all(self.test_file(t).is_file() for t in self.test_steps())

    def test_steps(self) -> range:
        """The steps scored on the test split (none without one)."""
        return range(self.num_steps if self.data.test_dataset else 0)

    def test_file(self, step: int) -> Path:
        return self.dir / "bench_test" / f"step_{step}.json"

    def test_command(self, step: int) -> list[str]:
        """``--eval-only`` of step ``step``'s checkpoint on the test split, its metrics to :meth:`test_file`."""
        options = self.cmd.index("--config-file") + 2  # options before the overrides
        return [*self.cmd[:options], "--eval-only", *self.cmd[options:], f"train.step={step}",
                f"dataloader.test.dataset={self.data.test_dataset}", f"train.eval_output={self.test_file(step)}"]

    def check_record(self) -> None:
        """Refuse a run folder or result record made by another command (its finished steps
        or numbers would be reused)."""
        for record, where in ((self.dir / "bench.json", "--work"), (self.result_file, "--out")):
            if not record.is_file():
                continue
            data = json.loads(record.read_text())
            theirs = data["overrides"]
            if _without_output_dir(theirs) != _without_output_dir(self.overrides):
                raise SystemExit(
                    f"{record} records a run made with other overrides:\n  {theirs}\nnot\n  "
                    f"{self.overrides}\nchoose another {where}, or delete it"
                )
            if data.get("config_sha256", self.config_sha256) != self.config_sha256:
                raise SystemExit(
                    f"{record} records a run made with another version of {self.cmd[3]} (config digest "
                    f"{data['config_sha256']}, now {self.config_sha256}): choose another {where}, or delete it"
                )

    def recorded(self) -> dict | None:
        """The run's result record (:meth:`save_result`), None before it has one."""
        return json.loads(self.result_file.read_text()) if self.result_file.is_file() else None

    def save_result(self, args) -> dict:
        """Write the finished run's numbers (:func:`read_run`), step times and provenance to
        ``css_<dataset>_runs/`` beside the report: the report is made from these records, and
        a benchmark continued elsewhere (the run folders are big and stay on the machine that
        made them) skips the runs recorded there instead of making them again."""
        record = {
            "overrides": _without_output_dir(self.overrides),
            "config_sha256": self.config_sha256,
            **read_run(self),
            "step_seconds": step_wall_times(self.dir),
            "loss_peak_ratio": [loss_peak_ratio(self.dir / f"step_{t}") for t in range(self.num_steps)],
            "step0_from": step0_source(self),
            "made": {"date": datetime.date.today().isoformat(), "machine": machine(),
                     "threads": args.threads, "runs_at_a_time": args.jobs},
        }
        atomic_write_json(self.result_file, record)
        return record

    def write_record(self, step0_from: Path | None = None) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        record_file = self.dir / "bench.json"
        record = json.loads(record_file.read_text()) if record_file.is_file() else {}
        record.update(overrides=self.overrides, step0_key=self.step0_key, config_sha256=self.config_sha256,
                      command=shlex.join(self.cmd))
        if step0_from is not None:
            record["step0_from"] = str(step0_from)
        record_file.write_text(json.dumps(record, indent=2) + "\n")

    def step0_donor(self, work: Path) -> Path | None:
        """A finished run of the same step 0 (classes, config, common overrides, seed) whose
        step-0 model this run can reuse: step 0 is the same in every continual variant and
        every task that starts with the same classes; only the bank differs."""
        if self.joint:
            return None
        for other in sorted(work.glob(f"*/*/seed_{self.seed}")):
            if other.parent.parent.name == "joint" or other == self.dir:
                continue
            record = other / "bench.json"
            if not ((other / "step_0" / "DONE").is_file() and (other / "step_0" / FINAL_CHECKPOINT).is_file()
                    and record.is_file()):
                continue
            if _without_output_dir(json.loads(record.read_text()).get("step0_key", [])) == self.step0_key:
                return other
        return None

    def adopt_step0(self, donor: Path) -> None:
        """Copy the donor's step-0 weights in, tagged with this run's task (a donor of another
        task with the same step 0 is tagged with its own): the runner then evaluates them and
        builds this variant's bank instead of training step 0 again (its resume path)."""
        import torch

        from eir.fileio import atomic_write, load_pth

        checkpoint = load_pth(donor / "step_0" / FINAL_CHECKPOINT)
        checkpoint["eir"] = {**checkpoint["eir"], "task": self.task.to_dict()}
        atomic_write(self.dir / "step_0" / FINAL_CHECKPOINT, lambda f: torch.save(checkpoint, f))
        self.write_record(step0_from=donor)

    def needs_step0(self) -> bool:
        step0 = self.dir / "step_0"
        return not ((step0 / "DONE").is_file() or (step0 / FINAL_CHECKPOINT).is_file())

    def execute(self, env: dict) -> tuple[int, float]:
        """Run (or resume) it in a subprocess, then score the steps not yet scored on the test
        split; returns (exit code, seconds)."""
        self.write_record()
        log = self.dir / "train_net.log"
        start = time.perf_counter()
        with open(log, "a") as f:
            for cmd in [self.cmd] + [self.test_command(t) for t in self.test_steps() if not self.test_file(t).is_file()]:
                f.write(f"\n$ {shlex.join(cmd)}\n")
                f.flush()
                code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
                if code != 0:
                    break
        return code, time.perf_counter() - start


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


#: The figure's rows: (what each run holds per step, the axis label, joint's final value).
PLOT_ROWS = (("per_step", "all-class mIoU (%)", "all"), ("old_per_step", "old-class mIoU (%): forgetting", "old"))


def plot(title: str, tasks, results, variants, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(len(PLOT_ROWS), len(tasks), figsize=(5.6 * len(tasks), 3.6 * len(PLOT_ROWS)),
                             dpi=120, squeeze=False)
    colors = plt.get_cmap("tab10")
    for row, (key, ylabel, joint_key) in zip(axes, PLOT_ROWS):
        for ax, task_name in zip(row, tasks):
            for i, variant in enumerate(variants):
                runs = [r for r in results.get((task_name, variant), []) if r is not None]
                if not runs:
                    continue
                color = colors(i % 10)
                if variant == "joint":
                    mean, std, _ = mean_std([r["final"][joint_key] for r in runs])
                    if mean is None:
                        continue
                    ax.axhline(mean, color=color, ls="--", lw=1.2, label="joint (upper bound)")
                    ax.axhspan(mean - std, mean + std, color=color, alpha=0.12, lw=0)
                    continue
                n = max(len(r[key]) for r in runs)
                xs, means, stds = [], [], []
                for t in range(n):
                    m, sd, _ = mean_std([r[key][t] for r in runs if t < len(r[key])])
                    if m is not None:
                        xs.append(t)
                        means.append(m)
                        stds.append(sd)
                means, stds = np.asarray(means), np.asarray(stds)
                ax.plot(xs, means, "o-", color=color, ms=3.5, lw=1.4, label=variant)
                ax.fill_between(xs, means - stds, means + stds, color=color, alpha=0.15, lw=0)
            ax.set_title(f"{title} {task_name} overlap", fontsize=10)
            ax.set_xlabel("step")
            ax.set_ylabel(ylabel)
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
    for other in [v for v in VARIANTS if v not in ("eir", "joint")]:
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


def per_class_table(task, variants, results) -> list[str]:
    """Each class's IoU after the last step (mean over seeds), variants by classes: background
    first, then the classes in the order the task learns them, a bar between steps."""
    names = [task.class_names[0]] + [task.class_names[c] for step in task.steps for c in step]
    lines = ["| variant | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for variant in variants:
        found = [r for r in results.get((task.name, variant), []) if r is not None]
        if not found:
            continue
        cells = []
        for name in names:
            mean = _mean(r["per_class"].get(name) for r in found)
            cells.append("n/a" if mean is None else f"{mean:.1f}")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return lines + [""]


def report(args, runs, results, outcomes, command: str, png_name: str) -> str:
    data = args.data
    split = (
        f"the test split (`{data.test_dataset}`), every step's checkpoint scored after the run; the runs "
        "themselves evaluate on the validation split, where the design was chosen"
        if data.test_dataset
        else "the validation split, as the runs evaluate themselves"
    )
    lines = [
        f"# css_{data.name}: EIR against its baselines on the {data.title} continual benchmark",
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
        f"- configs: `projects/EIR/configs/{data.name}/<task>_overlap.py` plus the variant's "
        "overrides (the table below; the same keys as `projects/EIR/configs/baselines/`)"
        + (f"; model and schedule fixed by `benchmarks/results/{data.design}`" if data.design else ""),
        f"- scored on: {split}",
        "- step 0: "
        + (
            "trained once per seed and first step (by the first variant run; tasks whose step 0 "
            "has the same classes and config share it) and reused by the other continual runs, "
            "which evaluate it and build their own bank (the variants differ only after step 0; "
            "a variant that swaps the method, mib, trains its own)"
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
        task = data.task(task_name)
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
        lines += ["Each class's IoU after the last step (mean over seeds):", ""]
        lines += per_class_table(task, args.variants, results)
    lines += [f"![all-class and old-class mIoU per step]({png_name})", "", "## Runs", ""]
    lines += [
        "| run | folder | steps | wall time (s) | step 0 model from | loss peak / first, per step | made | status |",
        "|---|---|---:|---:|---|---|---|---|",
    ]
    for run in runs:
        key = (run.task_name, run.variant)
        status = next((o[2] for o in outcomes if o[0] == key and o[3] == run.seed), "")
        record = run.recorded()
        peaks = "-"
        if record is not None:
            times, source, made = record["step_seconds"], record["step0_from"], record["made"]
            peaks = ", ".join("-" if r is None else f"{r:.2f}" for r in record["loss_peak_ratio"])
            made = (f"{made['date']}, {made['machine'].split(',')[0]}, {made['threads']} threads, "
                    f"{made['runs_at_a_time']} at a time")
        else:
            times = step_wall_times(run.dir) if run.dir.is_dir() else []
            source, made = step0_source(run), "-"
        total = f"{sum(times):.0f}" if times else "-"
        lines.append(
            f"| {run.label} | `{shown_run_dir(run, args)}` | {len(times)} | {total} | {source} | {peaks} | {made} "
            f"| {status} |"
        )
    lines += [
        "",
        "Wall time: the sum of the steps' times recorded by the runner (`step_t/DONE`: "
        "training, prepass, evaluation, bank), without process start-up; a run whose step-0 "
        "model came from another run counts only that step's evaluation and bank there. "
        "Loss peak / first: each step's largest logged total loss (medians over 20 iterations) "
        "over its first; above 2 the step diverged for a while (- : not trained in this run).",
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
    words, pending = ["python", "benchmarks/css_benchmark.py"], None
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
    """Where a run's step-0 model came from: the donor variant (and its task when another),
    "(trained here)", or "-" while step 0 is not finished."""
    record = run.dir / "bench.json"
    donor = json.loads(record.read_text()).get("step0_from") if record.is_file() else None
    if donor:
        variant, task_name = Path(donor).parent.name, Path(donor).parent.parent.name
        return variant if task_name == run.task_name else f"{task_name} {variant}"
    return "(trained here)" if (run.dir / "step_0" / "DONE").is_file() else "-"


def dataset_note(args) -> str:
    if args.datasets is not None:
        parent, placeholder = Path(args.datasets), PLACEHOLDERS["--datasets"]
        if parent.is_relative_to(args.work):  # --quick: the runs' own folder
            placeholder = f"{shown_path(args.work, PLACEHOLDERS['--work'])}/{parent.relative_to(args.work).as_posix()}"
    else:
        parent, placeholder = Path(os.environ.get("DETECTRON2_DATASETS", "datasets")), "$DETECTRON2_DATASETS"
    root = parent / args.data.folder
    shown = f"{shown_path(parent, placeholder)}/{args.data.folder}"
    meta = root / "meta.json"
    if meta.is_file():
        a = json.loads(meta.read_text()).get("args", {})
        return (
            f"`{shown}` ({a.get('num_train')} training / {a.get('num_val')} validation images of "
            f"{a.get('size')} px, generator seed {a.get('seed')})"
        )
    if args.data.builtin is None:  # a folder of splits: count each one's images
        counts = [f"{len(list((root / split).glob('*.png')))} {split}" for split in ("train", "val", "test")
                  if (root / split).is_dir()]
        return f"`{shown}` ({', '.join(counts) or 'no split folder found'} images)"
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
    p.add_argument("--dataset", default="synthetic", choices=list(DATASETS),
                   help="the benchmark's dataset (default synthetic; camvid needs DATASETS/CamVid)")
    p.add_argument("--tasks", nargs="+", default=None,
                   help="tasks (B-I names; default: synthetic 6-1 4-2, camvid 8-3 8-1)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds (default 0 1 2; --quick: 0)")
    p.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS), metavar="NAME",
                   help=f"variants to run, of {', '.join(VARIANTS)} (default: the dataset's, "
                   "every one but eir_regions on synthetic, every one but the EIR ablations on camvid)")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for css_<dataset>.md/.png (default benchmarks/results; --quick: --work)")
    p.add_argument("--work", type=Path, default=None,
                   help="folder of the runs (default output/css_<dataset>; --quick: output/css_<dataset>_quick)")
    p.add_argument("--datasets", type=Path, default=None,
                   help="DETECTRON2_DATASETS for the runs (default: inherited; --quick: WORK/datasets, "
                   "with a tiny dataset of the chosen one's layout)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at a time (default 1): the groups of one seed and first step run side by "
                   "side, each in order, since its runs share its step 0; give each job its cores with --threads")
    p.add_argument("--threads", type=int, default=None,
                   help="PyTorch threads per run (default: the cores divided by --jobs; on a busy "
                   "2-core machine 2 threads trained up to 25x slower than 1)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: a tiny dataset (40/10 images) and 2 iterations per step")
    p.add_argument("--no-share-step0", dest="share_step0", action="store_false",
                   help="train step 0 in every run (default: once per seed and first step; the other "
                   "variants start from that step-0 model and build their own bank)")
    p.add_argument("--report-only", action="store_true", help="run nothing; report the finished runs")
    args = p.parse_args(own)
    args.overrides = overrides
    args.data = DATASETS[args.dataset]
    args.tasks = args.tasks or list(args.data.default_tasks)
    args.variants = args.variants or list(args.data.default_variants)
    if args.jobs < 1:
        p.error("--jobs must be >= 1")
    if args.threads is None:
        args.threads = max(1, num_cores() // args.jobs)
    if args.seeds is None:
        args.seeds = [0] if args.quick else list(DEFAULT_SEEDS)
    if args.work is None:
        args.work = Path(f"output/css_{args.dataset}" + ("_quick" if args.quick else ""))
    args.work = args.work.expanduser().resolve()
    if args.out is None:
        args.out = args.work if args.quick else RESULTS
    if args.quick:
        args.overrides = QUICK_OVERRIDES + args.overrides
        if args.datasets is None:
            args.datasets = args.work / "datasets"
    if args.datasets is not None:
        args.datasets = args.datasets.expanduser().resolve()
        os.environ["DETECTRON2_DATASETS"] = str(args.datasets)  # where the configs register their data
    for name in args.tasks:
        try:
            task = args.data.task(name)
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
    if run.recorded() is not None:
        say(f"[{i}/{total}] {run.label}: recorded before, skipped ({run.result_file})")
        return key, 0, "recorded before", run.seed
    if run.is_finished():
        run.save_result(args)
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
        final = run.save_result(args)["final"]
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
        args.data.make_quick(args.datasets / args.data.folder)

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
    print(f"css_{args.dataset}: {len(runs)} runs into {args.work}"
          + (f", {args.jobs} at a time" if args.jobs > 1 else ""), flush=True)
    numbered = list(enumerate(runs, 1))
    # The runs of one seed and first step run in order (they share its step 0: the variants
    # of a task, and tasks that start alike); such groups run side by side.
    groups: dict[tuple, list] = {}
    for item in numbered:
        groups.setdefault((_step0_setting(args.data, item[1].task_name), item[1].seed), []).append(item)
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
                results.setdefault((task_name, variant), []).append(run.recorded())
    # A joint outcome is recorded under the first task; count it for every task.
    for o in list(outcomes):
        if o[0][1] == "joint":
            outcomes += [((t, "joint"), o[1], o[2], o[3]) for t in args.tasks if t != o[0][0]]

    args.out.mkdir(parents=True, exist_ok=True)
    png = args.out / f"css_{args.dataset}.png"
    plot(args.data.title, args.tasks, results, args.variants, png)
    md = args.out / f"css_{args.dataset}.md"
    md.write_text(report(args, runs, results, outcomes, command, png.name))
    print(f"wrote {md} and {png}", flush=True)
    failed = [o for o in outcomes if o[1] != 0]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
