#!/usr/bin/env bash
# MEML training throughput on a CUDA device against its bare-loop ceiling (bench/README.md,
# "On a GPU"): the same bench as on CPU, at N_B = 4, 64 and 256, in memory and lazy (HDF5),
# and at a GPU-sized batch. Usage: bench/train_throughput_gpu.sh [device] [steps] [rounds]
set -euo pipefail
dev=${1:-cuda}
steps=${2:-60}
rounds=${3:-3}
cd "$(dirname "$0")/.."
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
run() { echo "## $*"; python3 bench/train_throughput.py --device "$dev" --threads 4 --rounds "$rounds" "$@"; }
run --steps "$steps" --envs 4 --samples 1000 --batched on
run --steps "$steps" --envs 64 --envs-per-step 16 --samples 100 --batched on
run --steps "$steps" --envs 256 --envs-per-step 16 --samples 100 --batched on
run --steps "$steps" --envs 256 --envs-per-step 16 --samples 100 --batched on --lazy
run --steps "$steps" --envs 64 --envs-per-step 16 --samples 100 --batched off
# A batch that fills a GPU: 16 environments x 512 a step.
run --steps "$steps" --envs 256 --envs-per-step 16 --samples 600 --batch-size 512 --batched on
run --steps "$steps" --envs 256 --envs-per-step 16 --samples 600 --batch-size 512 --batched on --lazy
# Lazy reads in reader processes (training.data.prefetch), then the reader alone.
run --steps "$steps" --envs 256 --envs-per-step 16 --samples 600 --batch-size 512 --batched on --lazy --read-workers 8
echo "## reader alone"; python3 bench/lazy_read.py --envs 64 --samples 1024 --steps 40 --rounds "$rounds" --workers 0,4,8,12
