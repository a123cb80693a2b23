"""EIR segmentor (Detectron2 meta-architecture) and the helpers that grow it step by step.

METHOD.md section 3. The model holds no loss: in training mode it returns the
channel-space logits and the trainer (eir/engine) builds targets and losses from the
batch. In eval mode it follows Detectron2's ``[{"sem_seg": scores}]`` convention with
scores in class-id order arranged so that ``argmax`` is the method's prediction rule
(``score_rule``: EIR's sigmoid rule by default), so Detectron2's SemSegEvaluator and
Visualizer work on it unchanged.

Growing a model from step t-1 to step t: build the step-t model (``task.step_sizes(t)``,
``task.channel_classes(t)``), then :func:`load_previous_step` and the method's
``init_new_classifier``, then :func:`freeze_for_incremental`, then
:func:`build_param_groups` for the optimizer.
"""
from __future__ import annotations

import eir.require_detectron2  # noqa: F401  (first: says how to install a missing Detectron2)

# isort: split
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

import numpy as np
import torch
from detectron2.layers import ASPP, FrozenBatchNorm2d
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList
from torch import nn
from torch.nn import functional as F

from eir.methods.base import sigmoid_rule_scores

__all__ = [
    "EIRSegmentor",
    "build_param_groups",
    "freeze_for_incremental",
    "load_previous_step",
    "load_step_weights",
    "unwrap_model",
]


class EIRSegmentor(nn.Module):
    """Backbone + :class:`IncrementalHead`; sigmoid logits per channel.

    Channel k of the logits holds class ``channel_classes[k]`` (channel 0 is the aux
    background classifier). Inputs are Detectron2 batched inputs: a list of dicts with
    "image" (3xHxW uint8 RGB tensor) and optionally "height"/"width" (eval output size).

    * training mode: ``forward`` returns logits [N, C, Hp, Wp], upsampled (bilinear,
      align_corners=False) to the *padded* batch size Hp x Wp of
      :meth:`preprocess_image`; image i occupies the top-left ``image_sizes[i]`` of it,
      so targets must be padded the same way (with the ignore label 255).
    * eval mode: ``forward`` returns ``[{"sem_seg": scores}]``, scores [num_classes + 1,
      height, width] float32 in class-id order (see :meth:`class_scores`).
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        head: nn.Module,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        channel_classes: Sequence[int],
        num_classes: int,
        in_feature: str = "res5",
        size_divisibility: int = 0,
        score_rule: Callable = sigmoid_rule_scores,
    ):
        """
        Args:
            backbone: returns a dict of features (e.g. a Detectron2 ResNet).
            head: maps ``features[in_feature]`` to channel logits (``IncrementalHead``).
            pixel_mean, pixel_std: RGB normalisation in pixel units.
            channel_classes: class id of each output channel at this step, channel 0 =
                background (``task.channel_classes(t)``).
            num_classes: foreground classes of the dataset (``task.num_classes``); the
                eval scores have ``num_classes + 1`` rows.
            in_feature: the backbone output the head reads.
            size_divisibility: pad the batch to a multiple of this (0: no extra padding).
            score_rule: ``(channel_logits, channel_to_class, num_classes) -> scores`` in
                class-id order, the method's ``class_scores`` (set by the model builder).
        """
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.in_feature = in_feature
        self.size_divisibility = int(size_divisibility)
        self.score_rule = score_rule
        self.num_classes = int(num_classes)
        if self.num_classes < 1:
            raise ValueError(f"num_classes (foreground classes) must be >= 1, got {num_classes}")
        if len(pixel_mean) != 3 or len(pixel_std) != 3:
            raise ValueError("pixel_mean and pixel_std need one value per RGB channel")
        self.register_buffer(
            "pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False
        )
        self.register_buffer("channel_to_class", torch.zeros(1, dtype=torch.long), False)
        self._set_channel_classes(channel_classes)

    # ------------------------------------------------------------------ channels
    def _set_channel_classes(self, channel_classes: Sequence[int]) -> None:
        classes = [int(c) for c in channel_classes]
        if not classes or classes[0] != 0:
            raise ValueError(
                f"channel_classes must start with 0 (channel 0 = background), got {classes}"
            )
        fg = classes[1:]
        bad = [c for c in fg if not 1 <= c <= self.num_classes]
        if bad:
            raise ValueError(
                f"channel_classes has ids {bad} outside the dataset's classes 1..{self.num_classes}"
            )
        if len(set(fg)) != len(fg):
            raise ValueError(f"channel_classes lists a class twice: {classes}")
        expected = getattr(self.head, "num_channels", None)
        if expected is not None and expected != len(classes):
            raise ValueError(
                f"the head has {expected} output channels but channel_classes has {len(classes)} "
                f"entries; build the head with task.step_sizes(t) and pass task.channel_classes(t)"
            )
        self.channel_classes: List[int] = classes
        self.channel_to_class = torch.tensor(classes, dtype=torch.long, device=self.pixel_mean.device)

    @property
    def num_channels(self) -> int:
        return len(self.channel_classes)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def add_step(self, new_classes: Sequence[int], init: str = "random") -> None:
        """Grow in place by one step: a new classifier for ``new_classes`` (task order)."""
        new_classes = [int(c) for c in new_classes]
        candidate = self.channel_classes + new_classes
        if not new_classes:
            raise ValueError("add_step needs at least one new class")
        self.head.add_step(len(new_classes), init=init)
        try:
            self._set_channel_classes(candidate)
        except ValueError:
            del self.head.cls[-1]
            self.head.step_sizes.pop()
            raise

    # ------------------------------------------------------------------- forward
    def preprocess_image(self, batched_inputs: Sequence[Mapping[str, Any]]) -> ImageList:
        """Move to the device, normalise, and pad (with 0, i.e. the mean colour) into a batch."""
        images = []
        for x in batched_inputs:
            img = x["image"]
            if img.dim() != 3 or img.shape[0] != 3:
                raise ValueError(f"'image' must be a 3xHxW RGB tensor, got shape {tuple(img.shape)}")
            img = img.to(self.device, non_blocking=True).float()
            images.append((img - self.pixel_mean) / self.pixel_std)
        return ImageList.from_tensors(images, self.size_divisibility, pad_value=0.0)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Channel logits [N, C, H, W], float32, at the size of ``images`` (already normalised,
        [N, 3, H, W])."""
        features = self.backbone(images)
        if self.in_feature not in features:
            raise ValueError(
                f"backbone returned {sorted(features)} but the head reads {self.in_feature!r}; "
                "set the backbone's out_features or the model's in_feature"
            )
        z = self.head(features[self.in_feature])
        # In float32 under AMP: the losses read full-resolution float32 logits, and the bilinear
        # backward accumulates each low-resolution logit's gradient in float32, not float16.
        return F.interpolate(z.float(), size=images.shape[-2:], mode="bilinear", align_corners=False)

    def class_scores(self, channel_logits: torch.Tensor) -> torch.Tensor:
        """Channel logits [..., C, H, W] -> class-id-order scores [..., num_classes + 1, H, W]
        whose ``argmax`` is the prediction, by ``score_rule`` (EIR's:
        :func:`~eir.methods.base.sigmoid_rule_scores`). Computed in float32."""
        return self.score_rule(channel_logits, self.channel_to_class, self.num_classes)

    def forward(self, batched_inputs: Sequence[Mapping[str, Any]]):
        images = self.preprocess_image(batched_inputs)
        z = self.logits(images.tensor)
        if self.training:
            return z
        return self.postprocess(z, images.image_sizes, batched_inputs)

    def postprocess(
        self,
        channel_logits: torch.Tensor,
        image_sizes: Sequence[Tuple[int, int]],
        batched_inputs: Sequence[Mapping[str, Any]],
    ) -> List[Dict[str, torch.Tensor]]:
        """Crop the padding, resize the logits to each input's "height"/"width", then score."""
        results = []
        for z, size, inp in zip(channel_logits, image_sizes, batched_inputs):
            height = inp.get("height", size[0])
            width = inp.get("width", size[1])
            z = sem_seg_postprocess(z.float(), size, height, width)
            results.append({"sem_seg": self.class_scores(z)})
        return results


