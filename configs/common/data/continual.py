"""Data loading for a continual run: which registered datasets, batch, augmentation (section 8).

The runner builds the per-step views (the step's training images joined with the bank's
entries, the test images of the classes seen so far), so these are parameters, not loaders.
"""
from detectron2.config import LazyCall as L

from eir.data.mapper import build_test_augmentations, build_train_augmentations

dataloader = dict(
    train=dict(
        dataset="eir_voc_train",  # any name in Detectron2's DatasetCatalog; its MetadataCatalog entry gives the classes
        total_batch_size=32,  # over all GPUs
        num_workers=4,  # data-loader workers per process (also used for presence and bank scans)
        # random resized crop (torchvision's semantics): a window of area x0.5-2.0 of the image
        # and aspect 3/4-4/3 that fits inside it (else the central crop), resized to crop_size,
        # then horizontal flip; crop_mode="pad" keeps larger windows and pads them (a variant)
        augmentations=L(build_train_augmentations)(crop_size=512, scale=(0.5, 2.0), crop_mode="fit"),
    ),
    test=dict(
        dataset="eir_voc_val",
        batch_size=1,  # per process
        num_workers="${..train.num_workers}",  # the training loader's
        # shorter side 512 then centre crop 512; crop=None evaluates the full resized image
        augmentations=L(build_test_augmentations)(short_side=512, crop=512),
    ),
)
