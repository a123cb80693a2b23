"""EIRCriterion against a two-pixel batch worked out by hand with scalar math (no eir.losses):
pseudo-labels, pasting, BCE, RSKD and their weights, and its switches."""
import math

import pytest
import torch

from eir.modeling.criterion import EIRCriterion


def sp(x):
    """softplus: BCE with logits of target t is sp(x) - t * x."""
    return math.log1p(math.exp(x))


def lse(*xs):
    return math.log(sum(math.exp(x) for x in xs))


# One image, 1x2 pixels; old model: channels 0 (background) and 1; new model: channels 0, 1, 2.
LABELS = torch.tensor([[[0, 2]]])  # pixel 0 background, pixel 1 the new class
OLD = [[-1.0, 2.0], [0.0, 0.0]]  # pixel 0: sigmoid(2) = 0.88 >= 0.7 on class 1, above channel 0
NEW = [[0.5, 1.0, -0.5], [0.0, -1.0, 2.0]]


def _logits(per_pixel):
    return torch.tensor(per_pixel, dtype=torch.float32).t().reshape(1, len(per_pixel[0]), 1, 2)


def _rskd_pixel0():
    """RSKD's term at pixel 0 (the only pixel whose step label is not new), by its formula."""
    z, (y0, y1) = NEW[0], OLD[0]
    q0, q1 = math.exp(y0) / (math.exp(y0) + math.exp(y1)), math.exp(y1) / (math.exp(y0) + math.exp(y1))
    den = lse(*z)
    log_old, log_bg = z[1] - den, lse(z[0], z[2]) - den
    return -(q0 * log_bg + q1 * log_old) / 2


def _bce(pixel, target):
    return sum(sp(x) - t * x for x, t in zip(NEW[pixel], target))


def test_default_criterion_pseudo_labels_and_distils():
    losses = EIRCriterion()(_logits(NEW), LABELS, old_logits=_logits(OLD))
    bce = (_bce(0, [0, 1, 0]) + _bce(1, [0, 0, 1])) / 2  # pixel 0 pseudo-labelled as class 1
    assert losses["loss_bce"].item() == pytest.approx(bce, rel=1e-6)
    assert losses["loss_rskd"].item() == pytest.approx(5 * _rskd_pixel0(), rel=1e-6)


def test_weights_scale_their_terms_and_rskd_normalisation():
    criterion = EIRCriterion(w_bce=2.0, w_kd=3.0, rskd_normalize="all")
    losses = criterion(_logits(NEW), LABELS, old_logits=_logits(OLD))
    assert losses["loss_bce"].item() == pytest.approx(2 * (_bce(0, [0, 1, 0]) + _bce(1, [0, 0, 1])) / 2, rel=1e-6)
    assert losses["loss_rskd"].item() == pytest.approx(3 * _rskd_pixel0() / 2, rel=1e-6)  # over both pixels


def test_no_pseudo_labels_and_no_distillation():
    losses = EIRCriterion(tau=None, w_kd=0)(_logits(NEW), LABELS, old_logits=_logits(OLD))
    assert set(losses) == {"loss_bce"}
    assert losses["loss_bce"].item() == pytest.approx((_bce(0, [1, 0, 0]) + _bce(1, [0, 0, 1])) / 2, rel=1e-6)


def test_a_threshold_above_the_old_score_keeps_background():
    losses = EIRCriterion(tau=0.9)(_logits(NEW), LABELS, old_logits=_logits(OLD))  # 0.88 < 0.9
    assert losses["loss_bce"].item() == pytest.approx((_bce(0, [1, 0, 0]) + _bce(1, [0, 0, 1])) / 2, rel=1e-6)


def test_pasted_instance_blends_into_the_target():
    paste_class = torch.tensor([[[0, 1]]])
    paste_alpha = torch.tensor([[[0.0, 0.25]]])
    losses = EIRCriterion(w_kd=0)(_logits(NEW), LABELS, paste_class, paste_alpha, old_logits=_logits(OLD))
    expected = (_bce(0, [0, 1, 0]) + _bce(1, [0, 0.25, 0.75])) / 2
    assert losses["loss_bce"].item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("rule", ["all", "old_channels", "none"])
def test_pasted_bce_leaves_out_the_channels_of_pastes_over_non_new_labels(rule):
    """pasted_bce: pixel 0 (background, pasted) keeps every BCE term ("all"), its old channels
    only ("old_channels"), or leaves the BCE and its mean ("none"); pixel 1 (pasted over the
    new class) keeps every term."""
    paste_class = torch.tensor([[[1, 1]]])
    paste_alpha = torch.tensor([[[0.5, 0.25]]])
    criterion = EIRCriterion(w_kd=0, pasted_bce=rule)
    losses = criterion(_logits(NEW), LABELS, paste_class, paste_alpha, old_logits=_logits(OLD))
    pixel0 = sum(sp(x) - t * x for x, t in zip(NEW[0], [0, 1, 0]))
    pixel1 = _bce(1, [0, 0.25, 0.75])
    expected = {
        "all": (_bce(0, [0, 1, 0]) + pixel1) / 2,
        "old_channels": (pixel0 - sp(NEW[0][2]) + pixel1) / 2,  # channel 2 (new) left out
        "none": pixel1,
    }[rule]
    assert losses["loss_bce"].item() == pytest.approx(expected, rel=1e-6)
    if rule != "all":
        with pytest.raises(ValueError, match="old model's logits"):
            criterion(_logits(NEW), LABELS, paste_class, paste_alpha)


def test_without_old_logits_only_bce_of_the_labels():
    losses = EIRCriterion()(_logits(NEW), LABELS)
    assert set(losses) == {"loss_bce"}
    assert losses["loss_bce"].item() == pytest.approx((_bce(0, [1, 0, 0]) + _bce(1, [0, 0, 1])) / 2, rel=1e-6)


@pytest.mark.parametrize(
    "kwargs, needs",
    [({}, True), ({"tau": None}, True), ({"w_kd": 0}, True), ({"tau": None, "w_kd": 0}, False)],
)
def test_needs_old_model(kwargs, needs):
    assert EIRCriterion(**kwargs).needs_old_model is needs


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tau": 1.5}, "tau"),
        ({"tau": True}, "tau"),
        ({"w_kd": -1}, "w_kd"),
        ({"w_bce": float("nan")}, "w_bce"),
        ({"w_kd": "5"}, "w_kd"),
        ({"rskd_mask": "new"}, "rskd_mask"),
        ({"rskd_normalize": "pixels"}, "rskd_normalize"),
        ({"pasted_bce": "new"}, "pasted_bce"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EIRCriterion(**kwargs)
