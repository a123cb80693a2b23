"""MiB (eir/methods/mib.py): each loss against hand-worked numbers, the classifier's
initialisation on a real head, the plan, the prediction rule, and the configs.

The expected values are worked by hand in the comments and written as explicit formulas with
math.log, never by calling the code under test. Tests of the head and the configs need
Detectron2 and skip without it.
"""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import requires_detectron2

from eir.methods.base import LossInputs
from eir.methods.mib import MiB, MiBLoss, unbiased_cross_entropy
from eir.tasks import build_task

ROOT = Path(__file__).resolve().parents[1]
MIB_CONFIGS = ROOT / "projects" / "EIR" / "configs" / "mib"
ln = math.log


def pixels(*columns):
    """Logits [1, C, 1, P] from P per-pixel logit vectors of C channels."""
    return torch.tensor(columns, dtype=torch.float32).T.reshape(1, len(columns[0]), 1, len(columns))


def labels(*values):
    return torch.tensor([[list(values)]], dtype=torch.long)


# Three channels: 0 background, 1 an old class, 2 a new class (step 1 of a 1-1 task).
# Pixel a: z = (0, ln 3, ln 4): exp(z) = (1, 3, 4), sum 8, p = (1/8, 3/8, 4/8).
# Pixel b: z = (ln 2, 0, ln 5): exp(z) = (2, 1, 5), sum 8, p = (2/8, 1/8, 5/8).
A = (0.0, ln(3), ln(4))
B = (ln(2), 0.0, ln(5))
IGNORED = (10.0, -3.0, 2.0)  # a pixel labelled 255: whatever its logits, it counts nowhere


# ----------------------------------------------------------------- unbiased cross-entropy


def test_unbiased_ce_folds_old_classes_into_a_background_label():
    # a labelled 0: background or the old class: 1/8 + 3/8 = 1/2 -> -ln(1/2) = ln 2 = 0.6931
    # b labelled 2 (new): 5/8 -> -ln(5/8) = 0.4700; the 255 pixel is left out of the mean
    # mean over the 2 labelled pixels: (0.6931 + 0.4700) / 2 = 0.5816
    loss = unbiased_cross_entropy(pixels(A, B, IGNORED), labels(0, 2, 255), background_channels=2)
    assert loss.item() == pytest.approx((ln(2) + ln(8 / 5)) / 2, abs=1e-6)
    assert loss.item() == pytest.approx(0.5816, abs=1e-4)


def test_one_background_channel_is_the_plain_cross_entropy_of_step_0():
    # a labelled 0: -ln(1/8) = ln 8 = 2.0794; b labelled 2: ln(8/5); mean (2.0794 + 0.4700) / 2
    z, y = pixels(A, B, IGNORED), labels(0, 2, 255)
    loss = unbiased_cross_entropy(z, y, background_channels=1)
    assert loss.item() == pytest.approx((ln(8) + ln(8 / 5)) / 2, abs=1e-6)
    assert loss.item() == pytest.approx(F.cross_entropy(z, y, ignore_index=255).item(), abs=1e-6)


def test_unbiased_ce_gradient_pushes_background_pixels_towards_background_or_old():
    # For a pixel labelled 0 the gradient of -ln(p0 + p1) is p_k - [k < 2] * p_k / (p0 + p1):
    # a: (1/8 - 1/4, 3/8 - 3/4, 4/8) = (-1/8, -3/8, 1/2): the old class is pushed up with the
    # background, not down as plain cross-entropy would (3/8 > 0). One pixel, mean over 1.
    z = pixels(A).requires_grad_()
    unbiased_cross_entropy(z, labels(0), background_channels=2).backward()
    assert z.grad.flatten().tolist() == pytest.approx([-1 / 8, -3 / 8, 1 / 2], abs=1e-6)


def test_unbiased_ce_with_no_labelled_pixel_is_zero_and_attached():
    z = pixels(A, B).requires_grad_()
    loss = unbiased_cross_entropy(z, labels(255, 255), background_channels=2)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))


