"""Upper bound: joint training on all 20 VOC classes in one step (no continual learning).

Compare its per-class IoUs with a 15-1 run by grouping them the same way (old: background
and classes 1-15; new: 16-20), as benchmarks/css_benchmark.py does.
"""
from ..base_voc import dataloader, method, model, optimizer, schedule, task, train

task.name = "joint"
task.setting = "overlap"
train.output_dir = "output/eir/voc_joint"
