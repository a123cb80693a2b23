"""One run per output folder, and a folder's artifacts checked before they are trusted.

The lock (two processes, a dead holder), the recorded config (a changed config is refused,
naming the keys, and the refused command writes nothing), unknown override keys, a step
marked done without or with damaged artifacts, damaged checkpoints, banks and prepass
files (each named, with advice that works), and the clean-up of killed writes. The folder
tests work on copies of one tiny two-step run (tests/conftest.py).
"""
import json
import os
import shutil
import socket
import subprocess
import time

import pytest
from conftest import requires_detectron2, tiny_cfg, tiny_datasets, train_net_command


def engine(module: str):
    """A module of eir.engine (the run folder's concerns: run_folder, run_lock, run_records,
    step_done, training_log), imported when a test runs."""
    import importlib

    return importlib.import_module(f"eir.engine.{module}")

# --------------------------------------------------------------------------- lock (no Detectron2)


def test_lock_refuses_a_second_claim_naming_the_holder(tmp_path):
    RunLock, RunFolderError = engine('run_lock').RunLock, engine('run_lock').RunFolderError
    first = RunLock(tmp_path)
    first.acquire()
    held = json.loads((tmp_path / "run.lock").read_text())
    assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
    with pytest.raises(RunFolderError, match=f"pid {os.getpid()} on {socket.gethostname()}"):
        RunLock(tmp_path).acquire()
    first.release()
    assert not (tmp_path / "run.lock").exists()
    second = RunLock(tmp_path)
    second.acquire()
    second.release()


def test_lock_of_a_dead_process_is_taken_over(tmp_path):
    RunLock, RunFolderError = engine('run_lock').RunLock, engine('run_lock').RunFolderError
    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid no longer runs
    dead = {"pid": gone.pid, "host": socket.gethostname(), "started": "x"}
    assert not engine('run_lock')._pid_alive(dead["pid"])
    (tmp_path / "run.lock").write_text(json.dumps(dead))
    lock = RunLock(tmp_path)
    lock.acquire()
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
    lock.release()
    # A holder on another host cannot be checked: refused, with the file to delete named.
    (tmp_path / "run.lock").write_text(json.dumps(dict(dead, host="elsewhere")))
    with pytest.raises(RunFolderError, match="on elsewhere.*delete .*run.lock"):
        RunLock(tmp_path).acquire()
    assert [p.name for p in tmp_path.iterdir()] == ["run.lock"]  # no temp file left behind


def test_lock_of_a_restarted_container_with_the_same_host_and_pid_is_taken_over(tmp_path):
    """A container restarted with the same host name can run the new command under the pid of
    the one that left the lock (it is alive: it is us). The recorded process identity (boot id,
    start time) tells them apart; the same identity is a live holder."""
    me = engine('run_lock').process_identity(os.getpid())
    if me is None:
        pytest.skip("no /proc: the process identity is not recorded here")
    boot, started = me.rsplit(":", 1)
    earlier = {"pid": os.getpid(), "host": socket.gethostname(), "started": "x", "token": "t",
               "process": f"{boot}:{int(started) - 1}"}
    (tmp_path / "run.lock").write_text(json.dumps(earlier))
    lock = engine('run_lock').RunLock(tmp_path)
    lock.acquire()
    assert json.loads((tmp_path / "run.lock").read_text())["token"] == lock.info["token"]
    lock.release()
    (tmp_path / "run.lock").write_text(json.dumps(dict(earlier, process=me)))
    with pytest.raises(engine('run_lock').RunFolderError, match="is in use by another run"):
        engine('run_lock').RunLock(tmp_path).acquire()


