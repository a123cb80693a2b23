#!/usr/bin/env python
"""What does pasting do to an incremental step? Numbers behind the synthetic benchmark's reading.

For step ``--step`` (t >= 1) of a finished EIR run, rebuilds the step's training samples as
its loader made them (the run's own runner: its config, the bank of step t-1, the prepass
maps of step t, the step's training mapper with pasting; ``--num-images`` new images and
bank entries drawn with ``--seed``) and reports:

* **pasted share**: of the pixels that count in the BCE (target not all zero), the share
  under a pasted instance (``paste_class > 0``);
* **old model on pastes**: of the pixels under a paste with alpha >= 0.5, the share the
  step t-1 model predicts as the pasted class; beside it, the share of the natural
  old-class pixels of the validation images (labels of the classes seen at t-1) it
  predicts right: how recognisable the pastes are to the model that pseudo-labels them;
* for the step-t model of each run in ``--runs`` (e.g. EIR, image replay, EIR without
  pasting, from the same step-0 model): **new-class accuracy**, the share of the pixels
  labelled with a class of step t (and not pasted over) predicted as that class, and the
  mean per-pixel BCE (summed over channels) on pasted and on unpasted pixels;
* with ``--where CLASS``, for the step-t model of each run in ``--runs``: where the
  validation pixels labelled CLASS go (the share predicted as each class, largest first),
  to see which class or the background takes an old class that a step loses.

With ``--focus CLASS`` it reports instead what the step's training does to the channel of
CLASS (any class seen by step t), on the run's own training samples and criterion: the
classes pasted into the samples that hold CLASS (from the old model's detections and from
the fallback), its pixels under a paste, what the step t-1 model predicts on its pixels,
and for each model of ``--checkpoints`` the pixels, mean score, BCE target and each loss
term's push on the CLASS logit per pixel group, then the first-order effect of one SGD step
on each part of the loss on CLASS's logit over its own pixels (:func:`focus`). Why: a class
that a step does not learn (crescent at synthetic 4-2 step 2) is explained by which pixels
push its channel down, not by its final IoU alone.

Predictions follow METHOD.md section 3: the best class score, or background when no
class score reaches 0.5. Core numbers, CPU, a minute for the defaults:

    python benchmarks/paste_diagnostics.py output/css_synthetic/4-2/eir/seed_0 --step 1 \\
        --runs output/css_synthetic/4-2/{eir,image_replay,eir_no_paste}/seed_0

A run of a catalog dataset (CamVid, a user's folder) names its datasets in its config.yaml;
``--register`` loads the config file that registers them first:

    python benchmarks/paste_diagnostics.py output/css_camvid/8-3/eir_regions/seed_0 --step 1 \\
        --register projects/EIR/configs/base_camvid.py --datasets D
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from eir.modeling.losses import pseudo_labels, soft_targets  # noqa: E402
from eir.tasks import IGNORE_LABEL  # noqa: E402


def load_runner(run: Path):
    """The run's own ContinualRunner (its config.yaml, its folder, on the CPU)."""
    from eir.data.datasets import UnregisteredDatasetError
    from eir.engine.config_checks import load_config
    from eir.engine.runner import ContinualRunner

    try:
        return ContinualRunner(load_config(run / "config.yaml", [f"train.output_dir={run}", "train.device=cpu"]))
    except UnregisteredDatasetError as e:
        raise SystemExit(
            f"{run}: {str(e).split(';')[0]}: its config.yaml names the dataset, the config file that "
            "registers it is not loaded here; pass it with --register (CamVid: "
            "projects/EIR/configs/base_camvid.py; a user's folder: their config)"
        ) from None


