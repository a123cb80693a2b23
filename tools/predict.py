#!/usr/bin/env python
"""Apply a step's model to images or folders: a class-id label PNG and an overlay per image.

    python tools/predict.py --config-file CFG --step 3 --input a.jpg folder/ --output preds/
    python tools/predict.py --config-file CFG --step 3 --checkpoint model.pth --input ... KEY=VALUE ...

The model is the step's ``model_final.pth`` in ``train.output_dir`` (or ``--checkpoint``) of the
run the config describes; ``KEY=VALUE`` overrides as in ``tools/train_net.py``. Writes, per
image, ``<stem>.png`` (class ids, with the dataset's colours as palette) and
``<stem>_overlay.jpg`` into ``--output`` (inputs of one stem: ``<name>.png``, e.g.
``im.tif.png``), and never overwrites a file it did not write: a folder holding the inputs, or
files of those names from elsewhere, is refused before the model is built. Runs on the config's ``train.device`` (``auto``:
CUDA when there is a GPU).
"""
import argparse
import sys
from pathlib import Path

import eir.require_detectron2  # noqa: F401  (first: says how to install a missing Detectron2)

# isort: split
from eir.engine.config_checks import load_config
from eir.engine.predictor import PredictionFolder, collect_images, predict_labels
from eir.engine.runner import ContinualRunner

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "projects/EIR/configs/synthetic/4-2_overlap.py"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config-file", default=str(DEFAULT_CONFIG), help="the run's LazyConfig")
    ap.add_argument("--step", type=int, required=True, help="the step whose model predicts")
    ap.add_argument("--checkpoint", default=None, help="weights (default: the step's model_final.pth)")
    ap.add_argument("--input", nargs="+", required=True, help="image files or folders of images")
    ap.add_argument("--output", required=True, type=Path, help="folder for the label PNGs and overlays")
    ap.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    ap.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="KEY=VALUE config overrides")
    return ap.parse_args(argv)


def main(argv=None) -> list[Path]:
    args = parse_args(argv)
    files = collect_images(args.input)  # a missing input stops here, before the model is built
    folder = PredictionFolder(args.output, files)  # so does an output folder that is not safe to write
    cfg = load_config(args.config_file, args.opts)
    runner = ContinualRunner(cfg)  # checks the config and builds the task; writes nothing
    model = runner.trained_model(runner.task.check_step(args.step), args.checkpoint)
    short_side = cfg.dataloader.test.augmentations.get("short_side")
    predictions = predict_labels(model, files, short_side=short_side, batch_size=args.batch_size)
    written = folder.write(predictions, runner.task)
    print(f"{len(written)} predictions in {args.output}")
    return written


if __name__ == "__main__":
    main()
    sys.exit(0)
