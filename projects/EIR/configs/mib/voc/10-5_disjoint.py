"""MiB, Pascal VOC 10-5 disjoint."""
from ..base_voc import dataloader, method, model, optimizer, schedule, task, train

task.name = "10-5"
task.setting = "disjoint"
train.output_dir = "output/mib/voc_10-5_disjoint"
