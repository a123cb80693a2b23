"""EIRTrainer: Detectron2's AMPTrainer whose step trains with the frozen old model.

One iteration (METHOD.md section 4):

1. take a batch from the mapper (images with pasted old-class instances, labels, paste maps);
2. forward the new model (through DDP when distributed) to logits in channel space;
3. when the step's plan has a teacher: the frozen old model on the same batch, whose logits
   give pseudo-labels and region-specific distillation;
4. the step's :class:`~eir.modeling.criterion.EIRCriterion` on them (soft targets, BCE,
   RSKD), backward.

torch's generator (dropout) is seeded from :func:`eir.seeding.iteration_seed` before each
forward pass, so a step resumed at iteration i draws what the uninterrupted one did. The
trainer holds no algorithm of its own: targets and losses are the criterion's.
"""
from __future__ import annotations

import eir.require_detectron2  # noqa: F401  (first: says how to install a missing Detectron2)

# isort: split
import time

import torch
from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.utils import comm

from eir.constants import IGNORE_LABEL
from eir.engine.step_plan import StepPlan
from eir.modeling.criterion import EIRCriterion
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


class EIRTrainer(AMPTrainer):
    """Trains one continual step; see the module docstring for what a step does.

    Args:
        model: the step's model (an ``EIRSegmentor``, possibly wrapped in DDP) in train mode.
        data_loader, optimizer: as in Detectron2's trainers.
        task: the continual protocol.
        plan: the step's :class:`~eir.engine.step_plan.StepPlan`; ``plan.teacher`` runs the
            old model in every iteration.
        criterion: the step's :class:`~eir.modeling.criterion.EIRCriterion`.
        old_model: the frozen model of the previous step, needed when ``plan.teacher``. Never
            wrapped in DDP: it only runs forward passes.
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
        plan: StepPlan,
        criterion: EIRCriterion,
        old_model=None,
        amp: bool = True,
        seed: int | None = None,
        gather_metric_period: int = 1,
    ):
        device = unwrap_model(model).device
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
        if plan.teacher and old_model is None:
            raise ValueError(f"step {plan.step} trains with the old model (plan.teacher) but none was given")
        self.task = task
        self.plan = plan
        self.step = plan.step
        self.criterion = criterion
        self.old_model = old_model if plan.teacher else None
        self.device = device
        self.amp = amp
        self.seed = seed
        self.class_to_channel = torch.as_tensor(
            task.class_to_channel_lut(plan.step), dtype=torch.long, device=device
        )

    def compute_losses(self, data) -> dict[str, torch.Tensor]:
        """The weighted loss terms of one batch (called under autocast)."""
        # The models read the images only; they go to the device once, shared by the old model.
        # (DDP would copy every tensor of the dicts it is given, labels and pastes included.)
        images = [{"image": d["image"].to(self.device, non_blocking=True)} for d in data]
        logits = self.model(images)
        size = logits.shape[-2:]
        lut = self.class_to_channel
        labels = lut[pad_batch([d["sem_seg"].long() for d in data], size, IGNORE_LABEL, self.device)]
        paste_class = lut[pad_batch([d["paste_class"].long() for d in data], size, 0, self.device)]
        paste_alpha = pad_batch([d["paste_alpha"] for d in data], size, 0.0, self.device)
        old_logits = None
        if self.old_model is not None:
            with torch.no_grad():
                old = self.old_model
                old_logits = old.logits(old.preprocess_image(images).tensor)
        return self.criterion(logits, labels, paste_class, paste_alpha, old_logits)

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

    def run_step(self):
        """AMPTrainer.run_step with three changes: the batch's losses come from
        :meth:`compute_losses` (new and old model, criterion) instead of the model; torch's
        generator is reseeded per iteration (exact resume); autocast takes the device's own
        type and precision (``torch.autocast``), so the CPU runs bfloat16 where Detectron2's
        AMPTrainer asserts CUDA. It is otherwise Detectron2's loop, step for step."""
        assert self.model.training, "[EIRTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        if self.seed is not None:
            # After the batch is taken: creating the loader's iterator draws from this generator.
            torch.manual_seed(iteration_seed(self.seed, self.step, self.iter, comm.get_rank()))

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
