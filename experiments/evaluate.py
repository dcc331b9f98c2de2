r"""Evaluates a trained run on its own eval split or on other data.

  python -m experiments.evaluate --workdir=runs/cmu17                    # the run's eval split
  python -m experiments.evaluate --workdir=runs/cmu17 --subjects=005,006  # other cmu17 subjects
  python -m experiments.evaluate --workdir=runs/drink --sequence=drink    # nrsfm protocol
  python -m experiments.evaluate --workdir=runs/cmu17 --tracks=clip.npz   # 2D only: predictions
  python -m experiments.evaluate --workdir=runs/cmu17 --diagnostics       # + how it errs (depth, rigidity)
  python -m experiments.evaluate --workdir=runs/cmu17 --bone_projection=clip  # bones bounded by their 2D lengths
  python -m experiments.evaluate --workdir=runs/cmu17 --eval_context=none     # bare windows, as before session 26
  python -m experiments.evaluate --workdir=runs/cmu17 --without_refiner       # the TCN run's per-frame lifter alone

Inputs are normalised with the run's training 2D scale (stored in its checkpoint).
Writes --output (default <workdir>/evaluate_<data>.json) and <output stem>_predictions.npz.
"""

from absl import app, flags, logging

from nrsfm_jax import ablation, configs, data, evaluation, geometry, loop, runs

_WORKDIR = flags.DEFINE_string('workdir', None, 'A run directory written by experiments/train.py.', required=True)
_SUBJECTS = flags.DEFINE_string('subjects', None, "cmu17 subjects, e.g. '006,007' (cmu17 protocol).")
_SEQUENCE = flags.DEFINE_string(
    'sequence', None, "nrsfm-mocap sequence ('drink', ...) or a points3d .npz (nrsfm protocol)."
)
_TRACKS = flags.DEFINE_string('tracks', None, '2D tracks .npz (keypoints [F, P, 2]): predictions only.')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
_OUTPUT = flags.DEFINE_string('output', None, 'JSON report (default: <workdir>/evaluate_<data>.json).')
_BONE_PROJECTION = flags.DEFINE_enum(
    'bone_projection',
    None,
    list(geometry.BONE_PROJECTIONS),
    "Test-time bone projection instead of the run's train.eval_bone_projection: 'clip' bounds each "
    "bone's depth extent by its length estimated from the sequence's own 2D (no 3D read).",
)
_BONE_BY = flags.DEFINE_enum(
    'bone_by',
    None,
    list(data.BONE_LENGTH_GROUPS),
    "With --bone_projection: estimate the bone lengths from each camera's frames ('view', one "
    "camera) or from all of a sequence's cameras ('sequence'); default: the run's train.eval_bone_by.",
)
_BONE_GAIN = flags.DEFINE_float(
    'bone_gain', None, 'With --bone_projection=clip: the gain on the depth differences before clipping (> 1 stretches).'
)
_EVAL_CONTEXT = flags.DEFINE_enum(
    'eval_context',
    None,
    list(configs.EVAL_CONTEXTS),
    "How the TCN sees each eval window's surroundings instead of the run's train.eval_context: "
    "'receptive_field' widens every window by the frames of its sequence that the TCN reads, "
    "'none' scores bare windows (runs made before the key existed read 'none').",
)
_WITHOUT_REFINER = flags.DEFINE_bool(
    'without_refiner',
    False,
    "Score a TCN run's per-frame lifter alone (the refiner skipped; default output "
    'evaluate_<data>_without_refiner.json): what the TCN adds is the difference.',
)
_DIAGNOSTICS = flags.DEFINE_bool(
    'diagnostics',
    False,
    "Also print how the run's own eval-split reconstructions err (ablation.depth_diagnostics): depth "
    "relief and 2D fit against the truth, knees and elbows bent wrong, and its canonical shapes' "
    "deformation over the true body's (near 0: one rigid shape).",
)


def main(argv):
  # orbax logs every checkpoint step at INFO; keep the console to our progress lines.
  logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if _DIAGNOSTICS.value and (
      _SUBJECTS.value or _SEQUENCE.value or _TRACKS.value or _STEP.value is not None or _WITHOUT_REFINER.value
  ):
    raise app.UsageError(
        "--diagnostics reads the run's own eval split at its latest step, refiner included: drop --subjects, "
        '--sequence, --tracks, --step and --without_refiner.'
    )
  evaluation.evaluate_run(
      _WORKDIR.value,
      subjects=_SUBJECTS.value,
      sequence=_SEQUENCE.value,
      tracks=_TRACKS.value,
      step=_STEP.value,
      output=_OUTPUT.value,
      bone_projection=_BONE_PROJECTION.value,
      bone_by=_BONE_BY.value,
      bone_gain=_BONE_GAIN.value,
      eval_context=_EVAL_CONTEXT.value,
      without_refiner=_WITHOUT_REFINER.value,
  )
  if _DIAGNOSTICS.value:
    config = runs.load_run(_WORKDIR.value)[0]
    for name, value in ablation.depth_diagnostics(_WORKDIR.value, config).items():
      print(f'{name}: {value:.4f}')


if __name__ == '__main__':
  loop.run_cli(main, config_flags=())
