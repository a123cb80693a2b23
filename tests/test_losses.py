"""Tests of eir.modeling.losses: hand-worked cases and per-pixel loop references."""
import math

import pytest
import torch

from eir.modeling.losses import (
    bce_loss,
    distillation_mask,
    pseudo_labels,
    rskd_loss,
    soft_targets,
)

LN2, LN3 = math.log(2.0), math.log(3.0)


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def _logsumexp(values):
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


# ---------------------------------------------------------------- references
# Straightforward per-pixel loops in float64, written from METHOD.md section 4.


def _ref_pseudo_labels(labels, old_logits, threshold, old_channels):
    n, _, h, w = old_logits.shape
    out = labels.clone()
    for b in range(n):
        for i in range(h):
            for j in range(w):
                if int(labels[b, i, j]) != 0:
                    continue
                scores = [_sigmoid(float(old_logits[b, c, i, j])) for c in range(old_channels)]
                best = max(scores)
                winner = scores.index(best)  # the first channel on a tie
                if winner != 0 and best >= threshold:
                    out[b, i, j] = winner
    return out


def _ref_soft_targets(labels, num_channels, paste_class, paste_alpha):
    n, h, w = labels.shape
    out = torch.zeros(n, num_channels, h, w, dtype=torch.float64)
    for b in range(n):
        for i in range(h):
            for j in range(w):
                vec = [0.0] * num_channels
                label = int(labels[b, i, j])
                if label != 255:
                    vec[label] = 1.0
                if paste_class is not None and int(paste_class[b, i, j]) > 0:
                    a = float(paste_alpha[b, i, j])
                    vec = [(1 - a) * v for v in vec]
                    vec[int(paste_class[b, i, j])] += a
                out[b, :, i, j] = torch.tensor(vec, dtype=torch.float64)
    return out


def _ref_bce(logits, targets):
    n, c, h, w = logits.shape
    total, count = 0.0, 0
    for b in range(n):
        for i in range(h):
            for j in range(w):
                t = [float(targets[b, k, i, j]) for k in range(c)]
                if not any(t):
                    continue
                count += 1
                for k in range(c):
                    p = _sigmoid(float(logits[b, k, i, j]))
                    total -= t[k] * math.log(p) + (1 - t[k]) * math.log(1 - p)
    return total / count if count else 0.0


def _ref_rskd(new_logits, old_logits, mask, normalize):
    n, cn, h, w = new_logits.shape
    co = old_logits.shape[1]
    total, count = 0.0, 0
    for b in range(n):
        for i in range(h):
            for j in range(w):
                if not bool(mask[b, i, j]):
                    continue
                count += 1
                z = [float(new_logits[b, k, i, j]) for k in range(cn)]
                y = [float(old_logits[b, k, i, j]) for k in range(co)]
                den = _logsumexp(z)
                log_bg = _logsumexp([z[0]] + z[co:]) - den
                q_den = _logsumexp(y)
                q = [math.exp(v - q_den) for v in y]
                term = q[0] * log_bg + sum(q[c] * (z[c] - den) for c in range(1, co))
                total -= term / co
    if normalize == "all":
        return total / (n * h * w)
    return total / count if count else 0.0


def _assert_near(actual, expected, atol=1e-6):
    # (torch.testing.assert_close costs a second and more of imports on first use.)
    assert actual.shape == expected.shape
    assert (actual.double() - expected.double()).abs().max().item() <= atol, (actual, expected)


def _random_labels(gen, shape, num_channels, ignore_frac=0.2):
    labels = torch.randint(0, num_channels, shape, generator=gen)
    labels[torch.rand(shape, generator=gen) < ignore_frac] = 255
    return labels


# ------------------------------------------------------------- pseudo_labels


def _logit(p):
    return math.log(p / (1.0 - p))


def test_pseudo_labels_hand_worked():
    labels = torch.tensor([[[0, 0, 3, 255, 0, 0]]])
    # Old model with 3 channels (background, old class 1, old class 2); logits per pixel:
    old = torch.tensor(
        [
            [1.0, 2.0, 1.5],  # argmax channel 1, sigmoid(2) = 0.881 >= 0.7 -> 1
            [0.0, 0.5, 0.8],  # argmax channel 2, sigmoid(0.8) = 0.690 < 0.7 -> stays 0
            [0.0, 9.0, 9.0],  # label 3 is not background -> untouched
            [0.0, 9.0, 9.0],  # ignore -> untouched
            [10.0, 1.0, -1.0],  # channel 0 wins; class 1's sigmoid(1) = 0.731 >= 0.7 does not count
            [_logit(0.95), _logit(0.75), _logit(0.20)],  # METHOD.md's example: stays 0
        ]
    ).T.reshape(1, 3, 1, 6)
    out = pseudo_labels(labels, old, threshold=0.7)
    assert out.tolist() == [[[1, 0, 3, 255, 0, 0]]]
    assert out.dtype == labels.dtype
    assert labels.tolist() == [[[0, 0, 3, 255, 0, 0]]]  # input not modified


