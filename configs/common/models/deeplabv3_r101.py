"""DeepLabV3 with a ResNet-101 at output stride 16 and EIR's incremental sigmoid head (section 3).

BatchNorm, as in the authors' release: synchronised across GPUs at step 0 ("SyncBN"; plain BN
when the run has one process, see eir/modeling/norm.py), frozen at every later step, which
therefore keeps the statistics of step 0's whole batch. norm="BN" gives per-GPU statistics.
"""
from detectron2.config import LazyCall as L

from eir.constants import IMAGENET_MEAN, IMAGENET_STD
from eir.modeling.backbone import build_resnet_deeplab
from eir.modeling.head import IncrementalHead
from eir.modeling.meta_arch import EIRSegmentor

model = L(EIRSegmentor)(
    # ResNet-101, res5 dilated by 2 (output stride 16); ImageNet weights via train.init_checkpoint.
    backbone=L(build_resnet_deeplab)(depth=101, norm="SyncBN", output_stride=16),
    head=L(IncrementalHead)(
        in_channels=2048,  # res5 channels of the backbone
        step_sizes=None,  # classes per step up to the current one: set per step from the task
        channels=256,  # ASPP and decoder width
        aspp_dilations=(6, 12, 18),  # ASPP rates at output stride 16
        norm="${..backbone.norm}",  # the backbone's: synchronised at step 0, frozen later
    ),
    pixel_mean=IMAGENET_MEAN,  # inputs are RGB
    pixel_std=IMAGENET_STD,
    channel_classes=None,  # class id of each output channel: set per step from the task
    num_classes=None,  # foreground classes of the dataset: set from the task
)
