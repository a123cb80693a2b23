"""Ablation: EIR without pasting (instance storage only), Pascal VOC 15-1 overlap.

The bank stores instances and replays them on a flat background; nothing is pasted into
new images.
"""
from ..base_voc import dataloader, method, model, optimizer, schedule, task, train

task.name = "15-1"
task.setting = "overlap"
train.output_dir = "output/eir/voc_15-1_overlap_eir_no_paste"

method.paste = None
