"""Shared test helpers."""
import importlib.util

import pytest

HAS_DETECTRON2 = importlib.util.find_spec("detectron2") is not None

requires_detectron2 = pytest.mark.skipif(
    not HAS_DETECTRON2, reason="Detectron2 is not installed (the Detectron2 layer's tests need it)"
)
