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


def _ade_scale_batch(seed=0):
    """Step 1 of ADE20K 100-10: 111 channels, 101 of them the old model's; 2 images of 48x64."""
    g = torch.Generator().manual_seed(seed)
    n, h, w, cn, co = 2, 48, 64, 111, 101
    logits = torch.randn(n, cn, h, w, generator=g, requires_grad=True)
    labels = torch.randint(0, cn, (n, h, w), generator=g)
    labels[:, :4] = 255
    labels[:, 4:20] = 0
    paste_class = torch.where(torch.rand(n, h, w, generator=g) < 0.3, torch.randint(1, co, (n, h, w), generator=g), 0)
    paste_alpha = torch.rand(n, h, w, generator=g)
    old_logits = torch.randn(n, co, h, w, generator=g)
    return logits, labels, paste_class, paste_alpha, old_logits


def _saved_bytes(fn):
    """Bytes of the distinct storages autograd keeps for the backward pass of ``fn()``."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(storages.values())


def test_the_loss_block_keeps_only_its_inputs_for_backward():
    """Memory budget at ADE20K's channel count: what the loss terms keep for the backward pass is
    at most their inputs (logits, old logits, labels, pastes). Computed directly, autograd keeps
    the soft targets, the old model's softmax and RSKD's log-probabilities too: 1.5 times more."""
    batch = _ade_scale_batch()
    inputs = sum(t.untyped_storage().nbytes() for t in batch)
    criterion = EIRCriterion()
    losses, kept = _saved_bytes(lambda: criterion(*batch))
    direct, kept_directly = _saved_bytes(lambda: criterion.losses(*batch))
    assert kept <= inputs
    assert kept_directly > 1.5 * inputs
    # Recomputed in backward, the same values and gradients, bit for bit.
    assert all(torch.equal(losses[k], direct[k]) for k in direct)
    grad = torch.autograd.grad(sum(losses.values()), batch[0])[0]
    grad_directly = torch.autograd.grad(sum(direct.values()), batch[0])[0]
    assert torch.equal(grad, grad_directly)


def test_the_loss_block_under_float16_autocast_matches_float32():
    """Under CPU float16 autocast (emulating CUDA AMP) the recomputed block gives float32 terms and
    the gradient of the float32 computation (the losses compute in float32 whatever autocast says)."""
    batch = _ade_scale_batch(seed=1)
    criterion = EIRCriterion()
    with torch.autocast("cpu", dtype=torch.float16):
        losses = criterion(*batch)
        total = sum(losses.values())
    assert all(v.dtype == torch.float32 for v in losses.values())
    grad = torch.autograd.grad(total, batch[0])[0]
    reference = criterion.losses(*batch)
    assert all(torch.equal(losses[k], reference[k]) for k in reference)
    assert torch.equal(grad, torch.autograd.grad(sum(reference.values()), batch[0])[0])
