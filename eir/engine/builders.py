"""The builders of a continual step, as free functions of the config (like Detectron2's
``DefaultTrainer.build_*``): the runner, the benchmarks and the tests build the same objects
the same way.

Each takes the run's LazyConfig ``cfg`` and what varies per step (the task, the step, the
step's data). Per-step values of the config (``schedule.lr`` vs ``schedule.incremental_lr``,
the head's step sizes, the optimizer's model) are filled in here, on a copy: ``cfg`` itself
is never changed.
"""
from __future__ import annotations

import eir.require_detectron2  # noqa: F401  (first: says how to install a missing Detectron2)

# isort: split
import copy
import inspect
import math

import torch
from detectron2.config import instantiate
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.solver import LRMultiplier
from detectron2.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter
from fvcore.common.param_scheduler import (
    CompositeParamScheduler,
    LinearParamScheduler,
    PolynomialDecayParamScheduler,
)

from eir.data.bank import InstanceBank
from eir.data.datasets import (
    catalog_spec,
    register_eir_datasets,
    replay_dataset_dicts,
    step_dataset_dicts,
)
from eir.data.mapper import EIRDatasetMapper
from eir.data.paste import InstancePaster
from eir.engine.checkpoint import periodic_checkpoints
from eir.engine.run_files import TRAINING_LOG
from eir.engine.sampling import PositionedDataset, ResumableTrainingSampler
from eir.engine.step_plan import StepPlan
from eir.engine.trainer import EIRTrainer
from eir.methods.base import ContinualMethod
from eir.modeling.meta_arch import (
    freeze_for_incremental,
    load_previous_step,
    load_step_weights,
    unwrap_model,
)
from eir.tasks import Task, build_task

__all__ = [
    "build_bank",
    "build_ddp_model",
    "build_lr_scheduler",
    "build_method",
    "build_next_step_model",
    "build_old_model",
    "build_optimizer",
    "build_paster",
    "build_step_hooks",
    "build_step_model",
    "build_test_dicts",
    "build_test_loader",
    "build_test_mapper",
    "build_train_dicts",
    "build_train_loader",
    "build_train_mapper",
    "ddp_arguments",
    "max_iter",
    "resolve_device",
]