def test_ignored_pixels_take_no_gradient():
    z = pixels(A, IGNORED).requires_grad_()
    unbiased_cross_entropy(z, labels(2, 255), background_channels=2).backward()
    assert torch.equal(z.grad[..., 1], torch.zeros(1, 3, 1))
    assert z.grad[..., 0].abs().sum() > 0


@pytest.mark.parametrize("k", [0, 3])
def test_unbiased_ce_refuses_a_background_group_outside_the_channels(k):
    with pytest.raises(ValueError, match="background_channels must be in 1..2"):
        unbiased_cross_entropy(pixels(A), labels(0), background_channels=k)


def test_unbiased_ce_refuses_labels_that_are_no_channel():
    with pytest.raises(ValueError, match=r"channel indices in \[0, 3\) or 255, found 0..7"):
        unbiased_cross_entropy(pixels(A, B), labels(0, 7), background_channels=2)


def test_unbiased_ce_bfloat16_logits_give_float32():
    loss = unbiased_cross_entropy(pixels(A, B).bfloat16(), labels(0, 2), background_channels=2)
    assert loss.dtype == torch.float32


# ----------------------------------------------------------------- unbiased distillation

# Old model: 2 channels (background, class 1); new model: 3 (background, class 1, new class 2).
# Pixel a: old y = (0, ln 3) -> q = (1/4, 3/4); new p = (1/8, 3/8, 4/8) (A above).
#   l_bg = ln(p0 + p2) = ln(5/8) = -0.4700, l_1 = ln(3/8) = -0.9808
#   term = (1/4 * -0.4700 + 3/4 * -0.9808) / 2 = -0.8531 / 2 = -0.4266
# Pixel b: old y = (0, 0) -> q = (1/2, 1/2); new p = (2/8, 1/8, 5/8) (B above).
#   l_bg = ln(7/8) = -0.1335, l_1 = ln(1/8) = -2.0794; term = (-0.1335 - 2.0794) / 4 = -0.5532
# Loss: -(mean of the terms over both pixels) = (0.4266 + 0.5532) / 2 = 0.4899; weighted x 10.
OLD_A = (0.0, ln(3))
OLD_B = (0.0, 0.0)


def kd_term(q, l_bg, l_old):
    """MiB's per-pixel distillation term: (q_bg * l_bg + sum_c q_c * l_c) / |old channels|."""
    return (q[0] * l_bg + sum(qc * lc for qc, lc in zip(q[1:], l_old))) / len(q)


EXPECTED_KD = -(
    kd_term((1 / 4, 3 / 4), ln(5 / 8), [ln(3 / 8)]) + kd_term((1 / 2, 1 / 2), ln(7 / 8), [ln(1 / 8)])
) / 2


def step1_inputs(label_values=(0, 2), **kw):
    return LossInputs(
        logits=pixels(A, B), labels=labels(*label_values), old_logits=pixels(OLD_A, OLD_B),
        num_old_channels=2, **kw,
    )


def test_unbiased_distillation_matches_the_hand_worked_pixels():
    assert EXPECTED_KD == pytest.approx(0.4899, abs=1e-4)
    losses = MiBLoss(num_old_channels=2, w_kd=10.0)(step1_inputs())
    assert set(losses) == {"loss_ce", "loss_kd"}
    assert losses["loss_kd"].item() == pytest.approx(10 * EXPECTED_KD, abs=1e-5)
    assert losses["loss_ce"].item() == pytest.approx((ln(2) + ln(8 / 5)) / 2, abs=1e-6)


def test_distillation_reads_no_label_so_ignored_pixels_are_distilled_too():
    # The paper's sum runs over every pixel of the image: the same two pixels give the same
    # distillation whatever they are labelled, 255 included.
    loss = MiBLoss(num_old_channels=2, w_kd=1.0)
    for values in [(0, 2), (255, 255), (2, 0)]:
        assert loss(step1_inputs(values))["loss_kd"].item() == pytest.approx(EXPECTED_KD, abs=1e-6)


