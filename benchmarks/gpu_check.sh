#!/usr/bin/env bash
# The GPU checks in one run (under 5 minutes on one modern GPU), for a machine with drray installed:
#   bash benchmarks/gpu_check.sh [OUTDIR]          (default: gpu_check_out/)
# 1. the CUDA-marked tests (tests/test_cuda.py: CAM engine in bf16, the predictor, explain actors on a GPU);
# 2. CAM / forward-only throughput in bf16 at each target stride (benchmarks/cam_throughput.py);
# 3. explain images/s on one GPU with decoding on the node's CPUs, predict-only beside it, and which
#    stage bounds it (benchmarks/explain_pipeline.py prints both; the bound is the slower of
#    decode-limited predict-only and the GPU-limited explain).
# Record what it prints, with the machine, in benchmarks/README.md. CI never runs this: every GPU path
# has a CPU twin in the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-gpu_check_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible to torch')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
CPUS="$(nproc)"

echo "== 1. CUDA tests"
"$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py 2>&1 | tee "$OUT/cuda_tests.txt"

echo "== 2. CAM vs forward-only, bf16, 384 px, batch 32, strides 8/16/32"
timeout 150 "$PY" benchmarks/cam_throughput.py --device cuda --dtype bf16 --batch 32 --rounds 5 \
    --no-library 2>&1 | tee "$OUT/cam_throughput_bf16.txt"

echo "== 3. explain on one GPU, decoding on $CPUS CPUs"
timeout 150 "$PY" benchmarks/explain_pipeline.py --n 200 --cpus "$CPUS" --actors 1 --actor-cpus 2 \
    --decode-cpus 1 --batch-size 64 --size 384 --rounds 1 --gpus-per-actor 1 --json "$OUT/explain_gpu.json" \
    2>&1 | tee "$OUT/explain_gpu.txt"
echo "figures in $OUT/"
