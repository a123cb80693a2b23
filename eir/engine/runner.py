"""ContinualRunner: every step of a continual task, from one config, resumable.

For each step t:

1. build the step-t model; at t > 0 load step t-1's weights, add the new classifier, freeze
   BatchNorm; build the frozen old model from the same config at step t-1;
2. load the instance bank written when step t-1 ended;
3. prepass: the old model's pseudo-label maps over the step's training images (pasting);
4. train with :class:`EIRTrainer` on the step's images joined with the bank's entries;
5. evaluate (old / new / all / hIoU), write ``metrics.json``, build and save the bank for
   step t+1, and mark the step done.

Artifacts live in ``OUTPUT_DIR/step_t/``; a step is done when ``step_t/DONE`` exists (it
records the SHA-256 of the step's artifacts, checked before the step is skipped or used).
Rerunning the same command skips done steps and resumes an interrupted one from its last
checkpoint, exactly: each step is a function of (config, seed, step) (every random source is
reseeded when a step starts, the sample stream and the mapper's draws are functions of the
stream position, torch's generator is reseeded per iteration), so a resumed step ends with
the weights of the uninterrupted one. :mod:`eir.engine.run_folder` keeps one run per folder
(a lock, the recorded config).
Each step folder also holds TensorBoard events (training scalars, the step's evaluation); the
run ends with ``summary.*``, ``steps.png``, ``per_class.png`` and ``predictions.png``.
"""
from __future__ import annotations

import eir.require_detectron2  # noqa: F401  (first: says how to install a missing Detectron2)

# isort: split
import copy
import json
import logging
import math
import re
import time
from pathlib import Path

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import instantiate
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset
from detectron2.solver import LRMultiplier
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter
from fvcore.common.param_scheduler import (
    CompositeParamScheduler,
    LinearParamScheduler,
    PolynomialDecayParamScheduler,
)

from eir.data.bank import STORAGE_MODES, InstanceBank
from eir.data.datasets import register_eir_datasets, replay_dataset_dicts, step_dataset_dicts
from eir.data.mapper import EIRDatasetMapper
from eir.data.prepass import PrepassStore, StalePrepassError, prepass_key
from eir.engine import run_folder
from eir.engine.checkpoint import (
    StepCheckpointer,
    latest_checkpoint,
    periodic_checkpoints,
    read_step_checkpoint,
)
from eir.engine.init_checkpoint import check_init_checkpoint
from eir.engine.prepass import run_prepass
from eir.engine.sampling import PositionedDataset, ResumableTrainingSampler, derived_seed
from eir.engine.trainer import EIRTrainer
from eir.evaluation.evaluator import ContinualSemSegEvaluator, write_eval_events
from eir.evaluation.metrics import format_table
from eir.evaluation.prediction_figure import write_prediction_figure
from eir.evaluation.report import write_summary
from eir.fileio import atomic_write_json, atomic_write_text, remove_temp_files
from eir.modeling.head import NEW_HEAD_INITS
from eir.modeling.losses import DISTILLATION_RULES, PSEUDO_LABEL_RULE, RSKD_NORMALIZATIONS
from eir.modeling.meta_arch import freeze_for_incremental, load_previous_step, load_step_weights
from eir.tasks import Task, build_task

