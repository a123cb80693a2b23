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
    (tmp_path / ".run.lock.abc.tmp").write_text("x")
    removed = remove_temp_files(tmp_path, keep_prefix=".run.lock.")
    assert sorted(p.name for p in removed) == [".bank.old-9f", ".bank.tmp-k3", ".metrics.json.q.tmp",
                                               ".model_final.pth.ab12.tmp"]
    assert all(p.exists() for p in keep) and (tmp_path / ".run.lock.abc.tmp").exists()
    assert is_temp_name(".x.tmp") and not is_temp_name("x.tmp") and not is_temp_name(".hidden")


def test_a_failed_write_names_the_file_and_keeps_the_previous_version(tmp_path):
    import errno

    import pytest

    from eir.fileio import atomic_write

    path = atomic_write_text(tmp_path / "model.pth", "old")

    def full_disk(f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match=f"No space left on device; {path} was not written") as info:
        atomic_write(path, full_disk)
    assert info.value.errno == errno.ENOSPC
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["model.pth"]


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
