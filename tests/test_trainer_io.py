"""What one training iteration moves and gathers: the models get the images only (DDP copies
every tensor of the dicts it is given to the device), the old model reads the same device
images, and the losses are gathered every train.gather_metric_period iterations and at the
step's last one."""

import pytest
from conftest import DETECTRON2_SKIP_REASON, tiny_cfg

pytest.importorskip("detectron2", reason=DETECTRON2_SKIP_REASON)

import torch  # noqa: E402
from detectron2.engine import SimpleTrainer  # noqa: E402
from detectron2.structures import ImageList  # noqa: E402

from eir.engine.builders import build_method, build_trainer  # noqa: E402
from eir.engine.step_plan import StepPlan  # noqa: E402
from eir.engine.trainer import EIRTrainer  # noqa: E402
from eir.tasks import build_task  # noqa: E402

TASK = build_task("synthetic", "4-2")  # step 1: 7 channels, 5 of them the old model's


class _Spy(torch.nn.Module):
    """A model that records what it is given and returns logits of ``channels`` channels."""

    def __init__(self, channels):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(channels, 1, 1))
        self.seen = []

    @property
    def device(self):
        return self.bias.device

    def preprocess_image(self, batched_inputs):
        self.seen.append(batched_inputs)
        return ImageList.from_tensors([d["image"].float() for d in batched_inputs])

    def logits(self, images):
        return self.bias.expand(images.shape[0], -1, *images.shape[-2:]) + images.mean(1, keepdim=True)

    def forward(self, batched_inputs):
        return self.logits(self.preprocess_image(batched_inputs).tensor)


def _batch(n=2, size=8):
    return [
        {"image": torch.rand(3, size, size), "sem_seg": torch.zeros(size, size, dtype=torch.long),
         "paste_class": torch.zeros(size, size, dtype=torch.long), "paste_alpha": torch.zeros(size, size)}
        for _ in range(n)
    ]


def test_the_models_get_the_images_only_and_share_them():
    plan = StepPlan(step=1, last=False, teacher=True, replay=True, paste=True, save_bank=True)
    model, old = _Spy(7), _Spy(5).requires_grad_(False)
    trainer = EIRTrainer(model, [], torch.optim.SGD(model.parameters(), lr=0.1), task=TASK, plan=plan,
                         loss=build_method(tiny_cfg("unused")).criterion(TASK, 1), old_model=old, amp=False)
    data = _batch()
    losses = trainer.model(data)
    assert set(losses) == {"loss_bce", "loss_rskd"}
    (given,), (given_old,) = model.seen, old.seen
    assert [set(d) for d in given] == [{"image"}, {"image"}]
    assert all(a["image"] is b["image"] for a, b in zip(given, given_old))  # moved once, read by both


def test_the_gather_period_comes_from_the_config_and_the_last_iteration_is_always_gathered(tmp_path, monkeypatch):
    cfg = tiny_cfg(tmp_path, "train.gather_metric_period=5")
    plan = StepPlan(step=0, last=False, teacher=False, replay=False, paste=False, save_bank=False)
    model = _Spy(5)
    trainer = build_trainer(cfg, model, [], torch.optim.SGD(model.parameters(), lr=0.1), TASK, plan, build_method(cfg))
    assert trainer.gather_metric_period == 5
    gathered = []
    monkeypatch.setattr(SimpleTrainer, "write_metrics", staticmethod(lambda d, t, it, p="": gathered.append(it)))
    trainer.max_iter = 12
    for trainer.iter in range(12):
        trainer._write_metrics({"loss": torch.ones(())}, 0.0)
    assert gathered == [4, 9, 11]


@pytest.mark.parametrize(
    "overrides, message",
    [(["train.gather_metric_period=0"], r"train.gather_metric_period \(iterations\) must be an integer >= 1"),
     (["train.gather_metric_period=3"], r"train.checkpointer.period \(10\) must be a multiple of "
                                        r"train.gather_metric_period \(3\)")],
)
def test_a_gather_period_that_could_let_a_diverged_checkpoint_through_is_refused(tmp_path, overrides, message):
    from eir.engine.runner import ContinualRunner

    with pytest.raises(ValueError, match=message):
        ContinualRunner(tiny_cfg(tmp_path, *overrides))


def test_the_gather_period_does_not_change_results(tmp_path):
    from eir.engine.run_records import results_config

    assert "train.gather_metric_period" not in results_config(tiny_cfg(tmp_path))


@pytest.mark.parametrize("device, pinned", [("cpu", False), ("cuda", True)])
def test_training_batches_are_pinned_for_a_gpu(tmp_path, device, pinned):
    """On CUDA the loader pins its batches (the copies to the device then overlap the compute);
    built here without a GPU, the loader is only inspected, never iterated."""
    from eir.engine.builders import build_train_loader

    dicts = [{"image_id": str(i), "file_name": f"{i}.jpg", "sem_seg_file_name": f"{i}.png"} for i in range(8)]
    loader = build_train_loader(tiny_cfg(tmp_path, f"train.device={device}"), dicts, mapper=lambda d: d, step=0)
    assert loader.pin_memory is pinned
