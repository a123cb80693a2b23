"""MiB, Pascal VOC 10-5 overlap."""
from ..base_voc import dataloader, method, model, optimizer, schedule, task, train

task.name = "10-5"
task.setting = "overlap"
train.output_dir = "output/mib/voc_10-5_overlap"
