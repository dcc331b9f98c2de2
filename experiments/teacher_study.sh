#!/usr/bin/env bash
# The teacher's cross-subject study (issue #9, "a teacher that teaches"): every stage is a
# leave-one-subject-out cmu17 ablation run with one process per fold (parallel_folds.sh), each in
# its own workdir under RUNS, so each writes its own results.md.
#
#   bash experiments/teacher_study.sh runs/teacher_study [002,003,005,006] [first_stage-last_stage]
#
#   1 sup        lifter, windows, smooth, tcn and teacher rows, supervised teacher (the paper's)
#   2 self       teacher row with the self-mode teacher (no 3D anywhere)
#   3 sup_conf   1 with the teacher term weighed by the hypotheses' agreement (confidence_scale=1)
#   4 self_conf  2 with that weighting
#   5 sup_long   1's teacher row trained 2000 stacked steps instead of 500
#   6 self_long  2's teacher row trained 2000 stacked steps
#
# Stages 2-6 start from copies of stage 1's lifter and tcn rows (and of the teachers they reuse),
# which are only re-scored. Hours on 2 CPU cores; minutes on a GPU.
set -uo pipefail
R="${1:-runs/teacher_study}"
F="${2:-002,003,005,006}"
STAGES="${3:-1-6}"
first="${STAGES%-*}"
last="${STAGES#*-}"
here="$(cd "$(dirname "$0")" && pwd)"
# --stack_anchor=0: the study ran before the anchor became the default; this keeps its numbers.
common=(--benchmarks=cmu17 --nodev_split --stack_anchor=0)
conf=(--override=loss.terms.teacher.confidence_scale=1.0)
long=(--stack_override=teacher:train.num_steps=2000)

# seed SRC DST DIRS...: copy stage SRC's finished per-fold DIRS into stage DST.
seed() {
  local src="$R/$1/cmu17_cross_subject" dst="$R/$2/cmu17_cross_subject"
  shift 2
  for s in ${F//,/ }; do
    mkdir -p "$dst/fold_$s"
    for d in "$@"; do
      [[ -d "$src/fold_$s/$d" && ! -e "$dst/fold_$s/$d" ]] && cp -r "$src/fold_$s/$d" "$dst/fold_$s/$d"
    done
  done
}
stage() {
  local n="$1" name="$2"
  shift 2
  ((n < first || n > last)) && return 0
  echo "=== stage $n: $name ($(date +%T)) ==="
  bash "$here/parallel_folds.sh" "$F" --workdir="$R/$name" "${common[@]}" "$@"
  echo "=== stage $n: $name done ($(date +%T)) ==="
}

stage 1 sup --rows=lifter,windows,smooth,tcn,teacher
seed sup self lifter tcn
stage 2 self --rows=lifter,tcn,teacher --teacher_mode=self
seed sup sup_conf lifter tcn teacher_supervised
stage 3 sup_conf --rows=lifter,tcn,teacher "${conf[@]}"
seed self self_conf lifter tcn teacher_self
stage 4 self_conf --rows=lifter,tcn,teacher --teacher_mode=self "${conf[@]}"
seed sup sup_long lifter tcn teacher_supervised
stage 5 sup_long --rows=lifter,tcn,teacher "${long[@]}"
seed self self_long lifter tcn teacher_self
stage 6 self_long --rows=lifter,tcn,teacher --teacher_mode=self "${long[@]}"
