"""MiB, Pascal VOC 19-1 overlap."""
from ..base_voc import dataloader, method, model, optimizer, schedule, task, train

task.name = "19-1"
task.setting = "overlap"
train.output_dir = "output/mib/voc_19-1_overlap"
