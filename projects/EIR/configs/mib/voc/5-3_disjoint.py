"""MiB, Pascal VOC 5-3 disjoint."""
from ..base_voc import dataloader, method, model, optimizer, schedule, task, train

task.name = "5-3"
task.setting = "disjoint"
train.output_dir = "output/mib/voc_5-3_disjoint"
