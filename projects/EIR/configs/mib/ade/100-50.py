"""MiB, ADE20K 100-50 (overlap)."""
from ..base_ade import dataloader, method, model, optimizer, schedule, task, train

task.name = "100-50"
train.output_dir = "output/mib/ade_100-50"
