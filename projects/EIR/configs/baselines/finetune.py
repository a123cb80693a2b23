"""Baseline: fine-tuning, Pascal VOC 15-1 overlap.

Each step trains on its own labels only: no bank (no replay, no pasting), no pseudo-labels,
no distillation, hence no old model. The lower bound of every continual method.
"""
from ..base_voc import dataloader, method, model, optimizer, schedule, task, train

task.name = "15-1"
task.setting = "overlap"
train.output_dir = "output/eir/voc_15-1_overlap_finetune"

method.memory = 0
method.paste = None
method.criterion.tau = None
method.criterion.w_kd = 0
