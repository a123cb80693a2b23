"""MiB, Pascal VOC 10-1 overlap."""
from ..base_voc import dataloader, method, model, optimizer, schedule, task, train

task.name = "10-1"
task.setting = "overlap"
train.output_dir = "output/mib/voc_10-1_overlap"
