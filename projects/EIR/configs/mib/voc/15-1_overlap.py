"""MiB, Pascal VOC 15-1 overlap."""
from ..base_voc import dataloader, method, model, optimizer, schedule, task, train

task.name = "15-1"
task.setting = "overlap"
train.output_dir = "output/mib/voc_15-1_overlap"
