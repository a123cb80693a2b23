"""MiB, Pascal VOC 10-1 disjoint."""
from ..base_voc import dataloader, method, model, optimizer, schedule, task, train

task.name = "10-1"
task.setting = "disjoint"
train.output_dir = "output/mib/voc_10-1_disjoint"
