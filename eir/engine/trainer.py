"""EIRTrainer: Detectron2's training loop, whose "model" is the step's loss (:class:`StepLossModule`).

One iteration (METHOD.md section 4) is Detectron2's own ``run_step``: take a batch, call the
model on it for a loss dict, backward, step. The one thing that differs in a continual step is
what that call computes, so the trainer is handed a :class:`StepLossModule` as its model:

1. the step's model (through DDP when distributed) on the batch's images: logits in channel space;
2. when the step's plan has a teacher: the frozen old model on the same images;
3. the method's loss (:meth:`~eir.methods.base.ContinualMethod.criterion`) on the
   :class:`~eir.methods.base.LossInputs` (labels and paste maps in channel space).

Two small overrides remain: torch's generator is seeded from :func:`eir.seeding.iteration_seed`
right after each batch is taken (so a step resumed at iteration i draws what the uninterrupted
one did), and mixed precision without a grad scaler (bfloat16 on the CPU, which Detectron2's
``AMPTrainer`` refuses) runs Detectron2's plain ``SimpleTrainer`` step with the autocast inside
the loss module. The trainer holds no algorithm of its own.
"""
from __future__ import annotations

import eir.require_detectron2  # noqa: F401  (first: says how to install a missing Detectron2)

# isort: split
import torch
from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.utils import comm
from torch import nn

from eir.constants import IGNORE_LABEL
from eir.engine.step_plan import StepPlan
from eir.methods.base import LossInputs, StepLoss
from eir.modeling.meta_arch import unwrap_model
from eir.seeding import iteration_seed
from eir.tasks import Task


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


class StepLossModule(nn.Module):
    """The loss of one continual step as a module: ``forward(batch)`` returns the method's loss
    dict, so Detectron2's trainers run it as their model.

    Only the step's model is a submodule (``.train()`` reaches it, and its parameters are the
    optimizer's); the old model is held outside the module tree, so that nothing flips it to
    training mode and no state dict includes it. Checkpoints save the step's model itself.

    Args:
        model: the step's model (an ``EIRSegmentor``, possibly wrapped in DDP) in train mode.
        task, plan: the protocol and the step's :class:`~eir.engine.step_plan.StepPlan`.
        loss: the method's loss of the step, called on :class:`~eir.methods.base.LossInputs`.
        old_model: the frozen model of the previous step, needed when ``plan.teacher``. Never
            wrapped in DDP: it only runs forward passes.
        amp: autocast the forward passes and the loss (float16 on CUDA, bfloat16 on the CPU).
    """

    def __init__(self, model, *, task: Task, plan: StepPlan, loss: StepLoss, old_model=None, amp: bool = False):
        super().__init__()
        if plan.teacher and old_model is None:
            raise ValueError(f"step {plan.step} trains with the old model (plan.teacher) but none was given")
        self.model = model
        object.__setattr__(self, "old_model", old_model if plan.teacher else None)  # not a submodule
        self.plan = plan
        self.loss = loss
        self.device = unwrap_model(model).device
        self.precision = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        self.amp = amp
        self.num_old_channels = len(task.channel_classes(plan.step - 1)) if plan.step > 0 else 0
        self.class_to_channel = torch.as_tensor(
            task.class_to_channel_lut(plan.step), dtype=torch.long, device=self.device
        )

    def loss_inputs(self, data) -> LossInputs:
        """The step model's logits and, in channel space, the batch's labels and paste maps (when
        the step pastes) and the old model's logits (when the plan has a teacher)."""
        # The models read the images only; they go to the device once, shared by the old model.
        # (DDP would copy every tensor of the dicts it is given, labels and pastes included.)
        images = [{"image": d["image"].to(self.device, non_blocking=True)} for d in data]
        logits = self.model(images)
        size = logits.shape[-2:]
        lut = self.class_to_channel
        inputs = LossInputs(
            logits=logits,
            labels=lut[pad_batch([d["sem_seg"].long() for d in data], size, IGNORE_LABEL, self.device)],
            num_old_channels=self.num_old_channels,
        )
        if self.plan.paste:
            inputs.paste_class = lut[pad_batch([d["paste_class"].long() for d in data], size, 0, self.device)]
            inputs.paste_alpha = pad_batch([d["paste_alpha"] for d in data], size, 0.0, self.device)
        if self.old_model is not None:
            with torch.no_grad():
                old = self.old_model
                inputs.old_logits = old.logits(old.preprocess_image(images).tensor)
        return inputs

    def forward(self, data) -> dict[str, torch.Tensor]:
        """The weighted loss terms of one batch."""
        with torch.autocast(self.device.type, dtype=self.precision, enabled=self.amp):
            return dict(self.loss(self.loss_inputs(data)))


