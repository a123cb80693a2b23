#!/usr/bin/env python
"""Draw a run's figures: the forgetting figure and the per-class map.

    python tools/visualize_run.py output/eir/synthetic_4-2_overlap
    python tools/visualize_run.py OUTPUT_DIR --num-images 8 --seed 3 train.device=cpu
    python tools/visualize_run.py OUTPUT_DIR --config-file projects/EIR/configs/voc/15-1_overlap.py

Writes ``OUTPUT_DIR/predictions.png`` (every finished step's model on the same validation
images) and ``OUTPUT_DIR/per_class.png`` (every class's IoU after every finished step), the
two figures a run writes when it ends. The run's configuration is read from
``OUTPUT_DIR/config.yaml`` (written by tools/train_net.py) unless ``--config-file`` is given;
``key=value`` overrides apply on top; ``train.output_dir`` is always OUTPUT_DIR. The datasets
are found as in training (``DETECTRON2_DATASETS``).
"""
import argparse
from pathlib import Path

from detectron2.utils.logger import setup_logger

from eir.engine.config_checks import load_config
from eir.engine.runner import ContinualRunner
from eir.evaluation.prediction_figure import NUM_IMAGES, write_prediction_figure
from eir.evaluation.report import write_per_class


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("output_dir", help="a run folder of tools/train_net.py (step_*/ inside)")
    ap.add_argument("--config-file", default=None, help="the run's config (default: OUTPUT_DIR/config.yaml)")
    ap.add_argument("--num-images", type=int, default=NUM_IMAGES, help="rows of the forgetting figure")
    ap.add_argument("--seed", type=int, default=None, help="seed of the image choice (default: train.seed)")
    ap.add_argument("opts", nargs="*", help="LazyConfig key=value overrides")
    return ap.parse_intermixed_args(argv)


def main(argv=None) -> list[Path]:
    args = parse_args(argv)
    output_dir = Path(args.output_dir).expanduser().resolve()
    config = Path(args.config_file) if args.config_file else output_dir / "config.yaml"
    if not config.is_file():
        raise SystemExit(
            f"no config at {config}: give the run's config with --config-file "
            "(tools/train_net.py writes OUTPUT_DIR/config.yaml)"
        )
    if args.num_images < 1:
        raise SystemExit(f"--num-images must be >= 1, got {args.num_images}")
    cfg = load_config(config, [*args.opts, f"train.output_dir={output_dir}"])
    runner = ContinualRunner(cfg)
    summaries = runner.folder.finished_summaries()
    if not summaries:
        raise SystemExit(f"{output_dir} has no finished step (no step_*/DONE with metrics.json)")
    seed = cfg.train.seed if args.seed is None else args.seed
    written = [
        write_prediction_figure(runner, args.num_images, seed),
        write_per_class(output_dir, runner.task, summaries),
    ]
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    setup_logger(name="eir")  # here, not in main(): a caller's logging stays its own
    main()
