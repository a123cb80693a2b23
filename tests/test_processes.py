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
