#!/usr/bin/env python
"""The prepared GPU check: every figure the project needs from one GPU run, in one command.

Run by ``benchmarks/gpu_check.sh`` (see there, and README.md "Benchmarks"). In this order,
each part a subprocess of the Python on PATH (``python3``) with this checkout first on
PYTHONPATH, its failure recorded and the next part run:

a. the test suite's CUDA-marked tests (``python3 -m pytest -m cuda``);
b. ``benchmarks/bench_train.py`` at ResNet-101, 512x512, AMP (float16): plain vs EIR step
   (P2: EIR / plain >= 0.70), images/s, peak GPU memory, the share of the float16 peak (P4),
   and the data loader;
c. ``bench_train.py``'s evaluation part: ContinualSemSegEvaluator (confusion matrix on the
   GPU) against Detectron2's SemSegEvaluator on the same predictions (P3: agreement, time);
d. the default synthetic run (``tools/train_net.py``, default config) on CUDA into a fresh
   folder: its summary (old / new / all / hIoU per step) beside the CPU reference of README.md
   (or of ``--reference SUMMARY_JSON``).

It writes ``gpu_check.md`` (machine, versions, every figure; rewritten after each part) into
``--results`` (default ``benchmarks/results``) and exits 1 when a part failed (a test failed,
a command crashed or ran out of time, the evaluators disagree), 0 otherwise; a target missed
(P2) is a figure, not a failure. When ``$OUT`` is set (the device machine's folder of files
that come back) the results file, the logs, the benchmark's JSON and the run's summary are
copied there as well, after each part.

With ``EIR_GPU_CHECK_CPU=1`` the same parts run on the CPU at tiny sizes (a: the CPU variants
of ``tests/test_cuda.py``; b, c: a 64-pixel synthetic model; d: the tiny two-step run of
``tests/conftest.py`` ``TINY_RUN``) into ``gpu_check_cpu.md``: a test of this script, whose
figures say nothing about a GPU.
"""
from __future__ import annotations

import argparse
import datetime
import glob
import importlib.util
import json
import math
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu_model, load_average, num_cores  # noqa: E402

CPU_MODE = os.environ.get("EIR_GPU_CHECK_CPU", "") not in ("", "0")
TARGET_RATIO = 0.70  # P2, as in bench_train.py

#: bench_train.py's arguments of parts b and c (the same data folder and sizes for both).
BENCH_GPU = ["--device", "cuda", "--model", "r101", "--size", "512", "--amp", "on"]
BENCH_CPU = [
    "--device", "cpu", "--model", "synthetic", "--size", "64", "--batch", "2", "--iters", "2",
    "--rounds", "1", "--warmup", "1", "--amp", "on", "--workers", "1", "--loader-batches", "2",
    "--num-train", "60", "--num-val", "30", "--eval-repeats", "1",
]
#: Seconds each part may take at most (the last part gets what the budget leaves).
CAPS = {"a": 150, "b": 240, "c": 90} if not CPU_MODE else {"a": 90, "b": 90, "c": 60}

PROBE = r"""
import importlib, json, os, platform, sys
out = {"python": platform.python_version(), "executable": sys.executable}
try:
    import torch
    out["torch"] = torch.__version__
    out["cuda"] = torch.version.cuda
    out["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    out["cuda_available"] = torch.cuda.is_available()
    if out["cuda_available"]:
        p = torch.cuda.get_device_properties(0)
        out["gpu"] = f"{p.name} ({p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor})"
        out["gpu_count"] = torch.cuda.device_count()
except Exception as e:
    out["torch"] = f"not importable ({type(e).__name__}: {e})"
for name in ("torchvision", "detectron2", "numpy", "cv2", "fvcore", "pytest"):
    try:
        m = importlib.import_module(name)
        out[name] = f"{getattr(m, '__version__', '?')} ({os.path.dirname(m.__file__)})"
    except Exception as e:
        out[name] = f"not importable ({type(e).__name__}: {e})"
print(json.dumps(out))
"""


