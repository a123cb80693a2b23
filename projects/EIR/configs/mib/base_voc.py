"""MiB on Pascal VOC 2012 (augmented): the paper's recipe over EIR's model and data
(projects/EIR/METHOD.md, section MiB, says where each value comes from).

Task files in voc/ import this and set ``task.name`` / ``task.setting``.
"""
from detectron2.config import LazyCall as L

from eir.methods.mib import MiB

from ..base_voc import dataloader, model, optimizer, schedule, task, train

method = L(MiB)(w_kd=10.0)  # lambda

dataloader.train.total_batch_size = 24
schedule.epochs = 30  # every step, step 0 included
schedule.incremental_epochs = 30
schedule.lr = 1e-2
schedule.incremental_lr = 1e-3
schedule.warmup_fraction = 0.0
# The paper trains the whole network at one rate (DeepLabV3's policy); EIR's head runs at 10x.
optimizer.params.head_lr_mult = 1.0
