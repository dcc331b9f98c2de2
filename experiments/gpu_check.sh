#!/usr/bin/env bash
# The speed checks of issue #13 on a lent GPU, in one call: the benchmark (default, C3DPO-sized,
# the paper's student, the teachers incl. D3DP's size) in float32 and in bfloat16 mixed precision.
#
#   bash experiments/gpu_check.sh [outdir]   (default $OUT, else runs/gpu_check)
#
# The lent machines have jax with CUDA but no ml_collections and no network: carry the wheel in
# .whl/ (pip download --no-deps --python-version 3.12 --only-binary=:all: ml_collections==1.1.0 -d .whl).
set -euo pipefail
out="${1:-${OUT:-runs/gpu_check}}"
mkdir -p "$out"
if ! python -c 'import ml_collections' 2>/dev/null; then
  pip install -q --no-index --target=.deps .whl/ml_collections-*.whl
  export PYTHONPATH="$PWD/.deps:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total --format=csv > "$out/gpu.txt" 2>&1 || true
python -m experiments.benchmark --output="$out/bench_f32.json" 2>&1 | tee "$out/bench_f32.txt"
python -m experiments.benchmark --dtype=bfloat16 --output="$out/bench_bf16.json" 2>&1 | tee "$out/bench_bf16.txt"