@dataclass
class Part:
    key: str
    title: str
    status: str = "not run"  # passed, FAILED, timed out, not run
    seconds: float | None = None
    summary: str = ""  # the figures, one line for the results table
    details: list[str] = field(default_factory=list)  # Markdown lines of the part's section
    log: Path | None = None

    @property
    def ok(self) -> bool:
        return self.status == "passed"


class Check:
    """The parts, their subprocesses, the results file."""

    def __init__(self, args):
        self.args = args
        self.mode = "cpu" if CPU_MODE else "cuda"
        self.work = args.work
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.results = args.results / ("gpu_check_cpu.md" if CPU_MODE else "gpu_check.md")
        self.out = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
        self.started = time.time()
        self.deadline = time.monotonic() + args.budget
        self.child: subprocess.Popen | None = None
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
        )
        self.load_at_start = load_average()
        self.versions: dict = {}
        self.parts = [
            Part("a", "CUDA-marked tests" if not CPU_MODE else "tests/test_cuda.py (CPU variants)"),
            Part("b", "training step: plain vs EIR (bench_train.py)"),
            Part("c", "evaluators: ContinualSemSegEvaluator vs Detectron2 SemSegEvaluator"),
            Part("d", "default synthetic run, end to end" if not CPU_MODE else "tiny synthetic run, end to end"),
        ]

    # ----------------------------------------------------------------- subprocesses
    def run(self, part: Part, cmd: list[str], cap: float | None = None, env: dict | None = None) -> int | None:
        """Run ``cmd`` from the project's root, its output into the part's log and onto stdout;
        its exit status, or None when it ran past its time (then it and its children are
        killed)."""
        remaining = self.deadline - time.monotonic()
        timeout = remaining if cap is None else min(cap, remaining)
        part.log = self.logs / f"{part.key}.log"
        with open(part.log, "a") as log:
            log.write(f"$ {shlex.join(cmd)}\n")
            log.flush()
            if timeout < 10:
                log.write("not started: the time budget is spent\n")
                return None
            print(f"[gpu_check] ({part.key}) $ {shlex.join(cmd)}  (at most {timeout:.0f} s)", flush=True)
            self.child = subprocess.Popen(
                cmd, cwd=ROOT, env=env or self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                start_new_session=True, text=True, errors="replace",
            )

            def copy(stream=self.child.stdout):
                for line in stream:
                    log.write(line)
                    sys.stdout.write(line)
                log.flush()

            reader = threading.Thread(target=copy, daemon=True)
            reader.start()
            try:
                rc = self.child.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill_child()
                rc = None
            reader.join(timeout=10)
            self.child = None
            if rc is None:
                log.write(f"\n[gpu_check] killed after {timeout:.0f} s\n")
        return rc

    def kill_child(self) -> None:
        child = self.child
        if child is None or child.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
            try:
                os.killpg(child.pid, sig)
            except ProcessLookupError:
                return
            try:
                child.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def finish(self, part: Part, rc: int | None, started: float, ok: bool, reason: str = "") -> None:
        """Record the part's end: passed when ``ok``; else timed out (``rc`` None) or FAILED,
        with ``reason`` (default: the exit status) and the end of its log."""
        part.seconds = time.monotonic() - started
        if rc is None:
            part.status = "timed out"
        elif ok:
            part.status = "passed"
        else:
            part.status = "FAILED"
        if not part.ok:
            why = "ran out of time" if rc is None else (reason or f"exit status {rc}")
            part.summary = f"{why}; {part.summary}" if part.summary else why
            if part.log and part.log.is_file():
                tail = part.log.read_text(errors="replace").splitlines()[-30:]
                part.details += ["", f"Last lines of the log (`{part.log.name}`):", "", "```", *tail, "```"]
        self.write()

    # ----------------------------------------------------------------- versions
    def probe(self) -> None:
        log = self.logs / "versions.log"
        try:
            proc = subprocess.run(
                [sys.executable, "-c", PROBE], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=180
            )
            log.write_text(proc.stdout + proc.stderr)
            self.versions = json.loads(proc.stdout.strip().splitlines()[-1])
        except (subprocess.TimeoutExpired, ValueError, IndexError) as e:
            self.versions = {"error": f"the version probe failed ({type(e).__name__}): see logs/versions.log"}
        smi = shutil.which("nvidia-smi")
        if smi:
            try:
                q = subprocess.run(
                    [smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                    capture_output=True, text=True, timeout=30,
                )
                self.versions["nvidia-smi"] = q.stdout.strip().replace("\n", "; ")
            except subprocess.TimeoutExpired:
                self.versions["nvidia-smi"] = "timed out"
        kits = sorted(glob.glob(str(ROOT / ".devkit" / "detectron2-*.tar.gz")))
        if kits:
            self.versions["device kit"] = Path(kits[0]).name
        try:
            head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                  text=True, timeout=30)
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                   capture_output=True, text=True, timeout=30)
            if head.returncode == 0:
                self.versions["checkout"] = head.stdout.strip() + (" with changes" if dirty.stdout.strip() else "")
        except (OSError, subprocess.TimeoutExpired):
            pass

    # ----------------------------------------------------------------- (a) tests
    def part_tests(self, part: Part) -> None:
        started = time.monotonic()
        junit = self.work / "a_junit.xml"
        if importlib.util.find_spec("pytest") is None:
            return self.finish(part, 1, started, False, "pytest is not installed for this Python")
        selection = ["-m", "cuda"] if not CPU_MODE else ["tests/test_cuda.py"]
        cmd = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "--continue-on-collection-errors",
               *selection, f"--junitxml={junit}"]
        rc = self.run(part, cmd, CAPS["a"])
        cases = read_junit(junit)
        counts = {k: sum(1 for c in cases if c["outcome"] == k) for k in ("passed", "failed", "error", "skipped")}
        part.summary = ", ".join(f"{v} {k}" for k, v in counts.items() if v) or "no test collected"
        part.details = ["", "| test | outcome | seconds |", "|---|---|---:|"] + [
            f"| `{c['name']}` | {c['outcome']}{': ' + c['message'] if c['message'] else ''} | {c['seconds']:.2f} |"
            for c in cases
        ]
        if CPU_MODE:
            part.details.insert(0, "On the CPU the CUDA variants skip; their CPU twins run the same bodies.")
        reason = ""
        if rc == 0 and not counts["passed"]:
            reason = "no test ran"
        elif rc == 0 and counts["skipped"] and not CPU_MODE:
            reason = "a CUDA test was skipped (not verified)"
        self.finish(part, rc, started, rc == 0 and not reason, reason)

    # ----------------------------------------------------------------- (b), (c) bench_train
    def bench(self, part: Part, parts: list[str]) -> tuple[int | None, dict | None, float]:
        """Run bench_train.py's ``parts``: its exit status, its JSON figures (None when it wrote
        none) and when it started."""
        started = time.monotonic()
        figures = self.work / f"{part.key}_bench_train.json"
        cmd = [sys.executable, "benchmarks/bench_train.py", *(BENCH_CPU if CPU_MODE else BENCH_GPU),
               "--data", str(self.work / "bench_data"), "--out", str(self.work / f"{part.key}_bench_train"),
               "--json", str(figures), "--parts", *parts]
        rc = self.run(part, cmd, CAPS[part.key])
        data = json.loads(figures.read_text()) if figures.is_file() else None
        return rc, data, started

    def part_train(self, part: Part) -> None:
        rc, data, started = self.bench(part, ["train", "loader"])
        train = (data or {}).get("train")
        if not train:
            return self.finish(part, rc, started, False, "" if rc is None else "no figures written")
        plain, eir = train["plain"], train["eir"]
        ratio = train["ratio"]
        verdict = "MET" if ratio >= TARGET_RATIO else "MISSED"
        share = pct(ratio_or_none(eir["flops_per_s"], train["matmul_flops_per_s"]))
        datasheet = pct(ratio_or_none(eir["flops_per_s"], train["datasheet_flops_per_s"]))
        part.summary = (
            f"P2 EIR / plain **{ratio:.3f}** (target >= {TARGET_RATIO:.2f}: {verdict}); EIR {eir['images_per_s']:.1f} "
            f"/ plain {plain['images_per_s']:.1f} images/s; peak memory {gib(eir['peak_bytes'])} / "
            f"{gib(plain['peak_bytes'])}; P4 EIR step at {share} of the {train['precision']} matmul rate "
            f"({datasheet} of the datasheet peak)"
        )
        rows = []
        for name, step in (("plain", plain), ("EIR", eir)):
            rows.append(
                f"| {name} | {step['images_per_s']:.2f} | {step['s_per_iter']:.4f} | {gib(step['peak_bytes'])} | "
                f"{step['flops_per_iter'] / 1e9:.1f} | {tflops(step['flops_per_s'])} | "
                f"{pct(ratio_or_none(step['flops_per_s'], train['matmul_flops_per_s']))} | "
                f"{pct(ratio_or_none(step['flops_per_s'], train['datasheet_flops_per_s']))} |"
            )
        part.details = [
            f"`{data['command']}`: model {data['model']}, {data['size']}x{data['size']} crops, batch {data['batch']}, "
            f"AMP {'on (' + train['precision'] + ')' if data['amp'] else 'off'}; "
            f"{100 * train['pasted_fraction']:.1f} % of the EIR batches' pixels pasted.",
            "",
            "| step | images/s | s/iter | peak memory | GFLOP/iter | FLOP rate | share of the matmul rate "
            "| share of the datasheet peak |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
            f"Matmul rate ({train['precision']}, a large square matmul on the same device): "
            f"{tflops(train['matmul_flops_per_s'])}; datasheet peak: {tflops(train['datasheet_flops_per_s'])}. "
            "Last losses: " + ", ".join(f"{k} {v:.4f}" for k, v in train["losses"].items()) + ".",
            "",
            "| loader (mapper with pasting unless said) | workers | images/s | / EIR step |",
            "|---|---:|---:|---:|",
            *[
                f"| {'with pasting' if row['paste'] else 'no pasting'} | {row['workers']} | "
                f"{row['images_per_s']:.1f} | {row['images_per_s'] / eir['images_per_s']:.2f} |"
                for row in data.get("loader") or []
            ],
        ]
        finite = all(math.isfinite(v) for v in train["losses"].values())
        self.finish(part, rc, started, rc == 0 and finite, "" if finite else "a loss is not finite")

    def part_eval(self, part: Part) -> None:
        rc, data, started = self.bench(part, ["eval"])
        ev = (data or {}).get("evaluation")
        if not ev:
            return self.finish(part, rc, started, False, "" if rc is None else "no figures written")
        s = ev["seconds"]
        agree = bool(data["evaluators_agree"])
        part.summary = (
            f"P3 {'agree' if agree else 'DISAGREE'}: largest per-class IoU difference {ev['max_iou_diff']:.1e} "
            f"over {ev['classes_compared']} classes, mIoU {ev['miou_ours']:.4f} / {ev['miou_d2']:.4f}; "
            f"SemSegEvaluator takes {s['d2'] / s['ours']:.1f}x the continual evaluator's time "
            f"({s['d2_plain'] / s['ours']:.1f}x without Boundary IoU)"
        )
        n = ev["images"]
        part.details = [
            f"`{data['command']}`: {n} validation images at {ev['size'][0]}x{ev['size'][1]}, the same "
            "predictions given to both, `process` + `evaluate`, best of the repeats.",
            "",
            "| evaluator | ms per image | mIoU | pixel acc |",
            "|---|---:|---:|---:|",
            f"| ContinualSemSegEvaluator (confusion matrix on the {data['device']}) | {1000 * s['ours'] / n:.2f} | "
            f"{ev['miou_ours']:.4f} | {ev['pacc_ours']:.4f} |",
            f"| Detectron2 SemSegEvaluator (with Boundary IoU) | {1000 * s['d2'] / n:.2f} | {ev['miou_d2']:.4f} | "
            f"{ev['pacc_d2']:.4f} |",
            f"| Detectron2 SemSegEvaluator, Boundary IoU off | {1000 * s['d2_plain'] / n:.2f} | | |",
        ]
        self.finish(part, rc, started, rc == 0 and agree, "" if agree else "the evaluators disagree")

    # ----------------------------------------------------------------- (d) the run
    def part_run(self, part: Part) -> None:
        started = time.monotonic()
        out = self.work / "run"
        if out.exists():
            shutil.rmtree(out)
        env = dict(self.env, DETECTRON2_DATASETS=str(self.work / "datasets"))
        if CPU_MODE:
            gen = [sys.executable, "-m", "eir.data.synthetic", "--out", str(self.work / "datasets" / "eir_synthetic"),
                   "--num-train", "48", "--num-val", "8", "--size", "48", "--seed", "0", "--quiet"]
            rc = self.run(part, gen, 60, env)
            if rc != 0:
                return self.finish(part, rc, started, False, "the tiny dataset was not generated")
            overrides = tiny_run()
            data_note = "the tiny dataset of tests/conftest.py's tiny_datasets generated first"
        else:
            overrides = ["train.device=cuda"]
            data_note = "the default synthetic dataset generated on first use"
        cmd = [sys.executable, "tools/train_net.py", *overrides, f"train.output_dir={out}"]
        rc = self.run(part, cmd, None, env)
        wall = time.monotonic() - started
        steps = run_steps(out)
        reference, ref_note = self.reference()
        part.details = [
            f"`{shlex.join(['python3', 'tools/train_net.py', *overrides, 'train.output_dir=...'])}` "
            f"(DETECTRON2_DATASETS: a new folder, {data_note}), {wall:.0f} s in all.",
            "",
            f"Reference: {ref_note}.",
            "",
            "| step | old mIoU | new mIoU | all mIoU | hIoU | reference old / new / all / hIoU | s/iter (median) |",
            "|---|---:|---:|---:|---:|---|---:|",
        ]
        for t, s in sorted(steps.items()):
            ref = reference.get(t)
            ref_text = " / ".join(num(ref.get(k)) for k in ("old", "new", "all", "hiou")) if ref else "-"
            part.details.append(
                f"| {t} | {num(s.get('old'))} | {num(s.get('new'))} | {num(s.get('all'))} | {num(s.get('hiou'))} | "
                f"{ref_text} | {num(s.get('s_per_iter'), '.4f')} |"
            )
        if steps:
            last = max(steps)
            ref = reference.get(last, {})
            part.summary = (
                f"{len(steps)} step(s) finished; after step {last}: all mIoU {num(steps[last].get('all'))} "
                f"(reference {num(ref.get('all'))}), old {num(steps[last].get('old'))} "
                f"({num(ref.get('old'))}), new {num(steps[last].get('new'))} ({num(ref.get('new'))}); {wall:.0f} s"
            )
        summary = out / "summary.json"
        if summary.is_file():
            shutil.copy(summary, self.work / "d_summary.json")
        ok = rc == 0 and summary.is_file()
        self.finish(part, rc, started, ok, "" if ok or rc != 0 else "no summary.json written")

    def reference(self) -> tuple[dict[int, dict], str]:
        if self.args.reference:
            data = json.loads(Path(self.args.reference).read_text())
            steps = {int(t): s for t, s in data["steps"].items()}
            return steps, f"`{self.args.reference}`"
        steps = readme_reference(ROOT / "README.md")
        note = "README.md's table of the default run on the CPU"
        if not steps:
            note = "none found (README.md's table of the default run could not be read)"
        elif CPU_MODE:
            note += " (another task and size than this tiny run: not comparable, shown to test the comparison)"
        else:
            note += (" (trained on the CPU; CUDA kernels and the GPU's data-loader workers change the "
                     "arithmetic, so the figures differ within run-to-run noise, not bit for bit)")
        return steps, note

    # ----------------------------------------------------------------- report
    def write(self) -> None:
        text = self.render()
        self.results.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.results.with_name(self.results.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.results)
        if self.out:
            self.out.mkdir(parents=True, exist_ok=True)
            shutil.copy(self.results, self.out / self.results.name)
            logs = self.out / "gpu_check_logs"
            logs.mkdir(exist_ok=True)
            for path in [*self.logs.glob("*.log"), *self.work.glob("*.json"), *self.work.glob("*.xml")]:
                shutil.copy(path, logs / path.name)
            for path in self.work.glob("*_bench_train/*.md"):  # one per part: b_..., c_...
                shutil.copy(path, logs / f"{path.parent.name}_{path.name}")

    def render(self) -> str:
        v = self.versions
        elapsed = time.time() - self.started
        title = "GPU check" if not CPU_MODE else "GPU check, CPU mode (tiny sizes: a test of the script, no GPU figure)"
        machine = f"{cpu_model()}, {num_cores()} CPU cores available, load average at the start {self.load_at_start}"
        if v.get("gpu"):
            machine += f"; GPU {v['gpu']}" + (f", {v['gpu_count']} visible" if v.get("gpu_count", 1) > 1 else "")
        lines = [
            f"# {title}",
            "",
            f"- date: {datetime.datetime.fromtimestamp(self.started).isoformat(timespec='seconds')}; "
            f"{elapsed:.0f} s so far of a {self.args.budget:.0f} s budget",
            f"- command: `{'EIR_GPU_CHECK_CPU=1 ' if CPU_MODE else ''}bash benchmarks/gpu_check.sh"
            f"{' ' + shlex.join(self.args.argv) if self.args.argv else ''}`",
            f"- machine: {machine}",
            f"- nvidia-smi: {v.get('nvidia-smi', 'not found')}",
            f"- python {v.get('python', '?')} (`{v.get('executable', sys.executable)}`); torch {v.get('torch', '?')}, "
            f"CUDA {v.get('cuda')}, cuDNN {v.get('cudnn')}, CUDA available: {v.get('cuda_available')}",
            f"- torchvision {v.get('torchvision', '?')}; detectron2 {v.get('detectron2', '?')}"
            + (f", device kit archive {v['device kit']}" if v.get("device kit") else ""),
            f"- numpy {v.get('numpy', '?')}; OpenCV {v.get('cv2', '?')}; fvcore {v.get('fvcore', '?')}; "
            f"pytest {v.get('pytest', '?')}",
            f"- checkout: {v.get('checkout', 'unknown (no git here)')}; work folder `{self.work}`",
        ]
        if v.get("error"):
            lines.append(f"- {v['error']}")
        lines += [
            "",
            "| part | what | status | seconds | figures |",
            "|---|---|---|---:|---|",
        ]
        for p in self.parts:
            seconds = "" if p.seconds is None else f"{p.seconds:.0f}"
            lines.append(f"| {p.key} | {p.title} | {p.status} | {seconds} | {p.summary} |")
        for p in self.parts:
            lines += ["", f"## ({p.key}) {p.title}: {p.status}", ""]
            lines += p.details or ["Not run yet." if p.status == "not run" else ""]
        lines.append("")
        return "\n".join(lines)

    # ----------------------------------------------------------------- main
    def main(self) -> int:
        def interrupted(signum, _frame):
            self.kill_child()
            for p in self.parts:
                if p.status == "not run":
                    p.summary = f"interrupted by signal {signum}"
            self.write()
            sys.exit(128 + signum)

        signal.signal(signal.SIGTERM, interrupted)
        signal.signal(signal.SIGINT, interrupted)
        print(f"[gpu_check] {self.mode} mode; work folder {self.work}; results {self.results}", flush=True)
        self.probe()
        self.write()
        if not CPU_MODE and not self.versions.get("cuda_available"):
            for p in self.parts:
                p.summary = "not run: CUDA is not available (EIR_GPU_CHECK_CPU=1 runs the CPU mode)"
            self.write()
            print("[gpu_check] CUDA is not available; EIR_GPU_CHECK_CPU=1 runs the CPU mode", flush=True)
            return 2
        steps = (self.part_tests, self.part_train, self.part_eval, self.part_run)
        for part, step in zip(self.parts, steps):
            try:
                step(part)
            except Exception as e:  # a broken part (unreadable output, ...) must not stop the others
                part.status = "FAILED"
                part.summary = f"the check itself failed: {type(e).__name__}: {e}"
                self.write()
        self.write()
        failed = [p.key for p in self.parts if not p.ok]
        print(f"[gpu_check] {self.results}: " + (f"FAILED parts {', '.join(failed)}" if failed else "every part passed"),
              flush=True)
        return 1 if failed else 0


