#!/usr/bin/env bash
# Trains and exports the model that ships with the package (nrsfm_jax/pretrained/cmu17_student.npz and
# the teacher that taught it, cmu17_teacher.npz), the default of `python -m experiments.predict`. The paper's full method (lifter, supervised
# diffusion teacher, student with smoothness + TCN + teacher term; README's main job) on every
# bundled subject, except trial 002_04 ("jump, balance"), which is held back: the test
# tests/test_predict.py::test_shipped_model_beats_depth0_on_a_held_back_trial scores the shipped
# model on it, seen by a camera angle outside the training ones. The benchmark's four cameras at
# one elevation would leave a user's camera height unseen, so the cameras are two rings of eight
# azimuths (every 45 degrees) at elevations 0 and 30 degrees.
#
#   bash experiments/pretrained.sh [workdir]   (default runs/pretrained; rerunning resumes)
set -euo pipefail
workdir="${1:-runs/pretrained}"
python -m experiments.ablation --workdir="$workdir" --benchmarks=cmu17 --rows=lifter,teacher \
  --override=data.train_subjects=002,003,005,006,-002_04 --override=data.val_subjects=002_04 \
  --override='data.azimuths=(0.0,45.0,90.0,135.0,180.0,225.0,270.0,315.0)' \
  --override=data.elevation=0.0 --override='data.elevations=(30.0,)'
python -m experiments.export --workdir="$workdir/cmu17/teacher" --output=nrsfm_jax/pretrained/cmu17_student.npz
python -m experiments.export --workdir="$workdir/cmu17/teacher_supervised" --output=nrsfm_jax/pretrained/cmu17_teacher.npz
