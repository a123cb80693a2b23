"""EIRTrainer's state across devices: a step interrupted on the CPU (grad scaler disabled, its
state empty) resumes where the scaler is enabled (CUDA with AMP, emulated by GradScaler("cpu")),
and the reverse."""
import pytest
from conftest import DETECTRON2_SKIP_REASON

pytest.importorskip("detectron2", reason=DETECTRON2_SKIP_REASON)

import torch  # noqa: E402

from eir.engine.step_plan import StepPlan  # noqa: E402
from eir.engine.trainer import EIRTrainer  # noqa: E402
from eir.tasks import build_task  # noqa: E402


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(3))

    @property
    def device(self):
        return self.weight.device


def _trainer(scaler_enabled: bool, iteration: int = 0) -> EIRTrainer:
    model = _Model()
    plan = StepPlan(step=0, last=False, teacher=False, replay=False, paste=False, save_bank=False)
    trainer = EIRTrainer(
        model, [], torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        task=build_task("synthetic", "4-2"), plan=plan, loss=lambda inputs: {}, amp=True,
    )
    trainer.grad_scaler = torch.amp.GradScaler("cpu", enabled=scaler_enabled, init_scale=2.0**10)
    trainer.iter = iteration
    return trainer


def test_a_disabled_scalers_state_resumes_with_an_enabled_scaler():
    saved = _trainer(scaler_enabled=False, iteration=41).state_dict()
    assert saved["grad_scaler"] == {}
    resumed = _trainer(scaler_enabled=True)
    resumed.load_state_dict(saved)
    assert resumed.iter == 41  # the trainer's own state is loaded
    assert resumed.grad_scaler.get_scale() == 2.0**10  # the scaler starts afresh


def test_an_enabled_scalers_state_resumes_with_a_disabled_scaler_and_with_an_enabled_one():
    source = _trainer(scaler_enabled=True, iteration=9)
    source.grad_scaler.scale(torch.ones(1))  # the scale exists once something was scaled
    source.grad_scaler.update(new_scale=256.0)
    saved = source.state_dict()
    disabled = _trainer(scaler_enabled=False)
    disabled.load_state_dict(saved)
    assert disabled.iter == 9 and not disabled.grad_scaler.is_enabled()
    enabled = _trainer(scaler_enabled=True)
    enabled.load_state_dict(saved)
    assert enabled.grad_scaler.get_scale() == 256.0  # carried over between enabled scalers
