"""The run's continual method: EIR (eir/methods/eir.py; METHOD.md sections 3-6), with the
paper's defaults. Its baselines are settings of it (projects/EIR/configs/baselines)."""
from detectron2.config import LazyCall as L

from eir.data.paste import PasteConfig
from eir.methods.eir import EIR
from eir.modeling.criterion import EIRCriterion

method = L(EIR)(
    memory=100,  # instance bank budget M (entries); 0 disables the bank (and pasting)
    storage="instance",  # "instance" (EIR) or "image" (whole images with step labels: image replay)
    # which parts of a label the bank stores (instance storage): None, the paper's rule (an image
    # whose every class is one 4-connected region, all its classes in one entry);
    # L(RegionRule)(min_area=0.001) from eir.data.bank_rule: each class's largest 4-connected
    # region covering >= min_area of the image, one entry each, for data whose classes come in
    # pieces (street scenes); METHOD.md section 9, item 14. On the command line:
    # 'method.instances={_target_:eir.data.bank_rule.RegionRule,min_area:0.001}'
    instances=None,
    paste=L(PasteConfig)(  # instance pasting in incremental steps; None disables it
        max_classes=3,  # K: at most this many potential old classes per image
        cell_size=250,  # S: paste cell side for a 512 crop
        min_found=2,  # fewer found classes than this triggers the fallback
        fallback_total=3,  # the fallback adds random old classes up to this many instances
        mode="mixup",  # "mixup": lambda ~ Beta per paste; "copy": lambda = 1
        beta=(1.0, 1.0),  # Beta parameters of lambda
        flip_prob=0.5,  # horizontal flip of a pasted instance
        onto="any",  # "any" (the paper's) or "background": pastes cover label-0 pixels only
        skip_classes=(),  # old classes never pasted (an ablation; the paper pastes every old class)
    ),
    criterion=L(EIRCriterion)(  # the training objective of every step
        tau=0.7,  # pseudo-label threshold on the old model's sigmoid scores; None: no pseudo-labels
        w_bce=1.0,  # weight of the BCE loss
        w_kd=5.0,  # weight of RSKD; 0 disables distillation
        rskd_mask="not_new",  # pixels distilled: "not_new" | "background" | "all"
        rskd_normalize="mask",  # RSKD mean over "mask" pixels or "all" pixels
        pasted_bce="all",  # channels with BCE on pasted pixels: "all" (paper) | "old_channels" | "none"
    ),
    new_head_init="random",  # new classifier init: "random" or "aux" (copy of the background head)
    prepass=dict(  # the old model's pass over a step's images that tells pasting what it hides
        tau="${..criterion.tau}",  # detection threshold: the pseudo-labels' (METHOD.md section 4)
        short_side=512,  # the old model sees training images resized to this shorter side
        stride=8,  # stored pseudo-label maps are 1/stride of the image size
    ),
)
