"""Several processes: DDP's arguments from the config (nothing torch 2.14 warns about), a start-up
refusal on one rank stopping the others, and step 1 of the ResNet-101 VOC config under 2-process gloo DDP."""
import warnings
from pathlib import Path

import pytest
from conftest import DETECTRON2_SKIP_REASON, tiny_cfg

ROOT = Path(__file__).resolve().parents[1]

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

    from eir.engine.run_claim import OtherRankError, stop_together
    from eir.engine.run_folder import RunFolderError

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


def _resnet101_step_1_worker(rank, init_file, out_dir):
    """Step 1 of voc/15-1_overlap.py (ResNet-101, the old model of step 0, EIR's criterion) on
    rank ``rank`` of 2 gloo processes: two iterations of 64x64 random batches of one image."""
    import datetime
    import itertools

    from detectron2.config import LazyConfig
    from detectron2.utils import comm
    from detectron2.utils.events import EventStorage

    from eir.engine.builders import (
        build_ddp_model,
        build_method,
        build_next_step_model,
        build_old_model,
        build_optimizer,
        build_run_task,
        build_step_model,
        build_trainer,
    )

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=300)
    )
    comm.create_local_process_group(2)
    try:
        cfg = LazyConfig.load(str(ROOT / "projects/EIR/configs/voc/15-1_overlap.py"))
        cfg.train.device, cfg.train.amp.enabled = "cpu", False
        task = build_run_task(cfg)
        torch.manual_seed(0)  # the same step-0 weights in both processes, as if read from its checkpoint
        step_0 = build_step_model(cfg, task, 0, torch.device("cpu")).state_dict()
        old_model = build_old_model(cfg, task, 0, step_0, torch.device("cpu"))
        method = build_method(cfg)
        model = build_next_step_model(cfg, task, 1, step_0, torch.device("cpu"), method)
        plan = method.plan(task, 1)
        g = torch.Generator().manual_seed(rank)
        batches = []
        for _ in range(2):
            label = torch.randint(0, 17, (64, 64), generator=g)
            label[label.remainder(4) == 3] = 255
            batches.append([{"image": torch.rand(3, 64, 64, generator=g) * 255, "sem_seg": label,
                             "paste_class": torch.zeros(64, 64, dtype=torch.long), "paste_alpha": torch.zeros(64, 64)}])
        ddp = build_ddp_model(cfg, model, torch.device("cpu"))
        trainer = build_trainer(cfg, ddp, itertools.cycle(batches), build_optimizer(cfg, model, 1), task, plan,
                                method, old_model)
        losses = []
        compute = trainer.model.loss

        def recorded(inputs):  # the losses of this process (only rank 0 writes metrics)
            out = compute(inputs)
            losses.append({k: float(v) for k, v in out.items()})
            return out

        trainer.model.loss = recorded
        with EventStorage(0) as storage:
            trainer.storage = storage
            for trainer.iter in range(2):
                trainer.run_step()
        trained = [n for n, p in model.named_parameters() if p.requires_grad]
        no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        torch.save({"losses": losses, "trained": trained, "no_grad": no_grad, "state": model.state_dict(),
                    "norms": sorted({type(m).__name__ for m in model.modules() if "Norm" in type(m).__name__})},
                   out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_resnet101_step_1_under_two_gloo_processes(tmp_path):
    """The paper's VOC config at step 1 (frozen BatchNorm, the old model, pseudo-labels and RSKD)
    under 2-process DDP: two iterations, finite losses, every trained parameter gets a gradient,
    and the two processes hold the same weights afterwards (DDP averaged their gradients)."""
    import math

    import torch.multiprocessing as mp

    methods = mp.get_all_start_methods()
    mp.start_processes(
        _resnet101_step_1_worker, args=(str(tmp_path / "init"), tmp_path), nprocs=2, join=True,
        start_method="fork" if "fork" in methods else "spawn",
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for result in ranks:
        assert [sorted(step) for step in result["losses"]] == [["loss_bce", "loss_rskd"]] * 2
        assert all(math.isfinite(v) for step in result["losses"] for v in step.values())
        assert result["no_grad"] == []
        # ResNet-101's convolutions (stem 1, 33 bottlenecks of 3, 4 shortcuts; BatchNorm is frozen)
        assert sum(n.startswith("backbone.") and n.endswith(".weight") for n in result["trained"]) == 104
        assert result["norms"] == ["FrozenBatchNorm2d"]
    assert ranks[0]["losses"] != ranks[1]["losses"]  # each process trained on its own images
    first, second = ranks[0]["state"], ranks[1]["state"]
    assert all(torch.equal(first[k], second[k]) for k in first)
