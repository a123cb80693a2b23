"""ContinualRunner: every step of a continual task, from one config, resumable.

For each step t, as its :class:`~eir.engine.step_plan.StepPlan` says:

1. build the step-t model; at t > 0 load step t-1's weights, add the new classifier, freeze
   BatchNorm; build the frozen old model of step t-1 when the step needs one;
2. load the instance bank written when step t-1 ended;
3. prepass: the old model's pseudo-label maps over the step's training images (pasting);
4. train with :class:`EIRTrainer` on the step's images joined with the bank's entries;
5. evaluate (old / new / all / hIoU), build and save the bank for step t+1, write
   ``metrics.json`` (with the method's record of that bank), and mark the step done.

Artifacts live in ``OUTPUT_DIR/step_t/``; a step is done when ``step_t/DONE`` records it (the
digests of the step's artifacts, checked before the step is skipped or used;
:class:`~eir.engine.run_folder.RunFolder` keeps the folder's records). Every check that can
run before training runs before the folder is claimed (:meth:`ContinualRunner.check_inputs`).
Rerunning the same command skips done steps and resumes an interrupted one from its last
checkpoint, exactly: each step is a function of (config, seed, step) (:mod:`eir.seeding`). Each step folder also
holds TensorBoard events (training scalars, the step's evaluation); the run ends with
``summary.*``, ``steps.png``, ``per_class.png`` and ``predictions.png``. The objects a step
needs come from :mod:`eir.engine.builders`.
"""
from __future__ import annotations

import eir.require_detectron2  # noqa: F401  (first: says how to install a missing Detectron2)

# isort: split
import logging
import time
from pathlib import Path

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.evaluation import inference_on_dataset
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng

from eir.data.bank import InstanceBank
from eir.engine.builders import (
    build_bank,
    build_ddp_model,
    build_method,
    build_next_step_model,
    build_old_model,
    build_optimizer,
    build_paster,
    build_run_task,
    build_step_hooks,
    build_step_model,
    build_test_dicts,
    build_test_loader,
    build_test_mapper,
    build_train_dicts,
    build_train_loader,
    build_train_mapper,
    build_trainer,
    max_iter,
    resolve_device,
)
from eir.engine.checkpoint import (
    FINAL,
    StepCheckpointer,
    latest_checkpoint,
    periodic_checkpoints,
    read_step_checkpoint,
)
from eir.engine.config_checks import check_config
from eir.engine.init_checkpoint import check_init_checkpoint
from eir.engine.prepass import step_prepass
from eir.engine.run_claim import check_run_data, claim_together
from eir.engine.run_files import FINAL_CHECKPOINT
from eir.engine.run_folder import RunFolder
from eir.engine.step_plan import StepPlan
from eir.evaluation.evaluator import ContinualSemSegEvaluator, write_eval_events
from eir.evaluation.metrics import format_table
from eir.evaluation.prediction_figure import write_prediction_figure
from eir.evaluation.report import write_summary
from eir.modeling.meta_arch import load_step_weights
from eir.seeding import step_seed

logger = logging.getLogger(__name__)


