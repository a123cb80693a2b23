"""Step 0's ImageNet backbone: refused when missing (unless from scratch) or when it leaves
backbone weights unloaded; the converter's output passes."""
import pickle
from pathlib import Path

import pytest
import torch
from conftest import load_script

pytest.importorskip("detectron2", reason="Detectron2 is not installed (the engine tests need it)")
torchvision = pytest.importorskip("torchvision", reason="the converter tests build torchvision ResNets")

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import LazyCall as L  # noqa: E402
from detectron2.config import LazyConfig  # noqa: E402
from torchvision.models.resnet import Bottleneck, ResNet  # noqa: E402

from eir.engine.builders import build_run_task, build_step_model  # noqa: E402
from eir.engine.init_checkpoint import check_init_checkpoint  # noqa: E402
from eir.engine.runner import ContinualRunner  # noqa: E402
from eir.modeling.backbone import build_resnet_deeplab  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VOC = ROOT / "projects/EIR/configs/voc/15-1_overlap.py"
SYNTHETIC = ROOT / "projects/EIR/configs/synthetic/4-2_overlap.py"

convert = load_script("tools/convert_torchvision_r101.py")


def tiny_torchvision_resnet():
    """A torchvision bottleneck ResNet with one block per stage and 8-wide bottlenecks."""
    torch.manual_seed(0)
    return ResNet(Bottleneck, [1, 1, 1, 1], width_per_group=8)


# The Detectron2 twin of tiny_torchvision_resnet (torchvision's stem has 64 channels).
TINY_BACKBONE = L(build_resnet_deeplab)(depth=None, num_blocks=(1, 1, 1, 1), width_per_group=8, norm="BN")


def convert_to_pkl(state_dict, path, *extra):
    """Run the converter's command line on ``state_dict``; returns the .pkl path."""
    src = path.with_suffix(".pth")
    torch.save(state_dict, src)
    assert convert.main([str(src), str(path), *extra]) == 0
    return path


def voc_cfg(tmp_path, *overrides):
    cfg = LazyConfig.load(str(VOC))
    return LazyConfig.apply_overrides(cfg, [f"train.output_dir={tmp_path / 'run'}", *overrides])


def backbone_weight_names(backbone_cfg):
    """Names of every backbone weight as the segmentor holds them (BN counters aside)."""
    from detectron2.config import instantiate

    with torch.device("meta"):
        backbone = instantiate(backbone_cfg)
    return sorted(
        "backbone." + k for k in backbone.state_dict() if not k.endswith("num_batches_tracked")
    )


def test_paper_configs_require_weights_and_synthetic_trains_from_scratch():
    assert LazyConfig.load(str(VOC)).train.from_scratch is False
    assert LazyConfig.load(str(ROOT / "projects/EIR/configs/ade/100-50.py")).train.from_scratch is False
    assert LazyConfig.load(str(SYNTHETIC)).train.from_scratch is True


def test_run_without_weights_is_refused_before_writing(tmp_path):
    runner = ContinualRunner(voc_cfg(tmp_path))
    with pytest.raises(ValueError, match=r"train\.init_checkpoint is empty.*train\.from_scratch=True"):
        runner.run()
    assert not (tmp_path / "run").exists()


def test_from_scratch_contradictions_and_types(tmp_path):
    pkl = convert_to_pkl(tiny_torchvision_resnet().state_dict(), tmp_path / "tiny.pkl")
    cfg = voc_cfg(tmp_path, "train.from_scratch=True", f"train.init_checkpoint={pkl}")
    with pytest.raises(ValueError, match="clear one of the two"):
        check_init_checkpoint(cfg)
    cfg = voc_cfg(tmp_path, "train.from_scratch='no'")
    with pytest.raises(ValueError, match="train.from_scratch must be True or False, got 'no'"):
        check_init_checkpoint(cfg)
    check_init_checkpoint(voc_cfg(tmp_path, "train.from_scratch=True"))  # on purpose: accepted
    cfg = voc_cfg(tmp_path, f"train.init_checkpoint={tmp_path / 'absent.pkl'}")
    with pytest.raises(FileNotFoundError, match="absent.pkl"):
        check_init_checkpoint(cfg)