def test_pseudo_labels_channel_zero_wins_ties():
    labels = torch.zeros(1, 1, 2, dtype=torch.long)
    old = torch.tensor([[[[3.0, 3.0]], [[3.0, 3.0 + 1e-3]]]])  # a tie, then class 1 just above
    assert pseudo_labels(labels, old, threshold=0.7).tolist() == [[[0, 1]]]


def test_pseudo_labels_threshold_boundary_counts():
    labels = torch.zeros(1, 1, 3, dtype=torch.long)
    # Channel 0 low everywhere; sigmoid(0) = 0.5 exactly; sigmoid(-1e-3) < 0.5.
    old = torch.tensor([[[[-5.0, -5.0, -5.0]], [[0.0, -1e-3, -3.0]]]])
    assert pseudo_labels(labels, old, threshold=0.5).tolist() == [[[1, 0, 0]]]


def test_pseudo_labels_old_channels_and_errors():
    labels = torch.zeros(1, 1, 1, dtype=torch.long)
    old = torch.tensor([0.0, 1.0, 5.0]).reshape(1, 3, 1, 1)
    assert pseudo_labels(labels, old).item() == 2
    assert pseudo_labels(labels, old, old_channels=2).item() == 1  # channel 2 not considered
    assert pseudo_labels(labels, old, old_channels=1).item() == 0
    with pytest.raises(ValueError, match="N, H, W"):
        pseudo_labels(torch.zeros(1, 2, 1, dtype=torch.long), old)
    with pytest.raises(ValueError, match="old_channels"):
        pseudo_labels(labels, old, old_channels=4)


def test_pseudo_labels_matches_loop():
    gen = torch.Generator().manual_seed(1)
    labels = _random_labels(gen, (2, 5, 6), 6)
    labels[labels < 3] = 0  # plenty of background
    old = torch.randn(2, 4, 5, 6, generator=gen) * 2
    for threshold, old_channels in [(0.7, None), (0.3, 3)]:
        out = pseudo_labels(labels, old, threshold, old_channels)
        ref = _ref_pseudo_labels(labels, old, threshold, old_channels or 4)
        assert torch.equal(out, ref)


# -------------------------------------------------------------- soft_targets


def test_soft_targets_hand_worked():
    labels = torch.tensor([[[1, 2, 255, 0, 255]]])
    paste_class = torch.tensor([[[2, 2, 1, 0, 0]]])
    paste_alpha = torch.tensor([[[0.3, 0.6, 0.25, 0.9, 0.5]]])
    t = soft_targets(labels, 3, paste_class, paste_alpha)
    assert t.dtype == torch.float32 and t.shape == (1, 3, 1, 5)
    expected = [
        [0.0, 0.7, 0.3],  # 0.3 * onehot(2) + 0.7 * onehot(1)
        [0.0, 0.0, 1.0],  # paste over its own class: 0.6 + 0.4 on channel 2
        [0.0, 0.25, 0.0],  # paste over ignore: alpha * onehot(1) only
        [1.0, 0.0, 0.0],  # no paste (class 0): alpha is not used
        [0.0, 0.0, 0.0],  # ignore, no paste: all zero
    ]
    _assert_near(t[0, :, 0, :].T, torch.tensor(expected))
    plain = soft_targets(labels, 3)
    assert plain[0, :, 0, :].T.tolist() == [[0, 1, 0], [0, 0, 1], [0, 0, 0], [1, 0, 0], [0, 0, 0]]


def test_soft_targets_matches_loop_and_sums():
    gen = torch.Generator().manual_seed(2)
    labels = _random_labels(gen, (2, 4, 5), 5)
    paste_class = torch.randint(0, 5, (2, 4, 5), generator=gen)
    paste_alpha = torch.rand(2, 4, 5, generator=gen)
    t = soft_targets(labels, 5, paste_class, paste_alpha)
    ref = _ref_soft_targets(labels, 5, paste_class, paste_alpha)
    _assert_near(t.double(), ref)
    sums = t.sum(1)
    pasted, ignored = paste_class > 0, labels == 255
    _assert_near(sums[~ignored], torch.ones_like(sums[~ignored]))
    _assert_near(sums[ignored & pasted], paste_alpha[ignored & pasted])
    assert (sums[ignored & ~pasted] == 0).all()
    assert ((t >= 0) & (t <= 1 + 1e-6)).all()


