r"""Exports a trained run's parameters as a flat .npz that needs no training code to use.

  python -m experiments.export --workdir=runs/cmu17 [--output=runs/cmu17/export/params.npz]

Load it with ``nrsfm_jax.checkpoint.load_exported(path)``, which returns
``(apply_fn, params)`` mapping raw 2D ``[T, P, 2]`` (data units) to 3D ``[T, P, 3]``.
"""

from absl import app, flags, logging

from nrsfm_jax import evaluation

_WORKDIR = flags.DEFINE_string('workdir', None, 'A run directory written by experiments/train.py.', required=True)
_OUTPUT = flags.DEFINE_string('output', None, 'Destination .npz (default: <workdir>/export/params.npz).')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')


def main(argv):
  # orbax logs every checkpoint step at INFO; keep the console to our progress lines.
  logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  evaluation.export_run(_WORKDIR.value, _OUTPUT.value, step=_STEP.value)


if __name__ == '__main__':
  app.run(main)
