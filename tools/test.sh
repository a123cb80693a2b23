#!/usr/bin/env bash
# The tests: installs what is missing (tools/setup_env.sh), runs ruff, then every test, the
# Detectron2 layer's included (EIR_REQUIRE_DETECTRON2=1: a missing Detectron2 is an error here,
# never a skip). Arguments go to pytest, e.g. `-m "not slow"` for the fast part alone.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
bash "$ROOT/tools/setup_env.sh"
cd "$ROOT"
"$PY" -m ruff check eir tools tests benchmarks configs projects
EIR_REQUIRE_DETECTRON2=1 "$PY" -m pytest -q "$@"