def test_distillation_of_one_new_class_among_several_old():
    # Old: background, classes 1 and 2; y = (ln 2, 0, ln 1) -> q = (1/2, 1/4, 1/4).
    # New adds class 3: z = (0, ln 2, 0, ln 5): exp = (1, 2, 1, 5), sum 9.
    # l_bg = ln((1 + 5) / 9) = ln(2/3), l_1 = ln(2/9), l_2 = ln(1/9); over 3 old channels.
    loss = MiBLoss(num_old_channels=3, w_kd=1.0)(
        LossInputs(
            logits=pixels((0.0, ln(2), 0.0, ln(5))), labels=labels(3),
            old_logits=pixels((ln(2), 0.0, 0.0)), num_old_channels=3,
        )
    )
    expected = -kd_term((1 / 2, 1 / 4, 1 / 4), ln(2 / 3), [ln(2 / 9), ln(1 / 9)])
    assert loss["loss_kd"].item() == pytest.approx(expected, abs=1e-6)
    # label 3 is new: -ln(5/9)
    assert loss["loss_ce"].item() == pytest.approx(ln(9 / 5), abs=1e-6)


def test_no_gradient_reaches_the_old_logits():
    old = pixels(OLD_A, OLD_B).requires_grad_()
    z = pixels(A, B).requires_grad_()
    inputs = LossInputs(logits=z, labels=labels(0, 2), old_logits=old, num_old_channels=2)
    sum(MiBLoss(2, 10.0)(inputs).values()).backward()
    assert old.grad is None and z.grad.abs().sum() > 0


def test_recomputed_backward_gives_the_direct_gradient():
    torch.manual_seed(0)
    z = torch.randn(2, 5, 4, 3)
    old = torch.randn(2, 3, 4, 3)
    y = torch.randint(0, 5, (2, 4, 3))
    y[0, 0, 0] = 255
    loss = MiBLoss(num_old_channels=3, w_kd=10.0)
    grads = []
    for checkpointed in (True, False):
        leaf = z.clone().requires_grad_()
        inputs = LossInputs(logits=leaf, labels=y, old_logits=old, num_old_channels=3)
        terms = loss(inputs) if checkpointed else loss.losses(leaf, y, old)
        sum(terms.values()).backward()
        grads.append(leaf.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-7)


