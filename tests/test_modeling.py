"""Tests of the Detectron2 model: backbone, IncrementalHead, EIRSegmentor and step growth."""
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DETECTRON2_SKIP_REASON, load_script
from torch import nn

pytest.importorskip("detectron2", reason=DETECTRON2_SKIP_REASON)

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import LazyCall as L  # noqa: E402
from detectron2.config import instantiate  # noqa: E402
from detectron2.layers import ASPP, FrozenBatchNorm2d  # noqa: E402

from eir.modeling.backbone import SMALL_RESNET, build_resnet_deeplab  # noqa: E402
from eir.modeling.head import IncrementalHead  # noqa: E402
from eir.modeling.meta_arch import (  # noqa: E402
    EIRSegmentor,
    build_param_groups,
    freeze_for_incremental,
    load_previous_step,
    load_step_weights,
)
from eir.tasks import build_task  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny convolutions run faster on one thread (and do not fight the rest of the suite)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(step_sizes, channel_classes, num_classes=10, seed=0, **head_kwargs):
    torch.manual_seed(seed)
    head_kwargs.setdefault("channels", 16)
    return EIRSegmentor(
        backbone=build_resnet_deeplab(**SMALL_RESNET),
        head=IncrementalHead(in_channels=256, step_sizes=step_sizes, **head_kwargs),
        pixel_mean=MEAN,
        pixel_std=STD,
        channel_classes=channel_classes,
        num_classes=num_classes,
    )


def eir_method(new_head_init):
    from eir.methods.eir import EIR
    from eir.modeling.criterion import EIRCriterion

    return EIR(memory=0, storage="instance", paste=None, criterion=EIRCriterion(), new_head_init=new_head_init,
               prepass=dict(tau=0.7, short_side=8, stride=1))


def task_model(task, t, seed=0, **head_kwargs):
    return make_model(
        task.step_sizes(t), task.channel_classes(t), task.num_classes, seed=seed, **head_kwargs
    )


def images(*sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)} for h, w in sizes]


