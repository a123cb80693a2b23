"""EIR on CamVid, task 8-3 overlap (2 steps: sky ... fence | car, pedestrian, bicyclist)."""
from ..base_camvid import dataloader, method, model, optimizer, schedule, task, train

task.name = "8-3"
task.setting = "overlap"
train.output_dir = "output/eir/camvid_8-3_overlap"
