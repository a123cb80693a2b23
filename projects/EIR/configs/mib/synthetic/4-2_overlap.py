"""MiB on the synthetic dataset, task 4-2 overlap (4 steps: 1-4 | 5-6 | 7-8 | 9-10)."""
from ..base_synthetic import dataloader, method, model, optimizer, schedule, task, train

task.name = "4-2"
task.setting = "overlap"
train.output_dir = "output/mib/synthetic_4-2_overlap"
