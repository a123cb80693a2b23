"""Imported first by every Detectron2-layer module, so that a missing Detectron2 is reported
with how to install it instead of a bare ``ModuleNotFoundError`` deep in a traceback."""

INSTALL_HINT = (
    "EIR's Detectron2 layer (datasets, mapper, model, trainer, runner, evaluator, tools/train_net.py) "
    "needs Detectron2, which is not on PyPI. `bash tools/run.sh` and `bash tools/test.sh` install it "
    "together with torch and torchvision (README.md, Install); or install it yourself with "
    "`python -m pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'` "
    "(or a Detectron2 wheel or source folder instead of the URL)."
)

try:
    import detectron2  # noqa: F401
except ModuleNotFoundError as e:
    if e.name != "detectron2":
        raise
    raise ModuleNotFoundError(f"No module named 'detectron2'. {INSTALL_HINT}", name="detectron2") from None