def test_converted_torchvision_weights_pass_and_fill_the_backbone(tmp_path):
    tv = tiny_torchvision_resnet()
    pkl = convert_to_pkl(tv.state_dict(), tmp_path / "tiny.pkl")
    cfg = voc_cfg(tmp_path, f"train.init_checkpoint={pkl}")
    cfg.model.backbone = TINY_BACKBONE
    check_init_checkpoint(cfg)
    # What the check accepted is what step 0 loads: torchvision's tensors, in place.
    model = build_step_model(cfg, build_run_task(cfg), 0, "cpu")
    DetectionCheckpointer(model).load(str(pkl))
    sd = model.state_dict()
    assert torch.equal(sd["backbone.stem.conv1.weight"], tv.conv1.weight)
    assert torch.equal(sd["backbone.res5.0.conv3.norm.running_var"], tv.layer4[0].bn3.running_var)
    assert torch.equal(sd["backbone.res3.0.shortcut.weight"], tv.layer2[0].downsample[0].weight)


def test_mis_prefixed_checkpoint_is_refused_naming_keys_and_prefix(tmp_path):
    pkl = convert_to_pkl(tiny_torchvision_resnet().state_dict(), tmp_path / "bare.pkl", "--prefix", "")
    cfg = voc_cfg(tmp_path, f"train.init_checkpoint={pkl}")
    cfg.model.backbone = TINY_BACKBONE
    names = backbone_weight_names(TINY_BACKBONE)
    # 1 stem conv + 4 blocks x (3 convs + 1 shortcut) = 17 convs with a weight and 4 BN tensors
    assert len(names) == 17 * 5
    with pytest.raises(ValueError) as err:
        check_init_checkpoint(cfg)
    msg = str(err.value)
    assert f"leaves {len(names)} backbone weights unloaded, e.g. {', '.join(names[:5])}." in msg
    assert "prefix 'backbone.'" in msg
    # 85 weights + 17 BatchNorm counters, named without the prefix
    assert "checkpoint's 102 keys have the prefixes res2., res3., res4., res5., stem.;" in msg


def test_run_with_a_mis_prefixed_checkpoint_is_refused_before_writing(tmp_path):
    pkl = convert_to_pkl(tiny_torchvision_resnet().state_dict(), tmp_path / "bare.pkl", "--prefix", "")
    runner = ContinualRunner(voc_cfg(tmp_path, f"train.init_checkpoint={pkl}"))
    with pytest.raises(ValueError, match=r"leaves \d+ backbone weights unloaded"):
        runner.run()
    assert not (tmp_path / "run").exists()


def test_partial_and_mismatched_checkpoints_are_refused(tmp_path):
    sd = {k: v for k, v in tiny_torchvision_resnet().state_dict().items() if not k.startswith("layer4.")}
    cfg = voc_cfg(tmp_path, f"train.init_checkpoint={convert_to_pkl(sd, tmp_path / 'part.pkl')}")
    cfg.model.backbone = TINY_BACKBONE
    res5 = [n for n in backbone_weight_names(TINY_BACKBONE) if n.startswith("backbone.res5.")]
    assert len(res5) == 4 * 5  # 3 convs and a shortcut, each with its BatchNorm
    with pytest.raises(ValueError, match=rf"leaves {len(res5)} backbone weights unloaded, e\.g\. {res5[0]}"):
        check_init_checkpoint(cfg)
    # Weights of a ResNet with other widths: every bottleneck conv and BN has another shape.
    pkl = convert_to_pkl(tiny_torchvision_resnet().state_dict(), tmp_path / "x.pkl")
    cfg = voc_cfg(tmp_path, f"train.init_checkpoint={pkl}")
    cfg.model.backbone = L(build_resnet_deeplab)(depth=None, num_blocks=(1, 1, 1, 1), width_per_group=16)
    with pytest.raises(ValueError, match=r"leaves \d+ backbone weights unloaded"):
        check_init_checkpoint(cfg)


@pytest.mark.slow
def test_converted_resnet101_passes_the_paper_config(tmp_path):
    """torchvision's ResNet-101 layout, converted, fills every weight of the VOC config's backbone."""
    sd = torchvision.models.resnet101().state_dict()
    cfg = voc_cfg(tmp_path, f"train.init_checkpoint={convert_to_pkl(sd, tmp_path / 'r101.pkl')}")
    check_init_checkpoint(cfg)
    with open(tmp_path / "r101.pkl", "rb") as f:
        assert len(pickle.load(f)["model"]) == len(sd) - 2  # fc.weight and fc.bias dropped