def scramble(model, seed=1):
    """Give every parameter and BN buffer non-default values (so copies are checkable)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                t.fill_(7)
            elif name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            else:
                t.add_(0.05 * torch.randn(t.shape, generator=g))


# ------------------------------------------------------------------ backbone
def test_res5_output_stride_16_by_dilation():
    bb = build_resnet_deeplab(**SMALL_RESNET)
    assert bb.output_shape()["res5"].stride == 16
    assert bb(torch.zeros(1, 3, 64, 64))["res5"].shape == (1, 256, 4, 4)
    for block in bb.res5:
        assert block.conv2.dilation == (2, 2) and block.conv2.stride == (1, 1)
    plain = build_resnet_deeplab(output_stride=32, **SMALL_RESNET)
    assert plain(torch.zeros(1, 3, 64, 64))["res5"].shape == (1, 256, 2, 2)
    fine = build_resnet_deeplab(output_stride=8, **SMALL_RESNET)
    assert fine.output_shape()["res5"].stride == 8
    assert fine(torch.zeros(1, 3, 64, 64))["res5"].shape == (1, 256, 8, 8)
    assert [b.conv2.dilation for b in fine.res4] == [(2, 2)]
    assert [b.conv2.dilation for b in fine.res5] == [(4, 4)]


def test_backbone_rejects_bad_arguments():
    with pytest.raises(ValueError, match="depth"):
        build_resnet_deeplab(depth=18)
    with pytest.raises(ValueError, match="output_stride"):
        build_resnet_deeplab(output_stride=4, **SMALL_RESNET)
    with pytest.raises(ValueError, match="num_blocks"):
        build_resnet_deeplab(num_blocks=(1, 1, 1))


# ---------------------------------------------------------------------- head
def test_output_channels_follow_the_task():
    task = build_task("synthetic", "4-2")  # steps 1-4 / 5-6 / 7-8 / 9-10
    for t in range(task.num_steps):
        model = task_model(task, t)
        assert model.head.step_sizes == task.step_sizes(t)
        model.train()
        z = model(images((40, 48)))
        assert z.shape == (1, task.num_channels(t), 40, 48)
        model.eval()
        with torch.no_grad():
            (out,) = model(images((40, 48)))
        assert out["sem_seg"].shape == (task.num_classes + 1, 40, 48)
    assert [k for k in model.state_dict() if k.startswith("head.cls.")] == [
        f"head.cls.{s}.{p}" for s in range(4) for p in ("weight", "bias")
    ]


def test_head_logits_are_aux_then_step_classifiers():
    head = IncrementalHead(in_channels=8, step_sizes=[2, 3], channels=4, aspp_dilations=(1, 2, 3))
    head.eval()
    x = torch.randn(2, 8, 5, 6)
    z = head(x)
    feat = head.features(x)
    ref = torch.cat([head.aux(feat), head.cls[0](feat), head.cls[1](feat)], dim=1)
    torch.testing.assert_close(z, ref, rtol=0, atol=0)
    assert z.shape == (2, 6, 5, 6) and head.num_channels == 6


def test_aux_classifier_does_not_train_the_body():
    model = make_model([3, 2], [0, 1, 2, 3, 4, 5])
    model.train()
    model.logits(model.preprocess_image(images((48, 40), (48, 40))).tensor)[:, 0].sum().backward()
    assert model.head.aux.weight.grad is not None and model.head.aux.weight.grad.abs().sum() > 0
    body = list(model.backbone.parameters()) + list(model.head.aspp.parameters())
    body += list(model.head.conv.parameters()) + list(model.head.cls.parameters())
    assert all(p.grad is None or not p.grad.any() for p in body)
    # the class channels, in contrast, do reach the body
    model.zero_grad(set_to_none=True)
    model.logits(model.preprocess_image(images((48, 40), (48, 40))).tensor)[:, 1].sum().backward()
    assert model.backbone.stem.conv1.weight.grad.abs().sum() > 0


def test_add_step_random_and_aux_init():
    head = IncrementalHead(in_channels=8, step_sizes=[2], channels=4)
    new = head.add_step(3, init="aux")
    assert new.weight.shape == (3, 4, 1, 1) and head.step_sizes == [2, 3]
    for row in range(3):
        assert torch.equal(new.weight[row], head.aux.weight[0])
        assert torch.equal(new.bias[row], head.aux.bias[0])
    rnd = head.add_step(400, init="random")
    assert torch.count_nonzero(rnd.bias) == 0
    assert abs(rnd.weight.std().item() - 0.01) < 0.002
    with pytest.raises(ValueError, match="init"):
        head.add_step(1, init="zeros")
    with pytest.raises(ValueError, match="step_sizes"):
        IncrementalHead(in_channels=8, step_sizes=[2, 0])


def test_prior_prob_sets_the_initial_sigmoid_scores():
    head = IncrementalHead(in_channels=8, step_sizes=[2], channels=4, prior_prob=0.01)
    # log(0.01 / 0.99) = -4.59512; sigmoid of it is the prior itself.
    assert torch.allclose(head.cls[0].bias, torch.full((2,), -4.59512), atol=1e-5)
    assert torch.allclose(head.aux.bias, torch.tensor([4.59512]), atol=1e-5)
    new = head.add_step(3, init="random")
    assert torch.allclose(torch.sigmoid(new.bias), torch.full((3,), 0.01))
    with pytest.raises(ValueError, match="prior_prob"):
        IncrementalHead(in_channels=8, step_sizes=[2], prior_prob=1.0)


# ---------------------------------------------------------------- meta-arch
def test_odd_input_sizes_keep_each_images_size():
    model = make_model([2], [0, 1, 2], num_classes=2)
    batch = images((97, 61), (50, 70))
    model.train()
    assert model(batch).shape == (2, 3, 97, 70)  # padded batch size
    model.eval()
    with torch.no_grad():
        out = model(batch)
        assert [o["sem_seg"].shape for o in out] == [(3, 97, 61), (3, 50, 70)]
        # the eval output of image 1 is its crop of the padded logits, scored
        z = model.logits(model.preprocess_image(batch).tensor)
        torch.testing.assert_close(out[1]["sem_seg"], model.class_scores(z[1, :, :50, :70]))
        # "height"/"width" ask for another output size
        batch[0].update(height=30, width=20)
        assert model(batch)[0]["sem_seg"].shape == (3, 30, 20)


def test_padding_is_the_mean_colour():
    model = make_model([2], [0, 1, 2], num_classes=2)
    batch = images((9, 7), (5, 11))
    x = model.preprocess_image(batch)
    assert x.tensor.shape == (2, 3, 9, 11) and x.image_sizes == [(9, 7), (5, 11)]
    assert not x.tensor[1, :, 5:].any() and not x.tensor[0, :, :, 7:].any()
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    torch.testing.assert_close(x.tensor[0, :, :9, :7], (batch[0]["image"].float() - mean) / std)


class _Features(nn.Module):
    def forward(self, x):
        return {"res5": x}


class _FixedLogits(nn.Module):
    """A head that returns hand-made logits (at input resolution, so nothing is resampled)."""

    def __init__(self, z):
        super().__init__()
        self.z = z

    def forward(self, x):
        return self.z


def stub_model(z, channel_classes, num_classes):
    model = EIRSegmentor(
        backbone=_Features(),
        head=_FixedLogits(z),
        pixel_mean=MEAN,
        pixel_std=STD,
        channel_classes=channel_classes,
        num_classes=num_classes,
    )
    return model.eval()


def sigmoid_rule(z, channel_classes):
    """Independent EIR rule on channel logits [C, H, W]: best class by sigmoid, bg unless > 0.5."""
    z = z.double().numpy()
    probs = 1.0 / (1.0 + np.exp(-z[1:]))
    best = probs.argmax(0)
    pred = np.asarray(channel_classes[1:])[best]
    return np.where(probs.max(0) > 0.5, pred, 0)


def test_eval_argmax_is_the_sigmoid_rule():
    g = torch.Generator().manual_seed(3)
    channel_classes = [0, 7, 2, 5, 9]  # a custom class order: channel 1 holds class 7
    z = 3 * torch.randn(2, 5, 13, 17, generator=g)
    model = stub_model(z, channel_classes, num_classes=9)
    with torch.no_grad():
        out = model(images((13, 17), (13, 17)))
    for i in range(2):
        scores = out[i]["sem_seg"]
        assert scores.dtype == torch.float32 and scores.shape == (10, 13, 17)
        np.testing.assert_array_equal(scores.argmax(0).numpy(), sigmoid_rule(z[i], channel_classes))
        assert torch.all(scores[0] == 0.5)
        torch.testing.assert_close(scores[7], torch.sigmoid(z[i, 1]))
        for unseen in (1, 3, 4, 6, 8):
            assert not scores[unseen].any()
    pred = out[0]["sem_seg"].argmax(0)
    assert set(pred.unique().tolist()) == {0, 2, 5, 7, 9}  # every seen class and bg occur


def test_tie_at_half_goes_to_background_and_unseen_never_win():
    # channel 1 -> class 3, channel 2 -> class 1; classes 2 and 4 not seen yet
    z = torch.full((1, 3, 1, 4), -50.0)
    z[0, 1, 0, 0] = 0.0  # exactly 0.5: a tie with background -> background
    z[0, 1, 0, 1] = 1e-3  # just above 0.5 -> class 3
    z[0, 1, 0, 2] = z[0, 2, 0, 2] = 2.0  # equal scores -> the lower class id
    z[0, 0] = 100.0  # the aux channel is not used at inference
    model = stub_model(z, [0, 3, 1], num_classes=4)
    with torch.no_grad():
        (out,) = model(images((1, 4)))
    assert out["sem_seg"].argmax(0)[0].tolist() == [0, 3, 1, 0]
    assert not out["sem_seg"][[2, 4]].any()


def test_channel_classes_are_validated():
    with pytest.raises(ValueError, match="start with 0"):
        make_model([2], [1, 2, 3])
    with pytest.raises(ValueError, match="outside"):
        make_model([2], [0, 1, 11], num_classes=10)
    with pytest.raises(ValueError, match="twice"):
        make_model([2], [0, 1, 1])
    with pytest.raises(ValueError, match="output channels"):
        make_model([2, 1], [0, 1, 2])


def test_segmentor_add_step_grows_in_place():
    model = make_model([2], [0, 4, 1], num_classes=5)
    model.add_step([5, 2], init="aux")
    assert model.channel_classes == [0, 4, 1, 5, 2] and model.head.step_sizes == [2, 2]
    assert model.channel_to_class.tolist() == [0, 4, 1, 5, 2]
    with pytest.raises(ValueError, match="twice"):
        model.add_step([4])
    assert model.head.step_sizes == [2, 2] and len(model.head.cls) == 2


# ---------------------------------------------------------------- step growth
def test_load_previous_step_keeps_old_weights_bit_exact():
    task = build_task("synthetic", "4-2")
    old = task_model(task, 0, seed=0)
    scramble(old)
    old_sd = {k: v.clone() for k, v in old.state_dict().items()}
    for init in ("aux", "random"):
        new = task_model(task, 1, seed=5)
        built = new.head.cls[1].weight.detach().clone()
        load_previous_step(new, old_sd)
        assert torch.equal(new.head.cls[1].weight, built)  # the new classifier is the method's to set
        eir_method(new_head_init=init).init_new_classifier(new.head, 1)
        sd = new.state_dict()
        for k, v in old_sd.items():
            assert torch.equal(sd[k], v), k
        w, b = new.head.cls[1].weight, new.head.cls[1].bias
        if init == "aux":
            assert torch.equal(w, old.head.aux.weight.expand(2, -1, -1, -1))
            assert torch.equal(b, old.head.aux.bias.expand(2))
        else:
            assert not torch.equal(w[0], old.head.aux.weight[0]) and not b.any()
    # a Detectron2 checkpoint of numpy arrays loads the same
    new = task_model(task, 1, seed=5)
    load_previous_step(new, {"model": {k: v.numpy() for k, v in old_sd.items()}})
    assert all(torch.equal(new.state_dict()[k], v) for k, v in old_sd.items())


def test_load_previous_step_from_a_frozen_checkpoint(tmp_path):
    """Step t>=1 checkpoints come from frozen models (no num_batches_tracked); they still load."""
    task = build_task("synthetic", "4-2")
    step1 = freeze_for_incremental(task_model(task, 1))
    scramble(step1)
    DetectionCheckpointer(step1, save_dir=str(tmp_path)).save("model_step1")
    ckpt = torch.load(tmp_path / "model_step1.pth", weights_only=False)
    step2 = task_model(task, 2)
    load_previous_step(step2, ckpt)
    for k, v in step1.state_dict().items():
        assert torch.equal(step2.state_dict()[k], v), k
    # Detectron2's checkpointer round-trips a model of the same step
    again = freeze_for_incremental(task_model(task, 1, seed=9))
    DetectionCheckpointer(again).load(str(tmp_path / "model_step1.pth"))
    for k, v in step1.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    fresh = task_model(task, 1, seed=9)
    load_step_weights(fresh, ckpt)
    for k, v in step1.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


def test_mismatched_checkpoints_are_rejected_clearly():
    task = build_task("synthetic", "4-2")
    step1 = task_model(task, 1)
    # a checkpoint of the same step (it already has head.cls.1)
    with pytest.raises(ValueError, match=r"unexpected keys \(2\): head\.cls\.1\.bias, head\.cls\.1\.weight"):
        load_previous_step(task_model(task, 1), step1.state_dict())
    # a checkpoint of another task: step 0 had 6 classes, not 4
    other = build_task("synthetic", "6-1")
    with pytest.raises(ValueError, match=r"head\.cls\.0\.weight: checkpoint \(6, 16, 1, 1\) vs model \(4, 16, 1, 1\)") as err:
        load_previous_step(step1, task_model(other, 0).state_dict())
    assert "checkpoint [6], expected [4]" in str(err.value)
    # a missing backbone tensor
    sd = task_model(task, 0).state_dict()
    del sd["backbone.res3.0.conv2.weight"]
    with pytest.raises(ValueError, match=r"missing keys \(1\): backbone\.res3\.0\.conv2\.weight"):
        load_previous_step(step1, sd)
    with pytest.raises(ValueError, match="step >= 1"):
        load_previous_step(task_model(task, 0), task_model(task, 0).state_dict())
    with pytest.raises(ValueError, match="unexpected keys"):
        load_step_weights(task_model(task, 0), step1.state_dict())


def test_freezing_survives_train_mode():
    model = make_model([2, 1], [0, 1, 2, 3], aspp_dropout=0.5)
    scramble(model)
    freeze_for_incremental(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules()) > 10
    assert all(m.dropout == 0.0 for m in model.modules() if isinstance(m, ASPP))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    x = model.preprocess_image(images((40, 40), (40, 40))).tensor
    z1 = model.logits(x)
    z2 = model.logits(x)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    torch.testing.assert_close(z1, z2, rtol=0, atol=0)  # no dropout, no batch statistics
    model.eval()
    torch.testing.assert_close(model.logits(x), z1)
    names = {n for g in build_param_groups(model, 1e-4, 1e-4, step=1) for n in _names(model, g)}
    assert names and not any(".norm." in n for n in names)


def _names(model, group):
    by_id = {id(p): n for n, p in model.named_parameters()}
    return [by_id[id(p)] for p in group["params"]]


def test_param_groups_lr_and_weight_decay():
    model = make_model([2], [0, 1, 2])
    groups = build_param_groups(model, base_lr=1e-3, weight_decay=1e-4, step=0)
    table = {g["name"]: (g["lr"], g["weight_decay"], set(_names(model, g))) for g in groups}
    bb = {n for n, _ in model.named_parameters() if n.startswith("backbone.")}
    new = {"head.cls.0.weight", "head.cls.0.bias"}
    head = {n for n, _ in model.named_parameters() if n.startswith("head.")} - new
    assert table == {
        "backbone": (1e-3, 1e-4, bb),
        "head": (pytest.approx(1e-2), 1e-4, head),
        "head_new": (pytest.approx(1e-2), 1e-4, new),
    }
    assert "head.aux.weight" in head and "head.aspp.project.weight" in head

    model = make_model([2, 3], [0, 1, 2, 3, 4, 5])
    freeze_for_incremental(model)
    model.backbone.stem.conv1.weight.requires_grad_(False)
    groups = build_param_groups(model, base_lr=1e-4, weight_decay=1e-4, step=1, head_lr_mult=10.0)
    table = {g["name"]: (g["lr"], g["weight_decay"], set(_names(model, g))) for g in groups}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    new = {"head.cls.1.weight", "head.cls.1.bias"}
    assert table["backbone"][:2] == (1e-4, 0.0)
    assert table["head"][:2] == (pytest.approx(1e-3), 0.0)
    assert table["head_new"] == (pytest.approx(1e-3), 1e-4, new)
    assert "head.cls.0.weight" in table["head"][2]
    assert "backbone.stem.conv1.weight" not in table["backbone"][2]
    assert set.union(*(t[2] for t in table.values())) == trainable
    assert sum(len(g["params"]) for g in groups) == len(trainable)  # no duplicates
    opt = torch.optim.SGD(groups, lr=1e-4, momentum=0.9, nesterov=True)
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in groups]
    with pytest.raises(ValueError, match="step=0"):
        build_param_groups(model, 1e-4, 1e-4, step=0)


# --------------------------------------------------------------- configs
def test_lazy_config_builds_the_model():
    cfg = L(EIRSegmentor)(
        backbone=L(build_resnet_deeplab)(**SMALL_RESNET),
        head=L(IncrementalHead)(in_channels=256, step_sizes=[4, 2], channels=8),
        pixel_mean=MEAN,
        pixel_std=STD,
        channel_classes=[0, 1, 2, 3, 4, 5, 6],
        num_classes=10,
    )
    model = instantiate(cfg)
    assert isinstance(model, EIRSegmentor) and model.num_channels == 7


# -------------------------------------------------------------- converter
def _load_converter():
    return load_script("tools/convert_torchvision_r101.py")


def _expected_name(key):
    """Independent reference of the renaming, by plain substitutions."""
    key = key.replace("conv1.", "stem.conv1.", 1) if key.startswith("conv1.") else key
    key = key.replace("bn1.", "stem.conv1.norm.", 1) if key.startswith("bn1.") else key
    for i in range(1, 5):
        if key.startswith(f"layer{i}."):
            key = f"res{i + 1}." + key[len(f"layer{i}.") :]
    key = key.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")
    return re.sub(r"\.bn([123])\.", r".conv\1.norm.", key)


@pytest.mark.slow
def test_convert_torchvision_r101(tmp_path):
    torchvision = pytest.importorskip("torchvision", reason="torchvision builds the reference ResNet")
    torch.manual_seed(0)
    tv = torchvision.models.resnet101(weights=None)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in tv.state_dict().items():
            if name.endswith("num_batches_tracked"):
                t.fill_(11)
            elif "bn" in name or "downsample.1" in name:  # BN starts constant: make it distinct
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
    src = tv.state_dict()
    torch.save(src, tmp_path / "r101.pth")
    conv = _load_converter()
    assert conv.main([str(tmp_path / "r101.pth"), str(tmp_path / "r101.pkl")]) == 0
    with open(tmp_path / "r101.pkl", "rb") as f:
        data = pickle.load(f)
    assert data["matching_heuristics"] is False and "__author__" in data
    converted = data["model"]
    assert len(converted) == len(src) - 2  # fc dropped
    for key, value in src.items():
        if key.startswith("fc."):
            continue
        out = converted["backbone." + _expected_name(key)]
        assert isinstance(out, np.ndarray)
        np.testing.assert_array_equal(out, value.numpy())
    assert "backbone.res5.2.conv3.norm.running_var" in converted
    assert conv.blocks_per_stage(converted) == [3, 4, 23, 3]

    # loads into the segmentor with only the head missing
    model = EIRSegmentor(
        backbone=build_resnet_deeplab(101),
        head=IncrementalHead(in_channels=2048, step_sizes=[15], channels=8),
        pixel_mean=MEAN, pixel_std=STD, channel_classes=list(range(16)), num_classes=20,
    )  # fmt: skip
    DetectionCheckpointer(model).load(str(tmp_path / "r101.pkl"))
    sd = model.state_dict()
    assert set(converted) <= set(sd)
    assert all(k.startswith("head.") for k in set(sd) - set(converted))
    for k, v in converted.items():
        np.testing.assert_array_equal(sd[k].numpy(), v, err_msg=k)

    # same function: torchvision's layer2 == Detectron2's res3 (stem, shortcuts, stride in the 3x3)
    body = model.backbone.eval()
    tv.eval()
    x = torch.randn(1, 3, 32, 32, generator=g)
    with torch.no_grad():
        ref = tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))))
        out = body.res3(body.res2(body.stem(x)))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    # a bare backbone takes prefix ""
    bare = conv.torchvision_to_detectron2(src, prefix="")
    assert set(bare) == {k[len("backbone.") :] for k in converted}


def test_converter_rejects_foreign_state_dicts():
    conv = _load_converter()
    with pytest.raises(ValueError, match="not a torchvision bottleneck ResNet"):
        conv.torchvision_to_detectron2({"features.0.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="only a weight"):
        conv.torchvision_to_detectron2({"conv1.bias": torch.zeros(1)})


# ---------------------------------------------------------------- BatchNorm across processes
def _norm_kinds(model):
    """How many BatchNorm layers of each class ``model`` has."""
    kinds = {}
    for m in model.modules():
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d)):
            kinds[type(m).__name__] = kinds.get(type(m).__name__, 0) + 1
    return kinds


# BatchNorm layers: the stem, 3 per bottleneck block, 1 per stage's shortcut; in the head,
# ASPP's 1x1 and three atrous branches and its projection (Detectron2's image pooling has
# none), then the 3x3 conv. ResNet-101: 1 + 3 * (3 + 4 + 23 + 3) + 4 + 6 = 110; the synthetic
# ResNet (one block per stage): 1 + 3 * 4 + 4 + 6 = 23.
@pytest.mark.parametrize(
    ("config", "num_norms", "sync_class"),
    [("voc/15-1_overlap.py", 110, "SyncBatchNorm"), ("synthetic/4-2_overlap.py", 23, "NaiveSyncBatchNorm")],
)
def test_batchnorm_synchronised_at_step0_of_multi_process_runs(config, num_norms, sync_class, monkeypatch):
    """Step 0 with 2 processes: every BatchNorm synchronised (the release's SyncBN); one process:
    plain BatchNorm; step 1: frozen BatchNorm. The state dict keys stay the same."""
    from detectron2.config import LazyConfig
    from detectron2.utils import comm

    from eir.engine.builders import build_run_task, build_step_model

    cfg = LazyConfig.load(str(ROOT / "projects/EIR/configs" / config))
    task = build_run_task(cfg)

    def build(step, world_size):
        monkeypatch.setattr(comm, "get_world_size", lambda: world_size)
        with torch.device("meta"):
            return build_step_model(cfg, task, step, "meta")

    one, two, later, later_one = build(0, 1), build(0, 2), build(1, 2), build(1, 1)
    assert _norm_kinds(one) == {"BatchNorm2d": num_norms}
    assert _norm_kinds(two) == {sync_class: num_norms}
    assert _norm_kinds(later) == _norm_kinds(later_one) == {"FrozenBatchNorm2d": num_norms}
    keys = set(one.state_dict())
    assert set(two.state_dict()) == keys
    new_head = {"head.cls.1.weight", "head.cls.1.bias"}
    assert set(later.state_dict()) == keys | new_head


def test_step0_syncbn_weights_load_into_the_frozen_step1_model(monkeypatch):
    from detectron2.utils import comm

    task = build_task("synthetic", "4-2")
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    torch.manual_seed(0)
    step0 = EIRSegmentor(
        backbone=build_resnet_deeplab(norm="SyncBN", **SMALL_RESNET),
        head=IncrementalHead(in_channels=256, step_sizes=task.step_sizes(0), channels=16, norm="SyncBN"),
        pixel_mean=MEAN,
        pixel_std=STD,
        channel_classes=task.channel_classes(0),
        num_classes=10,
    )
    assert _norm_kinds(step0) == {"SyncBatchNorm": 23}
    scramble(step0)
    step1 = freeze_for_incremental(task_model(task, 1))
    load_previous_step(step1, step0.state_dict())
    sd1 = step1.state_dict()
    for k, v in step0.state_dict().items():
        assert torch.equal(sd1[k], v), k
    frozen = step1.backbone.res4[0].conv2.norm
    synced = step0.backbone.res4[0].conv2.norm
    assert isinstance(frozen, FrozenBatchNorm2d)
    assert torch.equal(frozen.running_var, synced.running_var) and torch.equal(frozen.weight, synced.weight)


def test_resolve_norm():
    from eir.modeling.norm import resolve_norm

    assert [resolve_norm(n, 1) for n in ("SyncBN", "naiveSyncBN", "BN", "GN")] == ["BN", "BN", "BN", "GN"]
    assert [resolve_norm(n, 8) for n in ("SyncBN", "naiveSyncBN", "BN")] == ["SyncBN", "naiveSyncBN", "BN"]


def test_float16_autocast_upsamples_the_logits_in_float32():
    """Under float16 autocast (CUDA's AMP, emulated on the CPU) the head's low-resolution logits
    are upsampled in float32: the full-resolution logits the losses read are float32 (float16
    before), and the gradient of each low-resolution logit is the exact sum rounded once to
    float16 (checked against float64). On CUDA a float16 upsampling also accumulated that sum in
    float16 (0.5 % off); the CPU's float16 kernel accumulates in float32, so only the dtype
    tells the two apart here."""
    import torch.nn.functional as F

    model = make_model([2], [0, 1, 2], num_classes=2).eval()
    batch = model.preprocess_image(images((40, 40))).tensor
    captured = {}
    model.head.register_forward_hook(lambda m, i, out: captured.update(z=out))
    with torch.autocast("cpu", dtype=torch.float16):
        z_full = model.logits(batch)
    assert z_full.dtype == torch.float32
    low = captured["z"]
    low.retain_grad()
    weights = torch.linspace(-1, 1, z_full.numel()).reshape(z_full.shape)
    (z_full * weights).sum().backward()
    reference = low.detach().double().requires_grad_()
    (F.interpolate(reference, size=(40, 40), mode="bilinear", align_corners=False) * weights.double()).sum().backward()
    # The low-resolution logits are float16, so is their gradient: it must be the exact sum
    # rounded once to float16 (within half a float16 step and float32's accumulation error).
    exact = reference.grad.numpy()
    step = np.abs(np.spacing(np.abs(exact).astype(np.float16))).astype(np.float64)
    error = np.abs(low.grad.double().numpy() - exact)
    assert (error <= 0.5 * step + 1e-5).all(), (error / step).max()
