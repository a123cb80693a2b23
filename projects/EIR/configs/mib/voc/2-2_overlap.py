"""MiB, Pascal VOC 2-2 overlap."""
from ..base_voc import dataloader, method, model, optimizer, schedule, task, train

task.name = "2-2"
task.setting = "overlap"
train.output_dir = "output/mib/voc_2-2_overlap"
