#!/usr/bin/env bash
# The speed checks of issue #13 on a lent GPU, in one call, most important first (each step writes
# its results as it ends, so a call cut short still returns the steps that finished):
#   1. D3DP's teacher step (16 x 243, spatial-temporal, width 512, depth 8): float32, bfloat16, and
#      bfloat16 with cuDNN's flash attention over frames (cudnn_temporal; traced: its kernels by
#      kind), also with XLA's Triton matmuls off (cuBLAS for every matmul);
#   2. the teacher's own MPJPE trained in float32 and in bfloat16 + cuDNN attention (the CPU
#      teacher config, 3000 steps, cmu17 006), so a speed-up is not bought with accuracy;
#   3. every other benchmark case in float32, then the students in bfloat16.
#
#   bash experiments/gpu_check.sh [outdir]   (default runs/gpu_check)
#
# On a lent device, where at most 8 files come back from $OUT: everything goes to outdir and, after
# every step, into one archive $OUT/gpu_check.tgz (so a call cut short by its time limit still
# returns what finished). On the H200 each benchmark process takes over 80 s (startup, matmul peak,
# compiles of D3DP's 34M-parameter step and its sampler): give the call 540 s or more.
#
# The lent machines have jax with CUDA but no ml_collections and no network: carry the wheel in
# .whl/ (pip download --no-deps --python-version 3.12 --only-binary=:all: ml_collections==1.1.0 -d .whl).
# QUICK=1 runs the same steps at smoke-test sizes (to try the script on a CPU).
set -uo pipefail
out="${1:-runs/gpu_check}"
mkdir -p "$out"
source "$(dirname "$0")/device_env.sh"  # ml_collections from .whl/, PYTHONPATH, compile cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1 || true
python -c 'import jax; print(jax.__version__, jax.devices())' >> "$out/gpu.txt" 2>&1
bench=(python -m experiments.benchmark --large)
teacher=(python -m experiments.train_teacher "--config.eval.grid=((5, 5),)")
if [[ "${QUICK:-0}" == 1 ]]; then
  bench+=(--quick)
  teacher+=(--config.train.num_steps=20 --config.train.log_every=10)
fi
stamp() {
  echo "[$(date +%T)] $*" | tee -a "$out/log.txt"
  if [[ -n "${OUT:-}" ]]; then tar czf "$OUT/gpu_check.tgz" -C "$(dirname "$out")" "$(basename "$out")"; fi
}

stamp "1. D3DP-sized teacher step"
for v in float32:fused:: bfloat16:fused:: bfloat16:cudnn_temporal:--trace: bfloat16:cudnn_temporal::--xla_gpu_enable_triton_gemm=false; do
  IFS=: read -r dtype att extra xla <<< "$v"
  name="d3dp_${dtype}_${att}${xla:+_notriton}"
  XLA_FLAGS="${XLA_FLAGS:-} $xla" "${bench[@]}" --only=teacher_d3dp --dtype="$dtype" --attention="$att" $extra \
    --output="$out/$name.json" > "$out/$name.txt" 2>&1
  stamp "   $name: rc $? $(grep -E '^teacher_d3dp' "$out/$name.txt" | tr -s ' ')"
done

stamp "2. the teacher's MPJPE, float32 against bfloat16 + cuDNN attention"
for v in float32:fused bfloat16:cudnn_temporal; do
  dtype=${v%%:*} att=${v##*:} work="${TMPDIR:-/tmp}/gpu_check_$$/teacher_${v/:/_}"  # fresh: never resumed
  "${teacher[@]}" --workdir="$work" --config.model.dtype="$dtype" --config.model.attention="$att" \
    > "$out/teacher_${dtype}_${att}.txt" 2>&1
  rc=$?
  stamp "   $dtype $att: rc $rc $(grep -E '^teacher H=5 K=5' "$out/teacher_${dtype}_${att}.txt")"
  if [[ $rc != 0 && $att == cudnn_temporal ]]; then  # cuDNN refused: the bf16 teacher with XLA's attention.
    att=fused work="${TMPDIR:-/tmp}/gpu_check_$$/teacher_bf16_fused"
    "${teacher[@]}" --workdir="$work" --config.model.dtype="$dtype" --config.model.attention=fused \
      > "$out/teacher_${dtype}_${att}.txt" 2>&1
    stamp "   $dtype $att: rc $? $(grep -E '^teacher H=5 K=5' "$out/teacher_${dtype}_${att}.txt")"
  fi
  cp "$work/teacher_eval.json" "$out/teacher_eval_${dtype}_${att}.json" 2>/dev/null
  cp "$work/metrics.jsonl" "$out/teacher_metrics_${dtype}_${att}.jsonl" 2>/dev/null
done

stamp "3. every other case, float32; the students in bfloat16"
"${bench[@]}" --only=default,c3dpo_b1024,paper,teacher_frame,teacher_st64,evaluate \
  --output="$out/bench_f32.json" > "$out/bench_f32.txt" 2>&1
stamp "   float32: rc $?"
"${bench[@]}" --dtype=bfloat16 --only=default,c3dpo_b1024,paper,teacher_frame \
  --output="$out/bench_bf16.json" > "$out/bench_bf16.txt" 2>&1
stamp "   bfloat16: rc $?"
stamp done
