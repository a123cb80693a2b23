"""The CUDA path: the evaluator, a float16 training iteration and the trainer, on each device.

Every test body runs on the CPU and, marked ``cuda`` (``python -m pytest -m cuda``; skipped
where ``torch.cuda.is_available()`` is False), on CUDA. On the CPU the float16 iteration
emulates CUDA's mixed precision with ``torch.autocast("cpu", dtype=torch.float16)`` and an
enabled ``GradScaler("cpu")``. ``benchmarks/gpu_check.sh`` runs the CUDA variants on a GPU
machine. They need Detectron2 and skip without it.
"""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import DETECTRON2_SKIP_REASON, DEVICES, tiny_cfg, tiny_datasets

pytest.importorskip("detectron2", reason=DETECTRON2_SKIP_REASON)

from eir.data.datasets import register_eir_datasets  # noqa: E402
from eir.engine.builders import (  # noqa: E402
    build_bank,
    build_method,
    build_next_step_model,
    build_old_model,
    build_optimizer,
    build_paster,
    build_run_task,
    build_step_model,
    build_train_dicts,
    build_train_loader,
    build_train_mapper,
)
from eir.engine.prepass import run_prepass  # noqa: E402
from eir.engine.trainer import EIRTrainer  # noqa: E402
from eir.evaluation.evaluator import ContinualSemSegEvaluator  # noqa: E402
from eir.tasks import build_task  # noqa: E402

pytestmark = pytest.mark.parametrize("device", DEVICES)


# --------------------------------------------------------------------------- evaluator


def numpy_iou(pairs, num_classes: int, seen) -> dict[int, float | None]:
    """Per-class IoU (percent) of the seen classes from (prediction, label) arrays, ignore 255."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    for pred, gt in pairs:
        keep = gt != 255
        np.add.at(matrix, (gt[keep], pred[keep]), 1)
    out = {}
    for c in seen:
        union = matrix[c, :].sum() + matrix[:, c].sum() - matrix[c, c]
        out[c] = None if union == 0 else 100.0 * matrix[c, c] / union
    return out


def test_evaluator_on_the_device_equals_the_cpu_evaluator(device):
    """The confusion matrix kept on the device gives the CPU evaluator's report, number for
    number, and per-class IoUs that match a NumPy count of the same predictions."""
    task = build_task("synthetic", "4-2")
    step = 1  # seen: background and classes 1-6; predictions may still name classes 7-10
    rng = np.random.default_rng(0)
    inputs, scores = [], []
    for shape in ((37, 53), (64, 48), (16, 16)):
        gt = rng.integers(0, 7, shape)
        gt[rng.random(shape) < 0.1] = 255
        score = rng.random((task.num_classes + 1, *shape)).astype(np.float32)
        score[gt.clip(0, task.num_classes), np.arange(shape[0])[:, None], np.arange(shape[1])] += 0.6
        inputs.append({"sem_seg": torch.from_numpy(gt)})
        scores.append(torch.from_numpy(score))
    pairs = [(s.numpy().argmax(0), i["sem_seg"].numpy()) for i, s in zip(inputs, scores)]
    assert 0.3 < np.mean([(p == g)[g != 255].mean() for p, g in pairs]) < 0.95  # some errors, some hits

    def evaluate(on):
        evaluator = ContinualSemSegEvaluator(task, step, distributed=False)
        evaluator.reset()
        for inp, score in zip(inputs, scores):
            evaluator.process([inp], [{"sem_seg": score.to(on)}])
        return evaluator.evaluate(), evaluator.summary

    results, summary = evaluate(device)
    cpu_results, cpu_summary = evaluate("cpu")
    assert summary == cpu_summary
    assert results["sem_seg"].keys() == cpu_results["sem_seg"].keys()
    seen = task.seen_classes(step)
    expected = numpy_iou(pairs, task.num_classes + 1, seen)
    for c in seen:
        got = summary["per_class"][task.class_names[c]]
        assert (got is None) == (expected[c] is None)
        if got is not None:
            assert got == pytest.approx(expected[c], rel=1e-12)
    assert summary["num_pixels"] == sum(int((g != 255).sum()) for _, g in pairs)


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny run's config and data (task 8-2, 48 px), the bank step 0 leaves, and the weights
    of a step-0 model (random init, seed 0: the same weights on every device)."""
    root = tmp_path_factory.mktemp("cuda_data")
    with tiny_datasets(root):
        register_eir_datasets(root)
        cfg = tiny_cfg(root / "out")
        task = build_run_task(cfg)
        step0, _ = build_train_dicts(cfg, task, 0)
        torch.manual_seed(0)
        weights = build_step_model(cfg, task, 0, "cpu").state_dict()
        yield SimpleNamespace(cfg=cfg, task=task, bank=build_bank(cfg, task, 0, step0, None, build_method(cfg)), old_weights=weights)


