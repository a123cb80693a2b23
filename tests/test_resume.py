"""Exact resume: a run killed (SIGKILL) in the middle of a step and rerun ends with the weights
and metrics of the uninterrupted run, bit for bit; so does a run done one step per command.

Each test drives tools/train_net.py in subprocesses on the tiny two-step synthetic run of
tests/conftest.py (60 iterations a step, a checkpoint every 10).
"""
import json
import os
import signal
import subprocess
import time

import pytest
import torch
from conftest import requires_detectron2, tiny_datasets, train_net_command

pytestmark = [requires_detectron2, pytest.mark.slow]


def run(output_dir, *overrides):
    proc = subprocess.run(train_net_command(output_dir, *overrides), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def run_and_kill_at(output_dir, checkpoint):
    """Start the run; SIGKILL it as soon as ``checkpoint`` (relative to the folder) exists."""
    proc = subprocess.Popen(train_net_command(output_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (output_dir / checkpoint).is_file():
        assert proc.poll() is None, "the run ended before the checkpoint appeared"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    step_dir = (output_dir / checkpoint).parent
    # The kill fell in the middle of the step: it is to be resumed, not merely evaluated.
    assert not (step_dir / "model_final.pth").exists()


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def assert_same_run(a, b):
    assert (a / "summary.json").read_bytes() == (b / "summary.json").read_bytes()
    for step in (0, 1):
        wa, wb = weights(a / f"step_{step}/model_final.pth"), weights(b / f"step_{step}/model_final.pth")
        assert wa.keys() == wb.keys()
        different = [k for k in wa if not torch.equal(wa[k], wb[k])]
        assert not different, f"step {step}: {different[:5]}"


def logged_iterations(path):
    return [json.loads(line)["iteration"] for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    with tiny_datasets(tmp_path_factory.mktemp("datasets")) as root:
        yield root


@pytest.fixture(scope="module")
def reference(datasets, tmp_path_factory):
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("reference")
    run(out)
    return out


@pytest.mark.parametrize("step", [0, 1])
def test_kill_in_the_middle_of_a_step_then_rerun_gives_the_uninterrupted_run(reference, tmp_path, step):
    run_and_kill_at(tmp_path, f"step_{step}/model_0000019.pth")
    lock_left = (tmp_path / "run.lock").is_file()  # by the killed process: taken over by the rerun
    run(tmp_path)
    assert_same_run(reference, tmp_path)
    assert lock_left and not (tmp_path / "run.lock").exists()
    # The resumed step's log holds each logged iteration once, as the uninterrupted one does.
    log = logged_iterations(tmp_path / f"step_{step}/training_log.json")
    assert log == logged_iterations(reference / f"step_{step}/training_log.json")
    assert log == list(range(4, 60, 5))
    # Checkpoints of the killed process count towards max_to_keep (2): the same files are kept.
    names = sorted(p.name for p in (tmp_path / f"step_{step}").glob("model_*.pth"))
    assert names == sorted(p.name for p in (reference / f"step_{step}").glob("model_*.pth"))
    assert names == ["model_0000049.pth", "model_0000059.pth", "model_final.pth"]


def test_one_command_per_step_gives_the_run_of_one_command(reference, tmp_path):
    run(tmp_path, "train.step=0")
    assert not (tmp_path / "step_1").exists()
    run(tmp_path, "train.step=1")
    assert_same_run(reference, tmp_path)


def test_number_of_workers_does_not_change_the_run(reference, tmp_path):
    """The sample stream and the mapper's draws depend on the stream position, not on which
    data-loader worker maps a sample: so num_workers is not among the keys a rerun compares."""
    run(tmp_path, "dataloader.train.num_workers=2")
    assert_same_run(reference, tmp_path)
