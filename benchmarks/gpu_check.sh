#!/usr/bin/env bash
# The prepared GPU check: on a machine with a CUDA GPU, from the project's root,
#
#   bash benchmarks/gpu_check.sh [--results DIR] [--work DIR] [--reference SUMMARY_JSON] [--budget S]
#
# runs, in under 10 minutes and in this order, (a) the CUDA-marked tests (pytest -m cuda),
# (b) bench_train.py at ResNet-101 512 with AMP (plain vs EIR step, images/s, peak memory, share
# of the float16 peak), (c) the continual evaluator against Detectron2's SemSegEvaluator on the
# GPU, (d) the default synthetic run on CUDA with its summary beside the CPU reference, and
# writes benchmarks/results/gpu_check.md: the machine, the versions and every figure. A part that
# fails is recorded and the next one runs; the exit status is 1 when any part failed. With $OUT
# set, the results file and the logs are copied there too.
#
#   EIR_GPU_CHECK_CPU=1 bash benchmarks/gpu_check.sh --results /tmp/x
#
# runs every part at tiny size on the CPU into gpu_check_cpu.md (a test of this script; the
# tests run it into a temporary folder). benchmarks/gpu_check.py has the details.
#
# It runs the Python on PATH (python3) as it is: nothing is installed. On a GPU machine without
# Detectron2, source the device kit first (README.md, Benchmarks):
#   . .devkit/setup.sh && bash benchmarks/gpu_check.sh
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
export PYTHONUNBUFFERED=1
exec python3 benchmarks/gpu_check.py "$@"
