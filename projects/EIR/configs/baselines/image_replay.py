"""Baseline: image replay (SSUL-M / DKD-M style memory), Pascal VOC 15-1 overlap.

The bank stores whole images with their partial step labels and replays them as they
are; no pasting. Pseudo-labels and RSKD as in EIR.
"""
from ..base_voc import dataloader, method, model, optimizer, schedule, task, train

task.name = "15-1"
task.setting = "overlap"
train.output_dir = "output/eir/voc_15-1_overlap_image_replay"

method.storage = "image"
method.paste = None