# --------------------------------------------------------------------------- readers


def read_junit(path: Path) -> list[dict]:
    """The test cases of a JUnit XML file: name, outcome, seconds, message."""
    if not path.is_file():
        return []
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = "failed" if child.tag == "failure" else child.tag
                message = (child.get("message") or "").strip().split("\n")[0]
                message = message if len(message) <= 100 else message[:99] + "…"
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        cases.append({"name": name, "outcome": outcome, "seconds": float(case.get("time") or 0), "message": message})
    return cases


def run_steps(out: Path) -> dict[int, dict]:
    """old / new / all / hIoU of every finished step of a run folder (its summary.json, or the
    steps' metrics.json when the run did not finish), with the median s/iter of its training log."""
    steps: dict[int, dict] = {}
    summary = out / "summary.json"
    if summary.is_file():
        steps = {int(t): dict(s) for t, s in json.loads(summary.read_text())["steps"].items()}
    else:
        for path in sorted(out.glob("step_*/metrics.json")):
            data = json.loads(path.read_text())
            steps[int(data["step"])] = dict(data["summary"])
    for t, s in steps.items():
        log = out / f"step_{t}" / "training_log.json"
        if log.is_file():
            times = []
            for line in log.read_text().splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if "time" in row:
                    times.append(row["time"])
            if times:
                s["s_per_iter"] = statistics.median(times)
    return steps


