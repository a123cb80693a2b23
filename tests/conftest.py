"""Shared test helpers, and the rule that CI runs every test of the Detectron2 layer.

Where Detectron2 is missing, its tests skip with :data:`DETECTRON2_SKIP_REASON`. With
``EIR_REQUIRE_DETECTRON2=1`` (set by ``tools/test.sh``, and so in CI) a missing or broken
Detectron2 or torchvision stops the session instead: half the suite silently skipped
would pass a broken install.
"""
import contextlib
import importlib
import importlib.util
import os

import pytest

HAS_DETECTRON2 = importlib.util.find_spec("detectron2") is not None

DETECTRON2_SKIP_REASON = (
    "Detectron2 is not installed: `bash tools/test.sh` installs torch, torchvision and Detectron2 "
    "and runs every test (README.md, Tests)"
)

requires_detectron2 = pytest.mark.skipif(not HAS_DETECTRON2, reason=DETECTRON2_SKIP_REASON)

REQUIRED_FOR_THE_DETECTRON2_LAYER = ("torchvision", "detectron2", "detectron2.engine", "detectron2.config")


def pytest_configure(config):
    if os.environ.get("EIR_REQUIRE_DETECTRON2", "") not in ("", "0"):
        for name in REQUIRED_FOR_THE_DETECTRON2_LAYER:
            try:
                importlib.import_module(name)
            except Exception as e:  # a broken build fails as well as a missing one
                raise pytest.UsageError(
                    f"EIR_REQUIRE_DETECTRON2 is set but `import {name}` fails ({type(e).__name__}: {e}); "
                    "the Detectron2 layer's tests would be skipped. Install it (README.md, Install) "
                    "or unset EIR_REQUIRE_DETECTRON2 to run the core tests alone."
                ) from e


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