def test_soft_targets_errors():
    labels = torch.tensor([[[0, 3]]])
    with pytest.raises(ValueError, match="channel indices"):
        soft_targets(labels, 3)
    with pytest.raises(ValueError, match="together"):
        soft_targets(labels, 4, paste_class=torch.zeros_like(labels))
    with pytest.raises(ValueError, match="paste_class"):
        soft_targets(labels, 4, torch.tensor([[[0, 4]]]), torch.ones(1, 1, 2))


# ------------------------------------------------------------------ bce_loss


def test_bce_hand_worked():
    # Logits 1x2x1x4, per pixel (channel 0, channel 1) and target vector:
    z = torch.tensor([[0.0, 0.0], [LN3, -LN3], [5.0, -7.0], [0.0, 0.0]]).T.reshape(1, 2, 1, 4)
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.5, 0.5]]).T.reshape(1, 2, 1, 4)
    # p0: log 2 + log 2 = 2 ln2; p1: sigmoid(ln3) = 3/4, so -log(1/4) twice = 4 ln2;
    # p2: all-zero target, excluded; p3: sigmoid(0) = 1/2, any target: 2 ln2.
    # Mean over 3 counted pixels: 8/3 ln2 = 1.848392.
    loss = bce_loss(z, t)
    assert loss.item() == pytest.approx(8 / 3 * LN2, rel=1e-6)


def test_bce_matches_loop():
    gen = torch.Generator().manual_seed(3)
    labels = _random_labels(gen, (2, 4, 5), 4, ignore_frac=0.3)
    paste_class = torch.randint(0, 4, (2, 4, 5), generator=gen)
    targets = soft_targets(labels, 4, paste_class, torch.rand(2, 4, 5, generator=gen))
    logits = torch.randn(2, 4, 4, 5, generator=gen) * 3
    assert bce_loss(logits, targets).item() == pytest.approx(_ref_bce(logits, targets), rel=1e-5)


def test_bce_all_ignore_is_zero_with_grad():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    targets = soft_targets(torch.full((2, 4, 4), 255), 3)
    loss = bce_loss(logits, targets)
    assert loss.item() == 0.0 and torch.isfinite(loss)
    loss.backward()
    assert logits.grad is not None and (logits.grad == 0).all()


def test_bce_shape_error():
    with pytest.raises(ValueError, match="one shape"):
        bce_loss(torch.zeros(1, 2, 3, 3), torch.zeros(1, 3, 3, 3))


# --------------------------------------------------------- distillation_mask


def test_distillation_mask_rules():
    labels = torch.tensor([[[0, 1, 2, 3, 255]]])  # 3 old channels (0, 1, 2), channel 3 is new
    assert distillation_mask(labels, 3).tolist() == [[[True, True, True, False, False]]]
    assert distillation_mask(labels, 3, "background").tolist() == [[[True, False, False, False, False]]]
    assert distillation_mask(labels, 3, "all").tolist() == [[[True, True, True, True, False]]]
    with pytest.raises(ValueError, match="not_new.*background.*all"):
        distillation_mask(labels, 3, "everything")


def test_distillation_mask_matches_loop():
    gen = torch.Generator().manual_seed(4)
    labels = _random_labels(gen, (2, 3, 4), 6)
    mask = distillation_mask(labels, 4)
    for (b, i, j), value in zip(torch.cartesian_prod(*map(torch.arange, labels.shape)).tolist(),
                                mask.reshape(-1).tolist()):
        label = int(labels[b, i, j])
        assert value == (label != 255 and label < 4)


# ----------------------------------------------------------------- rskd_loss


def _rskd_hand_inputs():
    # Old model: 2 channels (background, class 1); new model adds channel 2. Pixels:
    # p0: z = (0, 0, 0), y = (0, 0): den = ln3, l1 = -ln3, l_bg = ln2 - ln3, q = (1/2, 1/2)
    #     term = (1/2 (ln2 - ln3) + 1/2 (-ln3)) / 2, -term = ln3/2 - ln2/4 = 0.376019
    # p1: masked out (values irrelevant)
    # p2: z = (ln2, 0, 0), y = (ln3, 0): den = ln4, l1 = -ln4, l_bg = ln3 - ln4, q = (3/4, 1/4)
    #     -term = (ln4 - 3/4 ln3) / 2 = 0.281168
    new = torch.tensor([[0.0, 0.0, 0.0], [4.0, -2.0, 1.0], [LN2, 0.0, 0.0]]).T.reshape(1, 3, 1, 3)
    old = torch.tensor([[0.0, 0.0], [-3.0, 3.0], [LN3, 0.0]]).T.reshape(1, 2, 1, 3)
    mask = torch.tensor([[[True, False, True]]])
    p0 = LN3 / 2 - LN2 / 4
    p2 = (2 * LN2 - 0.75 * LN3) / 2
    return new, old, mask, p0, p2