class ContinualRunner:
    """Runs, resumes and evaluates the steps of ``cfg.task`` (see the module docstring).

    Constructing it checks the config and writes nothing; :meth:`run` claims the output folder
    (unless :meth:`claim_output_dir` did) and trains every requested step that is not done.
    Nothing but a claim writes into the folder: until then (and so in :meth:`evaluate_checkpoint`)
    the presence tables are kept in memory.
    """

    def __init__(self, cfg):
        check_config(cfg)
        self.cfg = cfg
        self.task = build_run_task(cfg)
        self.steps_to_run()  # a step outside the task fails here
        self.folder = RunFolder(cfg.train.output_dir, self.task)
        self.device = resolve_device(cfg.train.device)
        self.method = build_method(cfg)
        self.claimed = False
        self.inputs_checked = False
        self.checked_data: dict | None = None  # the datasets' fingerprints check_inputs compared

    @property
    def output_dir(self) -> Path:
        return self.folder.path

    def step_dir(self, step: int) -> Path:
        return self.folder.step_dir(step)

    def plan(self, step: int) -> StepPlan:
        return self.method.plan(self.task, step)

    def steps_to_run(self) -> list[int]:
        step = self.cfg.train.step
        if step is None:
            return list(range(self.task.num_steps))
        return [self.task.check_step(int(step))]

    # ----------------------------------------------------------------- the folder
    def check_inputs(self) -> None:
        """The start-up checks that read inputs, writing nothing: the step before the first
        requested one is done, step 0's backbone checkpoint (when step 0 is to be trained), the
        data against the run's record, and every requested step's data: its training images
        (for the steps not done) and its test images (labels checked, none empty). Once."""
        if self.inputs_checked:
            return
        steps = self.steps_to_run()
        if steps[0] > 0:
            self.folder.require_done(steps[0] - 1, needed_by=steps[0])
        if 0 in steps and not self.folder.is_done(0):
            check_init_checkpoint(self.cfg)
        self.checked_data = check_run_data(self.folder, self.cfg, write=False)
        for step in steps:
            if not self.folder.is_done(step):
                images, _ = self.train_data(step, bank=None)  # raises when no training image qualifies
                for warning in self.method.check_step_data(self.task, step, images):
                    logger.warning("step %d: %s", step, warning)
            if not self.test_dicts(step):
                raise ValueError(
                    f"the test set {self.cfg.dataloader.test.dataset} has no image for step {step}: "
                    "check the dataset's validation list and dataloader.test.dataset"
                )
        self.inputs_checked = True

    def claim_output_dir(self) -> None:
        """Check the inputs (:meth:`check_inputs`), then claim the output folder on the main
        process (:func:`~eir.engine.run_claim.claim_together`); every rank waits for it.
        Idempotent; :meth:`release_output_dir` gives the folder up."""
        if not self.claimed:
            claim_together(self.folder, self.cfg, self.check_inputs)
            self.claimed = True

    def release_output_dir(self) -> None:
        """Give the folder up; a later claim checks the inputs again."""
        self.folder.release()
        self.claimed = False
        self.inputs_checked, self.checked_data = False, None

    def check_done(self, step: int) -> None:
        self.folder.check_done(step, self.plan(step).artifacts)

    # ----------------------------------------------------------------- run
    def run(self) -> dict[int, dict]:
        """Train every requested step that is not done; write the run's summary."""
        logger.info("Continual run of %s into %s", self.task, self.output_dir)
        steps = self.steps_to_run()
        claimed_here = not self.claimed
        self.claim_output_dir()
        try:
            check_run_data(self.folder, self.cfg, fingerprints=self.checked_data)  # records a new run's data
            for step in steps:
                if self.folder.is_done(step):
                    self.check_done(step)
                    logger.info("Step %d is done (%s exists): skipped", step, self.step_dir(step) / "DONE")
                    continue
                self.train_step(self.plan(step))
            summaries = self.folder.finished_summaries()
            if comm.is_main_process() and summaries:
                write_summary(self.output_dir, self.task, summaries, self.folder.finished_bank_records())
                logger.info("Summary written to %s", self.output_dir / "summary.md")
                write_prediction_figure(self, seed=self.cfg.train.seed)
        finally:
            if claimed_here:
                self.release_output_dir()
        return summaries

    def train_step(self, plan: StepPlan) -> dict:
        """Train, evaluate and finish the step of ``plan`` (resuming it when it was interrupted)."""
        cfg, task, folder, step = self.cfg, self.task, self.folder, plan.step
        if step > 0:
            self.folder.require_done(step - 1, needed_by=step)
            self.check_done(step - 1)
        step_dir = self.step_dir(step)
        if comm.is_main_process():
            step_dir.mkdir(parents=True, exist_ok=True)
        comm.synchronize()
        started = time.perf_counter()
        logger.info("==== step %d of %s: classes %s", step, task, task.new_classes(step))
        if step != self.steps_to_run()[0]:
            check_run_data(self.folder, self.cfg)  # the data may have changed while the previous steps trained
        # The step is a function of (config, seed, step), not of what this process did before.
        seed_all_rng(step_seed(cfg.train.seed, step))

        model, old_model = self.build_models(plan)
        bank = self.load_bank(plan)
        train_dicts, dicts = self.train_data(step, bank)
        prepass = None
        if plan.prepass:
            prepass = step_prepass(cfg, task, folder, step, train_dicts, old_model, self.method.prepass)
        logger.info(
            "Step %d trains on %d images + %d bank entries", step, len(train_dicts), len(dicts) - len(train_dicts)
        )

        model_final = step_dir / FINAL_CHECKPOINT
        if model_final.is_file():
            logger.info("Step %d was trained before the interruption: %s", step, model_final)
            load_step_weights(model, read_step_checkpoint(model_final, task, step))
        else:
            paste = build_paster(task, plan, bank, prepass, self.method)
            mapper = build_train_mapper(cfg, task, step, bank, paste)
            self.fit(plan, model, old_model, dicts, mapper)

        summary = self.evaluate_model(model, step)
        if comm.is_main_process():
            bank_record = self.save_bank(step, train_dicts, bank) if plan.save_bank else None
            folder.write_metrics(step, summary, bank=bank_record)
            write_eval_events(step_dir, summary, step)
            message = f"step {step} of {task} done in {time.perf_counter() - started:.0f} s"
            folder.mark_done(step, message, plan.artifacts)
        comm.synchronize()
        return summary

    # ----------------------------------------------------------------- parts
    def build_models(self, plan: StepPlan) -> tuple[torch.nn.Module, torch.nn.Module | None]:
        """The step's model (from step - 1's weights, or the ImageNet backbone at step 0) and, when
        the plan needs it, the frozen model of step - 1."""
        cfg, task, step = self.cfg, self.task, plan.step
        old_model = None
        if step > 0:
            previous = read_step_checkpoint(self.step_dir(step - 1) / FINAL_CHECKPOINT, task, step - 1)
            model = build_next_step_model(cfg, task, step, previous, self.device, self.method)
            if plan.old_model:
                old_model = build_old_model(cfg, task, step - 1, previous, self.device, self.method)
            return model, old_model
        model = build_step_model(cfg, task, step, self.device, self.method)
        if cfg.train.init_checkpoint:
            DetectionCheckpointer(model).load(cfg.train.init_checkpoint)
        return model, old_model

    def load_bank(self, plan: StepPlan) -> InstanceBank | None:
        """The bank written when step - 1 ended, when the step replays it."""
        if not plan.replay:
            return None
        folder = self.step_dir(plan.step - 1) / "bank"
        try:
            return InstanceBank.load(folder, task=self.task, step=plan.step - 1, instances=self.method.instances)
        except (OSError, ValueError) as e:
            done = self.step_dir(plan.step - 1) / "DONE"
            raise RuntimeError(
                f"the bank {folder} that step {plan.step} replays cannot be used: {e}. To rebuild it, "
                f"delete {folder} and {done}, then rerun (step {plan.step - 1}'s model_final.pth is kept "
                "and not retrained)."
            ) from e

    def save_bank(self, step: int, train_dicts: list[dict], previous) -> dict | None:
        """Build the bank for step + 1 from the step's images and the ``previous`` bank, save it,
        log the method's warnings about it; return the method's record of it (for metrics.json)."""
        bank = build_bank(self.cfg, self.task, step, train_dicts, previous, self.method)
        record = self.method.bank_record(self.task, step, train_dicts, bank)
        for warning in (record or {}).get("warnings", ()):
            logger.warning("step %d: %s", step, warning)
        bank.save(self.step_dir(step) / "bank")
        return record

    def train_data(self, step: int, bank) -> tuple[list[dict], list[dict]]:
        """:func:`~eir.engine.builders.build_train_dicts` of this run (the presence cache is
        read from the run folder, and written there once the folder is claimed)."""
        return build_train_dicts(self.cfg, self.task, step, bank, cache_dir=self.output_dir, write_cache=self.claimed)

    def fit(self, plan: StepPlan, model, old_model, dicts, mapper) -> None:
        """Train ``model`` on ``dicts`` through ``mapper`` to the step's last iteration, from its
        latest periodic checkpoint when there is one; write ``model_final.pth``."""
        cfg, step = self.cfg, plan.step
        step_dir = self.step_dir(step)
        checkpoint = latest_checkpoint(step_dir)
        start_iter = checkpoint[1] + 1 if checkpoint else 0
        iterations = max_iter(cfg, step, len(dicts))
        if start_iter > iterations:
            raise ValueError(
                f"{checkpoint[0]} is of iteration {start_iter - 1}, beyond this schedule's {iterations} "
                f"iterations of step {step}: delete the model_*.pth files of {step_dir} to train the "
                "step again under this schedule"
            )
        loader = build_train_loader(cfg, dicts, mapper, step, start_iter)
        optimizer = build_optimizer(cfg, model, step)
        trainer = build_trainer(
            cfg, build_ddp_model(cfg, model, self.device), loader, optimizer, self.task, plan, self.method, old_model
        )
        checkpointer = StepCheckpointer(model, step_dir, task=self.task, step=step, trainer=trainer)
        main = comm.is_main_process()
        if main:
            self.folder.trim_training_log(step, start_iter)
        trainer.register_hooks(build_step_hooks(cfg, checkpointer, optimizer, step_dir, iterations, main))
        if checkpoint:
            checkpointer.resume_from(checkpoint[0])
            logger.info("Resuming step %d at iteration %d from %s", step, start_iter, checkpoint[0])
        logger.info("Step %d: %d iterations", step, iterations)
        try:
            trainer.train(start_iter, iterations)
        except FloatingPointError as e:
            raise RuntimeError(self.divergence_advice(step, e)) from e
        finally:
            trainer.close_data_loader()
        if main and not (step_dir / FINAL_CHECKPOINT).is_file():
            # Resumed from the checkpoint of the last iteration: nothing was left to train.
            checkpointer.save(FINAL, iteration=iterations - 1)
        comm.synchronize()

    def divergence_advice(self, step: int, error: FloatingPointError) -> str:
        """What to do when step ``step``'s loss became NaN or infinite: a plain rerun resumes
        from the same checkpoint under the same config, and diverges again."""
        kept = [p.name for p in periodic_checkpoints(self.step_dir(step))]
        resume = (
            f"a rerun resumes from {kept[-1]} and diverges the same way" if kept
            else "a rerun trains it again the same way"
        )
        return (
            f"step {step} diverged ({str(error).splitlines()[0]}); {resume}. Rerun with a change that "
            "prevents it (e.g. a lower schedule.lr / schedule.incremental_lr, or train.amp.enabled=False) "
            f"and train.allow_config_change=True: the step then restarts from its first iteration "
            f"(its checkpoints in {self.step_dir(step)} are deleted)."
        )

    # ----------------------------------------------------------------- evaluation
    def test_dicts(self, step: int) -> list[dict]:
        return build_test_dicts(self.cfg, self.task, step, cache_dir=self.output_dir, write_cache=self.claimed)

    def test_data(self, step: int):
        """Step ``step``'s test set: its dataset dicts and the evaluation mapper."""
        return self.test_dicts(step), build_test_mapper(self.cfg, self.task, step)

    def trained_model(self, step: int, checkpoint=None) -> torch.nn.Module:
        """The model of ``step`` with the weights of ``checkpoint`` (default: its model_final.pth)."""
        path = Path(checkpoint) if checkpoint else self.step_dir(step) / FINAL_CHECKPOINT
        model = build_step_model(self.cfg, self.task, step, self.device, self.method)
        load_step_weights(model, read_step_checkpoint(path, self.task, step))
        return model

    def evaluate_model(self, model, step: int) -> dict:
        dicts, mapper = self.test_data(step)
        evaluator = ContinualSemSegEvaluator(self.task, step)
        inference_on_dataset(model, build_test_loader(self.cfg, dicts, mapper), evaluator)
        return evaluator.summary

    def evaluate_checkpoint(self, step: int, checkpoint=None) -> dict:
        """Evaluate ``checkpoint`` (default: the step's model_final.pth) at ``step``; print the table."""
        self.task.check_step(step)
        path = Path(checkpoint) if checkpoint else self.step_dir(step) / FINAL_CHECKPOINT
        summary = self.evaluate_model(self.trained_model(step, path), step)
        if comm.is_main_process():
            print(format_table(summary, title=f"{self.task} step {step}: {path}"))
        return summary
