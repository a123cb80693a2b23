#!/usr/bin/env python
"""How much does instance pasting add to a data-loader worker's time per image?

Both measurements run on one CPU core (process pinned, OpenCV / BLAS threads = 1),
on 512 x 512 training crops of a synthetic dataset (generated once, at size 512,
into the cache folder ``--data``):

(a) baseline: read + decode the JPEG and the PNG label, remap the label to the
    step, random resized crop (area x0.5-2.0 of a 512 crop, aspect 3/4-4/3:
    scale jitter, then a 512 crop, padded where the scaled image is smaller) and
    a random flip, with OpenCV / NumPy -- the work of a Detectron2 loader;
(b) the same plus ``paste_from_bank`` (3 instances per image, default
    PasteConfig: mixup, S = 250) from a bank built from that data (synthetic 6-1,
    step 0, M = 100) and a random pseudo map with 3-4 old classes.

It also times ``paste_from_bank`` alone on ready crops. Times are CPU time of
the measuring process (user + system), so time slices taken by other processes
on a shared machine do not count; each allocator setting (glibc defaults, and glibc with its trim and
mmap thresholds raised, see ALLOCATORS) is measured in a fresh child process.
Target: pasting adds at most 20 % to (a). Prints a markdown table and writes it
to ``benchmarks/results/bench_paste.md``.

    python benchmarks/bench_paste.py --data /tmp/eir_synth512 [--num-images 200 --repeats 7]
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu_model  # noqa: E402
from eir.data.bank import InstanceBank  # noqa: E402
from eir.data.paste import PasteConfig, paste_from_bank  # noqa: E402
from eir.data.synthetic import ensure_synthetic  # noqa: E402
from eir.tasks import build_task  # noqa: E402

CROP = 512
TASK, STEP = ("synthetic", "6-1"), 1  # pasting happens in step 1 with the bank of step 0
RESULTS = Path(__file__).resolve().parent / "results" / "bench_paste.md"


def pin_one_core() -> str:
    cv2.setNumThreads(1)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    if hasattr(os, "sched_setaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return f"pinned to core {core}"
    return "not pinned (no sched_setaffinity)"




def load_sample(root: Path, image_id: str, lut: np.ndarray):
    bgr = cv2.imread(str(root / "JPEGImages" / f"{image_id}.jpg"), cv2.IMREAD_COLOR)
    image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    label = lut[cv2.imread(str(root / "SegmentationClassAug" / f"{image_id}.png"), cv2.IMREAD_UNCHANGED)]
    return image, label


def random_resized_crop(image, label, rng):
    """Scale jitter so a region of area x[0.5, 2] of a 512 crop, aspect [3/4, 4/3], becomes
    512 x 512; then a random 512 crop (pad: mean colour / 255) and a random horizontal flip."""
    h, w = label.shape
    area = rng.uniform(0.5, 2.0) * CROP * CROP
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    region_w, region_h = np.sqrt(area * aspect), np.sqrt(area / aspect)
    new_w = max(1, int(round(w * CROP / region_w)))
    new_h = max(1, int(round(h * CROP / region_h)))
    image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(label, (new_w, new_h), interpolation=cv2.INTER_NEAREST)
    if new_h < CROP or new_w < CROP:
        bottom, right = max(0, CROP - new_h), max(0, CROP - new_w)
        image = cv2.copyMakeBorder(image, 0, bottom, 0, right, cv2.BORDER_CONSTANT, value=(124, 116, 104))
        label = cv2.copyMakeBorder(label, 0, bottom, 0, right, cv2.BORDER_CONSTANT, value=255)
    y = int(rng.integers(0, label.shape[0] - CROP + 1))
    x = int(rng.integers(0, label.shape[1] - CROP + 1))
    image, label = image[y:y + CROP, x:x + CROP], label[y:y + CROP, x:x + CROP]
    if rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


def random_pseudo_map(rng, old_classes) -> np.ndarray:
    """A 512 x 512 map with blobs of 3-4 distinct old classes (the old model's detections)."""
    pm = np.zeros((CROP, CROP), np.uint8)
    for c in rng.choice(old_classes, size=int(rng.integers(3, 5)), replace=False):
        cy, cx = rng.integers(0, CROP, 2)
        axes = tuple(int(a) for a in rng.integers(20, 90, 2))
        cv2.ellipse(pm, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, int(c), -1)
    return pm


def get_bank(root: Path, cache: Path, task) -> InstanceBank:
    if (cache / "manifest.json").is_file():
        return InstanceBank.load(cache, task=task, step=0)
    ids = (root / "ImageSets" / "Segmentation" / "train_aug.txt").read_text().split()
    samples = [
        {"file_name": str(root / "JPEGImages" / f"{i}.jpg"),
         "sem_seg_file_name": str(root / "SegmentationClassAug" / f"{i}.png"), "image_id": i}
        for i in ids
    ]
    bank = InstanceBank.build(samples, task, step=0, budget=100, seed=0, verbose=False)
    bank.save(cache)
    return bank


def clock() -> float:
    """CPU seconds of this process (user + system, page faults included): on a shared machine
    other processes' load does not leak into it the way it does into wall time."""
    return time.process_time()


def run_pass(root, ids, lut, seed, bank=None, old=None, cfg=None, pseudo_maps=None) -> float:
    """One pass over ``ids`` as a loader worker would make it; returns CPU seconds."""
    t0 = clock()
    for k, image_id in enumerate(ids):
        rng = np.random.default_rng([seed, k])
        image, label = load_sample(root, image_id, lut)
        image, label = random_resized_crop(image, label, rng)
        if bank is not None:  # the crop is this iteration's own: paste in place, as the mapper does
            paste_from_bank(image, label, pseudo_maps[k % len(pseudo_maps)], bank, old, cfg, rng,
                            inplace=True)
    return clock() - t0


# glibc's allocator returns freed heap memory to the OS past a dynamic trim threshold, so
# a worker whose per-image peak crosses it pays fresh page faults on every image; raising
# the thresholds (or using jemalloc / tcmalloc) keeps the heap. Both are measured.
ALLOCATORS = {
    "glibc default": {},
    "glibc, trim/mmap thresholds raised": {
        "MALLOC_TRIM_THRESHOLD_": str(256 << 20), "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
    },
}


def page_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def measure(args) -> dict:
    """The timings of one process (run once per allocator setting)."""
    root = Path(args.data)
    task = build_task(*TASK)
    bank = InstanceBank.load(bank_dir(args), task=task, step=0)
    lut = np.asarray(task.train_label_lut(STEP), np.uint8)
    old = task.old_classes(STEP)
    cfg = PasteConfig()
    ids = (root / "ImageSets" / "Segmentation" / "train_aug.txt").read_text().split()[: args.num_images]
    map_rng = np.random.default_rng(args.seed + 1)
    pseudo_maps = [random_pseudo_map(map_rng, old) for _ in range(32)]
    pinned = pin_one_core()

    # warm-up: page cache, OpenCV / NumPy first-call costs
    run_pass(root, ids[:20], lut, args.seed)
    run_pass(root, ids[:20], lut, args.seed, bank, old, cfg, pseudo_maps)

    base, with_paste, faults = [], [], {"a": [], "b": []}
    for r in range(args.repeats):  # interleaved, so drifts in machine load hit both alike
        f0 = page_faults()
        base.append(run_pass(root, ids, lut, args.seed + r))
        f1 = page_faults()
        with_paste.append(run_pass(root, ids, lut, args.seed + r, bank, old, cfg, pseudo_maps))
        faults["a"].append(f1 - f0)
        faults["b"].append(page_faults() - f1)

    # paste_from_bank alone, on ready crops
    crops = []
    for k, image_id in enumerate(ids):
        rng = np.random.default_rng([args.seed, k])
        crops.append(random_resized_crop(*load_sample(root, image_id, lut), rng))
    alone = []
    for r in range(args.repeats):
        t0 = clock()
        for k, (image, label) in enumerate(crops):
            paste_from_bank(image, label, pseudo_maps[k % len(pseudo_maps)], bank, old, cfg,
                            np.random.default_rng([args.seed + r, k]))
        alone.append(clock() - t0)
    pasted = 0  # instances per image, counted outside the timed loops
    for k, (image, label) in enumerate(crops):
        pc = paste_from_bank(image, label, pseudo_maps[k % len(pseudo_maps)], bank, old, cfg,
                             np.random.default_rng([args.seed, k]))[2]
        pasted += int(np.count_nonzero(np.bincount(pc.ravel(), minlength=256)[1:]))
    n = len(ids)
    return {
        "a": 1000 * min(base) / n, "b": 1000 * min(with_paste) / n, "alone": 1000 * min(alone) / n,
        "faults_a": float(np.median(faults["a"])) / n, "faults_b": float(np.median(faults["b"])) / n,
        "pasted": pasted / n, "n": n, "bank": len(bank), "pinned": pinned,
    }


def bank_dir(args) -> Path:
    return Path(args.data).with_name(Path(args.data).name + "_bank_6-1_step0")


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="/tmp/eir_bench_synth512",
                    help="cache folder of the synthetic dataset (generated there when absent)")
    ap.add_argument("--num-train", type=int, default=300, help="images generated into --data")
    ap.add_argument("--num-images", type=int, default=200, help="images per timed pass")
    ap.add_argument("--repeats", type=int, default=7, help="timed passes per variant (best is kept)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:  # one measurement in this process, as JSON on the last line
        print(json.dumps(measure(args)))
        return ""

    root = ensure_synthetic(args.data, num_train=args.num_train, num_val=20, size=CROP, seed=0,
                            verbose=True, num_workers=min(4, os.cpu_count() or 1))
    get_bank(root, bank_dir(args), build_task(*TASK))
    forwarded = ["--data", args.data, "--num-images", str(args.num_images),
                 "--repeats", str(args.repeats), "--seed", str(args.seed)]
    results = {}
    for name, env in ALLOCATORS.items():
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--child", *forwarded],
            env={**os.environ, **env}, capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"measurement with {name} failed:\n{proc.stderr}")
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])

    first = next(iter(results.values()))
    cmd = "python " + " ".join(shlex.quote(s) for s in [sys.argv[0], *(argv or sys.argv[1:])])
    lines = [
        "# bench_paste: cost of instance pasting in a data-loader worker",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- machine: {cpu_model()}, one core ({first['pinned']}), cv2.setNumThreads(1), "
        "OMP/BLAS threads 1",
        f"- python {platform.python_version()}, numpy {np.__version__}, opencv {cv2.__version__}",
        f"- command: `{cmd}`",
        f"- data: synthetic dataset at size 512 ({first['n']} training images per pass), bank "
        f"synthetic 6-1 step 0 ({first['bank']} entries), step-1 labels, PasteConfig() (mixup, "
        f"K=3, S=250), random pseudo maps with 3-4 old classes; {first['pasted']:.2f} pasted "
        "classes per image",
        f"- timing: CPU time of the process (time.process_time: user + system; time slices taken "
        f"by other processes do not count, their cache pollution does), best of {args.repeats} "
        "interleaved passes, ms per image; "
        "page faults: minor faults per image (median pass)",
        "- (a) read + decode JPEG/PNG, remap the label to the step, random resized crop 512 "
        "(area x0.5-2, aspect 3/4-4/3), flip; (b) (a) + paste_from_bank (3 instances); "
        "alone: paste_from_bank on ready crops",
        "",
        "| allocator | (a) ms | (b) ms | (b)/(a) | added by pasting | paste alone ms | "
        "page faults (a) / (b) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    verdicts = []
    for name, r in results.items():
        added = r["b"] - r["a"]
        lines.append(
            f"| {name} | {r['a']:.2f} | {r['b']:.2f} | {r['b'] / r['a']:.2f} | {added:.2f} ms "
            f"({100 * added / r['a']:.1f} %) | {r['alone']:.2f} ({100 * r['alone'] / r['a']:.1f} %) "
            f"| {r['faults_a']:.0f} / {r['faults_b']:.0f} |"
        )
        verdicts.append(f"{name}: {'met' if added <= 0.2 * r['a'] else 'MISSED'}")
    lines += ["", "Target, pasting adds at most 20 % to (a): " + "; ".join(verdicts) + ".", ""]
    report = "\n".join(lines)
    print(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    return report


if __name__ == "__main__":
    main()