def test_losses_under_autocast_are_the_float32_ones():
    """The trainer calls the loss under autocast (bfloat16 on a CPU): nothing is downcast."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = MiBLoss(num_old_channels=2, w_kd=10.0)(step1_inputs())
    assert all(v.dtype == torch.float32 for v in losses.values())
    assert losses["loss_kd"].item() == pytest.approx(10 * EXPECTED_KD, abs=1e-5)
    assert losses["loss_ce"].item() == pytest.approx((ln(2) + ln(8 / 5)) / 2, abs=1e-6)


def test_step_0_is_the_plain_cross_entropy_without_distillation():
    z, y = pixels(A, B, IGNORED), labels(0, 2, 255)
    losses = MiB().criterion(build_task("synthetic", "2-2"), 0)(LossInputs(logits=z, labels=y))
    assert set(losses) == {"loss_ce"}
    assert losses["loss_ce"].item() == pytest.approx((ln(8) + ln(8 / 5)) / 2, abs=1e-6)


def test_the_criterion_of_a_step_knows_its_old_channels():
    task = build_task("synthetic", "4-2")  # channels: 5 at step 0, 7 at step 1, 9 at step 2
    method = MiB()
    assert [method.criterion(task, t).num_old_channels for t in range(4)] == [0, 5, 7, 9]
    without_kd = MiB(w_kd=0).criterion(task, 1)
    torch.manual_seed(0)
    z, y = torch.randn(1, 7, 2, 2), torch.randint(0, 7, (1, 2, 2))
    losses = without_kd(LossInputs(logits=z, labels=y, num_old_channels=5))  # no old logits
    assert set(losses) == {"loss_ce"}
    assert losses["loss_ce"].item() == pytest.approx(unbiased_cross_entropy(z, y, 5).item())


def test_the_loss_refuses_inputs_of_another_step():
    loss = MiBLoss(num_old_channels=2, w_kd=10.0)
    with pytest.raises(ValueError, match="previous model of 2 channels, but the batch says 0"):
        loss(LossInputs(logits=pixels(A), labels=labels(0)))
    with pytest.raises(ValueError, match="needs the old model's logits"):
        loss(LossInputs(logits=pixels(A), labels=labels(0), num_old_channels=2))
    with pytest.raises(ValueError, match=r"old_logits must be \[N, 2, H, W\]"):
        loss(LossInputs(logits=pixels(A), labels=labels(0), old_logits=pixels(A), num_old_channels=2))


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), True, "10", None])
def test_lambda_must_be_a_finite_number_at_least_0(bad):
    with pytest.raises(ValueError, match="w_kd"):
        MiB(w_kd=bad)


def test_loss_refuses_one_old_channel():
    with pytest.raises(ValueError, match="0 at step 0"):
        MiBLoss(num_old_channels=1, w_kd=1.0)


# ----------------------------------------------------------------- plan and prediction


def test_plan_has_no_memory_and_a_teacher_at_incremental_steps():
    task = build_task("synthetic", "6-1")
    plans = [MiB().plan(task, t) for t in range(task.num_steps)]
    assert [p.teacher for p in plans] == [False, True, True, True, True]
    assert [p.last for p in plans] == [False, False, False, False, True]
    for p in plans:
        assert not (p.replay or p.paste or p.save_bank or p.prepass)
        assert p.artifacts == ("model_final.pth", "metrics.json")
    assert not any(MiB(w_kd=0).plan(task, t).old_model for t in range(task.num_steps))
    # the teacher runs exactly where the loss distils
    for method in (MiB(), MiB(w_kd=0)):
        assert [method.plan(task, t).teacher for t in range(5)] == [method.criterion(task, t).distils for t in range(5)]
    assert MiB.detach_background is False
    with pytest.raises(ValueError, match="out of range"):
        MiB().plan(task, 5)


def test_prediction_is_the_softmax_argmax_over_every_channel():
    task = build_task("synthetic", "4-2", order=[3, 1, 4, 10, 2, 9, 5, 6, 7, 8])
    channel_to_class = torch.tensor(task.channel_classes(1))  # 0, then 6 classes in task order
    torch.manual_seed(0)
    z = torch.randn(2, 7, 5, 6)
    z[0, 0, 0, 0] = 9.0  # background wins here: a class like the others, no threshold
    scores = MiB().class_scores(z, channel_to_class, task.num_classes)
    assert scores.shape == (2, 11, 5, 6)
    assert torch.equal(scores.argmax(dim=1), channel_to_class[z.argmax(dim=1)])
    assert scores.argmax(dim=1)[0, 0, 0] == 0
    assert torch.allclose(scores.sum(dim=1), torch.ones(2, 5, 6))  # unseen classes score 0


# ----------------------------------------------------------------- classifier initialisation


@requires_detectron2
@pytest.mark.parametrize("new", [1, 3])
def test_init_shares_the_background_probability_equally_with_the_new_classes(new):
    from eir.modeling.head import IncrementalHead

    torch.manual_seed(0)
    head = IncrementalHead(in_channels=8, step_sizes=[2], channels=4, aspp_dilations=(1, 2, 3)).eval()
    with torch.no_grad():  # a trained-looking background classifier
        head.aux.weight.normal_()
        head.aux.bias.fill_(0.7)
        head.cls[0].weight.normal_()
    x = torch.randn(2, 8, 5, 6)
    with torch.no_grad():
        before = torch.softmax(head(x), dim=1)  # [bg, c1, c2]
    aux_weight = head.aux.weight.clone()
    head.add_step(new)
    MiB().init_new_classifier(head, step=1)
    with torch.no_grad():
        after = torch.softmax(head(x), dim=1)  # [bg, c1, c2, new...]

    share = before[:, :1] / (new + 1)
    assert torch.allclose(after[:, :1], share, atol=1e-6)  # the background keeps 1 / (n + 1)
    assert torch.allclose(after[:, 3:], share.expand(-1, new, -1, -1), atol=1e-6)  # each new one too
    assert torch.allclose(after[:, [0, *range(3, 3 + new)]].sum(dim=1), before[:, 0], atol=1e-6)
    assert torch.allclose(after[:, 1:3], before[:, 1:3], atol=1e-6)  # old classes unchanged
    # the parameters themselves: weights copied, biases b_bg - ln(n + 1) for all of them
    assert torch.equal(head.cls[1].weight, aux_weight.expand(new, -1, -1, -1))
    assert head.aux.bias.item() == pytest.approx(0.7 - ln(new + 1), abs=1e-6)
    assert head.cls[1].bias.tolist() == pytest.approx([0.7 - ln(new + 1)] * new, abs=1e-6)


@requires_detectron2
def test_init_refuses_a_step_0_head():
    from eir.modeling.head import IncrementalHead

    head = IncrementalHead(in_channels=8, step_sizes=[2], channels=4)
    with pytest.raises(ValueError, match="step >= 1"):
        MiB().init_new_classifier(head, step=0)
    head.add_step(1)
    with pytest.raises(ValueError, match="this one has 2"):
        MiB().init_new_classifier(head, step=2)


# ----------------------------------------------------------------- configs

CONFIG_FILES = sorted(p.relative_to(MIB_CONFIGS).as_posix() for p in MIB_CONFIGS.glob("*/*.py"))
#: What each dataset's MiB recipe sets (METHOD.md, MiB): epochs, lr at step 0 / later, batch.
RECIPES = {
    "voc": dict(epochs=30, lr=1e-2, incremental_lr=1e-3, batch=24, head_lr_mult=1.0),
    "ade": dict(epochs=60, lr=1e-2, incremental_lr=1e-3, batch=24, head_lr_mult=1.0),
}


def test_mib_has_the_configs_eir_has():
    eir_configs = MIB_CONFIGS.parent
    for folder in ("synthetic", "voc", "ade"):
        ours = {p.name for p in (MIB_CONFIGS / folder).glob("*.py")}
        assert ours == {p.name for p in (eir_configs / folder).glob("*.py")}, folder


@requires_detectron2
@pytest.mark.parametrize("name", CONFIG_FILES)
def test_config_loads_and_instantiates_mib(name):
    from detectron2.config import LazyConfig, instantiate

    cfg = LazyConfig.load(str(MIB_CONFIGS / name))
    method = instantiate(cfg.method)
    assert isinstance(method, MiB) and method.w_kd == 10.0
    folder, stem = name.removesuffix(".py").split("/")
    task_name, _, setting = stem.partition("_")
    assert cfg.task.name == task_name and cfg.task.setting == (setting or "overlap")
    assert cfg.train.output_dir == f"output/mib/{folder}_{stem}"
    assert "eir" not in cfg  # the method is the one node a method's knobs live in
    if folder in RECIPES:
        want = RECIPES[folder]
        assert cfg.schedule.epochs == cfg.schedule.incremental_epochs == want["epochs"]
        assert (cfg.schedule.lr, cfg.schedule.incremental_lr) == (want["lr"], want["incremental_lr"])
        assert cfg.dataloader.train.total_batch_size == want["batch"]
        assert cfg.optimizer.params.head_lr_mult == want["head_lr_mult"]
        assert cfg.schedule.warmup_fraction == 0.0
        assert cfg.dataloader.train.augmentations.crop_size == 512


@requires_detectron2
@pytest.mark.parametrize("task_name", ["4-2", "6-1"])
def test_synthetic_config_is_eirs_with_only_the_method_swapped(task_name):
    """The synthetic benchmark compares methods: model, data and schedule are EIR's."""
    from detectron2.config import LazyConfig
    from omegaconf import OmegaConf

    ours = OmegaConf.to_container(LazyConfig.load(str(MIB_CONFIGS / "synthetic" / f"{task_name}_overlap.py")))
    eirs = OmegaConf.to_container(
        LazyConfig.load(str(MIB_CONFIGS.parent / "synthetic" / f"{task_name}_overlap.py"))
    )
    for cfg in (ours, eirs):
        cfg["train"].pop("output_dir")
        cfg.pop("method", None)
        cfg.pop("eir", None)  # EIR's method node before the seam renamed it
    assert ours == eirs
