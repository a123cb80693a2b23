"""MiB, ADE20K 50-50 (overlap)."""
from ..base_ade import dataloader, method, model, optimizer, schedule, task, train

task.name = "50-50"
train.output_dir = "output/mib/ade_50-50"
