"""Ablation: EIR without instance storage (pasting only), Pascal VOC 15-1 overlap.

The bank stores whole images with their step labels, replayed as whole images; old-class
regions are cut from them and pasted into new images as in EIR.
"""
from ..base_voc import dataloader, method, model, optimizer, schedule, task, train

task.name = "15-1"
task.setting = "overlap"
train.output_dir = "output/eir/voc_15-1_overlap_eir_paste_only"

method.storage = "image"
