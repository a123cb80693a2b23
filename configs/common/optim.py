"""SGD with EIR's parameter groups (section 3): head at 10x lr; in incremental steps weight
decay only on the new classifier. eir.engine.builders.build_optimizer sets params.model,
params.base_lr, params.step and lr for each step from ``schedule``."""
import torch
from detectron2.config import LazyCall as L

from eir.modeling.meta_arch import build_param_groups

SGD = L(torch.optim.SGD)(
    params=L(build_param_groups)(
        model=None,  # set per step
        base_lr=None,  # set per step: schedule.lr at step 0, schedule.incremental_lr after
        weight_decay="${..weight_decay}",  # the optimizer's
        step=None,  # set per step
        head_lr_mult=10.0,  # ASPP and classifiers learn 10x faster than the backbone
    ),
    lr=None,  # set per step
    momentum=0.9,
    nesterov=True,
    weight_decay=1e-4,
)