class _Reseeding:
    """The loader's iterator, seeding torch's generator from (seed, step, iteration, rank) after
    each batch it gives (after: creating the iterator draws from that generator)."""

    def __init__(self, batches, trainer: EIRTrainer):
        self.batches = batches
        self.trainer = trainer

    def __next__(self):
        data = next(self.batches)
        t = self.trainer
        torch.manual_seed(iteration_seed(t.seed, t.step, t.iter, comm.get_rank()))
        return data


class EIRTrainer(AMPTrainer):
    """Trains one continual step with Detectron2's loop; see the module docstring.

    Args:
        model: the step's model (an ``EIRSegmentor``, possibly wrapped in DDP) in train mode;
            the trainer's own ``model`` is the :class:`StepLossModule` around it.
        data_loader, optimizer: as in Detectron2's trainers.
        task, plan, loss, old_model: the :class:`StepLossModule`'s.
        amp: use mixed precision (float16 with a grad scaler on CUDA, bfloat16 on the CPU).
        seed: the run's seed; torch's generator is seeded from (seed, step, iteration) after
            each batch is taken. None leaves torch's generator alone.
    """

    def __init__(
        self,
        model,
        data_loader,
        optimizer,
        *,
        task: Task,
        plan: StepPlan,
        loss: StepLoss,
        old_model=None,
        amp: bool = True,
        seed: int | None = None,
        gather_metric_period: int = 1,
    ):
        module = StepLossModule(model, task=task, plan=plan, loss=loss, old_model=old_model, amp=amp)
        scaler = torch.amp.GradScaler(module.device.type, enabled=amp and module.precision == torch.float16)
        super().__init__(
            module,
            data_loader,
            optimizer,
            gather_metric_period=gather_metric_period,
            grad_scaler=scaler,
            precision=module.precision,
        )
        self.step = plan.step
        self.seed = seed

    @property
    def _data_loader_iter(self):
        batches = SimpleTrainer._data_loader_iter.fget(self)
        return batches if self.seed is None else _Reseeding(batches, self)

    def run_step(self):
        """Detectron2's step: AMPTrainer's when the grad scaler is on (float16 on CUDA), else
        SimpleTrainer's (float32; or bfloat16, autocast inside the loss module, which needs
        no scaler and runs on the CPU where AMPTrainer asserts CUDA)."""
        if self.grad_scaler.is_enabled():
            super().run_step()
        else:
            SimpleTrainer.run_step(self)

    def _write_metrics(self, loss_dict, data_time, prefix="", iter=None):
        """SimpleTrainer's, which gathers the losses (and checks they are finite) every
        ``gather_metric_period`` iterations, and here also at the step's last iteration: its
        model_final.pth is never written from a diverged model unnoticed."""
        iter = self.iter if iter is None else iter
        last = getattr(self, "max_iter", None)  # set by train(); a caller of run_step alone has none
        if last is not None and iter == last - 1 and (iter + 1) % self.gather_metric_period:
            SimpleTrainer.write_metrics(loss_dict, data_time, iter, prefix)
            return
        super()._write_metrics(loss_dict, data_time, prefix, iter)

    def load_state_dict(self, state_dict):
        """AMPTrainer's, for a step resumed on another device: the grad scaler's state carries
        over only between two enabled scalers. A step interrupted with the scaler disabled (on
        the CPU, or AMP off: its state is empty) and resumed with it enabled (CUDA with AMP)
        starts the scaler afresh, which re-calibrates its scale within a few iterations; the
        reverse drops the saved state, as a disabled scaler has none."""
        if self.grad_scaler.is_enabled() and not state_dict.get("grad_scaler"):
            state_dict = {k: v for k, v in state_dict.items() if k != "grad_scaler"}
            super(AMPTrainer, self).load_state_dict(state_dict)  # SimpleTrainer's: all but the scaler
            return
        super().load_state_dict(state_dict)

    def close_data_loader(self) -> None:
        """Drop the loader's iterator so its worker processes exit (the training sampler is
        infinite, so they would otherwise live on into the next step)."""
        self._data_loader_iter_obj = None
