"""The method seam: a continual method defined here, outside eir/, runs a whole two-step task
through ContinualRunner, named in the config with LazyCall; the runner, the trainer and the
model builder ask it for everything it decides (eir.methods.base)."""
import json

import pytest
from conftest import DETECTRON2_SKIP_REASON, tiny_cfg, tiny_datasets

pytest.importorskip("detectron2", reason=DETECTRON2_SKIP_REASON)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from detectron2.config import LazyCall as L  # noqa: E402

from eir.engine.step_plan import StepPlan  # noqa: E402
from eir.methods.base import ContinualMethod, softmax_scores  # noqa: E402


class PlainCrossEntropy(ContinualMethod):
    """Fine-tuning with a softmax cross-entropy: no old model, no bank, no pasting; the background
    is a class like the others; new classifiers start at zero; the prediction is the argmax."""

    detach_background = False

    def __init__(self, warn: bool = False):
        self.warn = warn
        self.asked = []
        self.batches = {}

    def plan(self, task, step):
        step = task.check_step(step)
        self.asked.append(("plan", step))
        return StepPlan(step=step, last=step + 1 == task.num_steps, teacher=False, replay=False, paste=False,
                        save_bank=False)

    def criterion(self, task, step):
        self.asked.append(("criterion", step))

        def cross_entropy(inputs):
            self.batches[step] = self.batches.get(step, 0) + 1
            assert inputs.old_logits is None and inputs.paste_class is None
            assert inputs.num_old_channels == (0 if step == 0 else len(task.channel_classes(step - 1)))
            return {"loss_ce": F.cross_entropy(inputs.logits, inputs.labels, ignore_index=255)}

        return cross_entropy

    def init_new_classifier(self, head, step):
        self.asked.append(("init_new_classifier", step))
        with torch.no_grad():
            head.cls[-1].weight.zero_()
            head.cls[-1].bias.zero_()

    def class_scores(self, channel_logits, channel_to_class, num_classes):
        return softmax_scores(channel_logits, channel_to_class, num_classes)

    def check_step_data(self, task, step, train_dicts):
        return [f"{len(train_dicts)} training images"] if self.warn else []


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    from eir.engine.runner import ContinualRunner

    root = tmp_path_factory.mktemp("toy")
    with tiny_datasets(root / "datasets"):
        cfg = tiny_cfg(root / "run", "schedule.max_iter=20")
        cfg.method = L(PlainCrossEntropy)(warn=True)
        torch.manual_seed(0)
        runner = ContinualRunner(cfg)
        summaries = runner.run()
        yield runner, summaries


def test_a_method_defined_outside_eir_runs_a_whole_task(toy_run):
    runner, summaries = toy_run
    assert sorted(summaries) == [0, 1] and (runner.output_dir / "summary.json").is_file()
    method = runner.method
    assert isinstance(method, PlainCrossEntropy)
    assert ("criterion", 0) in method.asked and ("criterion", 1) in method.asked
    assert ("init_new_classifier", 1) in method.asked
    # its plan is the only switch: no bank, no prepass, no old model
    for step in (0, 1):
        step_dir = runner.step_dir(step)
        assert not (step_dir / "bank").exists() and not (step_dir / "prepass.npz").exists()
        rows = [json.loads(line) for line in (step_dir / "training_log.json").read_text().splitlines()]
        assert rows and not any("loss_bce" in row for row in rows)
    assert method.batches == {0: 20, 1: 20}  # its loss, on every batch of schedule.max_iter=20 per step
    record = json.loads((runner.output_dir / "run_config.json").read_text())["config"]
    assert record["method._target_"] == f"{__name__}.PlainCrossEntropy" and record["method.warn"] is True


def test_the_methods_prediction_rule_and_background_reach_the_model(toy_run):
    runner, _ = toy_run
    model = runner.trained_model(1).eval()
    # Every channel logit negative: EIR's sigmoid rule would say background (no score above 0.5),
    # the softmax argmax picks the highest channel, here the last one's class.
    z = torch.full((model.num_channels, 1, 1), -4.0)
    z[-1] = -1.0
    assert int(model.class_scores(z).argmax(0)) == model.channel_classes[-1]
    # the background classifier reads the features themselves: its logit trains the body
    head = model.head.train()
    assert head.detach_background is False
    feature = torch.randn(1, head.in_channels, 4, 4)
    head(feature)[:, 0].sum().backward()
    assert head.conv.weight.grad is not None and head.conv.weight.grad.abs().sum() > 0


def test_its_data_warnings_are_raised_at_start_up(toy_run, caplog):
    runner, _ = toy_run
    runner.release_output_dir()
    runner.folder.path.joinpath("step_1", "DONE").rename(runner.step_dir(1) / "DONE.kept")
    try:
        with caplog.at_level("WARNING", logger="eir.engine.runner"):
            runner.check_inputs()
    finally:
        (runner.step_dir(1) / "DONE.kept").rename(runner.step_dir(1) / "DONE")
    assert any("step 1:" in r.getMessage() and "training images" in r.getMessage() for r in caplog.records)
