"""The core layer must import with detectron2 and torchvision unavailable (README.md, Layout: core modules import neither)."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CORE_MODULES = [
    "eir.constants",
    "eir.seeding",
    "eir.tasks",
    "eir.data.bank",
    "eir.data.bank_coverage",
    "eir.data.bank_rule",
    "eir.data.catalog_checks",
    "eir.data.image_checks",
    "eir.data.io",
    "eir.data.paste",
    "eir.data.prepass",
    "eir.data.synthetic",
    "eir.modeling.losses",
    "eir.modeling.criterion",
    "eir.engine.step_plan",
    "eir.engine.config_schema",
    "eir.engine.run_files",
    "eir.engine.run_lock",
    "eir.engine.run_records",
    "eir.engine.step_done",
    "eir.engine.training_log",
    "eir.engine.run_folder",
    "eir.engine.startup_log",
    "eir.methods.base",
    "eir.methods.eir",
    "eir.methods.mib",
    "eir.evaluation.metrics",
    "eir.evaluation.report",
]

# A meta-path finder that refuses detectron2 and torchvision, installed before anything is imported.
_BLOCKER = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('detectron2', 'torchvision'):
            raise ImportError('blocked for the layering test: ' + name)
        return None
sys.meta_path.insert(0, _Block())
import importlib
importlib.import_module(sys.argv[1])
leaked = sorted(m for m in sys.modules if m.split('.')[0] in ('detectron2', 'torchvision'))
assert not leaked, leaked
"""


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_imports_without_detectron2(module):
    assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), f"core module {module} is missing"
    proc = subprocess.run(
        [sys.executable, "-c", _BLOCKER, module], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


def test_blocker_really_blocks():
    """The check above would be vacuous if the finder let the blocked packages through."""
    proc = subprocess.run(
        [sys.executable, "-c", _BLOCKER, "detectron2"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode != 0
    assert "blocked for the layering test" in proc.stderr


_MISSING_DETECTRON2 = """
import importlib.abc, sys
class _Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'detectron2':
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _Missing())
import importlib
importlib.import_module(sys.argv[1])
"""


@pytest.mark.parametrize("module", ["eir.engine.runner", "eir.data.mapper", "eir.modeling.head"])
def test_detectron2_layer_without_detectron2_says_how_to_install_it(module):
    proc = subprocess.run(
        [sys.executable, "-c", _MISSING_DETECTRON2, module], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ModuleNotFoundError: No module named 'detectron2'."), proc.stderr
    assert "tools/test.sh" in last and "--no-build-isolation" in last, last


def test_every_detectron2_layer_module_checks_first():
    """Each module that imports detectron2 imports the install hint before it."""
    for path in sorted((ROOT / "eir").rglob("*.py")):
        text = path.read_text()
        first_d2 = min(
            (i for i in (text.find("\nfrom detectron2"), text.find("\nimport detectron2")) if i >= 0), default=-1
        )
        if first_d2 < 0 or path.name == "require_detectron2.py":
            continue
        hint = text.find("\nimport eir.require_detectron2")
        assert 0 <= hint < first_d2, f"{path.relative_to(ROOT)} imports detectron2 before eir.require_detectron2"
