"""Your own dataset: a folder of images and label PNGs, registered with Detectron2's ``load_sem_seg``.

    $DETECTRON2_DATASETS/my_dataset/images/{train,val}/<name>.jpg
    $DETECTRON2_DATASETS/my_dataset/labels/{train,val}/<name>.png   values 0..K-1: the classes,
                                                                    255: unlabelled

Copy this file next to the other configs, list your classes (the name of each label value)
and choose the task; the run's classes, names and colours come from the MetadataCatalog entry.
The model is the synthetic runs' tiny ResNet trained from scratch; import ``model``,
``optimizer``, ``schedule`` and ``train`` from ``..base_voc`` for DeepLabV3 ResNet-101.
"""
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_sem_seg

from ..base_synthetic import dataloader, method, model, optimizer, schedule, task, train  # noqa: F401

_CLASSES = ["sky", "grass", "road"]  # the name of label value 0, 1, 2
_ROOT = os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), "my_dataset")

for _split in ("train", "val"):
    _name = f"my_dataset_{_split}"
    if _name not in DatasetCatalog.list():  # every process that loads this config registers it once
        DatasetCatalog.register(
            _name,
            lambda s=_split: load_sem_seg(f"{_ROOT}/labels/{s}", f"{_ROOT}/images/{s}", gt_ext="png", image_ext="jpg"),
        )
        MetadataCatalog.get(_name).set(  # the two roots: the run reports the files the dataset leaves out
            stuff_classes=_CLASSES, ignore_label=255, image_root=f"{_ROOT}/images/{_split}",
            sem_seg_root=f"{_ROOT}/labels/{_split}",
        )

dataloader.train.dataset = "my_dataset_train"
dataloader.test.dataset = "my_dataset_val"
task.name = "2-1"  # sky and grass first, then road
task.background = False  # values 0..2 are the classes; 255 (none of them) becomes the background
