"""MiB, Pascal VOC 5-3 overlap."""
from ..base_voc import dataloader, method, model, optimizer, schedule, task, train

task.name = "5-3"
task.setting = "overlap"
train.output_dir = "output/mib/voc_5-3_overlap"
