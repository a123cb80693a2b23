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
import sys

import pytest

HAS_DETECTRON2 = importlib.util.find_spec("detectron2") is not None

DETECTRON2_SKIP_REASON = (
    "Detectron2 is not installed: `bash tools/test.sh` installs torch, torchvision and Detectron2 "
    "and runs every test (README.md, Tests)"
)

requires_detectron2 = pytest.mark.skipif(not HAS_DETECTRON2, reason=DETECTRON2_SKIP_REASON)


def load_script(relative_path: str):
    """A script of the repository (``tools/...``, ``benchmarks/...``) imported as a module."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / relative_path
    loaded = sys.modules.get(path.stem)
    if loaded is not None and getattr(loaded, "__file__", None) == str(path):
        return loaded  # one module per script, whichever test file loads it first
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module

CUDA_SKIP_REASON = (
    "CUDA is not available (torch.cuda.is_available() is False): the CUDA-marked tests run on a GPU "
    "machine, `python -m pytest -m cuda` or benchmarks/gpu_check.sh (README.md, Benchmarks)"
)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


#: ``@pytest.mark.parametrize("device", DEVICES)``: the same test body on the CPU and, marked
#: ``cuda`` and skipped with :data:`CUDA_SKIP_REASON` where there is no GPU, on CUDA.
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not _cuda_available(), reason=CUDA_SKIP_REASON)]
    ),
]

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


#: Overrides of a tiny two-step synthetic run (task 8-2, 48-pixel images), for end-to-end tests
#: of tools/train_net.py that start, kill and rerun it; a step takes a second or two on a CPU.
TINY_RUN = [
    "task.name=8-2",
    "dataloader.train.total_batch_size=4",
    "dataloader.train.num_workers=0",
    "dataloader.test.num_workers=0",
    "dataloader.train.augmentations.crop_size=48",
    "method.memory=6",
    "method.paste.cell_size=24",
    "method.prepass.short_side=48",
    "schedule.max_iter=60",
    "train.checkpointer.period=10",
    "train.device=cpu",
    "train.log_period=5",
]


def tiny_datasets(root):
    """:func:`synthetic_datasets` sized for :data:`TINY_RUN` (48 training, 8 validation images)."""
    return synthetic_datasets(root, 48, 8, size=48)


def train_net_command(output_dir, *overrides):
    """The tools/train_net.py command of the :data:`TINY_RUN` into ``output_dir``."""
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    return [
        sys.executable, str(root / "tools/train_net.py"), *TINY_RUN, f"train.output_dir={output_dir}", *overrides,
    ]


def tiny_cfg(output_dir, *overrides):
    """The LazyConfig of the :data:`TINY_RUN` into ``output_dir`` (for in-process runs)."""
    from pathlib import Path

    from detectron2.config import LazyConfig

    root = Path(__file__).resolve().parents[1]
    cfg = LazyConfig.load(str(root / "projects/EIR/configs/synthetic/4-2_overlap.py"))
    return LazyConfig.apply_overrides(cfg, [*TINY_RUN, f"train.output_dir={output_dir}", *overrides])