def build_run_task(cfg) -> Task:
    """``cfg.task`` over the classes of ``cfg.dataloader``'s datasets, as Detectron2's
    ``MetadataCatalog`` describes them (:func:`~eir.data.datasets.catalog_spec`); the built-in
    datasets are registered first (:func:`~eir.data.datasets.register_eir_datasets`)."""
    register_eir_datasets()
    t = cfg.task
    spec = catalog_spec(
        cfg.dataloader.train.dataset,
        cfg.dataloader.test.dataset,
        background=t.background,
        unseen_test_label=t.unseen_test_label,
    )
    return build_task(spec, t.name, t.setting, t.order)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` is CUDA when available, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


# --------------------------------------------------------------------------- models


def build_method(cfg) -> ContinualMethod:
    """The run's continual method, ``cfg.method`` (:class:`~eir.methods.base.ContinualMethod`)."""
    method = instantiate(cfg.method)
    if not isinstance(method, ContinualMethod):
        raise ValueError(f"method must describe a ContinualMethod (eir.methods.base), got {method!r}")
    return method


def build_step_model(cfg, task: Task, step: int, device, method: ContinualMethod | None = None) -> torch.nn.Module:
    """Instantiate ``cfg.model`` with the head and channel layout of ``step``, on ``device``,
    with ``method``'s background channel and prediction rule (default: :func:`build_method`).

    At steps after the first, BatchNorm is frozen (METHOD.md section 3) so that a step's
    checkpoint loads into a model built here without key mismatches.
    """
    task.check_step(step)
    method = build_method(cfg) if method is None else method
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.head.step_sizes = task.step_sizes(step)
    model_cfg.head.detach_background = method.detach_background
    model_cfg.channel_classes = task.channel_classes(step)
    model_cfg.num_classes = task.num_classes
    model_cfg.score_rule = method.class_scores
    model = instantiate(model_cfg)
    if step > 0:
        freeze_for_incremental(model)
    return model.to(device)


def build_next_step_model(cfg, task: Task, step: int, previous, device, method: ContinualMethod) -> torch.nn.Module:
    """The model of incremental step ``step`` starting from step - 1's weights ``previous`` (a
    step checkpoint's state dict), its new classifier initialised by ``method``."""
    model = build_step_model(cfg, task, step, device, method)
    load_previous_step(model, previous)
    method.init_new_classifier(unwrap_model(model).head, step)
    return model


def build_old_model(cfg, task: Task, step: int, weights, device, method: ContinualMethod | None = None) -> torch.nn.Module:
    """The frozen model of ``step`` with ``weights`` (a step checkpoint's state dict): eval mode,
    no gradients. Step ``step + 1`` runs it (as its method's teacher, and for the prepass)."""
    model = build_step_model(cfg, task, step, device, method)
    load_step_weights(model, weights)
    return model.eval().requires_grad_(False)


# --------------------------------------------------------------------------- optimisation


def max_iter(cfg, step: int, num_samples: int) -> int:
    """Iterations of ``step``: ``schedule.max_iter`` when set, else its epochs over ``num_samples``."""
    s = cfg.schedule
    if s.max_iter:
        return int(s.max_iter)
    epochs = s.epochs if step == 0 else s.incremental_epochs
    return max(1, math.ceil(epochs * num_samples / cfg.dataloader.train.total_batch_size))


def build_optimizer(cfg, model, step: int) -> torch.optim.Optimizer:
    """``cfg.optimizer`` over ``model``'s parameter groups at the step's learning rate
    (``schedule.lr`` at step 0, ``schedule.incremental_lr`` after)."""
    s = cfg.schedule
    lr = s.lr if step == 0 else s.incremental_lr
    opt_cfg = copy.deepcopy(cfg.optimizer)
    opt_cfg.params.model = model
    opt_cfg.params.base_lr = lr
    opt_cfg.params.step = step
    opt_cfg.lr = lr
    return instantiate(opt_cfg)


def build_lr_scheduler(cfg, optimizer, max_iter: int) -> LRMultiplier:
    """Poly decay (``schedule.poly_power``) per iteration over ``max_iter``, after a linear warm-up
    over the first ``schedule.warmup_fraction`` of the step when it is positive."""
    s = cfg.schedule
    poly = PolynomialDecayParamScheduler(1.0, s.poly_power)
    if s.warmup_fraction > 0:
        poly = CompositeParamScheduler(
            [LinearParamScheduler(1e-3, 1.0), poly],
            lengths=[s.warmup_fraction, 1.0 - s.warmup_fraction],
            interval_scaling=["rescaled", "rescaled"],
        )
    return LRMultiplier(optimizer, poly, max_iter)


# --------------------------------------------------------------------------- data


def build_train_dicts(
    cfg, task: Task, step: int, bank=None, cache_dir=None, write_cache: bool = True
) -> tuple[list[dict], list[dict]]:
    """Step ``step``'s training images, and the list its loader samples: those images followed
    by the replay entries of ``bank`` (the bank written when step - 1 ended, or None).
    ``cache_dir`` holds the dataset's presence table (the run folder); ``write_cache=False``
    only reads it."""
    train = cfg.dataloader.train
    images = step_dataset_dicts(
        train.dataset, task, step, "train", cache_dir=cache_dir, num_workers=train.num_workers,
        write_cache=write_cache, require_every_class=True,
    )
    if not images:
        raise ValueError(
            f"no image of {train.dataset} qualifies for step {step} ({task.setting}): check the dataset and task.*"
        )
    return images, images + replay_dataset_dicts(bank)


def build_test_dicts(cfg, task: Task, step: int, cache_dir=None, write_cache: bool = True) -> list[dict]:
    """Step ``step``'s test images: those with a class the step has seen (``cache_dir`` and
    ``write_cache`` as in :func:`build_train_dicts`)."""
    test = cfg.dataloader.test
    return step_dataset_dicts(
        test.dataset, task, step, "test", cache_dir=cache_dir, num_workers=test.num_workers, write_cache=write_cache
    )


def build_bank(cfg, task: Task, step: int, train_dicts: list[dict], previous, method) -> InstanceBank:
    """The bank for step ``step + 1``: ``method.memory`` entries (of ``method.storage``, under the
    instance rule ``method.instances``) from step ``step``'s training images and the ``previous``
    bank (METHOD.md section 5)."""
    return InstanceBank.build(
        train_dicts,
        task,
        step,
        budget=method.memory,
        seed=cfg.train.seed,
        previous=previous,
        storage=method.storage,
        num_workers=cfg.dataloader.train.num_workers,
        instances=method.instances,
    )


def build_paster(task: Task, plan: StepPlan, bank, prepass, method) -> InstancePaster | None:
    """The step's pasting (``method.paste`` from ``bank``, guided by the ``prepass`` maps), or
    None when the plan does not paste."""
    if not plan.paste:
        return None
    return InstancePaster(bank, prepass, method.paste, task.old_classes(plan.step))


def build_train_mapper(cfg, task: Task, step: int, bank=None, paste=None) -> EIRDatasetMapper:
    """The training mapper of ``step``: the config's augmentations, ``bank``'s replayed entries,
    ``paste`` (:func:`build_paster`) applied to every sample."""
    return EIRDatasetMapper(
        is_train=True,
        task=task,
        step=step,
        augmentations=instantiate(cfg.dataloader.train.augmentations),
        bank=bank,
        paste=paste,
        seed=cfg.train.seed,
    )


def build_train_loader(cfg, dicts: list[dict], mapper, step: int, start_iter: int = 0):
    """Step ``step``'s training batches from iteration ``start_iter`` on. The batch of an
    iteration depends on (seed, step, iteration), not on the loader's number of workers
    (:mod:`eir.engine.sampling`). On CUDA the batches are in pinned memory, so that their
    copies to the device overlap the computation."""
    batch = cfg.dataloader.train.total_batch_size
    return build_detection_train_loader(
        dataset=PositionedDataset(dicts, mapper),
        mapper=None,
        sampler=ResumableTrainingSampler(len(dicts), seed=cfg.train.seed, step=step, start=start_iter * batch),
        total_batch_size=batch,
        aspect_ratio_grouping=False,
        num_workers=cfg.dataloader.train.num_workers,
        pin_memory=resolve_device(cfg.train.device).type == "cuda",
    )


def build_test_mapper(cfg, task: Task, step: int) -> EIRDatasetMapper:
    """The evaluation mapper of ``step`` (its test labels, the config's test augmentations)."""
    return EIRDatasetMapper(
        is_train=False,
        task=task,
        step=step,
        augmentations=instantiate(cfg.dataloader.test.augmentations),
    )


def build_test_loader(cfg, dicts: list[dict], mapper):
    """Detectron2's inference loader over ``dicts``."""
    return build_detection_test_loader(
        dataset=dicts,
        mapper=mapper,
        batch_size=cfg.dataloader.test.batch_size,
        num_workers=cfg.dataloader.test.num_workers,
    )


# --------------------------------------------------------------------------- processes


def ddp_arguments(cfg, device: torch.device) -> dict:
    """The keyword arguments of ``DistributedDataParallel`` from ``cfg.train.ddp``.

    ``broadcast_buffers`` (whether buffers are synced from rank 0 in every forward) is passed
    as ``forward_sync_buffers`` where torch has it (2.14 deprecates the old name); that one
    also syncs the buffers once at the start, which changes nothing here: every rank starts
    from the same weights. On the CPU (gloo) DDP takes no device ids.
    """
    kwargs = {k: v for k, v in cfg.train.ddp.items() if k != "fp16_compression"}
    if "forward_sync_buffers" in inspect.signature(torch.nn.parallel.DistributedDataParallel).parameters:
        kwargs["forward_sync_buffers"] = kwargs.pop("broadcast_buffers")
    if device.type != "cuda":
        kwargs["device_ids"] = None
    return kwargs


def build_trainer(
    cfg, model, loader, optimizer, task: Task, plan: StepPlan, method: ContinualMethod, old_model=None
) -> EIRTrainer:
    """The step's :class:`EIRTrainer` (``model`` as :func:`build_ddp_model` gives it) with
    ``method``'s loss of the step."""
    return EIRTrainer(
        model,
        loader,
        optimizer,
        task=task,
        plan=plan,
        loss=method.criterion(task, plan.step),
        old_model=old_model,
        amp=cfg.train.amp.enabled,
        seed=cfg.train.seed,
        gather_metric_period=cfg.train.gather_metric_period,
    )


def build_step_hooks(cfg, checkpointer, optimizer, step_dir, iterations: int, main: bool) -> list:
    """The training hooks of a step of ``iterations``: timing, the schedule, and on the main
    process the log writers (``step_dir``'s training log, TensorBoard, the console) and the
    periodic ``checkpointer`` (whose earlier checkpoints count towards ``max_to_keep``)."""
    periodic = None
    if main:
        periodic = hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
        # Checkpoints of an interrupted run count towards max_to_keep, oldest deleted first.
        periodic.recent_checkpoints = [str(p) for p in periodic_checkpoints(step_dir)]
    writers = [
        CommonMetricPrinter(iterations),
        JSONWriter(str(step_dir / TRAINING_LOG)),
        TensorboardXWriter(str(step_dir)),
    ]
    return [
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=build_lr_scheduler(cfg, optimizer, iterations)),
        # The writer before the checkpointer: a checkpoint of iteration i implies its log
        # row is written, so a kill between the two cannot lose row i on resume.
        hooks.PeriodicWriter(writers, period=cfg.train.log_period) if main else None,
        periodic,
    ]


def build_ddp_model(cfg, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` wrapped for data-parallel training when there are several processes
    (Detectron2's ``create_ddp_model``), else ``model``."""
    return create_ddp_model(
        model, fp16_compression=cfg.train.ddp.fp16_compression, **ddp_arguments(cfg, device)
    )
