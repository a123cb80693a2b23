"""EIR on ADE20K: the paper's recipe (METHOD.md section 8).

Task files in ade/ import this and set ``task.name``.
"""
from ....configs.common.data.continual import dataloader
from ....configs.common.methods.eir import method
from ....configs.common.models.deeplabv3_r101 import model
from ....configs.common.optim import SGD as optimizer
from ....configs.common.schedule import schedule
from ....configs.common.task import task
from ....configs.common.train import train

task.name = "100-50"  # ADE20K protocols are overlapped
# The raw layout's value 0 ("other") is the background. For Detectron2's own registration
# (ade20k_sem_seg_train/val, annotations_detectron2: values 0..149, 255 unlabelled) set
# task.background=False: the class ids come out the same.
task.background = True
task.unseen_test_label = 255  # the paper's protocol: unseen classes are ignored at test time

dataloader.train.dataset = "eir_ade_train"
dataloader.test.dataset = "eir_ade_val"
dataloader.train.total_batch_size = 24

schedule.epochs = 100
schedule.incremental_epochs = 100
schedule.lr = 2.5e-3
schedule.incremental_lr = 2.5e-4
schedule.warmup_fraction = 0.2

method.memory = 300
