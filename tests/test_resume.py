"""Exact resume: a run killed (SIGKILL) in the middle of a step and rerun ends with the weights
and metrics of the uninterrupted run, bit for bit; so does a run done one step per command.

Each test drives tools/train_net.py in subprocesses on the tiny two-step synthetic run of
tests/conftest.py (60 iterations a step, a checkpoint every 10); the number of loader workers
is checked on step 1's batches, built in this process from the finished run's folder, and on
what a run writes.
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


def assert_same_records(a, b):
    """Each step's DONE records (after their message line) and step 1's prepass key are those of
    the other run: they digest what the checkpoints hold, not the bytes torch wrote."""
    from eir.data.prepass import PrepassStore

    for step in (0, 1):
        done_a, done_b = ((r / f"step_{step}/DONE").read_text().splitlines()[1:] for r in (a, b))
        assert done_a == done_b and any(line.startswith("tensors-sha256:") for line in done_a)
    assert PrepassStore.load(a / "step_1/prepass.npz").key == PrepassStore.load(b / "step_1/prepass.npz").key


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
    assert_same_records(reference, tmp_path)
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
    assert_same_records(reference, tmp_path)


def test_number_of_workers_does_not_change_the_batches(reference):
    """Step 1's batches (pasted images, labels, paste maps, bank replays) with 0 and with 2
    loader workers, tensor by tensor: the sampler's stream and the mapper's draws depend on
    the stream position, not on which worker maps a sample, so num_workers is not among the
    keys a rerun compares."""
    from conftest import tiny_cfg

    from eir.data.prepass import PrepassStore
    from eir.engine.builders import build_paster, build_train_loader, build_train_mapper
    from eir.engine.prepass import PREPASS_FILE, step_prepass_key
    from eir.engine.runner import ContinualRunner

    def batches(num_workers, count=15):  # 15 batches of 4: the step's 60 iterations
        runner = ContinualRunner(tiny_cfg(reference, f"dataloader.train.num_workers={num_workers}"))
        cfg, task, plan = runner.cfg, runner.task, runner.plan(1)
        bank = runner.load_bank(plan)
        train_dicts, dicts = runner.train_data(1, bank)
        # The run's prepass.npz, read under this command's key (a stale one fails, naming what differs).
        key = step_prepass_key(cfg, runner.folder, 1, train_dicts, torch.device("cpu"), runner.method.prepass)
        prepass = PrepassStore.load(runner.folder.step_dir(1) / PREPASS_FILE, task=task, step=1, key=key)
        mapper = build_train_mapper(cfg, task, 1, bank, build_paster(task, plan, bank, prepass, runner.method))
        loader = iter(build_train_loader(cfg, dicts, mapper, 1))
        return [next(loader) for _ in range(count)]

    a, b = batches(0), batches(2)
    keys = ("image", "sem_seg", "paste_class", "paste_alpha")
    for i, (batch_a, batch_b) in enumerate(zip(a, b)):
        assert [d["file_name"] for d in batch_a] == [d["file_name"] for d in batch_b], i
        for da, db in zip(batch_a, batch_b):
            for k in keys:
                assert torch.equal(da[k], db[k]), (i, da["file_name"], k)
    samples = [d for batch in a for d in batch]
    # Not vacuous: instances were pasted into step 1's images and bank entries were replayed.
    assert sum(int(d["paste_class"].gt(0).any()) for d in samples) >= 10
    assert any(d["file_name"].startswith("bank:") for d in samples)


def test_number_of_workers_does_not_change_what_a_run_writes_before_step_1_trains(reference, tmp_path):
    """With 2 workers, whatever the workers and the thread pools of the bank and the class
    presence touch comes out byte for byte as with none: step 0's weights and metrics, the
    bank it ends with, step 1's prepass maps. Step 1's weights are not compared: its training
    arithmetic is the same code with or without workers, and training amplifies any float
    difference (1 instead of 2 PyTorch threads: a median relative weight difference of 6 %
    after step 0's 60 iterations). They matched in every run on this machine and differed in
    one CI run, for a cause not found (that run compared nothing finer than the weights)."""
    run(tmp_path, "dataloader.train.num_workers=2")
    wa, wb = (weights(d / "step_0/model_final.pth") for d in (reference, tmp_path))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    files = ["step_0/metrics.json", "step_1/prepass.npz"]
    files += sorted(str(p.relative_to(reference)) for p in (reference / "step_0/bank").rglob("*") if p.is_file())
    assert len(files) > 2
    for name in files:
        assert (reference / name).read_bytes() == (tmp_path / name).read_bytes(), name
