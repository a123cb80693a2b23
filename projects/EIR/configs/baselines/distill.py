"""Baseline: distillation only, Pascal VOC 15-1 overlap.

The old model's pseudo-labels and RSKD, as in EIR, but no replay memory: no bank, so
neither replayed samples nor pasting.
"""
from ..base_voc import dataloader, method, model, optimizer, schedule, task, train

task.name = "15-1"
task.setting = "overlap"
train.output_dir = "output/eir/voc_15-1_overlap_distill"

method.memory = 0
method.paste = None