# ---------------------------------------------------------------------- helpers
def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel (or DataParallel) wrapper, or the model itself."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def _plain_state_dict(state_dict: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    """Accept a state dict, a Detectron2 checkpoint ({"model": ...}) or numpy values."""
    if "model" in state_dict and isinstance(state_dict["model"], Mapping):
        state_dict = state_dict["model"]
    out = {}
    for k, v in state_dict.items():
        if k.startswith("module."):
            k = k[len("module.") :]
        out[k] = torch.as_tensor(v) if isinstance(v, np.ndarray) else v
    return out


def _skip(key: str) -> bool:
    # BatchNorm's counter is absent once BN is frozen; it carries no weights.
    return key.endswith("num_batches_tracked")


def _classifier_sizes(sd: Mapping[str, torch.Tensor]) -> List[int]:
    sizes, s = [], 0
    while f"head.cls.{s}.weight" in sd:
        sizes.append(int(sd[f"head.cls.{s}.weight"].shape[0]))
        s += 1
    return sizes


def _checked_load(model: nn.Module, sd: Dict[str, torch.Tensor], exclude_prefix: str | None, what: str):
    """Load ``sd`` into ``model``: every key but ``exclude_prefix`` must match in name and shape."""
    own = {k: v for k, v in model.state_dict().items() if not _skip(k)}
    expected = {k: v for k, v in own.items() if not (exclude_prefix and k.startswith(exclude_prefix))}
    given = {k: v for k, v in sd.items() if not _skip(k)}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = [
        f"{k}: checkpoint {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(given))
        if tuple(given[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or shapes:
        head = getattr(model, "head", None)
        want = list(getattr(head, "step_sizes", []))
        if exclude_prefix:
            want = want[:-1]
        lines = [
            f"cannot load {what}: the checkpoint does not match the model.",
            f"  classifier sizes per step: checkpoint {_classifier_sizes(given)}, expected {want}",
        ]
        if shapes:
            lines.append(f"  shape mismatches ({len(shapes)}): " + "; ".join(shapes[:10]))
        if missing:
            lines.append(f"  missing keys ({len(missing)}): " + ", ".join(missing[:10]))
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): " + ", ".join(unexpected[:10]))
        lines.append(
            "  Was it saved by another task, step or model config? Use the checkpoint of the "
            "previous step of the same task, with the same backbone and head settings."
        )
        raise ValueError("\n".join(lines))
    # num_batches_tracked is loaded where both sides have it, and otherwise left alone.
    loadable = {k for k in model.state_dict() if not (exclude_prefix and k.startswith(exclude_prefix))}
    to_load = {k: v for k, v in sd.items() if k in loadable}
    result = model.load_state_dict(to_load, strict=False)
    left = [k for k in result.missing_keys if not _skip(k) and k in expected]
    if left or result.unexpected_keys:  # pragma: no cover - guarded by the checks above
        raise RuntimeError(f"load_state_dict left {left} missing, {result.unexpected_keys} unexpected")


def load_step_weights(model: nn.Module, state_dict: Mapping[str, Any]) -> None:
    """Strictly load a checkpoint of the *same* step (e.g. the frozen old model)."""
    _checked_load(unwrap_model(model), _plain_state_dict(state_dict), None, "step checkpoint")


def load_previous_step(model: nn.Module, state_dict: Mapping[str, Any]) -> None:
    """Load step t-1's weights into the step-t ``model``: all but its newest classifier
    (``head.cls.<t>``), which the method then initialises (``init_new_classifier``).

    Every key except the newest classifier must be in ``state_dict`` with the same shape,
    and nothing else may be there; otherwise ValueError names the missing / unexpected keys
    and shape mismatches. BatchNorm's ``num_batches_tracked`` counters are ignored.
    """
    m = unwrap_model(model)
    head = m.head
    t = head.num_steps - 1
    if t < 1:
        raise ValueError(
            "load_previous_step needs a model of step >= 1 (its head has one classifier, so it "
            "is a step-0 model); build the model with task.step_sizes(t) for t >= 1"
        )
    _checked_load(
        m, _plain_state_dict(state_dict), f"head.cls.{t}.", f"step {t - 1} weights into a step-{t} model"
    )


def freeze_for_incremental(model: nn.Module) -> nn.Module:
    """Freeze BatchNorm and disable dropout for an incremental step (in place; returns ``model``).

    BatchNorm layers become Detectron2 ``FrozenBatchNorm2d`` (statistics and affine
    fixed as buffers), which stays frozen through ``model.train()`` and keeps the state
    dict keys. ASPP's dropout rate and every ``nn.Dropout`` are set to 0. Call it after
    loading the weights and before building the optimizer.
    """
    m = unwrap_model(model)
    FrozenBatchNorm2d.convert_frozen_batchnorm(m)
    for mod in m.modules():
        if isinstance(mod, ASPP):
            mod.dropout = 0.0
        elif isinstance(mod, nn.modules.dropout._DropoutNd):
            mod.p = 0.0
    return model


def build_param_groups(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    step: int,
    head_lr_mult: float = 10.0,
) -> List[Dict[str, Any]]:
    """Parameter groups for ``torch.optim.SGD`` (METHOD.md section 3).

    Groups (empty ones dropped; each parameter once; ``requires_grad=False`` excluded):
    "backbone" at ``base_lr``; "head" (ASPP, 3x3 conv, aux and older classifiers) and
    "head_new" (the newest classifier ``head.cls[step]``) at ``base_lr * head_lr_mult``.
    Weight decay: everywhere at step 0; at step > 0 only on "head_new" (0 elsewhere).
    Each group has a "name" key for logging.
    """
    m = unwrap_model(model)
    head = m.head
    if step != head.num_steps - 1:
        raise ValueError(
            f"step={step} but the model's head has {head.num_steps} classifiers (a step-"
            f"{head.num_steps - 1} model); pass the step the model was built for"
        )
    newest = {id(p) for p in head.cls[step].parameters()}
    in_head = {id(p) for p in head.parameters()}
    in_backbone = {id(p) for p in m.backbone.parameters()}
    buckets: Dict[str, List[nn.Parameter]] = {"backbone": [], "head": [], "head_new": []}
    for name, p in m.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in newest:
            buckets["head_new"].append(p)
        elif id(p) in in_head:
            buckets["head"].append(p)
        elif id(p) in in_backbone:
            buckets["backbone"].append(p)
        else:
            raise ValueError(f"parameter {name} is neither in the backbone nor in the head")
    old_wd = float(weight_decay) if step == 0 else 0.0
    settings = {
        "backbone": (base_lr, old_wd),
        "head": (base_lr * head_lr_mult, old_wd),
        "head_new": (base_lr * head_lr_mult, float(weight_decay)),
    }
    return [
        {"name": name, "params": params, "lr": settings[name][0], "weight_decay": settings[name][1]}
        for name, params in buckets.items()
        if params
    ]
