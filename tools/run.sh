#!/usr/bin/env bash
# The main job: installs what is missing (tools/setup_env.sh), then runs tools/train_net.py with
# the arguments given; with none, the synthetic continual run (task 4-2) of README.md.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/tools/setup_env.sh"
exec "${PYTHON:-python3}" "$ROOT/tools/train_net.py" "$@"