def readme_reference(readme: Path) -> dict[int, dict]:
    """The default run's old / new / all / hIoU per step from README.md's summary table."""
    text = readme.read_text() if readme.is_file() else ""
    header = "| step | classes | old mIoU | new mIoU | all mIoU | hIoU |"
    if header not in text:
        return {}
    rows = text.split(header, 1)[1].splitlines()[2:]
    steps = {}
    for row in rows:
        m = re.match(r"^\| (\d+) \| [\d-]+ \| ([\d.]+|-) \| ([\d.]+|-) \| ([\d.]+|-) \| ([\d.]+|-) \|$", row.strip())
        if not m:
            break
        values = [None if x == "-" else float(x) for x in m.groups()[1:]]
        steps[int(m.group(1))] = dict(zip(("old", "new", "all", "hiou"), values))
    return steps


def tiny_run() -> list[str]:
    """tests/conftest.py's TINY_RUN overrides (the tiny two-step run of the end-to-end tests)."""
    spec = importlib.util.spec_from_file_location("eir_tests_conftest", ROOT / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.TINY_RUN)


# --------------------------------------------------------------------------- formatting


def ratio_or_none(a, b):
    return None if a is None or not b else a / b


def pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def gib(n) -> str:
    return "n/a (CPU)" if n is None else f"{n / 2**30:.2f} GiB"


def tflops(x) -> str:
    return "n/a" if x is None else f"{x / 1e12:.3g} TFLOP/s"


def num(x, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results",
                   help="folder of gpu_check.md (CPU mode: gpu_check_cpu.md); default benchmarks/results")
    p.add_argument("--work", type=Path, default=None,
                   help="folder of the datasets, the run, the logs (default: a new temporary folder, kept)")
    p.add_argument("--reference", default=None,
                   help="a CPU run's summary.json to set the run's figures beside (default: README.md's table)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for every part together (default: 540 on a GPU, 290 in the CPU mode)")
    args = p.parse_args(argv)
    args.argv = argv
    if args.work is None:
        args.work = Path(tempfile.mkdtemp(prefix="eir_gpu_check_"))
    args.work = args.work.resolve()
    args.results = args.results.resolve()
    if args.budget is None:
        args.budget = 290.0 if CPU_MODE else 540.0
    return args


if __name__ == "__main__":
    sys.exit(Check(parse_args(sys.argv[1:])).main())