def step1_trainer(tiny, device):
    """Step 1 as the runner builds it, on ``device`` with AMP on: the old model, the prepass on
    the device, pasting from step 0's bank, the loader, the optimizer and the trainer."""
    cfg, task = tiny.cfg, tiny.task
    method = build_method(cfg)
    plan = method.plan(task, 1)
    assert plan.teacher and plan.paste
    old_model = build_old_model(cfg, task, 0, tiny.old_weights, device, method)
    model = build_next_step_model(cfg, task, 1, tiny.old_weights, device, method)
    images, dicts = build_train_dicts(cfg, task, 1, tiny.bank)
    p = method.prepass
    prepass = run_prepass(old_model, images, task, 1, tau=p["tau"], short_side=p["short_side"], stride=p["stride"])
    mapper = build_train_mapper(cfg, task, 1, tiny.bank, build_paster(task, plan, tiny.bank, prepass, method))
    loader = build_train_loader(cfg, dicts, mapper, 1)
    optimizer = build_optimizer(cfg, model, 1)
    trainer = EIRTrainer(
        model, loader, optimizer, task=task, plan=plan, loss=method.criterion(task, 1), old_model=old_model,
        amp=True, seed=cfg.train.seed, gather_metric_period=1,
    )
    return trainer, loader, optimizer


def trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_float16_autocast_iteration_with_an_enabled_grad_scaler(tiny, device):
    """CUDA's mixed precision (float16 autocast, enabled grad scaler) on the step's real losses:
    the losses are finite and within 2 % of float32's on the same batch, and the scaler lets
    the optimizer update the weights (a step with inf/NaN gradients would be skipped)."""
    trainer, loader, optimizer = step1_trainer(tiny, device)
    stream = iter(loader)
    batches = [next(stream) for _ in range(4)]
    assert any(float(d["paste_alpha"].max()) > 0 for b in batches for d in b)  # pasting reaches the losses
    with torch.no_grad():
        batch = batches[0]
        step_loss = trainer.model
        reference = step_loss.loss(step_loss.loss_inputs(batch))  # float32: without the module's autocast
        with torch.autocast(device, dtype=torch.float16):
            half = step_loss.loss(step_loss.loss_inputs(batch))
    assert set(half) == set(reference) == {"loss_bce", "loss_rskd"}
    for name in reference:
        assert torch.isfinite(half[name]).item()
        assert float(half[name]) == pytest.approx(float(reference[name]), rel=0.02), name

    scaler = torch.amp.GradScaler(device, enabled=True)
    before = trainable(trainer.model)
    for batch in batches[1:]:
        optimizer.zero_grad()
        with torch.autocast(device, dtype=torch.float16):
            losses = step_loss.loss(step_loss.loss_inputs(batch))
            total = sum(losses.values())
        assert all(torch.isfinite(v).item() for v in losses.values()), losses
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()
    assert scaler.is_enabled() and 0 < scaler.get_scale() < float("inf")
    after = trainable(trainer.model)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    assert all(torch.isfinite(v).all() for v in after.values())


def test_trainer_trains_a_few_iterations_with_the_old_model(tiny, device):
    """EIRTrainer's own loop (AMP on) for four iterations of step 1: finite BCE and RSKD every
    iteration, the new model's weights move, the old model's do not; on CUDA it trains in
    float16 with an enabled grad scaler, every weight on the GPU."""
    trainer, _, _ = step1_trainer(tiny, device)
    old_before = {n: p.detach().clone() for n, p in trainer.model.old_model.named_parameters()}
    before = trainable(trainer.model)
    trainer.train(0, 4)
    for name in ("loss_bce", "loss_rskd"):
        values = [v for v, _ in trainer.storage.history(name).values()]
        assert len(values) == 4 and all(np.isfinite(values)), (name, values)
    after = trainable(trainer.model)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    assert all(torch.isfinite(v).all() for v in after.values())
    for n, p in trainer.model.old_model.named_parameters():
        assert torch.equal(p, old_before[n]), n
    assert {p.device.type for p in trainer.model.parameters()} == {device}
    assert {p.device.type for p in trainer.model.old_model.parameters()} == {device}
    if device == "cuda":
        assert trainer.precision == torch.float16
        assert trainer.grad_scaler.is_enabled()
