"""DistributedDataParallel's arguments from the config: what torch 2.14 warns about is not passed."""
import warnings

import pytest
from conftest import DETECTRON2_SKIP_REASON, tiny_cfg

pytest.importorskip("detectron2", reason=DETECTRON2_SKIP_REASON)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from eir.engine.builders import ddp_arguments  # noqa: E402


@pytest.fixture
def one_process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_ddp_takes_the_config_without_deprecation_warnings(tmp_path, one_process_group):
    cfg = tiny_cfg(tmp_path)
    kwargs = ddp_arguments(cfg, torch.device("cpu"))
    assert kwargs["device_ids"] is None and "fp16_compression" not in kwargs
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2), **kwargs)
    # buffers are not synced in every forward, as train.ddp.broadcast_buffers=False asks
    synced = getattr(ddp, "forward_sync_buffers", None)
    assert (synced if synced is not None else ddp.broadcast_buffers) is False


def _stop_together_worker(rank, init_file, out_dir):
    import datetime

    from eir.engine.run_folder import RunFolderError
    from eir.engine.runner import OtherRankError, stop_together

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60)
    )
    try:
        stop_together(None)  # nobody failed: returns on both ranks
        try:
            stop_together(RunFolderError("the folder is in use") if rank == 0 else None)
            outcome = "returned"
        except OtherRankError as e:
            outcome = f"OtherRankError: {e}"
        except RunFolderError as e:
            outcome = f"own: {e}"
        (out_dir / f"rank{rank}.txt").write_text(outcome)
    finally:
        dist.destroy_process_group()


def test_a_refusal_on_rank_0_stops_the_other_ranks_with_its_message(tmp_path):
    """Rank 0 refuses at start-up (e.g. the lock is held); rank 1 does not wait at a barrier for
    the collective timeout but stops too, repeating rank 0's message."""
    import torch.multiprocessing as mp

    methods = mp.get_all_start_methods()
    mp.start_processes(
        _stop_together_worker, args=(str(tmp_path / "init"), tmp_path), nprocs=2, join=True,
        start_method="fork" if "fork" in methods else "spawn",
    )
    assert (tmp_path / "rank0.txt").read_text() == "own: the folder is in use"
    assert (tmp_path / "rank1.txt").read_text() == (
        "OtherRankError: rank 0 stopped at start-up: RunFolderError: the folder is in use"
    )
