"""MiB, Pascal VOC 15-5 overlap."""
from ..base_voc import dataloader, method, model, optimizer, schedule, task, train

task.name = "15-5"
task.setting = "overlap"
train.output_dir = "output/mib/voc_15-5_overlap"
