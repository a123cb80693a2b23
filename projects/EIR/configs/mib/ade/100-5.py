"""MiB, ADE20K 100-5 (overlap)."""
from ..base_ade import dataloader, method, model, optimizer, schedule, task, train

task.name = "100-5"
train.output_dir = "output/mib/ade_100-5"
