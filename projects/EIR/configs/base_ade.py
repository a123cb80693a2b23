"""EIR on ADE20K: the paper's recipe (METHOD.md section 8).

Task files in ade/ import this and set ``task.name``.
"""
from ....configs.common.data.continual import dataloader
from ....configs.common.eir import eir
from ....configs.common.models.deeplabv3_r101 import model
from ....configs.common.optim import SGD as optimizer
from ....configs.common.schedule import schedule
from ....configs.common.train import train

task = dict(
    dataset="ade",  # eir.tasks.DATASETS key
    name="100-50",  # "B-I" or "joint"
    setting="overlap",  # ADE20K protocols are overlapped
    order=None,  # None (class-id order) or a permutation of 1..150
)

dataloader.train.dataset = "eir_ade_train"
dataloader.test.dataset = "eir_ade_val"
dataloader.train.total_batch_size = 24

schedule.epochs = 100
schedule.incremental_epochs = 100
schedule.lr = 2.5e-3
schedule.incremental_lr = 2.5e-4
schedule.warmup_fraction = 0.2

eir.memory = 300
