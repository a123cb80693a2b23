"""MiB on ADE20K: the paper's recipe over EIR's model and data (projects/EIR/METHOD.md, section
MiB, says where each value comes from). Test labels keep EIR's protocol (unseen classes ignored).

Task files in ade/ import this and set ``task.name``.
"""
from detectron2.config import LazyCall as L

from eir.methods.mib import MiB

from ..base_ade import dataloader, model, optimizer, schedule, task, train

method = L(MiB)(w_kd=10.0)  # lambda

dataloader.train.total_batch_size = 24
schedule.epochs = 60  # every step, step 0 included
schedule.incremental_epochs = 60
schedule.lr = 1e-2
schedule.incremental_lr = 1e-3
schedule.warmup_fraction = 0.0  # EIR's ADE20K warm-up is not MiB's
# The paper trains the whole network at one rate (DeepLabV3's policy); EIR's head runs at 10x.
optimizer.params.head_lr_mult = 1.0