def predict(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(channel logits, predicted channel: best class, or 0 when no class score reaches 0.5)."""
    with torch.no_grad():
        logits = model.logits(model.preprocess_image(batch).tensor)
    best, arg = logits[:, 1:].sigmoid().max(dim=1)
    return logits, torch.where(best >= 0.5, arg + 1, torch.zeros_like(arg))


def training_samples(runner, step: int, num: int, seed: int) -> list[dict]:
    """``num`` samples of the step's training set (new images and bank entries), drawn with
    ``seed``, through the step's own training mapper (pasting included)."""
    from eir.data.prepass import PrepassStore
    from eir.engine.builders import build_paster, build_train_mapper
    from eir.engine.run_files import PREPASS_FILE

    plan = runner.plan(step)
    prepass_file = runner.step_dir(step) / PREPASS_FILE
    if not plan.paste or not prepass_file.is_file():
        raise SystemExit(f"{runner.output_dir} does not paste at step {step} (no {prepass_file}): give an EIR run")
    cfg, task = runner.cfg, runner.task
    bank = runner.load_bank(plan)
    _, dicts = runner.train_data(step, bank)
    prepass = PrepassStore.load(prepass_file, task=task, step=step)
    mapper = build_train_mapper(cfg, task, step, bank, build_paster(task, plan, bank, prepass, runner.method))
    order = np.random.default_rng(seed).permutation(len(dicts))[:num]
    return [mapper(dicts[i]) for i in order]


def batches(samples, size=16):
    for i in range(0, len(samples), size):
        yield samples[i:i + size]


def stack(batch, key, lut=None):
    out = torch.stack([d[key] for d in batch])
    return lut[out] if lut is not None else out


def share(hits: int, total: int) -> str:
    return f"{100 * hits / total:.1f} %" if total else "n/a"


def diagnose(run: Path, step: int, runs=(), num_images: int = 160, seed: int = 0) -> dict:
    """The numbers of the module docstring, as counts: ``{"pasted": (hits, total), "old_on_paste":
    ..., "old_natural": ..., "runs": {run: {"new_right": ..., "bce_pasted": ..., "bce_unpasted": ...}}}``."""
    runner = load_runner(run)
    task = runner.task
    lut_t = torch.as_tensor(task.class_to_channel_lut(step), dtype=torch.long)
    samples = training_samples(runner, step, num_images, seed)
    counted = pasted = 0
    for batch in batches(samples):
        labels = stack(batch, "sem_seg", lut_t)
        targets = soft_targets(labels, task.num_channels(step), stack(batch, "paste_class", lut_t),
                               stack(batch, "paste_alpha"))
        live = (targets != 0).any(dim=1)
        counted += int(live.sum())
        pasted += int((live & (stack(batch, "paste_class") > 0)).sum())

    old = runner.trained_model(step - 1).eval()
    on_paste = strong = 0
    for batch in batches(samples):
        _, pred = predict(old, batch)
        pc, pa = stack(batch, "paste_class", lut_t), stack(batch, "paste_alpha")
        sel = (pc > 0) & (pa >= 0.5)
        on_paste += int((pred[sel] == pc[sel]).sum())
        strong += int(sel.sum())
    lut_old = torch.as_tensor(task.class_to_channel_lut(step - 1), dtype=torch.long)
    natural = right = 0
    dicts, mapper = runner.test_data(step - 1)
    for batch in batches([mapper(d) for d in dicts]):
        labels = stack(batch, "sem_seg", lut_old)
        _, pred = predict(old, batch)
        sel = (labels > 0) & (labels != IGNORE_LABEL)
        right += int((pred[sel] == labels[sel]).sum())
        natural += int(sel.sum())

    new_channels = lut_t[torch.as_tensor(task.new_classes(step))]
    compared = {}
    for other in runs:
        model = load_runner(Path(other)).trained_model(step).eval()
        ok = n = 0
        bce = {True: [0.0, 0], False: [0.0, 0]}
        for batch in batches(samples):
            logits, pred = predict(model, batch)
            labels, pc = stack(batch, "sem_seg", lut_t), stack(batch, "paste_class", lut_t)
            targets = soft_targets(labels, logits.shape[1], pc, stack(batch, "paste_alpha"))
            per_pixel = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(1)
            live = (targets != 0).any(dim=1)
            for flag in (True, False):
                sel = live & ((pc > 0) == flag)
                bce[flag][0] += float(per_pixel[sel].sum())
                bce[flag][1] += int(sel.sum())
            sel = torch.isin(labels, new_channels) & (pc == 0)
            ok += int((pred[sel] == labels[sel]).sum())
            n += int(sel.sum())
        compared[str(other)] = {"new_right": (ok, n), "bce_pasted": tuple(bce[True]),
                                "bce_unpasted": tuple(bce[False])}
    return {"task": task, "paste": runner.cfg.method.paste, "samples": len(samples), "pasted": (pasted, counted),
            "old_on_paste": (on_paste, strong), "old_natural": (right, natural), "runs": compared}


def seen_class_id(task, step: int, class_name: str, option: str) -> int:
    """The class id of ``class_name``, which step ``step`` of ``task`` must have seen (else an
    exit naming ``option`` and the classes)."""
    names = list(task.class_names)
    if class_name not in names[1:]:
        raise SystemExit(f"{option} {class_name}: not a class of {task} (classes: {', '.join(names[1:])})")
    class_id = names.index(class_name)
    if class_id not in task.channel_classes(step):
        raise SystemExit(f"{option} {class_name}: not seen by step {step} of {task}")
    return class_id


def where_pixels_go(run: Path, step: int, class_name: str) -> dict[str, float]:
    """Of the validation pixels labelled ``class_name`` (the step's test labels), the share
    that the run's step-``step`` model predicts as each class, largest first."""
    runner = load_runner(Path(run))
    task = runner.task
    cid = seen_class_id(task, step, class_name, "--where")
    names = list(task.class_names)
    channel_class = torch.as_tensor(task.channel_classes(step), dtype=torch.long)
    model = runner.trained_model(step).eval()
    counts = torch.zeros(len(names), dtype=torch.long)
    dicts, mapper = runner.test_data(step)
    for batch in batches([mapper(d) for d in dicts]):
        _, pred = predict(model, batch)
        sel = stack(batch, "sem_seg") == cid
        counts += torch.bincount(channel_class[pred[sel]], minlength=len(names))
    total = int(counts.sum())
    order = torch.argsort(counts, descending=True, stable=True).tolist()
    return {names[k]: int(counts[k]) / total for k in order if counts[k] > 0} if total else {}


# ----------------------------------------------------------------- one class's training signal (--focus)

@contextlib.contextmanager
def recorded_choices():
    """Records pasting's class choices in call order, as ``(found, fallback)`` per call: the
    classes the old model's detections gave (those with bank entries) and those the fallback
    added (METHOD.md section 6, steps 1 and 4). The mapper pastes once per sample, so the
    k-th record is the k-th sample mapped inside the ``with`` block."""
    import eir.data.paste as paste

    calls, original = [], paste.choose_classes

    def recording(found, old_classes, available, cfg, rng):
        available = list(available)
        chosen = original(found, old_classes, available, cfg, rng)
        kept = sum(1 for c in found if int(c) in set(available))
        calls.append((chosen[:kept], chosen[kept:]))
        return chosen

    paste.choose_classes = recording
    try:
        yield calls
    finally:
        paste.choose_classes = original


def pixel_groups(labels, hard, paste_class, channel: int, new_channels, names) -> tuple[list[str], torch.Tensor]:
    """What each pixel is to the class channel ``channel``: ``(group names, [N, H, W] group
    index, -1 where the pixel does not count)``. ``labels`` are the step's labels, ``hard``
    the same after pseudo-labelling, ``paste_class`` the top paste (all channel indices);
    ``names`` the channels' class names. A pixel is in the first group that holds it: the
    class's own labelled pixels (under a paste or not), another new class, an old class pasted
    (over background, an old class or 255), pseudo-labelled, labelled (replayed bank entries),
    and the background."""
    groups, index = [], torch.full(labels.shape, -1, dtype=torch.long)

    def add(name, sel):
        index[sel & (index < 0)] = len(groups)
        groups.append(name)

    target = names[channel]
    add(f"{target}, not pasted over", (labels == channel) & (paste_class == 0))
    add(f"{target}, under a paste", labels == channel)
    add("other new classes", torch.isin(labels, new_channels))
    old = range(1, len(names) - len(new_channels))
    for k in old:
        add(f"pasted {names[k]}", paste_class == k)
    for k in old:
        add(f"pseudo-labelled {names[k]}", (labels == 0) & (hard == k))
    for k in old:
        add(f"labelled {names[k]} (replayed)", labels == k)
    add("background", hard == 0)
    return groups, index


def _sums_by_group(index, values, size) -> np.ndarray:
    sel = index >= 0
    return torch.bincount(index[sel], weights=values[sel].double(), minlength=size).numpy()


def class_forces(model, old_model, samples, criterion, task, step: int, class_id: int) -> dict:
    """The class channel's training signal on ``samples`` (batches of 16, as the criterion sees
    them) for ``model``: per pixel group (:func:`pixel_groups`), the pixels, the mean class
    score (sigmoid), the mean BCE target of the class channel, and, per loss term, the push
    on the class logit: minus the term's gradient on that logit summed over the group's
    pixels, averaged over batches (> 0 raises the class's score, < 0 lowers it; the sum over
    the groups is the term's derivative for a uniform shift of the class logit)."""
    lut = torch.as_tensor(task.class_to_channel_lut(step), dtype=torch.long)
    channel = int(lut[class_id])
    names = [task.class_names[c] for c in task.channel_classes(step)]
    new_channels = lut[torch.as_tensor(task.new_classes(step))]
    groups, totals, num_batches = None, {}, 0
    for batch in batches(samples):
        labels, pc, pa = stack(batch, "sem_seg", lut), stack(batch, "paste_class", lut), stack(batch, "paste_alpha")
        with torch.no_grad():
            z = model.logits(model.preprocess_image(batch).tensor)
            old = old_model.logits(old_model.preprocess_image(batch).tensor) if criterion.needs_old_model else None
        z.requires_grad_(True)
        losses = criterion(z, labels, pc, pa, old)
        hard = labels if old is None or criterion.tau is None else pseudo_labels(labels, old, criterion.tau, old.shape[1])
        groups, index = pixel_groups(labels, hard, pc, channel, new_channels, names)
        values = {
            "pixels": torch.ones(labels.shape),
            "score": z.detach()[:, channel].sigmoid(),
            "target": soft_targets(hard, z.shape[1], pc, pa)[:, channel],
        }
        for name, term in losses.items():
            values[name] = -torch.autograd.grad(term, z, retain_graph=True)[0][:, channel]
        for key, v in values.items():
            totals[key] = totals.get(key, 0) + _sums_by_group(index, v, len(groups))
        num_batches += 1
    return {"groups": groups, "batches": num_batches, **totals}


def loss_parts(criterion, logits, labels, pc, pa, old, channel: int) -> dict[str, torch.Tensor]:
    """The criterion's loss split by where its gradient comes from, for the class channel
    ``channel``: BCE of that channel on its own labelled pixels, on pasted pixels and
    elsewhere; BCE of the other channels on pasted and on unpasted pixels (each part over the
    BCE's own count of pixels and with its ``pasted_bce`` weights, so the five add up to it);
    RSKD as the criterion computes it."""
    from eir.modeling.losses import bce_loss

    hard = labels if old is None or criterion.tau is None else pseudo_labels(labels, old, criterion.tau, old.shape[1])
    targets = soft_targets(hard, logits.shape[1], pc, pa)
    pasted = (pc > 0).unsqueeze(1)
    own = (labels == channel).unsqueeze(1)
    is_channel = (torch.arange(logits.shape[1]) == channel)[None, :, None, None]
    masks = {
        "BCE, class channel, its own pixels": is_channel & own,
        "BCE, class channel, pasted pixels": is_channel & ~own & pasted,
        "BCE, class channel, other pixels": is_channel & ~own & ~pasted,
        "BCE, other channels, pasted pixels": ~is_channel & pasted,
        "BCE, other channels, unpasted pixels": ~is_channel & ~pasted,
    }
    weight = criterion.bce_weight(labels, pc, old.shape[1], logits.shape[1]) if old is not None else None
    per_element = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    counted_px = (targets != 0).any(dim=1, keepdim=True)
    if weight is not None:
        per_element = per_element * weight
        counted_px = counted_px & (weight != 0).any(dim=1, keepdim=True)
    counted = counted_px.sum().clamp_min(1)
    parts = {k: criterion.w_bce * (per_element * (m & counted_px)).sum() / counted for k, m in masks.items()}
    assert torch.allclose(sum(parts.values()), criterion.w_bce * bce_loss(logits, targets, weight), rtol=1e-4)
    losses = criterion(logits, labels, pc, pa, old)
    if "loss_rskd" in losses:
        parts["RSKD"] = losses["loss_rskd"]
    return parts


def influence(model, old_model, samples, criterion, task, step: int, class_id: int, head_lr_mult: float) -> dict:
    """What one SGD step on each part of the loss (:func:`loss_parts`) does to the class's mean
    logit over its own labelled, unpasted pixels, through every trained weight (the shared
    body included): minus the dot product of the part's gradient with the gradient of that
    mean logit, each weight scaled by its learning-rate multiplier (the head's
    ``head_lr_mult``), per unit of base learning rate, averaged over batches. < 0: that part
    of training lowers the class's score on the class's own pixels. First order, without
    momentum."""
    from eir.modeling.meta_arch import build_param_groups

    lut = torch.as_tensor(task.class_to_channel_lut(step), dtype=torch.long)
    channel = int(lut[class_id])
    groups = build_param_groups(model, 1.0, 0.0, step, head_lr_mult)
    params = [p for g in groups for p in g["params"]]
    mults = [g["lr"] for g in groups for _ in g["params"]]
    totals, num_batches = collections.Counter(), 0
    for batch in batches(samples):
        labels, pc, pa = stack(batch, "sem_seg", lut), stack(batch, "paste_class", lut), stack(batch, "paste_alpha")
        own = (labels == channel) & (pc == 0)
        if not own.any():
            continue
        with torch.no_grad():
            old = old_model.logits(old_model.preprocess_image(batch).tensor) if criterion.needs_old_model else None
        logits = model.logits(model.preprocess_image(batch).tensor)
        target = torch.autograd.grad(logits[:, channel][own].mean(), params, retain_graph=True, allow_unused=True)
        for name, part in loss_parts(criterion, logits, labels, pc, pa, old, channel).items():
            grads = torch.autograd.grad(part, params, retain_graph=True, allow_unused=True)
            totals[name] -= sum(float((m * g * t).sum()) for m, g, t in zip(mults, grads, target)
                                if g is not None and t is not None)
        num_batches += 1
    return {k: v / max(num_batches, 1) for k, v in totals.items()}


def old_model_view(old_model, samples, task, step: int, class_id: int, tau: float | None) -> dict:
    """What the step-(t-1) model makes of the class's labelled, unpasted training pixels:
    ``{"argmax": Counter, "pseudo": Counter, "inference": Counter}`` of pixel counts by class
    name: the argmax over all its channels (channel 0 = background), the pseudo-label rule
    (that argmax, kept when it is a class scoring >= tau), and the inference rule."""
    lut = torch.as_tensor(task.class_to_channel_lut(step), dtype=torch.long)
    names = [task.class_names[c] for c in task.channel_classes(step - 1)]
    out = {key: collections.Counter() for key in ("argmax", "pseudo", "inference")}
    for batch in batches(samples):
        sel = (stack(batch, "sem_seg", lut) == int(lut[class_id])) & (stack(batch, "paste_class") == 0)
        if not sel.any():
            continue
        logits, inference = predict(old_model, batch)
        scores = logits.sigmoid()
        best, arg = scores.max(dim=1)
        pseudo = torch.where(best >= (tau if tau is not None else 2.0), arg, torch.zeros_like(arg))
        for key, pred in (("argmax", arg), ("pseudo", pseudo), ("inference", inference)):
            out[key].update(names[k] for k in pred[sel].tolist())
    return out


def paste_choices(samples, choices, task, class_id: int) -> dict:
    """Of the samples that hold ``class_id`` (``choices``: :func:`recorded_choices`, one per
    sample): how many, the classes pasted into them from the old model's detections and from
    the fallback (instance counts by name), and the class's pixels under each pasted class."""
    names = task.class_names
    found, fallback, covered = collections.Counter(), collections.Counter(), collections.Counter()
    holding = with_fallback = pixels = 0
    for sample, (det, fall) in zip(samples, choices):
        sel = sample["sem_seg"] == class_id
        if not sel.any():
            continue
        holding += 1
        with_fallback += bool(fall)
        found.update(names[c] for c in det)
        fallback.update(names[c] for c in fall)
        pixels += int(sel.sum())
        covered.update(names[c] for c in sample["paste_class"][sel].tolist() if c > 0)
    return {"samples": holding, "with_fallback": with_fallback, "found": found, "fallback": fallback,
            "pixels": pixels, "covered": covered}


def focus(run: Path, step: int, class_name: str, checkpoints=("start", "final"), num_images: int = 320,
          seed: int = 0) -> dict:
    """One class's training signal at step ``step`` of ``run`` (``--focus``): the samples of
    the step's training mapper (pasting as the run's config says), the classes pasted into
    the samples that hold the class, the old model's view of its pixels, and
    :func:`class_forces` for each model of ``checkpoints`` ("start": the step's model before
    training, the previous weights and the new head; "final": its model_final.pth; an
    integer: the periodic checkpoint of that iteration; else a checkpoint's path)."""
    from detectron2.utils.env import seed_all_rng

    from eir.seeding import step_seed

    runner = load_runner(run)
    task = runner.task
    class_id = seen_class_id(task, step, class_name, "--focus")
    with recorded_choices() as choices:
        samples = training_samples(runner, step, num_images, seed)
    plan = runner.plan(step)
    seed_all_rng(step_seed(runner.cfg.train.seed, step))  # the new head's init, as the runner draws it
    start, old_model = runner.build_models(plan)
    old_model = old_model if old_model is not None else runner.trained_model(step - 1)
    old_model.eval()
    criterion = runner.method.eir_criterion
    forces = {}
    for which in checkpoints:
        if str(which) == "start":
            model = start
        elif str(which) == "final":
            model = runner.trained_model(step)
        elif str(which).isdigit():
            model = runner.trained_model(step, runner.step_dir(step) / f"model_{int(which):07d}.pth")
        else:
            model = runner.trained_model(step, which)
        forces[str(which)] = class_forces(model.eval(), old_model, samples, criterion, task, step, class_id)
        forces[str(which)]["influence"] = influence(model, old_model, samples, criterion, task, step, class_id,
                                                    runner.cfg.optimizer.params.head_lr_mult)
    return {"task": task, "class": class_name, "samples": len(samples),
            "choices": paste_choices(samples, choices, task, class_id),
            "old_view": old_model_view(old_model, samples, task, step, class_id, criterion.tau),
            "forces": forces}


def _counter_line(counter, total=None) -> str:
    total = total or sum(counter.values())
    return ", ".join(f"{k} {100 * n / total:.1f} %" for k, n in counter.most_common()) if total else "none"


def focus_report(d: dict, run: Path, step: int) -> str:
    c, ch = d["class"], d["choices"]
    lines = [
        f"# {c} at step {step} of {d['task']}: what training sees (run {run})",
        "",
        f"- {d['samples']} training samples; {ch['samples']} hold {c}, {ch['with_fallback']} of them "
        "with fallback pastes",
        f"- instances pasted into them, from the old model's detections: "
        f"{', '.join(f'{k} {n}' for k, n in ch['found'].most_common()) or 'none'}; "
        f"from the fallback: {', '.join(f'{k} {n}' for k, n in ch['fallback'].most_common()) or 'none'}",
        f"- {c}'s labelled pixels under a paste: {share(sum(ch['covered'].values()), ch['pixels'])} "
        f"({_counter_line(ch['covered'], ch['pixels'])})",
        f"- step {step - 1} model on {c}'s unpasted training pixels: argmax over its channels "
        f"{_counter_line(d['old_view']['argmax'])}; pseudo-label rule {_counter_line(d['old_view']['pseudo'])}; "
        f"inference rule {_counter_line(d['old_view']['inference'])}",
    ]
    for which, f in d["forces"].items():
        terms = [k for k in f if k.startswith("loss_")]
        lines += [
            "",
            f"Model `{which}`: per pixel group, per batch: pixels, mean {c} score and BCE target on the "
            f"{c} channel, push of each loss term on the {c} logit (minus the gradient summed over "
            "the group's pixels; < 0 lowers the score)",
            "",
            f"| group | pixels / batch | mean {c} score | mean {c} target | "
            + " | ".join(f"push {t[5:]}" for t in terms) + " |",
            "|---|---:|---:|---:|" + "---:|" * len(terms),
        ]
        for i, group in enumerate(f["groups"]):
            n = f["pixels"][i]
            if n == 0:
                continue
            lines.append(f"| {group} | {n / f['batches']:.0f} | {f['score'][i] / n:.3f} | {f['target'][i] / n:.3f} | "
                         + " | ".join(f"{f[t][i] / f['batches']:+.4f}" for t in terms) + " |")
        lines.append("| all | | | | " + " | ".join(f"{f[t].sum() / f['batches']:+.4f}" for t in terms) + " |")
        lines += ["", f"Model `{which}`: one SGD step on each part of the loss, its first-order effect on "
                  f"{c}'s mean logit over {c}'s own unpasted pixels, through every trained weight (per unit "
                  "of base learning rate; < 0 lowers it)", "", "| loss part | effect |", "|---|---:|"]
        lines += [f"| {k} | {v:+.3f} |" for k, v in f["influence"].items()]
    return "\n".join(lines)


def report(d: dict, run: Path, step: int, seed: int) -> str:
    def mean(pair):
        return f"{pair[0] / pair[1]:.3f}" if pair[1] else "n/a"

    lines = [
        f"# paste diagnostics: {d['task']}, step {step}, run {run}",
        "",
        f"- {d['samples']} training samples (new images and bank entries, seed {seed}), paste config "
        + ", ".join(f"{k}={v}" for k, v in d["paste"].items() if k != "_target_"),
        f"- pasted share of the BCE's pixels: {share(*d['pasted'])}",
        f"- step {step - 1} model: pasted pixels (alpha >= 0.5) predicted as the pasted class "
        f"{share(*d['old_on_paste'])}; natural old-class pixels of the validation images predicted "
        f"right {share(*d['old_natural'])}",
        "",
        f"| step-{step} model of | new-class pixels predicted right | BCE on pasted pixels | "
        "BCE on unpasted pixels |",
        "|---|---:|---:|---:|",
    ]
    for other, r in d["runs"].items():
        lines.append(f"| `{other}` | {share(*r['new_right'])} | {mean(r['bce_pasted'])} | "
                     f"{mean(r['bce_unpasted'])} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a finished EIR run folder (its config.yaml, banks, prepass maps)")
    ap.add_argument("--step", type=int, default=1, help="the incremental step to look at (>= 1)")
    ap.add_argument("--runs", type=Path, nargs="*", default=[],
                    help="runs whose step-t models to compare (same task, same step-0 model)")
    ap.add_argument("--num-images", type=int, default=160, help="training samples to draw")
    ap.add_argument("--seed", type=int, default=0, help="which training samples are drawn")
    ap.add_argument("--datasets", type=Path, default=None, help="DETECTRON2_DATASETS of the run")
    ap.add_argument("--register", type=Path, default=None, metavar="CONFIG",
                    help="a Python config file loaded first for the catalog datasets it registers (a run "
                         "of CamVid or of a user's folder: projects/EIR/configs/base_camvid.py, the "
                         "user's config); the run's config.yaml still decides everything else")
    ap.add_argument("--where", metavar="CLASS", default=None,
                    help="also: where each --runs model puts the validation pixels of CLASS")
    ap.add_argument("--focus", metavar="CLASS", default=None,
                    help="instead: what the step's training does to the channel of CLASS, a class the step "
                         "learns (pastes into its samples, the old model on its pixels, each loss term's push)")
    ap.add_argument("--checkpoints", nargs="+", default=["start", "final"],
                    help="with --focus: the step's models to measure: start, final, an iteration of a "
                         "periodic checkpoint, or a checkpoint's path")
    args = ap.parse_args(argv)
    if args.step < 1:
        ap.error("--step must be >= 1 (pasting starts at step 1)")
    if args.where and not args.runs:
        ap.error("--where needs --runs (the runs whose step-t models to look at)")
    torch.set_num_threads(1)

    if args.datasets is not None:  # the runner registers the datasets from this variable
        os.environ["DETECTRON2_DATASETS"] = str(args.datasets)
    if args.register is not None:  # a config.yaml names its catalog datasets; their file registers them
        from detectron2.config import LazyConfig

        LazyConfig.load(str(args.register))
    if args.focus:
        d = focus(args.run, args.step, args.focus, args.checkpoints, args.num_images, args.seed)
        print(focus_report(d, args.run, args.step))
        return 0
    # --where first: a class name it refuses stops the command before the minute of diagnose
    wheres = [(other, where_pixels_go(other, args.step, args.where)) for other in args.runs] if args.where else []
    d = diagnose(args.run, args.step, args.runs, args.num_images, args.seed)
    print(report(d, args.run, args.step, args.seed))
    if wheres:
        print(f"\n| step-{args.step} model of | validation pixels of {args.where} predicted as |\n|---|---|")
        for other, shares in wheres:
            top = ", ".join(f"{name} {100 * v:.1f} %" for name, v in list(shares.items())[:4])
            print(f"| `{other}` | {top} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