def test_rskd_hand_worked():
    new, old, mask, p0, p2 = _rskd_hand_inputs()
    assert p0 == pytest.approx(0.376019, abs=1e-6) and p2 == pytest.approx(0.281168, abs=1e-6)
    assert rskd_loss(new, old, mask).item() == pytest.approx((p0 + p2) / 2, rel=1e-6)  # 0.328593
    assert rskd_loss(new, old, mask, normalize="all").item() == pytest.approx((p0 + p2) / 3, rel=1e-6)


def test_rskd_matches_loop():
    gen = torch.Generator().manual_seed(5)
    for co, cn in [(3, 4), (4, 7)]:
        new = torch.randn(2, cn, 3, 4, generator=gen) * 3
        old = torch.randn(2, co, 3, 4, generator=gen) * 3
        mask = torch.rand(2, 3, 4, generator=gen) < 0.6
        for normalize in ("mask", "all"):
            got = rskd_loss(new, old, mask, normalize).item()
            assert got == pytest.approx(_ref_rskd(new, old, mask, normalize), rel=1e-5)


def test_rskd_one_class_step_is_finite():
    # Cn = Co + 1 with extreme logits: l_bg always has channel 0 and the new channel.
    new = torch.tensor([-60.0, 60.0, -60.0]).reshape(1, 3, 1, 1)
    old = torch.tensor([50.0, -50.0]).reshape(1, 2, 1, 1)
    loss = rskd_loss(new, old, torch.ones(1, 1, 1, dtype=torch.bool))
    assert torch.isfinite(loss)
    # q ~ (1, 0): loss ~ -l_bg / 2 = (logsumexp(z) - logsumexp(-60, -60)) / 2 ~ (60 + 60 - ln2) / 2
    assert loss.item() == pytest.approx((120 - LN2) / 2, rel=1e-5)


def test_rskd_empty_mask_is_zero():
    new = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = rskd_loss(new, torch.randn(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert (new.grad == 0).all()


def test_rskd_errors():
    new, old, mask = torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2, 2), torch.ones(1, 2, 2, dtype=bool)
    with pytest.raises(ValueError, match="more channels"):
        rskd_loss(old, old, mask)
    with pytest.raises(ValueError, match="N, H, W"):
        rskd_loss(new, torch.zeros(1, 2, 2, 3), mask)
    with pytest.raises(ValueError, match="mask"):
        rskd_loss(new, old, mask[:, :1])
    with pytest.raises(ValueError, match="mask.*all"):
        rskd_loss(new, old, mask, normalize="pixels")


# ------------------------------------------------------------ gradients, AMP


def _training_loss(new, old, labels, paste_class, paste_alpha):
    co = old.shape[1]
    labels = pseudo_labels(labels, old)
    targets = soft_targets(labels, new.shape[1], paste_class, paste_alpha)
    return bce_loss(new, targets) + 5 * rskd_loss(new, old, distillation_mask(labels, co))


def _random_batch(seed, co=3, cn=5):
    gen = torch.Generator().manual_seed(seed)
    labels = _random_labels(gen, (2, 6, 7), cn)
    labels[labels < co] = 0
    paste_class = torch.randint(0, co, (2, 6, 7), generator=gen)
    paste_alpha = torch.rand(2, 6, 7, generator=gen)
    new = torch.randn(2, cn, 6, 7, generator=gen) * 2
    old = torch.randn(2, co, 6, 7, generator=gen) * 2
    return new, old, labels, paste_class, paste_alpha


def test_gradients_flow():
    new, old, labels, paste_class, paste_alpha = _random_batch(6)
    new.requires_grad_(True)
    old.requires_grad_(True)
    loss = _training_loss(new, old, labels, paste_class, paste_alpha)
    loss.backward()
    assert torch.isfinite(new.grad).all() and new.grad.abs().sum() > 0
    assert old.grad is None  # the old model is a fixed teacher


def test_bfloat16_under_autocast():
    new, old, labels, paste_class, paste_alpha = _random_batch(7)
    new16, old16 = new.bfloat16().requires_grad_(True), old.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss16 = _training_loss(new16, old16, labels, paste_class, paste_alpha)
        bce16 = bce_loss(new16, soft_targets(labels, 5))
    assert loss16.dtype == torch.float32 and torch.isfinite(loss16)
    loss16.backward()
    assert torch.isfinite(new16.grad.float()).all()
    # Same (bf16-rounded) values in float32: equal up to float32 rounding.
    rounded = _training_loss(new16.detach().float(), old16.float(), labels, paste_class, paste_alpha)
    assert loss16.item() == pytest.approx(rounded.item(), rel=1e-5)
    assert bce16.item() == pytest.approx(bce_loss(new16.detach().float(), soft_targets(labels, 5)).item(), rel=1e-5)
    # And close to the full-precision loss.
    assert loss16.item() == pytest.approx(_training_loss(new, old, labels, paste_class, paste_alpha).item(), rel=2e-2)
