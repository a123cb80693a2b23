#!/usr/bin/env python
"""Run a whole continual EIR sequence (every step) or evaluate one step's checkpoint.

    python tools/train_net.py            # the synthetic 4-2 run (projects/EIR/configs/synthetic/4-2_overlap.py)
    python tools/train_net.py --config-file projects/EIR/configs/voc/15-1_overlap.py
    python tools/train_net.py --config-file ... train.step=2            # one step only
    python tools/train_net.py --config-file ... --eval-only train.step=5 [train.eval_checkpoint=PATH]
        [train.eval_output=metrics.json]
    python tools/train_net.py --config-file ... --num-gpus 8

Overrides are LazyConfig ``key=value`` pairs; a key the config lacks is an error. Rerunning a
command skips finished steps and resumes an interrupted one from its last checkpoint, exactly
(``--resume`` is implied). One command at a time per output folder (``run.lock``); a rerun
whose config differs from the folder's (``run_config.json``) is refused unless it adds
``train.allow_config_change=True``. Every check runs before anything is written.
"""
import logging
import sys
from pathlib import Path

import eir.require_detectron2  # noqa: F401  (first: says how to install a missing Detectron2)

# isort: split
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from eir.engine.config_checks import load_config
from eir.engine.runner import ContinualRunner
from eir.engine.startup_log import held_startup_records, write_to_log_files
from eir.evaluation.evaluator import detectron2_results
from eir.fileio import atomic_write_json

logger = logging.getLogger("eir")

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "projects/EIR/configs/synthetic/4-2_overlap.py"


def main(args):
    cfg = load_config(args.config_file, args.opts)
    # The start-up checks warn before log.txt exists: their warnings are printed now and
    # written to log.txt once it does.
    with held_startup_records() as startup:
        runner = ContinualRunner(cfg)  # checks the config; writes nothing
        if not args.eval_only:
            runner.claim_output_dir()  # inputs checked, then the lock and records: before config.yaml and log.txt
    if args.eval_only:
        # Evaluation writes nothing into the run's folder (no config.yaml, no presence cache):
        # the folder may be read-only, or missing when train.eval_checkpoint names the weights.
        setup_logger(distributed_rank=comm.get_rank())
        setup_logger(distributed_rank=comm.get_rank(), name="eir")
        if cfg.train.step is None:
            raise SystemExit("--eval-only needs the step to evaluate: add train.step=T")
        summary = runner.evaluate_checkpoint(int(cfg.train.step), cfg.train.eval_checkpoint or None)
        print_csv_format({"sem_seg": detectron2_results(summary)})
        if cfg.train.get("eval_output") and comm.is_main_process():
            atomic_write_json(cfg.train.eval_output, summary)
        return summary
    try:
        default_setup(cfg, args)
        setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="eir")
        write_to_log_files(startup)
        return runner.run()
    finally:
        runner.release_output_dir()


def invoke_main() -> None:
    args = default_argument_parser().parse_args()
    if not args.config_file:
        args.config_file = str(DEFAULT_CONFIG)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    sys.exit(invoke_main())
