"""EIR with the region rule for instances, Pascal VOC 15-1 overlap.

Every sufficiently large connected region of a class is an instance (eir.data.bank_rule), for
data where a class is not one blob (street scenes, stuff classes): METHOD.md, departure 14.
The paper's rule (the default, ``method.instances=None``) takes an image only when each of its
classes forms one connected region.
"""
from detectron2.config import LazyCall as L

from eir.data.bank_rule import RegionRule

from ..base_voc import dataloader, method, model, optimizer, schedule, task, train

task.name = "15-1"
task.setting = "overlap"
train.output_dir = "output/eir/voc_15-1_overlap_eir_regions"

method.instances = L(RegionRule)(min_area=0.001)
