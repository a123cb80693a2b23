"""Shared test helpers."""
import contextlib
import importlib.util
import os

import pytest

HAS_DETECTRON2 = importlib.util.find_spec("detectron2") is not None

requires_detectron2 = pytest.mark.skipif(
    not HAS_DETECTRON2, reason="Detectron2 is not installed (the Detectron2 layer's tests need it)"
)


@contextlib.contextmanager
def synthetic_datasets(root, num_train, num_val, size=128):
    """A generated synthetic dataset under ``root/eir_synthetic``, with DETECTRON2_DATASETS
    pointing at ``root`` for the duration (restored afterwards)."""
    from eir.data.synthetic import generate

    generate(root / "eir_synthetic", num_train=num_train, num_val=num_val, size=size, seed=0, verbose=False)
    old = os.environ.get("DETECTRON2_DATASETS")
    os.environ["DETECTRON2_DATASETS"] = str(root)
    try:
        yield root
    finally:
        if old is None:
            os.environ.pop("DETECTRON2_DATASETS", None)
        else:
            os.environ["DETECTRON2_DATASETS"] = old
