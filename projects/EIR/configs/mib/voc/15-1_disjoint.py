"""MiB, Pascal VOC 15-1 disjoint."""
from ..base_voc import dataloader, method, model, optimizer, schedule, task, train

task.name = "15-1"
task.setting = "disjoint"
train.output_dir = "output/mib/voc_15-1_disjoint"
