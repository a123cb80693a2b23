"""EIRTrainer: Detectron2's AMPTrainer whose step trains with the frozen old model.

One iteration (EIR_METHOD.md section 4):

1. take a batch from the mapper (images with pasted old-class instances, labels, paste maps);
2. forward the new model (through DDP when distributed) to logits in channel space;
3. with the frozen old model on the same batch: pseudo-labels where the label is background
   and the old model is confident, and its logits for region-specific distillation;
4. soft targets (one-hot, blended with the pasted instances' alphas), BCE + RSKD, backward.

Step 0 (and a run with neither pseudo-labels nor distillation) has no old model and
trains with BCE alone. torch's generator (dropout) is seeded from (seed, step, iteration)
before each forward pass, so a step resumed at iteration i draws what the uninterrupted one did. The trainer holds no algorithm of its
own: targets and losses come from :mod:`eir.modeling.losses`.
"""
from __future__ import annotations

import eir.require_detectron2  # noqa: F401  (first: says how to install a missing Detectron2)

# isort: split
import time

import torch
from detectron2.engine import AMPTrainer
from torch.nn.parallel import DistributedDataParallel

from eir.engine.sampling import derived_seed
from eir.modeling.losses import (
    bce_loss,
    distillation_mask,
    pseudo_labels,
    rskd_loss,
    soft_targets,
)
from eir.tasks import Task

IGNORE = 255


def unwrap(model):
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def pad_batch(maps, size, fill, device):
    """Stack per-image HxW maps into [N, *size], padded bottom/right with ``fill``.

    The model pads its images the same way (bottom/right), so pixel (i, j) of the result
    lines up with pixel (i, j) of the logits.
    """
    first = maps[0]
    out = torch.full((len(maps), *size), fill, dtype=first.dtype, device=device)
    for i, m in enumerate(maps):
        out[i, : m.shape[0], : m.shape[1]] = m.to(device, non_blocking=True)
    return out


class EIRTrainer(AMPTrainer):
    """Trains one continual step; see the module docstring for what a step does.

    Args:
        model: the step's model (an ``EIRSegmentor``, possibly wrapped in DDP) in train mode.
        data_loader, optimizer: as in Detectron2's trainers.
        task, step: the continual protocol and the step being trained.
        old_model: the frozen model of the previous step, or None (step 0, or a run without
            pseudo-labels and distillation: plain fine-tuning). Never wrapped in DDP: it
            only runs forward passes.
        tau: pseudo-label confidence threshold on the old model's sigmoid scores; None
            turns pseudo-labels off.
        w_bce, w_kd: loss weights.
        rskd_mask, rskd_normalize: see :func:`eir.modeling.losses.distillation_mask` and
            :func:`eir.modeling.losses.rskd_loss`.
        amp: use mixed precision (float16 with a grad scaler on CUDA, bfloat16 on CPU).
        seed: the run's seed; torch's generator is seeded from (seed, step, iteration) before
            each forward pass. None leaves torch's generator alone.
    """

    def __init__(
        self,
        model,
        data_loader,
        optimizer,
        *,
        task: Task,
        step: int,
        old_model=None,
        tau: float | None = 0.7,
        w_bce: float = 1.0,
        w_kd: float = 5.0,
        rskd_mask: str = "not_new",
        rskd_normalize: str = "mask",
        amp: bool = True,
        seed: int | None = None,
        gather_metric_period: int = 1,
    ):
        device = unwrap(model).device
        precision = torch.float16 if device.type == "cuda" else torch.bfloat16
        scaler = torch.amp.GradScaler(device.type, enabled=amp and precision == torch.float16)
        super().__init__(
            model,
            data_loader,
            optimizer,
            gather_metric_period=gather_metric_period,
            grad_scaler=scaler,
            precision=precision,
        )
        if old_model is not None and step == 0:
            raise ValueError("step 0 has no previous step, so it takes no old model")
        self.task = task
        self.step = step
        self.old_model = old_model
        self.device = device
        self.amp = amp
        self.seed = seed
        self.tau = tau
        self.w_bce = w_bce
        self.w_kd = w_kd
        self.rskd_mask = rskd_mask
        self.rskd_normalize = rskd_normalize
        self.num_channels = task.num_channels(step)
        self.num_old_channels = task.num_channels(step - 1) if step > 0 else 0
        self.class_to_channel = torch.as_tensor(
            task.class_to_channel_lut(step), dtype=torch.long, device=device
        )

    def compute_losses(self, data) -> dict[str, torch.Tensor]:
        """The weighted loss terms of one batch (called under autocast)."""
        logits = self.model(data)
        size = logits.shape[-2:]
        lut = self.class_to_channel
        labels = lut[pad_batch([d["sem_seg"].long() for d in data], size, IGNORE, self.device)]
        paste_class = lut[pad_batch([d["paste_class"].long() for d in data], size, 0, self.device)]
        paste_alpha = pad_batch([d["paste_alpha"] for d in data], size, 0.0, self.device)

        losses = {}
        if self.old_model is None or (self.tau is None and self.w_kd == 0):
            targets = soft_targets(labels, self.num_channels, paste_class, paste_alpha)
            losses["loss_bce"] = self.w_bce * bce_loss(logits, targets)
            return losses

        with torch.no_grad():
            old = self.old_model
            old_logits = old.logits(old.preprocess_image(data).tensor)
        hard = labels
        if self.tau is not None:
            hard = pseudo_labels(labels, old_logits, self.tau, self.num_old_channels)
        targets = soft_targets(hard, self.num_channels, paste_class, paste_alpha)
        losses["loss_bce"] = self.w_bce * bce_loss(logits, targets)
        if self.w_kd > 0:
            mask = distillation_mask(labels, self.num_old_channels, self.rskd_mask)
            losses["loss_rskd"] = self.w_kd * rskd_loss(
                logits, old_logits, mask, normalize=self.rskd_normalize
            )
        return losses

    def close_data_loader(self) -> None:
        """Drop the loader's iterator so its worker processes exit (the training sampler is
        infinite, so they would otherwise live on into the next step)."""
        self._data_loader_iter_obj = None

    def run_step(self):
        assert self.model.training, "[EIRTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        if self.seed is not None:
            # After the batch is taken: creating the loader's iterator draws from this generator.
            torch.manual_seed(derived_seed(self.seed, self.step, self.iter) % 2**31)

        if self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        with torch.autocast(self.device.type, dtype=self.precision, enabled=self.amp):
            loss_dict = self.compute_losses(data)
            losses = sum(loss_dict.values())
        if not self.zero_grad_before_forward:
            self.optimizer.zero_grad()

        self.grad_scaler.scale(losses).backward()
        self.after_backward()
        if self.async_write_metrics:
            self.concurrent_executor.submit(
                self._write_metrics, loss_dict, data_time, iter=self.iter
            )
        else:
            self._write_metrics(loss_dict, data_time)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
