"""MiB, Pascal VOC 19-1 disjoint."""
from ..base_voc import dataloader, method, model, optimizer, schedule, task, train

task.name = "19-1"
task.setting = "disjoint"
train.output_dir = "output/mib/voc_19-1_disjoint"
