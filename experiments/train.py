r"""Trains the student and evaluates it (one run; `experiments.ablation` chains the rows and the teacher).

  python -m experiments.train --workdir=runs/cmu17
  python -m experiments.train --workdir=runs/drink --config=nrsfm_jax/configs/nrsfm.py:drink
  python -m experiments.train --workdir=runs/x --config.train.num_steps=500 --config.model.use_refiner=False

Rerunning the same command resumes from the last checkpoint in --workdir.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from nrsfm_jax import loop, train

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and results.', required=True)
config_flags.DEFINE_config_file('config', 'nrsfm_jax/configs/default.py', 'Experiment config file.', lock_config=True)


def main(argv):
  # orbax logs every checkpoint step at INFO; keep the console to our progress lines.
  logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  loop.run_cli(main)
