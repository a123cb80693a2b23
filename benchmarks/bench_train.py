#!/usr/bin/env python
"""What does an incremental EIR step cost? Training throughput, data loading, memory, evaluation.

Measured in one process, on the same model and the same batches:

1. **Training step.** The step-1 model of synthetic 6-1 (BatchNorm frozen, as in every
   incremental step) trained by :class:`eir.engine.trainer.EIRTrainer`:
   *plain*: no old model, batches without pasting, BCE only (forward, backward, SGD);
   *EIR*: the frozen old model's forward on the pasted batch, pseudo-labels, RSKD and BCE
   (the trainer's ``StepLossModule``), backward, SGD. Images/s of each (median of interleaved
   rounds, after a warm-up), and their ratio (ideal about 0.75: the old model adds one
   forward to a forward + backward; target >= 0.70). Batches are built by the mapper
   beforehand, so this is the model's speed, not the loader's. Peak GPU memory of each
   (``torch.cuda.max_memory_allocated``). The FLOPs of one iteration of each (torch's
   ``FlopCounterMode``) over its time, as a share of a large matmul's rate in the step's
   precision on the same device and, for the GPUs of :data:`DATASHEET_DENSE_FP16`, of the
   datasheet's dense float16 / bfloat16 peak.
2. **Data loader.** Images/s that :class:`eir.data.mapper.EIRDatasetMapper` produces with
   pasting (Detectron2's train loader, N worker processes) against what the EIR step
   consumes. The bank is built from the data (step 0, the config's budget); the prepass maps
   are "oracle" maps (the old classes of each image's full label, at the config's stride),
   i.e. an old model that finds every hidden old class, the most pasting work per image.
3. **Evaluation.** :class:`eir.evaluation.evaluator.ContinualSemSegEvaluator` and Detectron2's
   ``SemSegEvaluator`` on the same predictions of the validation images at the task's last
   step (every class seen, so the step's test labels are the label files that
   ``SemSegEvaluator`` reads): per-class IoU and mIoU must agree; the time of
   ``process`` + ``evaluate`` of each, and their ratio. Predictions are the labels with
   random rectangles of wrong classes (not a trained model: any predictions serve to check
   agreement, and the evaluators' cost does not depend on them).

Defaults: on a GPU, ResNet-101 (the paper's DeepLabV3, ``configs/voc/15-1_overlap.py``) at
512x512 with AMP; on the CPU, the synthetic config's small model at 128x128 and a few
iterations. A synthetic dataset at the input size is generated once into ``--data``.
Writes ``benchmarks/results/bench_train_<cpu|cuda>.md`` (``--out``: another folder), and with
``--json PATH`` every figure as JSON; ``--parts`` measures only some of the three parts
(``benchmarks/gpu_check.sh`` runs the training step and the loader, then the evaluators).

    python benchmarks/bench_train.py                     # GPU if there is one, else CPU
    python benchmarks/bench_train.py --device cpu --iters 3 --rounds 2
    python benchmarks/bench_train.py --parts eval --json /tmp/eval.json
    python benchmarks/bench_train.py --model r101 --size 512 --batch 8 --workers 4 8 16

Run it with the Python that has Detectron2.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import logging
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu_model, load_average, num_cores  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS = {
    "r101": ROOT / "projects" / "EIR" / "configs" / "voc" / "15-1_overlap.py",
    "synthetic": ROOT / "projects" / "EIR" / "configs" / "synthetic" / "6-1_overlap.py",
}
TASK = ("synthetic", "6-1")
STEP = 1  # the first incremental step: old model = step 0, bank of step 0
TARGET_RATIO = 0.70
PARTS = ("train", "loader", "eval")
#: Dense float16 / bfloat16 tensor-core FLOP/s of GPUs by ``torch.cuda.get_device_name`` (NVIDIA's
#: datasheets, without sparsity); other GPUs are read against the measured matmul rate only.
DATASHEET_DENSE_FP16 = {
    "NVIDIA H200": 989.4e12,
    "NVIDIA H100 80GB HBM3": 989.4e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
}


# --------------------------------------------------------------------------- machine




def machine(device: torch.device) -> str:
    text = f"{cpu_model()}, {num_cores()} CPU cores available"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        text += f"; GPU {props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    return text + f"; torch {torch.__version__}, python {platform.python_version()}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- setup


def load_config(args):
    from detectron2.config import LazyConfig

    cfg = LazyConfig.load(str(CONFIGS[args.model]))
    return LazyConfig.apply_overrides(cfg, args.overrides)


def ensure_data(args) -> Path:
    from eir.data.synthetic import generate

    root = Path(args.data).expanduser().resolve()
    generate(root / "eir_synthetic", num_train=args.num_train, num_val=args.num_val,
             size=args.size, seed=0, verbose=False, num_workers=min(8, num_cores()))
    return root


def oracle_prepass(task, dicts, stride: int):
    """Prepass maps of an old model that finds every old class of each image's full label."""
    from eir.data.prepass import PrepassStore

    keep = np.zeros(256, np.uint8)
    for c in task.old_classes(STEP):
        keep[c] = c
    store = PrepassStore(task.to_dict(), STEP, stride)
    for d in dicts:
        label = keep[cv2.imread(d["sem_seg_file_name"], cv2.IMREAD_UNCHANGED)]
        h, w = label.shape
        low = cv2.resize(label, (max(1, -(-w // stride)), max(1, -(-h // stride))),
                         interpolation=cv2.INTER_NEAREST)
        store.add(d["image_id"], low)
    return store


class Setup:
    """The task, the step's dataset dicts, the bank, the prepass store and the two mappers."""

    def __init__(self, cfg, args, data_root: Path):
        from detectron2.config import instantiate

        from eir.data.bank import InstanceBank
        from eir.data.datasets import (
            register_eir_datasets,
            replay_dataset_dicts,
            step_dataset_dicts,
        )
        from eir.data.mapper import EIRDatasetMapper, build_train_augmentations
        from eir.data.paste import InstancePaster
        from eir.tasks import build_task

        register_eir_datasets(data_root)
        self.task = task = build_task(*TASK)
        workers = num_cores()
        first = step_dataset_dicts("eir_synthetic_train", task, 0, "train", num_workers=workers, verbose=False)
        self.bank = InstanceBank.build(first, task, 0, budget=int(cfg.method.memory), seed=0,
                                       num_workers=workers, verbose=False)
        train = step_dataset_dicts("eir_synthetic_train", task, STEP, "train", num_workers=workers, verbose=False)
        self.prepass = oracle_prepass(task, train, int(cfg.method.prepass.stride))
        self.dicts = train + replay_dataset_dicts(self.bank)
        crop = int(cfg.dataloader.train.augmentations.crop_size)
        self.paste_cfg = instantiate(cfg.method.paste).scaled_to(args.size, reference=crop)

        def mapper(paste: bool):
            paster = InstancePaster(self.bank, self.prepass, self.paste_cfg, task.old_classes(STEP))
            return EIRDatasetMapper(
                is_train=True, task=task, step=STEP,
                augmentations=build_train_augmentations(crop_size=args.size),
                bank=self.bank, paste=paster if paste else None, seed=0,
            )

        self.paste_mapper = mapper(True)
        self.plain_mapper = mapper(False)

    def batches(self, mapper, count: int, batch: int) -> list[list[dict]]:
        rng = np.random.default_rng(0)
        order = rng.permutation(len(self.dicts))
        items = [self.dicts[order[i % len(order)]] for i in range(count * batch)]
        samples = [mapper(d) for d in items]
        return [samples[i * batch : (i + 1) * batch] for i in range(count)]


# --------------------------------------------------------------------------- 1. training step


@torch.no_grad()
def calibrate_batchnorm(model, batches) -> None:
    """Set every BatchNorm's running statistics to their average over ``batches``."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    for batch in batches:
        model(batch)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum


def bench_training(cfg, args, setup: Setup, device: torch.device) -> dict:
    from detectron2.utils.events import EventStorage

    from eir.engine.builders import (
        build_method,
        build_next_step_model,
        build_optimizer,
        build_step_model,
        build_trainer,
    )

    task = setup.task
    n_batches = max(2, min(args.iters, 8))
    print(f"building {2 * n_batches} batches of {args.batch} ({args.size} px) with the mapper...", flush=True)
    plain_batches = setup.batches(setup.plain_mapper, n_batches, args.batch)
    paste_batches = setup.batches(setup.paste_mapper, n_batches, args.batch)
    pasted = np.mean([float((d["paste_class"] > 0).float().mean()) for b in paste_batches for d in b])

    # As in a run: the old model is a step-0 model, the new one starts from its weights with
    # BatchNorm frozen. Random weights need BatchNorm statistics that fit them, or a deep
    # network's activations overflow once BatchNorm is frozen: measure them on the batches.
    torch.manual_seed(0)
    old_model = build_step_model(cfg, task, STEP - 1, device)
    calibrate_batchnorm(old_model, plain_batches + paste_batches)
    old_model.eval().requires_grad_(False)
    method = build_method(cfg)
    model = build_next_step_model(cfg, task, STEP, old_model.state_dict(), device, method)
    optimizer = build_optimizer(cfg, model, STEP)

    # EIR's step as the run plans it; the plain step is the same without teacher or pasting.
    plan = method.plan(task, STEP)
    plain_plan = dataclasses.replace(plan, teacher=False, paste=False)
    cfg.train.amp.enabled = args.amp
    plain = build_trainer(cfg, model, itertools.cycle(plain_batches), optimizer, task, plain_plan, method)
    eir = build_trainer(cfg, model, itertools.cycle(paste_batches), optimizer, task, plan, method, old_model)
    trainers = {"plain": plain, "eir": eir}
    times = {k: [] for k in trainers}
    peaks = {k: 0 for k in trainers}
    losses = {}
    with EventStorage(0) as storage:
        for t in trainers.values():
            t.storage = storage
            t.iter = 0

        def block(name: str, n: int) -> float:
            trainer = trainers[name]
            if device.type == "cuda":
                # The plain step has no old model: keep it off the GPU, so the peaks compare.
                old_model.to(device if name == "eir" else "cpu")
                torch.cuda.reset_peak_memory_stats(device)
            sync(device)
            start = time.perf_counter()
            for _ in range(n):
                trainer.run_step()
                trainer.iter += 1
                storage.iter = trainer.iter
            sync(device)
            seconds = time.perf_counter() - start
            if device.type == "cuda":
                peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated(device))
            return seconds

        for name in trainers:
            block(name, args.warmup)
        for r in range(args.rounds):  # interleaved, so drifts in machine load hit both alike
            for name in (("plain", "eir") if r % 2 == 0 else ("eir", "plain")):
                times[name].append(block(name, args.iters))
                print(f"  round {r + 1}/{args.rounds} {name}: {args.batch * args.iters / times[name][-1]:.2f} images/s",
                      flush=True)
        for key in ("loss_bce", "loss_rskd"):
            if key in storage.histories():
                losses[key] = storage.history(key).latest()
        old_model.to(device)  # the last timed block may have been the plain one
        flops = {name: step_flops(trainer) for name, trainer in trainers.items()}  # after the timing
    out = {}
    for name in trainers:
        seconds = statistics.median(times[name])
        out[name] = {
            "images_per_s": args.batch * args.iters / seconds,
            "s_per_iter": seconds / args.iters,
            "peak_bytes": peaks[name] if device.type == "cuda" else None,
            "flops_per_iter": flops[name],
            "flops_per_s": flops[name] * args.iters / seconds,
        }
    out["ratio"] = out["eir"]["images_per_s"] / out["plain"]["images_per_s"]
    out["pasted_fraction"] = float(pasted)
    out["losses"] = losses
    out["precision"] = str(plain.precision).replace("torch.", "") if args.amp else "float32"
    out["matmul_flops_per_s"] = matmul_rate(device, plain.precision if args.amp else torch.float32)
    out["datasheet_flops_per_s"] = DATASHEET_DENSE_FP16.get(torch.cuda.get_device_name(device)) if (
        device.type == "cuda" and args.amp) else None
    return out


def step_flops(trainer) -> int:
    """Floating-point operations of one ``trainer.run_step()`` (forward, backward; counted by
    torch's FlopCounterMode: matrix multiplications and convolutions, 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        trainer.run_step()
    trainer.iter += 1
    trainer.storage.iter = trainer.iter
    return int(counter.get_total_flops())


def matmul_rate(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a large square matmul in ``dtype`` on ``device``: the rate the tensor cores (or
    the CPU's vector units) reach in practice, against which the training step's rate is read."""
    n, repeats = (8192, 20) if device.type == "cuda" else (512, 5)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start)


# --------------------------------------------------------------------------- 2. data loader


def bench_loader(args, setup: Setup, workers: int, paste: bool) -> float:
    """Images/s of Detectron2's train loader with the mapper and ``workers`` processes."""
    from detectron2.data import build_detection_train_loader
    from detectron2.data.samplers import TrainingSampler

    loader = build_detection_train_loader(
        dataset=setup.dicts,
        mapper=setup.paste_mapper if paste else setup.plain_mapper,
        sampler=TrainingSampler(len(setup.dicts), seed=0),
        total_batch_size=args.batch,
        aspect_ratio_grouping=False,
        num_workers=workers,
    )
    it = iter(loader)
    for _ in range(max(2, workers)):  # start-up: workers forked, first batches in flight
        next(it)
    start = time.perf_counter()
    for _ in range(args.loader_batches):
        next(it)
    seconds = time.perf_counter() - start
    del it, loader
    return args.loader_batches * args.batch / seconds


# --------------------------------------------------------------------------- 3. evaluation


def corrupted_predictions(inputs, num_classes: int, device, seed: int = 0) -> list[dict]:
    """Class-id-order scores whose argmax is the label with random wrong rectangles."""
    rng = np.random.default_rng(seed)
    outputs = []
    for inp in inputs:
        pred = inp["sem_seg"].numpy().copy()
        h, w = pred.shape
        pred[pred == 255] = 0
        for _ in range(int(rng.integers(1, 4))):
            y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
            pred[y : y + int(rng.integers(h // 8, h // 3)), x : x + int(rng.integers(w // 8, w // 3))] = int(
                rng.integers(0, num_classes + 1)
            )
        scores = torch.nn.functional.one_hot(torch.from_numpy(pred).long(), num_classes + 1)
        scores = scores.permute(2, 0, 1).float() * 0.5 + 0.25  # winner 0.75, others 0.25
        outputs.append({"sem_seg": scores.to(device)})
    return outputs


def bench_evaluation(args, device: torch.device) -> dict:
    from detectron2.evaluation import SemSegEvaluator

    from eir.data.datasets import step_dataset_dicts
    from eir.data.mapper import EIRDatasetMapper, build_test_augmentations
    from eir.evaluation.evaluator import ContinualSemSegEvaluator
    from eir.tasks import build_task

    task = build_task(*TASK)
    last = task.num_steps - 1
    dicts = step_dataset_dicts("eir_synthetic_val", task, last, "test", verbose=False)
    mapper = EIRDatasetMapper(is_train=False, task=task, step=last,
                              augmentations=build_test_augmentations(short_side=None, crop=None))
    inputs = [mapper(d) for d in dicts]
    # The continual evaluator gets its labels from the mapper, SemSegEvaluator reads the files:
    # at the last step they must be the same labels.
    for inp, d in zip(inputs, dicts):
        gt = cv2.imread(d["sem_seg_file_name"], cv2.IMREAD_UNCHANGED)
        if not np.array_equal(inp["sem_seg"].numpy(), gt.astype(np.int64)):
            raise RuntimeError(f"the mapper's test label of {d['image_id']} differs from its file")
    outputs = corrupted_predictions(inputs, task.num_classes, device)
    logging.getLogger("eir.evaluation.evaluator").setLevel(logging.WARNING)
    logging.getLogger("detectron2.evaluation.sem_seg_evaluation").setLevel(logging.WARNING)

    def run(evaluator):
        sync(device)
        start = time.perf_counter()
        evaluator.reset()
        for inp, out in zip(inputs, outputs):
            evaluator.process([inp], [out])
        result = evaluator.evaluate()
        sync(device)
        return time.perf_counter() - start, result

    ours = ContinualSemSegEvaluator(task, last, distributed=False)
    d2 = SemSegEvaluator("eir_synthetic_val", distributed=False, output_dir=None)
    d2_plain = SemSegEvaluator("eir_synthetic_val", distributed=False, output_dir=None)
    d2_plain._compute_boundary_iou = False  # its default computes Boundary IoU as well
    timings = {"ours": [], "d2": [], "d2_plain": []}
    results = {}
    for _ in range(args.eval_repeats):
        for name, ev in (("ours", ours), ("d2", d2), ("d2_plain", d2_plain)):
            seconds, results[name] = run(ev)
            timings[name].append(seconds)

    names = task.class_names
    ours_iou = ours.summary["per_class"]
    d2_res = results["d2"]["sem_seg"]
    diffs, both_na = [], 0
    for name in names:
        a = ours_iou[name]
        b = d2_res.get(f"IoU-{name}", float("nan"))
        if a is None and np.isnan(b):
            both_na += 1
            continue
        if a is None or np.isnan(b):
            diffs.append(float("inf"))
            continue
        diffs.append(abs(a - b))
    return {
        "images": len(inputs),
        "size": tuple(inputs[0]["sem_seg"].shape),
        "seconds": {k: min(v) for k, v in timings.items()},
        "miou_ours": ours.summary["all"],
        "miou_d2": d2_res["mIoU"],
        "pacc_ours": ours.summary["pixel_acc"],
        "pacc_d2": d2_res["pACC"],
        "max_iou_diff": float(max(diffs)) if diffs else 0.0,
        "classes_compared": len(diffs),
        "classes_na": both_na,
        "old": ours.summary["old"],
        "new": ours.summary["new"],
    }


# --------------------------------------------------------------------------- report


def fmt_bytes(n) -> str:
    return "n/a (CPU)" if n is None else f"{n / 2**30:.2f} GiB"


def fmt_rate(flops_per_s) -> str:
    return "n/a" if flops_per_s is None else f"{flops_per_s / 1e12:.3g} TFLOP/s"


def peak_share(train: dict, name: str, peak_key: str) -> float | None:
    """The share of a peak FLOP rate (``matmul_flops_per_s`` or ``datasheet_flops_per_s``) that
    step ``name`` reaches."""
    peak = train[peak_key]
    return None if not peak else train[name]["flops_per_s"] / peak


def report(args, cfg, device, train, loader, evaluation, command: str) -> str:
    """The Markdown report of the parts that ran (``train``, ``loader``, ``evaluation``: None
    when left out by ``--parts``)."""
    precision = ("float16" if device.type == "cuda" else "bfloat16") if args.amp else None
    lines = [
        f"# bench_train ({device.type}): cost of an incremental EIR step",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- machine: {machine(device)}; PyTorch CPU threads: {torch.get_num_threads()}; "
        f"load average at the start {args.load_at_start} (other processes' load slows every figure)",
        f"- command: `{command}`",
        f"- parts: {', '.join(args.parts)}",
        f"- model: {args.model} (the model of `{CONFIGS[args.model].relative_to(ROOT)}`: "
        f"{backbone_name(cfg)}, output stride {cfg.model.backbone.output_stride}), "
        f"with the head of synthetic {TASK[1]} step {STEP} ({setup_channels(args)} output channels), "
        "random init",
        f"- input: {args.size}x{args.size} crops, batch {args.batch}, AMP "
        f"{'on (' + precision + ')' if args.amp else 'off'}, "
        f"SGD with EIR's parameter groups; {args.warmup} warm-up iterations, then {args.rounds} "
        f"interleaved rounds of {args.iters} iterations per step kind (median round)",
    ]
    if train is not None or loader is not None:
        pasted = "" if train is None else (
            f", {100 * train['pasted_fraction']:.1f} % of the EIR batches' pixels pasted"
        )
        lines.append(
            f"- data: synthetic dataset at {args.size} px (`{args.data}`), bank of step 0 "
            f"({int(cfg.method.memory)} entries budget), PasteConfig cell {args.paste_cell}{pasted}"
        )
    if train is not None:
        lines += train_section(device, train)
    if loader is not None:
        lines += loader_section(args, device, loader, train)
    if evaluation is not None:
        lines += evaluation_section(args, device, evaluation)
    lines.append("")
    return "\n".join(lines)


def train_section(device, train: dict) -> list[str]:
    verdict = "MET" if train["ratio"] >= TARGET_RATIO else "MISSED"
    gpu_note = "" if device.type == "cuda" else (
        " (a CPU figure: the target is for a GPU, where this script's defaults are ResNet-101 at 512 with AMP)"
    )
    rows = []
    for name, text in (
        ("plain", "plain: new model forward + backward + SGD, BCE, no pasting"),
        ("eir", "EIR: + old model forward, pseudo-labels, RSKD, pasted batch"),
    ):
        t = train[name]
        shares = [peak_share(train, name, key) for key in ("matmul_flops_per_s", "datasheet_flops_per_s")]
        rows.append(
            f"| {text} | {t['images_per_s']:.2f} | {t['s_per_iter']:.4f} | {fmt_bytes(t['peak_bytes'])} | "
            f"{t['flops_per_iter'] / 1e9:.1f} | {fmt_rate(t['flops_per_s'])} | "
            + " | ".join("n/a" if x is None else f"{100 * x:.1f} %" for x in shares)
            + " |"
        )
    return [
        "",
        "## Training step",
        "",
        "| step | images/s | s/iter | peak GPU memory | GFLOP/iter | FLOP rate | share of the matmul rate "
        "| share of the datasheet peak |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"Ratio EIR / plain: **{train['ratio']:.3f}** (ideal about 0.75; target >= {TARGET_RATIO:.2f}: "
        f"{verdict}){gpu_note}.",
        "",
        f"FLOPs of one iteration as torch's FlopCounterMode counts them (convolutions and matrix "
        f"multiplications, forward and backward, 2 per multiply-add), over the median round's time. "
        f"The matmul rate: a large square matmul in {train['precision']} on the same device, "
        f"{fmt_rate(train['matmul_flops_per_s'])}; the datasheet peak (dense {train['precision']}): "
        f"{fmt_rate(train['datasheet_flops_per_s'])}.",
        "",
        "Last losses (finite, as a sanity check): "
        + (", ".join(f"{k} {v:.4f}" for k, v in train["losses"].items()) or "none recorded")
        + ".",
    ]


def loader_section(args, device, loader: dict, train: dict | None) -> list[str]:
    eir_rate = None if train is None else train["eir"]["images_per_s"]
    lines = [
        "",
        "## Data loader",
        "",
        f"Detectron2's train loader with `EIRDatasetMapper` (read, augment, paste from the bank, "
        f"oracle prepass maps), batch {args.batch}, after start-up, {args.loader_batches} batches:",
        "",
        "| mapper | workers | images/s | / EIR step's images/s |",
        "|---|---:|---:|---:|",
    ]
    for (paste, workers), ips in loader.items():
        ratio = "n/a" if eir_rate is None else f"{ips / eir_rate:.2f}"
        lines.append(f"| {'with pasting' if paste else 'no pasting'} | {workers} | {ips:.1f} | {ratio} |")
    if eir_rate is not None:
        best = max(v for (p, _), v in loader.items() if p)
        keeps = "keeps up" if best >= eir_rate else "does NOT keep up"
        lines += [
            "",
            f"With pasting the loader {keeps} with the EIR step ({best:.1f} vs {eir_rate:.2f} images/s)"
            + ("." if device.type == "cuda" else "; on the CPU the loader and the model share the cores, "
               "so both rates are measured alone."),
        ]
    return lines


def evaluation_section(args, device, ev: dict) -> list[str]:
    s = ev["seconds"]
    return [
        "",
        "## Evaluation",
        "",
        f"{ev['images']} validation images at {ev['size'][0]}x{ev['size'][1]} (full resolution), "
        f"last step of synthetic {TASK[1]} (every class seen), the same predictions (labels with "
        "random wrong rectangles) given to both; `process` + `evaluate`, best of "
        f"{args.eval_repeats}:",
        "",
        "| evaluator | ms per image | mIoU | pixel acc |",
        "|---|---:|---:|---:|",
        f"| ContinualSemSegEvaluator (confusion matrix on the {device.type}, labels from the mapper) | "
        f"{1000 * s['ours'] / ev['images']:.2f} | {ev['miou_ours']:.4f} | {ev['pacc_ours']:.4f} |",
        f"| Detectron2 SemSegEvaluator (default, with Boundary IoU; reads the label files) | "
        f"{1000 * s['d2'] / ev['images']:.2f} | {ev['miou_d2']:.4f} | {ev['pacc_d2']:.4f} |",
        f"| Detectron2 SemSegEvaluator, Boundary IoU off | {1000 * s['d2_plain'] / ev['images']:.2f} | | |",
        "",
        f"Per-class IoU: {ev['classes_compared']} classes compared, largest difference "
        f"{ev['max_iou_diff']:.2e} ({ev['classes_na']} n/a in both); mIoU difference "
        f"{abs(ev['miou_ours'] - ev['miou_d2']):.2e} (mIoU over background and every class, which at "
        f"the last step is the continual evaluator's all). Speed: SemSegEvaluator takes "
        f"{s['d2'] / s['ours']:.1f}x the continual evaluator's time ({s['d2_plain'] / s['ours']:.1f}x "
        "without Boundary IoU). The continual evaluator also reports old "
        f"{ev['old']:.2f} / new {ev['new']:.2f}.",
    ]


def backbone_name(cfg) -> str:
    depth = cfg.model.backbone.get("depth")
    if depth:
        return f"ResNet-{depth}"
    blocks = cfg.model.backbone.get("num_blocks")
    return f"small bottleneck ResNet (blocks {tuple(blocks) if blocks else '?'})"


def setup_channels(args) -> int:
    from eir.tasks import build_task

    return build_task(*TASK).num_channels(STEP)


# --------------------------------------------------------------------------- main


def parse_args(argv):
    own = [a for a in argv if not ("=" in a and not a.startswith("-"))]
    overrides = [a for a in argv if a not in own]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="key=value arguments are LazyConfig overrides of the model's config.")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--model", default="auto", choices=("auto", "r101", "synthetic"),
                   help="auto: r101 on a GPU, synthetic (small) on the CPU")
    p.add_argument("--size", type=int, default=None, help="crop side (default: 512 for r101, 128 for synthetic)")
    p.add_argument("--batch", type=int, default=8, help="images per iteration")
    p.add_argument("--iters", type=int, default=None, help="iterations per round (default: GPU 20, CPU 5)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds per step kind")
    p.add_argument("--warmup", type=int, default=None, help="warm-up iterations (default: GPU 5, CPU 2)")
    p.add_argument("--amp", default="auto", choices=("auto", "on", "off"),
                   help="auto: the config's train.amp.enabled (r101: on; synthetic: off)")
    p.add_argument("--workers", type=int, nargs="+", default=None,
                   help="loader worker counts to measure (default: 1, half and all of the cores)")
    p.add_argument("--loader-batches", type=int, default=None, help="batches timed per loader (default: GPU 40, CPU 20)")
    p.add_argument("--threads", type=int, default=None,
                   help="PyTorch CPU threads (default: PyTorch's, usually the physical cores)")
    p.add_argument("--eval-repeats", type=int, default=3)
    p.add_argument("--num-train", type=int, default=200, help="training images of the generated dataset")
    p.add_argument("--num-val", type=int, default=50, help="validation images of the generated dataset")
    p.add_argument("--data", default=None, help="dataset root (default: /tmp/eir_bench_train_<size>px_<num-train>_<num-val>)")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder of bench_train_<device>.md")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS,
                   help="what to measure: the training step, the data loader, the evaluators (default: all)")
    p.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    args = p.parse_args(own)
    args.overrides = overrides
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = args.device == "cuda"
    if args.model == "auto":
        args.model = "r101" if gpu else "synthetic"
    if args.size is None:
        args.size = 512 if args.model == "r101" else 128
    if args.iters is None:
        args.iters = 20 if gpu else 5
    if args.warmup is None:
        args.warmup = 5 if gpu else 2
    if args.loader_batches is None:
        args.loader_batches = 40 if gpu else 20
    if args.workers is None:
        cores = num_cores()
        args.workers = sorted({1, max(1, cores // 2), cores})
    if args.data is None:
        args.data = f"/tmp/eir_bench_train_{args.size}px_{args.num_train}_{args.num_val}"
    return args


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.load_at_start = load_average()
    if args.threads:
        torch.set_num_threads(args.threads)
    command = shlex.join(["python", "benchmarks/bench_train.py", *argv])
    device = torch.device(args.device)
    cfg = load_config(args)
    cfg.train.device = args.device
    args.amp = bool(cfg.train.amp.enabled) if args.amp == "auto" else args.amp == "on"
    args.parts = [p for p in PARTS if p in args.parts]
    print(f"bench_train on {machine(device)}", flush=True)
    print(f"generating / checking the synthetic dataset at {args.size} px in {args.data}...", flush=True)
    data_root = ensure_data(args)
    train = loader = evaluation = None
    if "train" in args.parts or "loader" in args.parts:
        setup = Setup(cfg, args, data_root)
        args.paste_cell = setup.paste_cfg.cell_size
        print(f"bank: {len(setup.bank)} entries; {len(setup.dicts)} training samples in step {STEP}", flush=True)

    if "train" in args.parts:
        print("1. training step (plain vs EIR)", flush=True)
        train = bench_training(cfg, args, setup, device)
        print(f"   plain {train['plain']['images_per_s']:.2f} images/s, EIR {train['eir']['images_per_s']:.2f} "
              f"images/s, ratio {train['ratio']:.3f}", flush=True)

    if "loader" in args.parts:
        print("2. data loader", flush=True)
        loader = {}
        for w in args.workers:
            loader[(True, w)] = bench_loader(args, setup, w, paste=True)
            print(f"   with pasting, {w} workers: {loader[(True, w)]:.1f} images/s", flush=True)
        w = max(args.workers)
        loader[(False, w)] = bench_loader(args, setup, w, paste=False)
        print(f"   no pasting, {w} workers: {loader[(False, w)]:.1f} images/s", flush=True)

    if "eval" in args.parts:
        print("3. evaluation", flush=True)
        from eir.data.datasets import register_eir_datasets

        register_eir_datasets(data_root)
        evaluation = bench_evaluation(args, device)
        s = evaluation["seconds"]
        print(f"   mIoU ours {evaluation['miou_ours']:.4f} / SemSegEvaluator {evaluation['miou_d2']:.4f}; "
              f"max per-class IoU difference {evaluation['max_iou_diff']:.2e}; "
              f"time {s['ours']:.3f} s / {s['d2']:.3f} s", flush=True)

    text = report(args, cfg, device, train, loader, evaluation, command)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench_train_{device.type}.md"
    path.write_text(text)
    print(f"\n{text}\nwritten to {path}", flush=True)
    agree = evaluation is None or bool(evaluation["max_iou_diff"] < 1e-6)
    if args.json:
        figures = {
            "device": device.type,
            "machine": machine(device),
            "command": command,
            "model": args.model,
            "size": args.size,
            "batch": args.batch,
            "amp": args.amp,
            "target_ratio": TARGET_RATIO,
            "train": train,
            "loader": None if loader is None else [
                {"paste": p, "workers": w, "images_per_s": v} for (p, w), v in loader.items()
            ],
            "evaluation": evaluation,
            "evaluators_agree": None if evaluation is None else agree,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=1))
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
