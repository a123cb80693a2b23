"""Atomic writes: permissions as open() would give, and the clean-up of killed writes."""
import os
import subprocess
import sys

from eir.fileio import atomic_write_text, is_temp_name, remove_temp_files


def test_atomic_write_gives_the_permissions_of_open(tmp_path):
    """Under umask 022 a written file is 0o644, as open() makes it (mkstemp alone gives 0o600)."""
    code = (
        "import sys; from eir.fileio import atomic_write_text; "
        "print(oct(atomic_write_text(sys.argv[1], '{}').stat().st_mode & 0o777))"
    )
    for umask, mode in ((0o022, "0o644"), (0o077, "0o600"), (0o002, "0o664")):
        proc = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / f"{umask}.json")],
            capture_output=True, text=True, preexec_fn=lambda u=umask: os.umask(u), check=True,
        )
        assert proc.stdout.strip() == mode, (oct(umask), proc.stdout, proc.stderr)


def test_remove_temp_files_removes_only_what_killed_writes_leave(tmp_path):
    keep = [tmp_path / "model_final.pth", tmp_path / "step_0" / ".hidden", tmp_path / "step_0" / "x.tmp"]
    drop = [tmp_path / ".model_final.pth.ab12.tmp", tmp_path / "step_0" / ".metrics.json.q.tmp"]
    for p in keep + drop:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    (tmp_path / "step_0" / ".bank.tmp-k3" / "entries").mkdir(parents=True)
    (tmp_path / "step_0" / ".bank.old-9f").mkdir()
    (tmp_path / ".run.lock.abc.tmp").write_text("x")  # a lock's temp file, left by a start on a full disk
    removed = remove_temp_files(tmp_path)
    assert sorted(p.name for p in removed) == [".bank.old-9f", ".bank.tmp-k3", ".metrics.json.q.tmp",
                                               ".model_final.pth.ab12.tmp", ".run.lock.abc.tmp"]
    assert all(p.exists() for p in keep)
    assert is_temp_name(".x.tmp") and not is_temp_name("x.tmp") and not is_temp_name(".hidden")


def test_a_failed_write_names_the_file_and_keeps_the_previous_version(tmp_path):
    import errno

    import pytest

    from eir.fileio import atomic_write

    path = atomic_write_text(tmp_path / "model.pth", "old")

    def failing(f):
        f.write(b"partial")
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OSError, match=f"Input/output error; {path} was not written") as info:
        atomic_write(path, failing)
    assert info.value.errno == errno.EIO
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["model.pth"]


def _disk_full_after(monkeypatch, limit):
    """Make every file that atomic_write opens fail with ENOSPC once ``limit`` bytes are written."""
    import errno

    import eir.fileio

    real = os.fdopen

    def fdopen(fd, *args, **kwargs):
        f = real(fd, *args, **kwargs)
        write, written = f.write, [0]

        def limited(data):
            written[0] += len(data)
            if written[0] > limit:
                raise OSError(errno.ENOSPC, "No space left on device")
            return write(data)

        f.write = limited
        return f

    monkeypatch.setattr(eir.fileio.os, "fdopen", fdopen)


def test_a_full_disk_is_named_with_the_file_even_through_torch_save(tmp_path, monkeypatch):
    """torch.save reports the system's ENOSPC as "RuntimeError: [enforce fail at
    inline_container.cc] unexpected pos"; the error says "no space left on device" and names
    the file, and the previous version is kept."""
    import errno

    import pytest

    torch = pytest.importorskip("torch")
    from eir.fileio import atomic_write

    path = tmp_path / "model_0000009.pth"
    atomic_write(path, lambda f: torch.save({"w": torch.zeros(4)}, f))
    before = path.read_bytes()
    _disk_full_after(monkeypatch, 1000)
    for write in (lambda f: torch.save({"w": torch.ones(10_000)}, f), lambda f: f.write(b"x" * 5000)):
        with pytest.raises(OSError, match=f"no space left on device: {path} was not written") as info:
            atomic_write(path, write)
        assert info.value.errno == errno.ENOSPC
        assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [path.name]


_SAVE = """
import sys, torch
torch.save({"model": {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2, dtype=torch.bfloat16)},
            "eir": {"step": 1}}, sys.argv[1])
"""


def test_tensor_digest_is_equal_for_equal_tensors_saved_by_two_processes(tmp_path):
    """torch.save writes a per-process id: two processes saving equal weights write other bytes.
    The digest of what the file holds is the same, and it changes with any value, dtype or key."""
    import torch

    from eir.fileio import sha256_file, tensor_digest

    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    for path in (a, b):
        subprocess.run([sys.executable, "-c", _SAVE, str(path)], check=True)
    assert sha256_file(a) != sha256_file(b)
    assert tensor_digest(a) == tensor_digest(b)
    data = torch.load(a, weights_only=False)
    variants = [
        {**data, "model": {**data["model"], "w": data["model"]["w"] + 1}},
        {**data, "model": {**data["model"], "w": data["model"]["w"].double()}},
        {**data, "model": {**data["model"], "w": data["model"]["w"].reshape(3, 2)}},
        {**data, "eir": {"step": 2}},
    ]
    for i, variant in enumerate(variants):
        torch.save(variant, tmp_path / f"v{i}.pth")
        assert tensor_digest(tmp_path / f"v{i}.pth") != tensor_digest(a), i
