"""MiB on the synthetic dataset, task 6-1 overlap (5 steps: 1-6 | 7 | 8 | 9 | 10)."""
from ..base_synthetic import dataloader, method, model, optimizer, schedule, task, train

task.name = "6-1"
task.setting = "overlap"
train.output_dir = "output/mib/synthetic_6-1_overlap"
