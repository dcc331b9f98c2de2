#!/usr/bin/env bash
# A sweep of cross-subject cmu17 ablations on one machine with cores and a GPU to spare: one
# `python -m experiments.ablation --cross_subject --nodev_split` process per variant, JOBS at a
# time, then one table of every variant (experiments/sweep_table.py).
#
#   bash experiments/gpu_sweep.sh experiments/sweeps/lifter_gpu.txt [outdir]   (default runs/sweep)
#
# The spec file has one variant per line, `name | a.b=value c.d=value ...` (each becomes an
# --override of every student row; `#` starts a comment). ROWS (default lifter) picks the rows,
# JOBS (default 4) the processes at a time, QUICK=1 shrinks every run to a smoke test (2 folds,
# 4 steps, to try the script on a CPU). Variants run in the file's order, so put the important
# ones first: a call cut short still has them. Each variant logs to <outdir>/<name>.log.
#
# On a lent device ($OUT set): after each variant ends, the results (no checkpoints or
# predictions) go into one archive, $OUT/sweep.tgz, so a call cut short returns what finished.
# The lent machines lack ml_collections: carry its wheel in .whl/ (see experiments/gpu_check.sh).
set -uo pipefail
spec="${1:?usage: $0 SPEC_FILE [OUTDIR]}"
out="${2:-runs/sweep}"
mkdir -p "$out"
source "$(dirname "$0")/device_env.sh"  # ml_collections from .whl/, PYTHONPATH, compile cache
# Several processes on one GPU: each takes memory as it needs it, not 75% up front.
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"
jobs_max="${JOBS:-4}"
rows="${ROWS:-lifter}"
extra=(--override=train.plot=False)
if [[ "${QUICK:-0}" == 1 ]]; then
  extra+=(--override=train.num_steps=4 --override=train.log_every=2 --subjects=002,003)
fi
archive() {
  if [[ -n "${OUT:-}" ]]; then
    tar czf "$OUT/sweep.tgz.tmp" --exclude=checkpoints --exclude='*.npz' -C "$(dirname "$out")" "$(basename "$out")" &&
      mv "$OUT/sweep.tgz.tmp" "$OUT/sweep.tgz"
  fi
}
run_variant() {
  local name="$1"
  shift
  local args=()
  for o in "$@"; do args+=("--override=$o"); done
  local t0=$SECONDS
  python -m experiments.ablation --workdir="$out/$name" --benchmarks=cmu17 --cross_subject --nodev_split \
    --rows="$rows" "${args[@]}" "${extra[@]}" >"$out/$name.log" 2>&1
  local rc=$?
  echo "[$(date +%T)] $name: rc $rc, $((SECONDS - t0)) s" | tee -a "$out/sweep.txt"
  archive
}
if [[ -n "${OUT:-}" ]]; then  # also every minute, for a call cut short mid-variant
  (i=0; while sleep 5; do ((++i % 12 == 0)) && archive; done) >/dev/null 2>&1 &
  archiver=$!
  trap 'kill $archiver 2>/dev/null' EXIT
fi
echo "[$(date +%T)] sweep $spec: ${JOBS:-4} at a time, rows $rows" | tee "$out/sweep.txt"
python -c 'import jax; print(jax.__version__, jax.devices())' >>"$out/sweep.txt" 2>&1
names=()
pids=()
while IFS= read -r line; do
  line="${line%%#*}"
  [[ -z "${line//[[:space:]]/}" ]] && continue
  name="$(echo "${line%%|*}" | xargs)"
  read -r -a overrides <<<"${line#*|}"
  names+=("$name")
  while true; do  # at most JOBS variants at a time (the archiver is not one)
    running=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && running=$((running + 1)); done
    ((running < jobs_max)) && break
    sleep 2
  done
  run_variant "$name" "${overrides[@]}" &
  pids+=($!)
done <"$spec"
wait "${pids[@]}"
python -m experiments.sweep_table --runs="$(printf "$out/%s," "${names[@]}" | sed 's/,$//')" --row="${rows##*,}" \
  >"$out/table.md" 2>>"$out/sweep.txt"
cat "$out/table.md"
archive