logger = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` is CUDA when available, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def build_step_model(cfg, task: Task, step: int, device) -> torch.nn.Module:
    """Instantiate ``cfg.model`` with the head and channel layout of ``step``.

    At steps after the first, BatchNorm is frozen (METHOD.md section 3) so that a step's
    checkpoint loads into a model built here without key mismatches.
    """
    task.check_step(step)
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.head.step_sizes = task.step_sizes(step)
    model_cfg.channel_classes = task.channel_classes(step)
    model_cfg.num_classes = task.num_classes
    model = instantiate(model_cfg)
    if step > 0:
        freeze_for_incremental(model)
    return model.to(device)


def check_eir_config(eir) -> None:
    """Fail at start-up, naming the field, rather than hours later inside a data loader."""

    def one_of(key, allowed):
        if eir[key] not in allowed:
            raise ValueError(f"eir.{key} must be one of {allowed}, got {eir[key]!r}")

    if eir.paste is not None and not hasattr(eir.paste, "keys"):
        raise ValueError(
            f"eir.paste must be a PasteConfig (configs/common/eir.py) or null, got {eir.paste!r}; "
            "on the command line write eir.paste=null (None is read as a string)"
        )
    if int(eir.memory) < 0:
        raise ValueError(f"eir.memory (the bank budget) must be >= 0, got {eir.memory}")
    one_of("storage", STORAGE_MODES)
    one_of("rskd_mask", DISTILLATION_RULES)
    one_of("rskd_normalize", RSKD_NORMALIZATIONS)
    one_of("new_head_init", NEW_HEAD_INITS)
    if eir.pseudo_label and not 0.0 <= float(eir.tau) <= 1.0:
        raise ValueError(f"eir.tau is a sigmoid-score threshold in [0, 1], got {eir.tau}")
    if eir.paste is not None:
        try:
            instantiate(eir.paste)
        except (TypeError, ValueError) as e:
            raise ValueError(f"eir.paste: {e}") from e
    for key in ("short_side", "stride"):
        value = eir.prepass[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"eir.prepass.{key} must be an integer >= 1, got {value!r}")


def check_train_config(train) -> None:
    """The ``train.*`` fields a run reads late, checked when it starts."""
    seed = train.seed
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"train.seed must be an integer >= 0, got {seed!r}")
    step = train.step
    if step is not None and (isinstance(step, bool) or not re.fullmatch(r"\d+", str(step))):
        raise ValueError(f"train.step must be a step number (0, 1, ...) or None (every step), got {step!r}")
    if not isinstance(train.get("allow_config_change", False), bool):
        raise ValueError(f"train.allow_config_change must be True or False, got {train.allow_config_change!r}")


def step_seed(seed: int, step: int) -> int:
    """The seed every random source gets when step ``step`` of a run seeded ``seed`` starts."""
    return derived_seed(seed, step) % 2**31


def trim_training_log(path: Path, start_iter: int) -> None:
    """Drop the rows of iterations >= ``start_iter`` (written before an interruption, about to
    be trained again), so the log of a resumed step has each iteration once."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a row cut short by the interruption
        if isinstance(row, dict) and int(row.get("iteration", -1)) < start_iter:
            kept.append(line if line.endswith("\n") else line + "\n")
    if kept != lines:
        atomic_write_text(path, "".join(kept))


class ContinualRunner:
    """Runs, resumes and evaluates the steps of ``cfg.task`` (see the module docstring)."""

    def __init__(self, cfg):
        check_eir_config(cfg.eir)
        check_train_config(cfg.train)
        self.cfg = cfg
        self.task = build_task(**cfg.task)
        self.steps_to_run()  # a step outside the task fails here
        self.output_dir = Path(cfg.train.output_dir).expanduser().resolve()
        self.device = resolve_device(cfg.train.device)
        self.lock = None
        register_eir_datasets()

    # ----------------------------------------------------------------- paths
    def step_dir(self, step: int) -> Path:
        return self.output_dir / f"step_{step}"

    def is_done(self, step: int) -> bool:
        return (self.step_dir(step) / "DONE").is_file()

    def claim_output_dir(self) -> None:
        """Take the folder's lock; refuse a folder of another task or config; record ours.

        Everything is checked before anything is written, so a refused command leaves the
        folder as it found it. Temporary files of killed writes are removed once the lock is held.
        Idempotent; :meth:`release_output_dir` gives the folder up.
        """
        if self.lock is not None:
            return
        if comm.is_main_process():
            existed = self.output_dir.exists()
            lock = run_folder.RunLock(self.output_dir)
            lock.acquire()
            try:
                self.check_output_dir()
                record = run_folder.check_recorded_config(
                    self.output_dir, self.cfg, bool(self.cfg.train.get("allow_config_change", False))
                )
            except BaseException:
                lock.release()
                if not existed:
                    self.output_dir.rmdir()
                raise
            self.lock = lock
            for path in remove_temp_files(self.output_dir, keep_prefix=f".{run_folder.LOCK_FILE}."):
                logger.info("Removed %s, left by an interrupted write", path)
            if not (self.output_dir / "task.json").is_file():
                atomic_write_json(self.output_dir / "task.json", self.task.to_dict())
            if record is not None:
                run_folder.write_config_record(self.output_dir, record)
        else:
            self.lock = False  # the main process holds the folder for every rank
        comm.synchronize()

    def check_output_dir(self) -> None:
        """Refuse a folder that holds a run of another task."""
        marker = self.output_dir / "task.json"
        mine = self.task.to_dict()
        if marker.is_file():
            try:
                theirs = json.loads(marker.read_text())
                same = build_task(**theirs) == self.task
            except (ValueError, TypeError) as e:
                raise ValueError(f"{marker} is damaged ({e}): restore it or choose another train.output_dir") from e
            if not same:
                raise ValueError(
                    f"{self.output_dir} holds a run of task {theirs}, not {mine}: "
                    "choose another train.output_dir"
                )

    def release_output_dir(self) -> None:
        if self.lock:
            self.lock.release()
        self.lock = None

    def steps_to_run(self) -> list[int]:
        step = self.cfg.train.step
        if step is None:
            return list(range(self.task.num_steps))
        return [self.task.check_step(int(step))]

    def done_problems(self, step: int) -> list[str]:
        """What is wrong with done step ``step``'s artifacts (empty when they pass their checks)."""
        return run_folder.done_problems(self.step_dir(step), self.step_artifacts(step))

    def check_done(self, step: int) -> None:
        problems = self.done_problems(step)
        if problems:
            done = self.step_dir(step) / "DONE"
            raise RuntimeError(
                f"step {step} is marked done ({done}), but " + "; ".join(problems) + ". Restore the "
                f"file(s), or delete {done} and the damaged file(s) and rerun to rebuild them "
                "(a kept model_final.pth is not retrained)."
            )

    def step_artifacts(self, step: int) -> list[str]:
        """The files (relative to the step's folder) a done step must hold."""
        names = ["model_final.pth", "metrics.json"]
        if step + 1 < self.task.num_steps and self.cfg.eir.memory > 0:
            names.append("bank/manifest.json")
        if self.pastes(step):
            names.append("prepass.npz")
        return names

    # ----------------------------------------------------------------- run
    def run(self) -> dict[int, dict]:
        """Train every requested step that is not done; write the run's summary."""
        logger.info("Continual run of %s into %s", self.task, self.output_dir)
        steps = self.steps_to_run()
        if 0 in steps and not self.is_done(0):
            check_init_checkpoint(self.cfg)  # before anything is written into the output folder
        claimed_here = self.lock is None
        self.claim_output_dir()
        try:
            self.check_test_sets(steps)
            for step in steps:
                if self.is_done(step):
                    self.check_done(step)
                    logger.info("Step %d is done (%s exists): skipped", step, self.step_dir(step) / "DONE")
                    continue
                self.train_step(step)
            summaries = self.finished_summaries()
            if comm.is_main_process() and summaries:
                write_summary(self.output_dir, self.task, summaries)
                logger.info("Summary written to %s", self.output_dir / "summary.md")
                write_prediction_figure(self, seed=self.cfg.train.seed)
        finally:
            if claimed_here:
                self.release_output_dir()
        return summaries

    def check_test_sets(self, steps) -> None:
        """Read every requested step's test set now (labels checked, none empty), not after training."""
        for step in steps:
            dicts, _ = self.test_data(step)
            if not dicts:
                raise ValueError(
                    f"the test set {self.cfg.dataloader.test.dataset} has no image for step {step}: "
                    "check the dataset's validation list and dataloader.test.dataset"
                )

    def finished_summaries(self) -> dict[int, dict]:
        """The metrics of every done step, read back from their ``metrics.json``."""
        out = {}
        for step in range(self.task.num_steps):
            path = self.step_dir(step) / "metrics.json"
            if self.is_done(step) and path.is_file():
                try:
                    out[step] = json.loads(path.read_text())["summary"]
                except (ValueError, KeyError, TypeError) as e:
                    raise ValueError(
                        f"{path} is damaged ({e}): delete it and {self.step_dir(step) / 'DONE'}, then "
                        "rerun to evaluate the step again"
                    ) from e
        return out

    def train_step(self, step: int) -> dict:
        cfg, task = self.cfg, self.task
        if step > 0 and not self.is_done(step - 1):
            raise RuntimeError(
                f"step {step} needs step {step - 1}, which is not trained "
                f"({self.step_dir(step - 1) / 'DONE'} is missing): run the steps in order "
                "(leave train.step unset to run them all)."
            )
        if step > 0:
            self.check_done(step - 1)
        step_dir = self.step_dir(step)
        if comm.is_main_process():
            step_dir.mkdir(parents=True, exist_ok=True)
        comm.synchronize()
        started = time.perf_counter()
        logger.info("==== step %d of %s: classes %s", step, task, task.new_classes(step))
        # The step is a function of (config, seed, step), not of what this process did before.
        seed_all_rng(step_seed(cfg.train.seed, step))

        model = build_step_model(cfg, task, step, self.device)
        old_model = None
        if step > 0:
            previous = read_step_checkpoint(self.step_dir(step - 1) / "model_final.pth", task, step - 1)
            load_previous_step(model, previous, cfg.eir.new_head_init)
            if cfg.eir.pseudo_label or cfg.eir.w_kd > 0 or self.pastes(step):
                old_model = build_step_model(cfg, task, step - 1, self.device)
                load_step_weights(old_model, previous)
                old_model.eval().requires_grad_(False)
        elif cfg.train.init_checkpoint:
            DetectionCheckpointer(model).load(cfg.train.init_checkpoint)

        bank = self.load_bank(step)
        train_dicts, dicts = self.train_data(step, bank)
        prepass = self.prepass(step, train_dicts, old_model) if self.pastes(step) else None
        logger.info(
            "Step %d trains on %d images + %d bank entries",
            step, len(train_dicts), len(dicts) - len(train_dicts),
        )

        model_final = step_dir / "model_final.pth"
        if model_final.is_file():
            logger.info("Step %d was trained before the interruption: %s", step, model_final)
            load_step_weights(model, read_step_checkpoint(model_final, task, step))
        else:
            self.fit(step, model, old_model, dicts, bank, prepass)

        summary = self.evaluate_model(model, step)
        if comm.is_main_process():
            atomic_write_json(
                step_dir / "metrics.json",
                {"task": task.to_dict(), "step": step, "summary": summary},
            )
            write_eval_events(step_dir, summary, step)
            if step + 1 < task.num_steps and cfg.eir.memory > 0:
                self.build_bank(step, train_dicts, bank).save(step_dir / "bank")
            run_folder.write_done(
                step_dir,
                f"step {step} of {task} done in {time.perf_counter() - started:.0f} s",
                self.step_artifacts(step),
            )
        comm.synchronize()
        return summary

    # ----------------------------------------------------------------- parts
    def pastes(self, step: int) -> bool:
        return step > 0 and self.cfg.eir.paste is not None and self.cfg.eir.memory > 0

    def load_bank(self, step: int):
        if step == 0 or self.cfg.eir.memory <= 0:
            return None
        folder = self.step_dir(step - 1) / "bank"
        try:
            return InstanceBank.load(folder, task=self.task, step=step - 1)
        except (OSError, ValueError) as e:
            done = self.step_dir(step - 1) / "DONE"
            raise RuntimeError(
                f"the bank {folder} that step {step} replays cannot be used: {e}. To rebuild it, "
                f"delete {folder} and {done}, then rerun (step {step - 1}'s model_final.pth is kept "
                "and not retrained)."
            ) from e

    def train_data(self, step: int, bank) -> tuple[list[dict], list[dict]]:
        """Step ``step``'s training images, and the list the loader samples: those images
        followed by the replay entries of ``bank`` (the bank of step - 1, or None)."""
        cfg = self.cfg
        train_dicts = step_dataset_dicts(
            cfg.dataloader.train.dataset, self.task, step, "train",
            cache_dir=self.output_dir, num_workers=cfg.dataloader.train.num_workers,
        )
        if not train_dicts:
            raise ValueError(
                f"no image of {cfg.dataloader.train.dataset} qualifies for step {step} "
                f"({self.task.setting}): check the dataset and task.*"
            )
        return train_dicts, train_dicts + (replay_dataset_dicts(bank) if bank is not None else [])

    def build_bank(self, step: int, train_dicts, previous) -> InstanceBank:
        cfg = self.cfg
        return InstanceBank.build(
            train_dicts,
            self.task,
            step,
            budget=cfg.eir.memory,
            seed=cfg.train.seed,
            previous=previous,
            storage=cfg.eir.storage,
            num_workers=cfg.dataloader.train.num_workers,
        )

    def prepass_key(self, step: int, dicts) -> dict:
        """What step ``step``'s prepass maps depend on (settings, old weights, images)."""
        p = self.cfg.eir.prepass
        return prepass_key(
            tau=self.cfg.eir.tau,
            stride=p.stride,
            short_side=p.short_side,
            rule=PSEUDO_LABEL_RULE,
            old_checkpoint=self.step_dir(step - 1) / "model_final.pth",
            dataset_dicts=dicts,
        )

    def prepass(self, step: int, dicts, old_model) -> PrepassStore:
        """The step's prepass maps: ``step_t/prepass.npz`` when its key matches, else computed."""
        path = self.step_dir(step) / "prepass.npz"
        key = self.prepass_key(step, dicts)
        if path.is_file():
            try:
                return PrepassStore.load(path, task=self.task, step=step, key=key)
            except StalePrepassError as e:
                logger.info("Recomputing the prepass of step %d: %s", step, e)
            except (OSError, ValueError) as e:
                raise RuntimeError(f"{path} cannot be read ({e}): delete it and rerun to compute it again") from e
        p = self.cfg.eir.prepass
        store = run_prepass(
            old_model,
            dicts,
            self.task,
            step,
            tau=self.cfg.eir.tau,
            short_side=p.short_side,
            stride=p.stride,
            num_workers=self.cfg.dataloader.train.num_workers,
            key=key,
        )
        if comm.is_main_process():
            store.save(path)
        comm.synchronize()
        return store

    def max_iter(self, step: int, num_samples: int) -> int:
        s = self.cfg.schedule
        if s.max_iter:
            return int(s.max_iter)
        epochs = s.epochs if step == 0 else s.incremental_epochs
        return max(1, math.ceil(epochs * num_samples / self.cfg.dataloader.train.total_batch_size))

    def build_optimizer(self, model, step: int):
        s = self.cfg.schedule
        lr = s.lr if step == 0 else s.incremental_lr
        opt_cfg = copy.deepcopy(self.cfg.optimizer)
        opt_cfg.params.model = model
        opt_cfg.params.base_lr = lr
        opt_cfg.params.step = step
        opt_cfg.lr = lr
        return instantiate(opt_cfg)

    def build_lr_scheduler(self, optimizer, max_iter: int):
        s = self.cfg.schedule
        poly = PolynomialDecayParamScheduler(1.0, s.poly_power)
        if s.warmup_fraction > 0:
            # Linear warm-up from 0 over the first fraction, then poly decay over the rest.
            poly = CompositeParamScheduler(
                [LinearParamScheduler(1e-3, 1.0), poly],
                lengths=[s.warmup_fraction, 1.0 - s.warmup_fraction],
                interval_scaling=["rescaled", "rescaled"],
            )
        return LRMultiplier(optimizer, poly, max_iter)

    def train_mapper(self, step: int, bank, prepass) -> EIRDatasetMapper:
        """The mapper of step ``step``'s training loader (pasting from ``bank`` when the step pastes)."""
        cfg = self.cfg
        return EIRDatasetMapper(
            is_train=True,
            task=self.task,
            step=step,
            augmentations=instantiate(cfg.dataloader.train.augmentations),
            bank=bank,
            prepass=prepass,
            paste_cfg=instantiate(cfg.eir.paste) if self.pastes(step) else None,
            seed=cfg.train.seed,
        )

    def train_loader(self, step: int, dicts, bank, prepass, start_iter: int = 0):
        """Step ``step``'s training batches from iteration ``start_iter`` on: the batch of an
        iteration depends on (seed, step, iteration), not on the loader's number of workers."""
        cfg = self.cfg
        batch = cfg.dataloader.train.total_batch_size
        return build_detection_train_loader(
            dataset=PositionedDataset(dicts, self.train_mapper(step, bank, prepass)),
            mapper=None,
            sampler=ResumableTrainingSampler(len(dicts), seed=cfg.train.seed, step=step, start=start_iter * batch),
            total_batch_size=batch,
            aspect_ratio_grouping=False,
            num_workers=cfg.dataloader.train.num_workers,
        )

    def fit(self, step, model, old_model, dicts, bank, prepass) -> None:
        cfg, task = self.cfg, self.task
        step_dir = self.step_dir(step)
        checkpoint = latest_checkpoint(step_dir)
        start_iter = checkpoint[1] + 1 if checkpoint else 0
        loader = self.train_loader(step, dicts, bank, prepass, start_iter)
        max_iter = self.max_iter(step, len(dicts))
        if start_iter > max_iter:
            raise ValueError(
                f"{checkpoint[0]} is of iteration {start_iter - 1}, beyond this schedule's {max_iter} "
                f"iterations of step {step}: delete the model_*.pth files of {step_dir} to train the "
                "step again under this schedule"
            )
        optimizer = self.build_optimizer(model, step)
        ddp = cfg.train.ddp
        kwargs = {} if self.device.type == "cuda" else {"device_ids": None}
        wrapped = create_ddp_model(model, **ddp, **kwargs)
        trainer = EIRTrainer(
            wrapped,
            loader,
            optimizer,
            task=task,
            step=step,
            old_model=old_model,
            tau=cfg.eir.tau if cfg.eir.pseudo_label else None,
            w_bce=cfg.eir.w_bce,
            w_kd=cfg.eir.w_kd,
            rskd_mask=cfg.eir.rskd_mask,
            rskd_normalize=cfg.eir.rskd_normalize,
            amp=cfg.train.amp.enabled,
            seed=cfg.train.seed,
        )
        checkpointer = StepCheckpointer(model, step_dir, task=task, step=step, trainer=trainer)
        main = comm.is_main_process()
        log_file = step_dir / "training_log.json"
        periodic = None
        if main:
            trim_training_log(log_file, start_iter)
            periodic = hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
            # Checkpoints of an interrupted run count towards max_to_keep, oldest deleted first.
            periodic.recent_checkpoints = [str(p) for p in periodic_checkpoints(step_dir)]
        trainer.register_hooks(
            [
                hooks.IterationTimer(),
                hooks.LRScheduler(scheduler=self.build_lr_scheduler(optimizer, max_iter)),
                # The writer before the checkpointer: a checkpoint of iteration i implies its log
                # row is written, so a kill between the two cannot lose row i on resume.
                hooks.PeriodicWriter(
                    [
                        CommonMetricPrinter(max_iter),
                        JSONWriter(str(log_file)),
                        TensorboardXWriter(str(step_dir)),
                    ],
                    period=cfg.train.log_period,
                )
                if main
                else None,
                periodic,
            ]
        )
        if checkpoint:
            checkpointer.resume_from(checkpoint[0])
            logger.info("Resuming step %d at iteration %d from %s", step, start_iter, checkpoint[0])
        logger.info("Step %d: %d iterations", step, max_iter)
        try:
            trainer.train(start_iter, max_iter)
        finally:
            trainer.close_data_loader()
        if main and not (step_dir / "model_final.pth").is_file():
            # Resumed from the checkpoint of the last iteration: nothing was left to train.
            checkpointer.save("model_final", iteration=max_iter - 1)
        comm.synchronize()


    # ----------------------------------------------------------------- evaluation
    def test_data(self, step: int) -> tuple[list[dict], EIRDatasetMapper]:
        """Step ``step``'s test set: its dataset dicts and the evaluation mapper."""
        cfg = self.cfg
        dicts = step_dataset_dicts(
            cfg.dataloader.test.dataset, self.task, step, "test",
            cache_dir=self.output_dir, num_workers=cfg.dataloader.test.num_workers,
        )
        mapper = EIRDatasetMapper(
            is_train=False,
            task=self.task,
            step=step,
            augmentations=instantiate(cfg.dataloader.test.augmentations),
        )
        return dicts, mapper

    def trained_model(self, step: int, checkpoint=None) -> torch.nn.Module:
        """The model of ``step`` with the weights of ``checkpoint`` (default: its model_final.pth)."""
        path = Path(checkpoint) if checkpoint else self.step_dir(step) / "model_final.pth"
        model = build_step_model(self.cfg, self.task, step, self.device)
        load_step_weights(model, read_step_checkpoint(path, self.task, step))
        return model

    def evaluate_model(self, model, step: int) -> dict:
        cfg = self.cfg
        dicts, mapper = self.test_data(step)
        loader = build_detection_test_loader(
            dataset=dicts,
            mapper=mapper,
            batch_size=cfg.dataloader.test.batch_size,
            num_workers=cfg.dataloader.test.num_workers,
        )
        evaluator = ContinualSemSegEvaluator(self.task, step)
        inference_on_dataset(model, loader, evaluator)
        return evaluator.summary

    def evaluate_checkpoint(self, step: int, checkpoint=None) -> dict:
        """Evaluate ``checkpoint`` (default: the step's model_final.pth) at ``step``; print the table."""
        self.task.check_step(step)
        path = Path(checkpoint) if checkpoint else self.step_dir(step) / "model_final.pth"
        summary = self.evaluate_model(self.trained_model(step, path), step)
        if comm.is_main_process():
            print(format_table(summary, title=f"{self.task} step {step}: {path}"))
        return summary
