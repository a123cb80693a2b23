"""MiB, ADE20K 100-10 (overlap)."""
from ..base_ade import dataloader, method, model, optimizer, schedule, task, train

task.name = "100-10"
train.output_dir = "output/mib/ade_100-10"