def test_lock_on_a_filesystem_without_hard_links(tmp_path, monkeypatch):
    """Where os.link is refused (EPERM, as on some network filesystems), the lock is made by an
    exclusive create: one holder, the second command refused naming it, no temp file left."""
    import errno

    def no_link(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(engine('run_lock').os, "link", no_link)
    first = engine('run_lock').RunLock(tmp_path)
    first.acquire()
    assert json.loads((tmp_path / "run.lock").read_text()) == first.info
    with pytest.raises(engine('run_lock').RunFolderError, match=f"pid {os.getpid()} on {socket.gethostname()}"):
        engine('run_lock').RunLock(tmp_path).acquire()
    assert [p.name for p in tmp_path.iterdir()] == ["run.lock"]
    first.release()
    assert list(tmp_path.iterdir()) == []


HOST = socket.gethostname()


@pytest.mark.parametrize(
    "content",
    [b"", b"\xff\xfe\x00 not text", b"[1, 2]", b'"x"', b"null", b'{"pid": null}', b'{"host": "%s"}' % HOST.encode(),
     b'{"pid": 99999999999999999999999, "host": "%s"}' % HOST.encode(), b'{"pid": -1, "host": "%s"}' % HOST.encode(),
     b'{"pid": 0, "host": "%s"}' % HOST.encode(), b'{"pid": "12", "host": "%s"}' % HOST.encode(),
     b'{"pid": 12, "host": 5}'],
    ids=["empty", "binary", "list", "string", "null", "no pid", "no pid 2", "huge pid", "pid -1", "pid 0",
         "pid text", "host number"],
)
def test_damaged_lock_is_named_with_what_to_do(tmp_path, content):
    """A lock file is always written whole, so one that holds no pid and host is damaged: named,
    with what to do, never an AttributeError, an OverflowError or "pid None on None"."""
    RunLock, RunFolderError = engine('run_lock').RunLock, engine('run_lock').RunFolderError
    lock = tmp_path / "run.lock"
    lock.write_bytes(content)
    with pytest.raises(RunFolderError) as info:
        RunLock(tmp_path).acquire()
    assert str(info.value) == (
        f"the lock file {lock} is damaged: it does not hold the pid and host of a command. If no command "
        f"is training in {tmp_path}, delete it to take the folder."
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.lock"]
    lock.unlink()  # the advice works
    taken = RunLock(tmp_path)
    taken.acquire()
    taken.release()


def test_lock_on_a_full_disk_is_named_and_leaves_no_temp_file(tmp_path, monkeypatch):
    import errno
    from pathlib import Path

    RunLock, RunFolderError = engine('run_lock').RunLock, engine('run_lock').RunFolderError

    def full_disk(self, text, *args, **kwargs):
        self.touch()  # the file is made, its contents are not written
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(RunFolderError, match=f"cannot take the lock {tmp_path / 'run.lock'}: No space left on device"):
        RunLock(tmp_path).acquire()
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- config keys


@requires_detectron2
def test_unknown_override_keys_name_the_nearest_known_key():
    from eir.engine.config_checks import check_override_keys

    cfg = {"method": {"memory": 100, "paste": {"mode": "mixup"}}, "train": {"seed": 0}}
    check_override_keys(cfg, ["method.memory=5", "method.paste.mode=copy", "method.paste=null", "train.seed=1"])
    with pytest.raises(ValueError, match="'method.memroy'.*did you mean method.memory"):
        check_override_keys(cfg, ["method.memroy=50"])
    # a key of an older schema names today's
    with pytest.raises(ValueError, match="'eir.memory' .* is now 'method.memory'"):
        check_override_keys(cfg, ["eir.memory=0"])
    with pytest.raises(ValueError, match="'eir.w_kd' .* is now 'method.criterion.w_kd'"):
        check_override_keys(cfg, ["eir.w_kd=0"])
    with pytest.raises(ValueError, match="unknown config key 'foo.bar'"):
        check_override_keys(cfg, ["foo.bar=1"])


def test_config_differences_list_changed_added_and_removed_keys():
    old = {"eir.memory": 6, "schedule.max_iter": 60, "eir.tau": 0.7}
    new = {"eir.memory": 10, "schedule.max_iter": 60, "eir.w_kd": 5.0}
    assert engine('run_records').config_differences(old, new) == [
        'eir.memory: 6 -> 10', 'eir.tau: 0.7 -> "(absent)"', 'eir.w_kd: "(absent)" -> 5.0',
    ]


def _omegaconf(**train):
    omegaconf = pytest.importorskip("omegaconf")
    train = {"seed": 0, "float32_precision": "", **train}  # a key that records of earlier versions lack
    return omegaconf.OmegaConf.create({"method": {"memory": 6}, "train": train})


def _synthetic_task():
    from eir.tasks import build_task

    return build_task("synthetic", "8-2", "overlap")


def test_the_number_of_processes_is_recorded_and_compared(tmp_path):
    """run_config.json records the number of processes: another number is refused like any
    config change; a record written before it was recorded accepts any number, then records it."""
    cfg = _omegaconf()
    record, _ = engine('run_records').check_recorded_config(tmp_path, cfg, False, world_size=1)
    assert record == {"method.memory": 6, "train.seed": 0, "train.float32_precision": "", "launch.world_size": 1}
    engine('run_records').write_config_record(tmp_path, record)
    assert engine('run_records').check_recorded_config(tmp_path, cfg, False, world_size=1) == (None, [])
    with pytest.raises(engine('run_lock').RunFolderError, match="(?s)launch.world_size: 1 -> 2.*allow_config_change=True"):
        engine('run_records').check_recorded_config(tmp_path, cfg, False, world_size=2)
    record, changes = engine('run_records').check_recorded_config(tmp_path, cfg, True, world_size=2)
    assert record["launch.world_size"] == 2 and changes == ["launch.world_size: 1 -> 2"]
    old = {"method.memory": 6, "train.seed": 0, "train.float32_precision": ""}  # an earlier version's record
    engine('run_records').write_config_record(tmp_path, old)
    assert engine('run_records').check_recorded_config(tmp_path, cfg, False, world_size=4) == (
        dict(old, **{"launch.world_size": 4}), []
    )


@pytest.mark.parametrize(
    "name, content",
    [("run_config.json", b""), ("run_config.json", b"\xff\xfe"), ("run_config.json", b"[1]"),
     ("run_config.json", b'{"config": [1, 2]}'), ("run_config.json", b'{"config": "abc"}'),
     ("run_config.json", b'{"config": null}'), ("run_config.json", b'{"config": {"eir.pseudo_label": true}}'),
     ("task.json", b""), ("task.json", b"\xff"), ("task.json", b"[1]"), ("task.json", b"null"),
     ("task.json", b'{"dataset": 5}'), ("task.json", b'{"dataset": ["synthetic"], "name": "8-2"}'),
     ("task.json", b'{"dataset": "synthetic", "name": "8-2", "order": 5}')],
)
def test_damaged_records_are_named_with_what_to_do(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    folder = engine('run_folder').RunFolder(tmp_path, _synthetic_task())
    with pytest.raises((engine('run_lock').RunFolderError, ValueError)) as info:
        folder.claim(_omegaconf())
    message = str(info.value)
    assert message.startswith(f"{tmp_path / name} is damaged (")
    advice = "delete it to record this command's config" if name == "run_config.json" else \
        "delete it to record this command's task"
    assert advice in message
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # refused: nothing written
    (tmp_path / name).unlink()  # the advice works
    folder.claim(_omegaconf())
    folder.release()


def test_temp_files_of_a_failed_start_are_removed_when_the_folder_is_claimed(tmp_path):
    left = [tmp_path / ".run.lock.0f3a.tmp", tmp_path / ".task.json.x1.tmp"]
    for path in left:
        path.write_text("")
    folder = engine('run_folder').RunFolder(tmp_path, _synthetic_task())
    folder.claim(_omegaconf())
    try:
        assert not any(p.exists() for p in left)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["run.lock", "run_config.json", "task.json"]
    finally:
        folder.release()


def test_trimming_the_training_log_drops_damaged_rows(tmp_path):
    """Rows cut short or with an iteration that is no integer (1e400 reads as inf) are dropped,
    not an OverflowError or a ValueError."""
    log = tmp_path / "training_log.json"
    rows = ['{"iteration": 0, "loss": 1.0}', '{"iteration": 1e400}', '{"iteration": "x"}', "[3]",
            '{"iteration": 2, "loss": 0.5}', '{"iteration": 5, "loss": 0.1}', '{"iter']
    log.write_text("\n".join(rows))
    engine('training_log').trim_training_log(log, 4)
    assert log.read_text() == '{"iteration": 0, "loss": 1.0}\n{"iteration": 2, "loss": 0.5}\n'


def test_summaries_of_done_steps_check_metrics_against_done(tmp_path):
    """A done step that this command does not run is read back only when its metrics.json still
    has the digest in DONE: an edited file is named, not summarised."""
    step_dir = tmp_path / "step_0"
    step_dir.mkdir()
    (step_dir / "metrics.json").write_text('{"summary": {"all": 50.0}}\n')
    engine('step_done').write_done(step_dir, "step 0 done", ["metrics.json"])
    folder = engine('run_folder').RunFolder(tmp_path, _synthetic_task())
    assert folder.finished_summaries() == {0: {"all": 50.0}}
    (step_dir / "metrics.json").write_text('{"summary": {"all": 99.9}}\n')
    with pytest.raises(ValueError, match="metrics.json is damaged or was changed .its digest differs"):
        folder.finished_summaries()


def test_the_data_record_is_renewed_while_no_step_is_done(tmp_path):
    """A file restored after a failed start is no 'data change' while nothing was trained on the
    recorded files; once a step is done, a change is refused."""
    rf = engine('run_folder')
    folder = rf.RunFolder(tmp_path, _synthetic_task())
    folder.check_data({"ds": {"a.jpg": [10, 1], "a.png": [5, 1]}}, allow_change=False)
    restored = {"ds": {"a.jpg": [12, 2], "a.png": [5, 1]}}
    folder.check_data(restored, allow_change=False)  # no step done: renewed
    assert json.loads((tmp_path / "run_data.json").read_text())["datasets"] == restored
    step_dir = tmp_path / "step_0"
    step_dir.mkdir()
    (step_dir / "metrics.json").write_text("{}\n")
    rf.write_done(step_dir, "step 0 done", ["metrics.json"])
    with pytest.raises(rf.RunFolderError, match=r"ds: 1 file\(s\) changed .*: a.jpg"):
        folder.check_data({"ds": {"a.jpg": [13, 3], "a.png": [5, 1]}}, allow_change=False)


# --------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    with tiny_datasets(tmp_path_factory.mktemp("datasets")) as root:
        yield root


@pytest.fixture(scope="module")
def finished(datasets, tmp_path_factory):
    """A finished two-step run (in this process); returns its folder."""
    from eir.engine.runner import ContinualRunner

    out = tmp_path_factory.mktemp("finished")
    ContinualRunner(tiny_cfg(out, "train.checkpointer.max_to_keep=10")).run()
    return out


def copy_of(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


def rerun(out, *overrides):
    from eir.engine.runner import ContinualRunner

    return ContinualRunner(tiny_cfg(out, "train.checkpointer.max_to_keep=10", *overrides)).run()


def snapshot(folder):
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*")) if p.is_file()}


def weights(path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def assert_same_weights(a, b):
    import torch

    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def summary(out):
    return json.loads((out / "summary.json").read_text())


def cli(out, *overrides):
    return subprocess.run(train_net_command(out, *overrides), capture_output=True, text=True, timeout=600)


@requires_detectron2
@pytest.mark.slow
def test_changed_config_is_refused_with_its_keys_and_nothing_written(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    before = snapshot(out)
    proc = cli(out, "method.memory=10", "schedule.max_iter=50")
    assert proc.returncode != 0
    assert "method.memory: 6 -> 10" in proc.stderr and "schedule.max_iter: 60 -> 50" in proc.stderr
    assert "train.allow_config_change=True" in proc.stderr
    assert snapshot(out) == before  # config.yaml, log.txt, summary.json: untouched
    # Another task: refused before config.yaml and log.txt are written, too.
    proc = cli(out, "task.name=6-4")
    assert proc.returncode != 0 and "holds a run of task" in proc.stderr
    assert snapshot(out) == before
    # Keys that do not change results are not compared.
    proc = cli(out, "train.log_period=7", "dataloader.train.num_workers=1", "train.checkpointer.period=20")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert summary(out) == summary(finished)
    # The explicit opt-in continues the run and records the new config.
    proc = cli(out, "method.memory=10", "train.allow_config_change=True")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "run_config.json").read_text())["config"]["method.memory"] == 10


@requires_detectron2
@pytest.mark.slow
def test_unknown_key_on_the_command_line_fails_before_anything_is_written(datasets, tmp_path):
    proc = cli(tmp_path / "run", "method.memroy=50")
    assert proc.returncode != 0
    assert "unknown config key 'method.memroy'" in proc.stderr and "did you mean method.memory" in proc.stderr
    assert not (tmp_path / "run").exists()


@requires_detectron2
@pytest.mark.slow
def test_second_command_into_a_busy_folder_is_refused(datasets, tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(train_net_command(out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (out / "step_0").is_dir():
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    second = cli(out)
    assert first.wait(timeout=600) == 0, first.stderr.read()[-2000:]
    assert second.returncode != 0
    assert f"in use by another run: pid {first.pid} on {socket.gethostname()}" in second.stderr
    # The refused command wrote nothing: one set of command-line lines in log.txt.
    assert (out / "log.txt").read_text().count("Command line arguments") == 1
    assert not (out / "run.lock").exists()


@requires_detectron2
@pytest.mark.slow
def test_step_killed_while_writing_model_final_is_finished_on_rerun(finished, tmp_path):
    """The checkpoint period divides max_iter: the last periodic checkpoint is of the last
    iteration. A kill before model_final.pth was written must not leave a DONE step without it."""
    out = copy_of(finished, tmp_path)
    shutil.rmtree(out / "step_1")
    for name in ("model_final.pth", "DONE", "metrics.json"):
        (out / "step_0" / name).unlink()
    (out / "step_0" / "last_checkpoint").write_text("model_0000059.pth")
    rerun(out, "train.step=0")
    assert (out / "step_0" / "DONE").is_file()
    assert_same_weights(out / "step_0/model_final.pth", finished / "step_0/model_final.pth")
    rerun(out)
    assert summary(out) == summary(finished)


@requires_detectron2
@pytest.mark.slow
@pytest.mark.parametrize(
    "artifact", ["step_0/model_final.pth", "step_0/metrics.json", "step_0/bank/manifest.json", "step_1/prepass.npz"]
)
def test_done_step_with_a_damaged_artifact_is_named_not_skipped(finished, tmp_path, artifact):
    out = copy_of(finished, tmp_path)
    path = out / artifact
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    step_dir = path.parent if path.parent.name.startswith("step_") else path.parent.parent
    with pytest.raises(RuntimeError, match=f"{path}.*damaged.*delete {step_dir / 'DONE'}"):
        rerun(out)
    path.unlink()
    with pytest.raises(RuntimeError, match=f"{path} is missing"):
        rerun(out)
    # The advice works: without DONE and the damaged file the step rebuilds it.
    (step_dir / "DONE").unlink()
    if artifact.startswith("step_0/bank"):
        shutil.rmtree(path.parent)
    if artifact == "step_0/model_final.pth":  # step 1 was trained from the lost weights
        (out / "step_1" / "DONE").unlink()
    rerun(out)
    assert summary(out) == summary(finished)


@requires_detectron2
@pytest.mark.slow
def test_damaged_bank_entry_prepass_and_checkpoint_are_named_with_advice_that_works(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    shutil.rmtree(out / "step_1")
    entry = sorted((out / "step_0" / "bank" / "entries").glob("*_image.png"))[0]
    entry.write_bytes(entry.read_bytes()[:-30])
    with pytest.raises(RuntimeError, match=f"{entry.name}.*delete {out / 'step_0' / 'bank'} and {out / 'step_0' / 'DONE'}"):
        rerun(out)
    shutil.rmtree(out / "step_0" / "bank")
    (out / "step_0" / "DONE").unlink()
    rerun(out, "train.step=0")  # rebuilds the bank; step 0 is not retrained
    assert_same_weights(out / "step_0/model_final.pth", finished / "step_0/model_final.pth")

    # A damaged periodic checkpoint of an interrupted step: named; deleting it resumes from the one before.
    shutil.copytree(finished / "step_1", out / "step_1", dirs_exist_ok=True)
    for name in ("model_final.pth", "DONE", "metrics.json"):
        (out / "step_1" / name).unlink()
    last = out / "step_1" / "model_0000059.pth"
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(ValueError, match=f"{last}.*damaged: delete it"):
        rerun(out)
    last.unlink()
    prepass = out / "step_1" / "prepass.npz"
    prepass.write_bytes(prepass.read_bytes()[:100])
    with pytest.raises(RuntimeError, match=f"{prepass}.*delete it"):
        rerun(out)
    prepass.unlink()
    rerun(out)
    assert summary(out) == summary(finished)
    assert_same_weights(out / "step_1/model_final.pth", finished / "step_1/model_final.pth")


@requires_detectron2
@pytest.mark.slow
def test_temporary_files_of_killed_writes_are_removed_at_start_up(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    left = [out / "step_0" / ".model_0000009.pth.k2j3.tmp", out / ".summary.json.x1.tmp"]
    for p in left:
        p.write_bytes(b"partial")
    folders = [out / "step_0" / ".bank.tmp-abc", out / "step_0" / ".bank.old-0123"]
    for d in folders:
        (d / "entries").mkdir(parents=True)
    rerun(out)
    assert not any(p.exists() for p in left + folders)
    assert summary(out) == summary(finished)


@requires_detectron2
@pytest.mark.slow
def test_shortened_schedule_restarts_the_unfinished_step(finished, tmp_path):
    """A rerun that shortens the schedule (opted in) must not mark a step done from the
    checkpoint of a later iteration: the unfinished step restarts from its first iteration
    and ends at the new schedule's last one."""
    out = copy_of(finished, tmp_path)
    for name in ("model_final.pth", "DONE", "metrics.json"):
        (out / "step_1" / name).unlink()
    rerun(out, "schedule.max_iter=30", "train.allow_config_change=True")
    assert (out / "step_1" / "DONE").is_file()
    names = sorted(p.name for p in (out / "step_1").glob("model_*.pth"))
    assert names == ["model_0000009.pth", "model_0000019.pth", "model_0000029.pth", "model_final.pth"]


@requires_detectron2
@pytest.mark.slow
def test_checkpoint_beyond_the_schedule_is_refused(finished, tmp_path):
    """A periodic checkpoint of a later iteration than the step's schedule (as left when an epoch
    schedule's dataset shrank under train.allow_data_change) is refused, not resumed past its end."""
    out = copy_of(finished, tmp_path)
    for name in ("model_final.pth", "DONE", "metrics.json"):
        (out / "step_1" / name).unlink()
    (out / "step_1" / "model_0000059.pth").rename(out / "step_1" / "model_0000079.pth")
    with pytest.raises(ValueError, match="model_0000079.pth is of iteration 79, beyond this schedule's 60"):
        rerun(out)
    assert not (out / "step_1" / "DONE").exists()


@requires_detectron2
@pytest.mark.slow
def test_damaged_presence_cache_is_recomputed(finished, tmp_path):
    import numpy as np

    out = copy_of(finished, tmp_path)
    (out / "step_1" / "DONE").unlink()  # step 1 is evaluated again: it reads both caches
    caches = [out / f"presence_eir_synthetic_{split}.npz" for split in ("train", "val")]
    whole = [np.load(c)["presence"] for c in caches]
    for cache in caches:
        cache.write_bytes(cache.read_bytes()[:50])  # np.load would raise BadZipFile
    rerun(out)
    assert all(np.array_equal(np.load(c)["presence"], w) for c, w in zip(caches, whole))
    assert summary(out) == summary(finished)


# --------------------------------------------------------------------------- checkpoints, earlier versions


@requires_detectron2
@pytest.mark.slow
def test_model_final_holds_weights_and_tag_and_periodic_checkpoints_the_trainer_state(finished):
    import torch

    for step in (0, 1):
        final = torch.load(finished / f"step_{step}" / "model_final.pth", map_location="cpu", weights_only=False)
        assert set(final) == {"model", "eir"}
        assert final["eir"]["step"] == step
        periodic = torch.load(finished / f"step_{step}" / "model_0000049.pth", map_location="cpu", weights_only=False)
        assert {"model", "eir", "trainer", "iteration"} <= set(periodic)
        assert periodic["iteration"] == 49 and "optimizer" in periodic["trainer"]
        assert periodic["trainer"]["optimizer"]["state"]  # SGD's momentum buffers


def _second_schema(record: dict) -> dict:
    """A run record as the second config schema wrote it: the method's keys under ``eir``, with
    no ``_target_`` of its own."""
    return {
        ("eir" + k[len("method"):] if k.startswith("method.") else k): v
        for k, v in record.items() if k != "method._target_"
    }


def _first_schema(record: dict) -> dict:
    """A run record as the first config schema wrote it (eir.pseudo_label, eir.tau, loss keys
    under eir, no pasted_bce)."""
    record = _second_schema(record)
    old = {k: v for k, v in record.items() if not k.startswith("eir.criterion.") and k != "eir.prepass.tau"}
    old.update({
        "eir.pseudo_label": record["eir.criterion.tau"] is not None,
        "eir.tau": record["eir.prepass.tau"],
        **{f"eir.{k}": record[f"eir.criterion.{k}"] for k in ("w_bce", "w_kd", "rskd_mask", "rskd_normalize")},
    })
    return old


def test_older_schemas_records_read_as_todays():
    """Worked by hand: the first schema's ``eir.pseudo_label=False, eir.tau=0.6`` is today's
    ``method.criterion.tau=None`` and ``method.prepass.tau=0.6``; every ``eir.*`` key is ``method.*``."""
    first = {"eir.pseudo_label": False, "eir.tau": 0.6, "eir.w_kd": 2.0, "eir.memory": 6, "eir.paste": None,
             "train.seed": 0}
    assert engine('run_records').upgrade_record(first) == {
        "method._target_": "eir.methods.eir.EIR", "method.memory": 6, "method.paste": None,
        "method.criterion._target_": "eir.modeling.criterion.EIRCriterion", "method.criterion.tau": None,
        "method.criterion.w_kd": 2.0, "method.criterion.pasted_bce": "all", "method.prepass.tau": 0.6,
        "method.instances": None, "train.seed": 0, "train.float32_precision": "",
    }
    second = {"eir.memory": 6, "eir.criterion._target_": "eir.modeling.criterion.EIRCriterion",
              "eir.criterion.tau": 0.7, "eir.criterion.pasted_bce": "old_channels"}
    assert engine('run_records').upgrade_record(second) == {
        "method._target_": "eir.methods.eir.EIR", "method.memory": 6,
        "method.criterion._target_": "eir.modeling.criterion.EIRCriterion", "method.criterion.tau": 0.7,
        "method.criterion.pasted_bce": "old_channels", "method.instances": None, "train.float32_precision": "",
    }
    today = engine('run_records').upgrade_record(second)
    assert engine('run_records').upgrade_record(today) == today


@requires_detectron2
@pytest.mark.slow
@pytest.mark.parametrize("schema", [_first_schema, _second_schema])
def test_a_folder_written_by_an_older_schema_is_continued_and_evaluated(finished, tmp_path, schema):
    """A run folder of an earlier version (a record in an older config schema, model_final.pth
    with the trainer state) is recognised as this config's run: its steps are skipped, its record
    is rewritten in today's keys, and its checkpoints evaluate to the metrics it recorded."""
    import torch

    out = copy_of(finished, tmp_path)
    record_path = out / "run_config.json"
    record = json.loads(record_path.read_text())
    record["config"] = schema(record["config"])
    assert "eir.memory" in record["config"] and "method.memory" not in record["config"]
    record_path.write_text(json.dumps(record))
    for step in (0, 1):
        final = out / f"step_{step}" / "model_final.pth"
        fat = torch.load(out / f"step_{step}" / "model_0000049.pth", map_location="cpu", weights_only=False)
        fat["model"] = weights(final)
        fat["iteration"] = 59
        torch.save(fat, final)
        done = out / f"step_{step}" / "DONE"
        lines = done.read_text().splitlines()
        engine('step_done').write_done(done.parent, lines[0], [line.partition("  ")[2] for line in lines[1:]])
    finals = {p: p.read_bytes() for p in out.glob("step_*/model_final.pth")}

    rerun(out)  # every step is done: nothing trains
    assert {p: p.read_bytes() for p in out.glob("step_*/model_final.pth")} == finals
    upgraded = json.loads(record_path.read_text())["config"]
    assert upgraded == json.loads((finished / "run_config.json").read_text())["config"]

    from eir.engine.runner import ContinualRunner

    runner = ContinualRunner(tiny_cfg(out, "train.checkpointer.max_to_keep=10"))
    recorded = json.loads((finished / "step_1" / "metrics.json").read_text())["summary"]
    assert json.loads(json.dumps(runner.evaluate_checkpoint(1))) == recorded


def _second_schema_config():
    """Today's synthetic 4-2 config with the method written as the second schema did: a plain
    node ``eir`` (no ``_target_``)."""
    from pathlib import Path

    from detectron2.config import LazyConfig

    root = Path(__file__).resolve().parents[1]
    cfg = LazyConfig.load(str(root / "projects/EIR/configs/synthetic/4-2_overlap.py"))
    eir = cfg.pop("method")
    eir.pop("_target_")
    cfg.eir = eir
    return cfg


@requires_detectron2
def test_a_config_of_the_first_schema_is_upgraded(tmp_path):
    """A run's config.yaml written before eir.criterion loads in today's schema."""
    from detectron2.config import LazyConfig, instantiate

    from eir.engine.config_checks import load_config
    from eir.methods.eir import EIR

    cfg = _second_schema_config()
    cfg.eir.prepass.pop("tau")
    cfg.eir.pop("criterion")
    cfg.eir.update(pseudo_label=False, tau=0.6, w_bce=1.0, w_kd=2.0, rskd_mask="all", rskd_normalize="all")
    old = tmp_path / "config.yaml"
    LazyConfig.save(cfg, str(old))

    upgraded = load_config(old, ["method.criterion.w_bce=3.0"])
    assert "eir" not in upgraded
    assert "pseudo_label" not in upgraded.method and "tau" not in upgraded.method
    assert upgraded.method.prepass.tau == 0.6
    method = instantiate(upgraded.method)
    assert isinstance(method, EIR) and method.memory == 40 and method.prepass["tau"] == 0.6
    criterion = method.eir_criterion
    assert (criterion.tau, criterion.w_bce, criterion.w_kd, criterion.rskd_mask, criterion.rskd_normalize) == (
        None, 3.0, 2.0, "all", "all",
    )


@requires_detectron2
def test_a_config_of_the_second_schema_is_upgraded(tmp_path):
    """A run's config.yaml written with the method's node ``eir`` loads as ``method = L(EIR)(...)``,
    its interpolation (the prepass's tau follows the criterion's) kept."""
    from detectron2.config import LazyConfig, instantiate

    from eir.engine.config_checks import load_config
    from eir.methods.eir import EIR

    old = tmp_path / "config.yaml"
    LazyConfig.save(_second_schema_config(), str(old))
    upgraded = load_config(old, ["method.criterion.tau=0.5"])
    method = instantiate(upgraded.method)
    assert isinstance(method, EIR) and method.memory == 40 and method.paste.cell_size == 62
    assert method.eir_criterion.tau == 0.5 and method.prepass["tau"] == 0.5


# --------------------------------------------------------------------------- allowed config changes, divergence


def _step_1_trained_afresh(finished, out, *overrides):
    """``finished`` with its step 1 trained again from nothing under ``overrides``."""
    shutil.copytree(finished, out)
    shutil.rmtree(out / "step_1")
    rerun(out, *overrides, "train.allow_config_change=True")
    return out / "step_1" / "model_final.pth"


@requires_detectron2
@pytest.mark.slow
def test_an_allowed_config_change_restarts_the_interrupted_step(finished, tmp_path):
    """Step 1 interrupted (its checkpoints kept, up to the last iteration), then rerun with a new
    learning rate and allow_config_change: the step trains again from its first iteration under
    the new schedule, to the weights of a step 1 trained from nothing under it."""
    change = "schedule.incremental_lr=0.0003"
    out = copy_of(finished, tmp_path)
    for name in ("DONE", "model_final.pth", "metrics.json"):
        (out / "step_1" / name).unlink()
    assert (out / "step_1" / "model_0000059.pth").is_file()
    rerun(out, change, "train.allow_config_change=True")
    assert_same_weights(out / "step_1" / "model_final.pth", _step_1_trained_afresh(finished, tmp_path / "fresh", change))
    rows = [json.loads(line) for line in (out / "step_1" / "training_log.json").read_text().splitlines()]
    assert rows[0]["iteration"] == 4  # the log starts again with the step (log period 5)
    # step 0, done, is kept as it was
    assert_same_weights(out / "step_0" / "model_final.pth", finished / "step_0" / "model_final.pth")


@requires_detectron2
@pytest.mark.slow
def test_a_diverged_step_says_what_to_do_and_the_advice_works(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    shutil.rmtree(out / "step_1")
    with pytest.raises(RuntimeError, match=r"step 1 diverged \(Loss became infinite or NaN at iteration=\d+!\); a rerun .*allow_config_change=True"):
        rerun(out, "schedule.incremental_lr=1e9", "train.allow_config_change=True")
    assert not (out / "step_1" / "DONE").exists()
    sane = "schedule.incremental_lr=0.0003"
    rerun(out, sane, "train.allow_config_change=True")
    assert_same_weights(out / "step_1" / "model_final.pth", _step_1_trained_afresh(finished, tmp_path / "fresh", sane))


# --------------------------------------------------------------------------- the data record


def test_data_differences_name_added_removed_and_changed_files():
    recorded = {"train": {"a.png": [10, 1], "b.png": [10, 1], "c.png": [10, 1]}, "val": {"v.png": [5, 1]}}
    current = {"train": {"a.png": [10, 1], "b.png": [11, 2], "d.png": [10, 1]}, "val": {"v.png": [5, 1]}}
    assert engine('run_records').data_differences(recorded, current) == [
        "train: 1 file(s) added: d.png",
        "train: 1 file(s) removed: c.png",
        "train: 1 file(s) changed (size or modification time): b.png",
    ]
    assert engine('run_records').data_differences(recorded, recorded) == []


@requires_detectron2
def test_data_fingerprint_is_relative_and_follows_size_and_time(tmp_path):
    from eir.data.datasets import data_fingerprint

    for root in (tmp_path / "a", tmp_path / "b"):
        (root / "img").mkdir(parents=True)
        (root / "lbl").mkdir()
        (root / "img" / "1.jpg").write_bytes(b"12345")
        (root / "lbl" / "1.png").write_bytes(b"123")
        for f in (root / "img" / "1.jpg", root / "lbl" / "1.png"):
            os.utime(f, ns=(10**18, 10**18))
    dicts = [{"file_name": str(tmp_path / "a/img/1.jpg"), "sem_seg_file_name": str(tmp_path / "a/lbl/1.png")}]
    moved = [{k: v.replace("/a/", "/b/") for k, v in d.items()} for d in dicts]
    assert data_fingerprint(dicts) == {"img/1.jpg": [5, 10**18], "lbl/1.png": [3, 10**18]}
    assert data_fingerprint(moved) == data_fingerprint(dicts)
    (tmp_path / "b/lbl/1.png").write_bytes(b"321")  # same size, new time
    assert data_fingerprint(moved)["lbl/1.png"][1] != 10**18


@requires_detectron2
@pytest.mark.slow
def test_a_label_changed_between_steps_is_refused_naming_it(finished, datasets, tmp_path, monkeypatch):
    """A label rewritten with valid values between step 0 and step 1 would change which images
    step 1 selects: the rerun refuses, naming the file, and runs with allow_data_change."""
    import numpy as np

    from eir.data.io import read_label

    data = tmp_path / "datasets"
    shutil.copytree(datasets / "eir_synthetic", data / "eir_synthetic")  # copy2 keeps the times
    monkeypatch.setenv("DETECTRON2_DATASETS", str(data))
    out = copy_of(finished, tmp_path)
    shutil.rmtree(out / "step_1")
    record = json.loads((out / "run_data.json").read_text())["datasets"]
    assert set(record) == {"eir_synthetic_train", "eir_synthetic_val"}
    label = sorted((data / "eir_synthetic" / "SegmentationClassAug").glob("train_*.png"))[0]
    values = read_label(str(label))
    import cv2

    cv2.imwrite(str(label), np.where(values == 0, 9, values).astype(np.uint8))  # background -> class 9
    with pytest.raises(RuntimeError, match=rf"(?s)eir_synthetic_train: 1 file\(s\) changed .*{label.name}.*allow_data_change"):
        rerun(out)
    assert not (out / "step_1").exists()
    rerun(out, "train.allow_data_change=True")
    assert (out / "step_1" / "DONE").is_file()
    rerun(out)  # the record now holds the data as it is


def test_a_record_without_a_key_added_since_describes_what_the_run_did():
    assert engine('run_records').upgrade_record({"train.seed": 0}) == {"train.seed": 0, "train.float32_precision": ""}
    criterion = {"method.criterion._target_": "eir.modeling.criterion.EIRCriterion"}
    assert engine('run_records').upgrade_record(criterion)["method.criterion.pasted_bce"] == "all"
    first_schema = {"eir.pseudo_label": True, "eir.tau": 0.7, "eir.w_kd": 5.0}  # gets method.criterion.*
    assert engine('run_records').upgrade_record(first_schema)["method.criterion.pasted_bce"] == "all"
    assert engine('run_records').upgrade_record({"train.float32_precision": "high"})["train.float32_precision"] == "high"
    # a key inside method.paste: added where the run pasted, not where it had method.paste=null
    pasting = {"method.paste._target_": "eir.data.paste.PasteConfig", "method.paste.mode": "mixup"}
    assert engine('run_records').upgrade_record(pasting)["method.paste.onto"] == "any"
    assert engine('run_records').upgrade_record(pasting)["method.paste.skip_classes"] == "[]"
    assert "method.paste.onto" not in engine('run_records').upgrade_record({"method.paste": None})
    assert "method.paste.onto" not in engine('run_records').upgrade_record({"eir.paste": None})


@requires_detectron2
def test_gpu_settings_of_detectron2s_default_setup_can_be_set(tmp_path):
    from eir.engine.config_checks import check_override_keys

    cfg = tiny_cfg(tmp_path)
    check_override_keys(cfg, ["train.cudnn_benchmark=True", "train.float32_precision=high"])
    assert cfg.train.cudnn_benchmark is False and cfg.train.float32_precision == ""
    keys = engine('run_records').results_config(cfg)
    assert "train.float32_precision" in keys and "train.cudnn_benchmark" not in keys


@requires_detectron2
@pytest.mark.slow
@pytest.mark.parametrize("content", [b"", b"step 1 done\n", b"\xff\xfe not text"])
def test_an_empty_or_unreadable_done_is_not_done(finished, tmp_path, content):
    """Step 1's DONE emptied, cut to its message, or garbage, and its metrics.json edited: the step
    is not taken as done (an edited metrics.json would otherwise reach summary.json); the rerun
    finishes it again from its model_final.pth (not retrained) and evaluates it afresh."""
    out = copy_of(finished, tmp_path)
    (out / "step_1" / "DONE").write_bytes(content)
    metrics = json.loads((out / "step_1" / "metrics.json").read_text())
    metrics["summary"]["all"] = 99.9
    (out / "step_1" / "metrics.json").write_text(json.dumps(metrics))
    final = (out / "step_1" / "model_final.pth").read_bytes()
    assert not engine('run_folder').RunFolder(out, None).is_done(1)
    rerun(out)
    assert (out / "step_1" / "model_final.pth").read_bytes() == final
    assert summary(out) == summary(finished)
    assert engine('step_done').done_problems(out / "step_1", ["model_final.pth", "metrics.json"]) == []


@requires_detectron2
@pytest.mark.slow
def test_another_number_of_processes_is_refused_like_a_config_change(finished, tmp_path, monkeypatch):
    from detectron2.utils import comm

    out = copy_of(finished, tmp_path)
    assert json.loads((out / "run_config.json").read_text())["config"]["launch.world_size"] == 1
    before = snapshot(out)
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)  # as under --num-gpus 2 ...
    monkeypatch.setattr(comm, "all_gather", lambda data, group=None: [data, None])  # ... rank 1 passing its checks
    with pytest.raises(engine('run_lock').RunFolderError, match="launch.world_size: 1 -> 2"):
        rerun(out)
    assert snapshot(out) == before


@requires_detectron2
@pytest.mark.slow
def test_eval_only_writes_nothing_and_works_on_a_read_only_folder(finished, tmp_path):
    """--eval-only computes what it needs in memory (the presence tables too), on a folder it may
    not write to (as root, whom permissions do not stop, nothing in it may change), and creates
    no output folder when train.eval_checkpoint names the weights."""
    import stat
    import sys

    from eir.engine.runner import ContinualRunner

    out = copy_of(finished, tmp_path)
    for cache in out.glob("presence_*.npz"):
        cache.unlink()  # --eval-only would have to compute them
    before = snapshot(out)
    folders = sorted(p for p in out.rglob("*") if p.is_dir())
    modes = {p: p.stat().st_mode for p in [out, *folders]}
    for path in modes:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        script, *overrides = train_net_command(out, "train.step=1")[1:]
        proc = subprocess.run([sys.executable, script, "--eval-only", *overrides],
                              capture_output=True, text=True, timeout=600)
    finally:
        for path, mode in modes.items():
            path.chmod(mode)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recorded = json.loads((finished / "step_1" / "metrics.json").read_text())["summary"]
    assert f"{recorded['all']:.2f}" in proc.stdout
    assert snapshot(out) == before and sorted(p for p in out.rglob("*") if p.is_dir()) == folders

    missing = tmp_path / "no_such_run"
    runner = ContinualRunner(tiny_cfg(missing, f"train.eval_checkpoint={out / 'step_1' / 'model_final.pth'}"))
    assert runner.evaluate_checkpoint(1, out / "step_1" / "model_final.pth")["all"] == recorded["all"]
    assert not missing.exists()


def test_a_record_without_the_instance_rule_ran_the_papers_rule():
    upgrade_record = engine("run_records").upgrade_record
    for storage in ("eir.storage", "method.storage"):  # before and after the method seam
        target = {} if storage.startswith("eir.") else {"method._target_": "eir.methods.eir.EIR"}
        assert upgrade_record({storage: "instance", **target})["method.instances"] is None
    region = {"method._target_": "eir.methods.eir.EIR", "method.storage": "instance",
              "method.instances._target_": "eir.data.bank_rule.RegionRule", "method.instances.min_area": 0.001}
    assert upgrade_record(region) == dict(region, **{"train.float32_precision": ""})
    assert "method.instances" not in upgrade_record({"train.seed": 0})
    assert "method.instances" not in upgrade_record({"method._target_": "tests.PlainCrossEntropy"})
