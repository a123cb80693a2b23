"""benchmarks/gpu_check.sh: its CPU mode end to end, and the readers its one GPU run relies on."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import requires_detectron2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.gpu_check import read_junit, readme_reference, run_steps  # noqa: E402


def test_readme_reference_is_the_default_runs_table():
    """Part d sets the GPU run beside README.md's CPU table: it must still be readable."""
    steps = readme_reference(ROOT / "README.md")
    assert sorted(steps) == [0, 1, 2, 3]
    assert steps[0]["new"] is None and steps[0]["hiou"] is None
    for s in steps.values():
        assert 0 < s["all"] <= 100 and 0 < s["old"] <= 100
    for t in (1, 2, 3):  # hIoU is the harmonic mean of old and new (2 decimals in the table)
        old, new = steps[t]["old"], steps[t]["new"]
        assert steps[t]["hiou"] == pytest.approx(2 * old * new / (old + new), abs=0.01)


def test_read_junit_counts_outcomes(tmp_path):
    path = tmp_path / "junit.xml"
    path.write_text(
        '<?xml version="1.0"?><testsuites><testsuite>'
        '<testcase classname="tests.test_cuda" name="test_a[cuda]" time="1.5"/>'
        '<testcase classname="tests.test_cuda" name="test_b[cuda]" time="0.1">'
        '<failure message="AssertionError: assert 1 == 2">trace</failure></testcase>'
        '<testcase classname="tests.test_cuda" name="test_c[cuda]" time="0">'
        '<skipped message="CUDA is not available"/></testcase>'
        "</testsuite></testsuites>"
    )
    cases = read_junit(path)
    assert [(c["name"], c["outcome"], c["seconds"]) for c in cases] == [
        ("test_cuda::test_a[cuda]", "passed", 1.5),
        ("test_cuda::test_b[cuda]", "failed", 0.1),
        ("test_cuda::test_c[cuda]", "skipped", 0.0),
    ]
    assert cases[1]["message"] == "AssertionError: assert 1 == 2"
    assert read_junit(tmp_path / "missing.xml") == []


def test_run_steps_of_an_unfinished_run(tmp_path):
    """Without summary.json (a run out of time) the finished steps' metrics.json are read, with
    the median of the training log's iteration times."""
    step = tmp_path / "step_0"
    step.mkdir()
    (step / "metrics.json").write_text(json.dumps({"step": 0, "summary": {"old": 80.0, "new": None, "all": 80.0}}))
    rows = [{"iteration": i, "time": t} for i, t in enumerate((0.3, 0.1, 0.2))] + [{"iteration": 3}]
    (step / "training_log.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n{trunc")
    steps = run_steps(tmp_path)
    assert steps == {0: {"old": 80.0, "new": None, "all": 80.0, "s_per_iter": 0.2}}


@requires_detectron2
@pytest.mark.slow
def test_cpu_mode_runs_every_part(tmp_path):
    """EIR_GPU_CHECK_CPU=1 bash benchmarks/gpu_check.sh: exit status 0, every part passed with
    its figures, into the folder given (the committed results are left alone)."""
    committed = ROOT / "benchmarks" / "results" / "gpu_check_cpu.md"
    before = committed.stat().st_mtime_ns if committed.exists() else None
    env = dict(os.environ, EIR_GPU_CHECK_CPU="1")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.pop("OUT", None)
    cmd = ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--results", str(tmp_path), "--work", str(tmp_path / "work")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    results = tmp_path / "gpu_check_cpu.md"
    text = results.read_text() if results.is_file() else ""
    assert proc.returncode == 0, text + proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (committed.stat().st_mtime_ns if committed.exists() else None) == before

    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| ([abcd]) \| [^|]+ \| passed \| \d+ \| (.+) \|$", text, re.M)}
    assert sorted(rows) == ["a", "b", "c", "d"], text
    assert re.fullmatch(r"\d+ passed, \d+ skipped", rows["a"])
    assert re.match(r"P2 EIR / plain \*\*\d\.\d{3}\*\* \(target >= 0\.70: (MET|MISSED)\); EIR \d+\.\d / plain \d+\.\d images/s",
                    rows["b"])
    assert re.search(r"P4 EIR step at \d+\.\d % of the bfloat16 matmul rate", rows["b"])
    assert re.match(r"P3 agree: largest per-class IoU difference \S+ over 11 classes", rows["c"])
    reference = readme_reference(ROOT / "README.md")[1]["all"]
    assert re.match(rf"2 step\(s\) finished; after step 1: all mIoU \d+\.\d\d \(reference {reference:.2f}\)", rows["d"])
    for key in "abcd":
        assert f"## ({key}) " in text
    assert "- python " in text and "torch " in text and "cuDNN" in text and "detectron2 " in text
    assert (tmp_path / "work" / "d_summary.json").is_file()
