#!/usr/bin/env bash
# Installs what EIR needs into the active Python environment, skipping what is already there:
#   1. torch and torchvision (the tested pair, torch 2.14.1 + torchvision 0.29.1, unless EIR_TORCH names others);
#   2. Detectron2, which is not on PyPI, from EIR_DETECTRON2:
#        unset            the upstream repository (git+https://github.com/facebookresearch/detectron2.git),
#                         built against the installed torch (--no-build-isolation: its build imports torch)
#        a .whl file      that wheel (it must have been built for the installed torch)
#        a folder         its detectron2-*.whl if it holds one, else a Detectron2 source checkout to build
#        anything else    a pip requirement or URL, built with --no-build-isolation
#   3. this project, editable, with its test tools (pip install -e ".[dev]").
# PYTHON names the interpreter (default: python3). Run by tools/run.sh and tools/test.sh.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }
say() { printf '[setup_env] %s\n' "$*" >&2; }

"$PY" -c 'import sys; assert sys.version_info >= (3, 9), sys.version' \
    || { say "EIR needs Python 3.9 or newer ($PY is $("$PY" -V 2>&1))"; exit 1; }

if ! "$PY" -c 'import torch, torchvision' 2>/dev/null; then
    # shellcheck disable=SC2086  # EIR_TORCH is a list of requirements
    say "installing ${EIR_TORCH:=torch==2.14.1 torchvision==0.29.1}"
    pip_install $EIR_TORCH
fi

if ! "$PY" -c 'import detectron2.engine' 2>/dev/null; then
    src=${EIR_DETECTRON2:-git+https://github.com/facebookresearch/detectron2.git}
    if [[ -d $src ]]; then
        wheels=("$src"/detectron2-*.whl)
        if [[ -e ${wheels[0]} ]]; then
            (( ${#wheels[@]} == 1 )) || { say "$src holds several Detectron2 wheels: name one in EIR_DETECTRON2"; exit 1; }
            src=${wheels[0]}
        elif [[ ! -f $src/setup.py ]]; then
            say "EIR_DETECTRON2=$src is neither a folder with a detectron2-*.whl nor a Detectron2 source checkout"
            exit 1
        fi
    fi
    say "installing Detectron2 from $src"
    if [[ $src == *.whl ]]; then
        pip_install "$src"
    else
        pip_install --no-build-isolation "$src" || {
            say "building Detectron2 from $src failed; it needs a C++ compiler and the network for a URL."
            say "Set EIR_DETECTRON2 to a Detectron2 wheel or source folder instead."
            exit 1
        }
    fi
    "$PY" -c 'import detectron2.engine' || {
        say "Detectron2 from $src does not import with torch $("$PY" -c 'import torch; print(torch.__version__)');"
        say "a Detectron2 wheel works only with the torch it was built for."
        exit 1
    }
fi

if ! "$PY" - "$ROOT" <<'PY' 2>/dev/null
import importlib.util, pathlib, sys
import eir
assert pathlib.Path(eir.__file__).resolve().parent == pathlib.Path(sys.argv[1]) / "eir"
assert all(importlib.util.find_spec(m) for m in ("pytest", "ruff", "cv2", "fvcore", "matplotlib", "tqdm", "PIL"))
PY
then
    say "installing this project (editable) from $ROOT"
    pip_install -e "$ROOT[dev]"
fi
