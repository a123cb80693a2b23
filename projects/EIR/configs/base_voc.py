"""EIR on Pascal VOC 2012 (augmented): the paper's recipe (METHOD.md section 8).

Task files in voc/ import this and set ``task.name`` / ``task.setting``.
"""
from ....configs.common.data.continual import dataloader
from ....configs.common.methods.eir import method
from ....configs.common.models.deeplabv3_r101 import model
from ....configs.common.optim import SGD as optimizer
from ....configs.common.schedule import schedule
from ....configs.common.task import task
from ....configs.common.train import train

task.name = "15-1"
task.background = True  # VOC's label value 0 is the background; unseen classes test as background

dataloader.train.dataset = "eir_voc_train"
dataloader.test.dataset = "eir_voc_val"
dataloader.train.total_batch_size = 32

schedule.epochs = 60
schedule.incremental_epochs = 60
schedule.lr = 1e-3
schedule.incremental_lr = 1e-4

method.memory = 100
