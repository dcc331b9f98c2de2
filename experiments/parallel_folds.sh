#!/usr/bin/env bash
# Runs the cmu17 cross-subject ablation with one process per held-out subject, then collects the
# folds into one results.json / results.md (the same files a single process writes).
#
#   bash experiments/parallel_folds.sh 002,003,005,006 --workdir=runs/loso --benchmarks=cmu17 --nodev_split
#
# The first argument lists the folds; the rest go to every `python -m experiments.ablation` call
# (which gets --cross_subject and --folds=<subject> here). Each fold logs to <workdir>/fold_<s>.log.
# Worth it where there are cores or a GPU to spare (on a GPU the small models leave it mostly
# idle, so four processes share it well); on 2 CPU cores run the single-process command instead.
# ABLATION overrides the command (default: python -m experiments.ablation).
set -euo pipefail
if [[ $# -lt 2 || "$1" == -* ]]; then
  echo "usage: $0 FOLDS(comma-separated subjects) --workdir=DIR [ablation flags...]" >&2
  exit 2
fi
folds="$1"
shift
workdir=""
for arg in "$@"; do
  case "$arg" in --workdir=*) workdir="${arg#--workdir=}" ;; esac
done
if [[ -z "$workdir" ]]; then
  echo "$0: pass --workdir=DIR (every fold process must share it)" >&2
  exit 2
fi
mkdir -p "$workdir"
read -r -a cmd <<<"${ABLATION:-python -m experiments.ablation}"
# Several processes on one GPU: let each take memory as it needs it, not 75% up front.
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"
# On a lent device ($OUT set): every 30 s and at the end, the workdir's results (no checkpoints or
# predictions) go into $OUT/<workdir's name>.tgz, so a call cut short returns the folds that finished.
# tar exits 1 when a file changed while it read it (training writes on): that archive is still kept.
archive() {
  [[ -n "${OUT:-}" ]] || return 0
  local name rc=0
  name="$(basename "$workdir")"
  tar czf "$OUT/$name.tgz.tmp" --warning=no-file-changed --warning=no-file-removed \
    --exclude='checkpoints*' --exclude='*.npz' --exclude='*.npy' -C "$(dirname "$workdir")" "$name" 2>/dev/null || rc=$?
  if ((rc <= 1)); then mv "$OUT/$name.tgz.tmp" "$OUT/$name.tgz"; else rm -f "$OUT/$name.tgz.tmp"; fi
  return 0
}
if [[ -n "${OUT:-}" ]]; then
  (while sleep 30; do archive; done) >/dev/null 2>&1 &
  archiver=$!
  trap 'kill $archiver 2>/dev/null; wait $archiver 2>/dev/null || true; archive' EXIT
fi
pids=()
IFS=',' read -r -a subjects <<<"$folds"
for s in "${subjects[@]}"; do
  "${cmd[@]}" "$@" --cross_subject --folds="$s" >"$workdir/fold_$s.log" 2>&1 &
  pids+=($!)
  echo "fold $s: pid $! (log $workdir/fold_$s.log)"
done
status=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    echo "fold ${subjects[$i]} failed; the end of its log:" >&2
    tail -n 20 "$workdir/fold_${subjects[$i]}.log" >&2
    status=1
  fi
done
# Collect every fold that finished (a failed one is left out of the table and the means).
"${cmd[@]}" "$@" --cross_subject --folds= || status=1
exit $status
