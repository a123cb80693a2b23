"""benchmarks/paste_diagnostics.py's --focus arithmetic: pixel groups, pushes on a class logit,
recorded paste choices (core only, stub models; the whole tool runs on a finished run in
tests/test_baselines.py)."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import load_script

import eir.data.paste as paste
from eir.modeling.criterion import EIRCriterion
from eir.tasks import build_task

diag = load_script("benchmarks/paste_diagnostics.py")


class StubModel:
    """A 1x1 linear map of the image's channels to ``channels`` logits (no Detectron2)."""

    def __init__(self, channels, seed):
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(channels, 3, generator=g)
        self.bias = torch.randn(channels, generator=g)

    def preprocess_image(self, batch):
        return SimpleNamespace(tensor=torch.stack([d["image"].float() / 255 - 0.5 for d in batch]))

    def logits(self, x):
        return torch.einsum("kc,nchw->nkhw", self.weight, x) + self.bias[None, :, None, None]


def _samples(task, step, n=20, size=12, seed=0):
    """Samples with the mapper's keys: labels of the step's classes, 255, old classes (as a
    replayed entry would hold), pastes with alphas."""
    rng = np.random.default_rng(seed)
    values = np.array([0, 0, 0, 255] + task.new_classes(step) + task.old_classes(step)[:2])
    out = []
    for _ in range(n):
        label = rng.choice(values, size=(size, size))
        pc = np.where(rng.random((size, size)) < 0.3, rng.choice(task.old_classes(step), size=(size, size)), 0)
        out.append({
            "image": torch.as_tensor(rng.integers(0, 256, (3, size, size)), dtype=torch.uint8),
            "sem_seg": torch.as_tensor(label, dtype=torch.long),
            "paste_class": torch.as_tensor(pc, dtype=torch.long),
            "paste_alpha": torch.as_tensor(np.where(pc > 0, rng.random((size, size)), 0), dtype=torch.float32),
        })
    return out


def test_pixel_groups_take_each_pixel_once_in_order():
    names = ["background", "disc", "star", "crescent"]
    labels = torch.tensor([[[3, 3, 2, 0, 0, 255, 255, 1]]])
    hard = torch.tensor([[[3, 3, 2, 1, 0, 255, 255, 1]]])
    pc = torch.tensor([[[0, 1, 2, 0, 0, 0, 2, 0]]])
    groups, index = diag.pixel_groups(labels, hard, pc, 3, torch.tensor([3]), names)
    got = [groups[i] if i >= 0 else None for i in index.flatten().tolist()]
    assert got == ["crescent, not pasted over", "crescent, under a paste", "pasted star", "pseudo-labelled disc",
                   "background", None, "pasted star", "labelled disc (replayed)"]


@pytest.mark.parametrize("criterion", [EIRCriterion(), EIRCriterion(tau=None), EIRCriterion(w_kd=0)])
def test_pushes_add_up_to_the_loss_derivative_of_a_class_logit_shift(criterion):
    """The pushes summed over groups are minus each term's derivative for a uniform shift of the
    class logit: computed here without the tool's grouping."""
    task, step = build_task("synthetic", "4-2"), 2
    crescent = task.class_names.index("crescent")
    model, old = StubModel(task.num_channels(step), 0), StubModel(task.num_channels(step - 1), 1)
    samples = _samples(task, step)
    f = diag.class_forces(model, old, samples, criterion, task, step, crescent)
    lut = torch.as_tensor(task.class_to_channel_lut(step))
    channel = int(lut[crescent])
    want = {}
    for batch in diag.batches(samples):
        x = model.preprocess_image(batch).tensor
        shift = torch.zeros(1, requires_grad=True)
        z = model.logits(x) + shift * torch.nn.functional.one_hot(torch.tensor(channel), task.num_channels(step))[
            None, :, None, None]
        labels = lut[torch.stack([d["sem_seg"] for d in batch])]
        pc = lut[torch.stack([d["paste_class"] for d in batch])]
        pa = torch.stack([d["paste_alpha"] for d in batch])
        losses = criterion(z, labels, pc, pa, old.logits(x) if criterion.needs_old_model else None)
        for name, term in losses.items():
            want[name] = want.get(name, 0.0) - float(torch.autograd.grad(term, shift, retain_graph=True)[0])
    assert f["batches"] == 2 and set(want) == {k for k in f if k.startswith("loss_")}
    for name, value in want.items():
        assert f[name].sum() / f["batches"] == pytest.approx(value / f["batches"], rel=1e-4, abs=1e-7)
    counted = sum(int(((d["sem_seg"] != 255) | (d["paste_class"] > 0)).sum()) for d in samples)
    assert f["pixels"].sum() == counted
    mine = f["groups"].index("crescent, not pasted over")
    assert f["target"][mine] == f["pixels"][mine] > 0  # its own pixels: target 1


def test_recorded_choices_split_detections_from_the_fallback():
    cfg = paste.PasteConfig(min_found=2, fallback_total=3)
    with diag.recorded_choices() as calls:
        chosen = paste.choose_classes([4, 9], [1, 2, 4], {1, 2, 4}, cfg, np.random.default_rng(0))
        paste.choose_classes([1, 2], [1, 2, 4], {1, 2, 4}, cfg, np.random.default_rng(0))
    assert calls[0] == ([4], chosen[1:]) and len(chosen) == 3  # 9 has no bank entry
    assert calls[1] == ([1, 2], [])
    assert paste.choose_classes.__name__ == "choose_classes"  # restored


@pytest.mark.parametrize("rule", ["all", "old_channels", "none"])
def test_loss_parts_add_up_to_the_criterions_bce(rule):
    task, step = build_task("synthetic", "4-2"), 2
    criterion = EIRCriterion(pasted_bce=rule)
    model, old = StubModel(task.num_channels(step), 0), StubModel(task.num_channels(step - 1), 1)
    batch = _samples(task, step, n=4)
    lut = torch.as_tensor(task.class_to_channel_lut(step))
    x = model.preprocess_image(batch).tensor
    labels = lut[torch.stack([d["sem_seg"] for d in batch])]
    pc = lut[torch.stack([d["paste_class"] for d in batch])]
    pa = torch.stack([d["paste_alpha"] for d in batch])
    parts = diag.loss_parts(criterion, model.logits(x), labels, pc, pa, old.logits(x), int(lut[8]))
    losses = criterion(model.logits(x), labels, pc, pa, old.logits(x))
    bce = sum(v for k, v in parts.items() if k.startswith("BCE"))
    assert float(bce) == pytest.approx(float(losses["loss_bce"]), rel=1e-5)
    assert float(parts["RSKD"]) == pytest.approx(float(losses["loss_rskd"]))
