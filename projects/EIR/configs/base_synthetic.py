"""EIR on the synthetic dataset: a tiny model and schedule so a whole run takes minutes on a CPU.

The dataset (eir.data.synthetic: 10 shape classes with VOC-like co-occurrence, 5,000
training and 500 validation images of 160x160) is generated under
``$DETECTRON2_DATASETS/eir_synthetic`` on first use. Task files in synthetic/ import this.
The runs that the model and schedule are judged by (joint, step 0, fine-tuning) are in
benchmarks/results/synthetic_design.md.
"""
import torch
from detectron2.config import LazyCall as L

from eir.modeling.backbone import SMALL_RESNET, build_resnet_deeplab, resnet_out_channels

from ....configs.common.data.continual import dataloader
from ....configs.common.methods.eir import method
from ....configs.common.models.deeplabv3_r101 import model
from ....configs.common.optim import SGD as optimizer
from ....configs.common.schedule import schedule
from ....configs.common.task import task
from ....configs.common.train import train

task.name = "4-2"
task.background = True  # label value 0 is the background; unseen classes test as background

# A bottleneck ResNet with one block per stage and narrow widths (res5: 256 channels).
model.backbone = L(build_resnet_deeplab)(
    depth=None, **SMALL_RESNET,
    output_stride=8,  # 128-pixel inputs give 16x16 features
    # synchronised at step 0 like the paper model's SyncBN; torch's SyncBN needs CUDA, this
    # one runs under gloo too (the head follows the backbone's norm)
    norm="naiveSyncBN",
)
model.head.in_channels = resnet_out_channels(SMALL_RESNET["res2_out_channels"])
model.head.channels = 64
model.head.aspp_dilations = (2, 4, 6)  # rates for 16x16 features
model.head.prior_prob = 0.01  # from scratch, start class scores near 1% (see IncrementalHead)

dataloader.train.dataset = "eir_synthetic_train"
dataloader.test.dataset = "eir_synthetic_val"
dataloader.train.total_batch_size = 16
# On a CPU the loader's worker processes take cores from PyTorch's threads: on 2 cores, step 0
# trained at 0.27 s/it with 2 workers and at 0.19 s/it loading in the training process. The
# samples do not depend on the workers (each is seeded by its stream position); the weights
# came out the same bit for bit (README, Crash safety). On a GPU, workers keep it fed.
dataloader.train.num_workers = 2 if torch.cuda.is_available() else 0
# Training views: windows of 0.5-2x a 160-px image's area resized to 128 px, i.e. scales of
# 0.8-1.13 around the test scale (128-px images made every view a zoom-in).
dataloader.train.augmentations.crop_size = 128
dataloader.test.augmentations.short_side = None  # evaluate at full resolution (160 px)
dataloader.test.augmentations.crop = None

# Epochs over 5,000 images: joint training and step 0 see each image 6 times (1,875
# iterations for joint), a later step its own images 3 times.
schedule.epochs = 6
schedule.incremental_epochs = 3
schedule.lr = 0.02
# The paper's tenth of the base rate. With BatchNorm frozen in incremental steps, larger
# rates made this from-scratch model collapse to background (0.005) or diverge (0.01).
schedule.incremental_lr = 0.002

method.memory = 40
method.paste.cell_size = 62  # 250 / 512 of the 128-pixel crop
method.prepass.short_side = 160  # the images' own size: pseudo-labels at full resolution
method.prepass.stride = 4

train.from_scratch = True  # no ImageNet weights: the tiny ResNet trains from random weights
train.device = "auto"
train.amp.enabled = False  # the tiny model gains nothing from bfloat16 on a CPU
train.checkpointer.period = 200
train.log_period = 20
