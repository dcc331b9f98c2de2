r"""How well does the canonicalizer Ψ undo rotations of a given angle? (eq. 18 on a trained run)

  python -m experiments.canonical_study --workdir=runs/cmu17 [--num_rotations=256 --num_frames=512]

Takes the lifter's canonical shapes X on --num_frames frames of the run's eval
windows, rotates each by --num_rotations Haar-random rotations R and reports
mean_k ||X_k - Psi(R X)_k|| (data units) per rotation-angle bin. Writes
canonical_study.csv and canonical_study.png into --output_dir (default: --workdir).
"""

from absl import app, flags, logging

from nrsfm_jax import evaluation

_WORKDIR = flags.DEFINE_string('workdir', None, 'A run directory written by experiments/train.py.', required=True)
_NUM_ROTATIONS = flags.DEFINE_integer('num_rotations', 256, 'Random rotations per shape.')
_NUM_FRAMES = flags.DEFINE_integer('num_frames', 512, 'Canonical shapes (frames sampled from the eval windows).')
_NUM_BINS = flags.DEFINE_integer('num_bins', 12, 'Rotation-angle bins over [0, 180] degrees.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the frame sample and the rotations.')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Where the CSV and PNG go (default: --workdir).')


def main(argv):
  # orbax logs every checkpoint step at INFO; keep the console to our progress lines.
  logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  evaluation.run_canonical_study(
      _WORKDIR.value,
      num_rotations=_NUM_ROTATIONS.value,
      num_frames=_NUM_FRAMES.value,
      num_bins=_NUM_BINS.value,
      seed=_SEED.value,
      step=_STEP.value,
      output_dir=_OUTPUT_DIR.value,
  )


if __name__ == '__main__':
  app.run(main)
