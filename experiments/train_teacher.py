r"""Trains the diffusion teacher, scores it, and caches its pseudo-3D for the student.

  # Supervised on the training subjects' 3D (the paper / D3DP protocol):
  python -m experiments.train_teacher --workdir=runs/teacher_sup
  # Self mode on a trained student's reconstructions (no 3D anywhere):
  python -m experiments.train_teacher --workdir=runs/teacher_self \
      --config=nrsfm_jax/configs/teacher.py:self --config.teacher.student_workdir=runs/cmu17
  # Then the student with the teacher term (eq. 16):
  python -m experiments.train --workdir=runs/cmu17_teacher --config=nrsfm_jax/configs/default.py:teacher \
      --config.train.pseudo3d=<the path printed above>

Prints the teacher's own MPJPE (or e3D) on the eval split for each aggregation
(mean, joint-wise reprojection) and each (H, K) of ``config.eval.grid``, and
writes them to ``<workdir>/teacher_eval.json``. Rerunning resumes.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from nrsfm_jax import loop, teacher

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for the teacher run.', required=True)
config_flags.DEFINE_config_file('config', 'nrsfm_jax/configs/teacher.py', 'Teacher config file.', lock_config=True)


def main(argv):
  logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  out = teacher.train_teacher(FLAGS.config, FLAGS.workdir)
  print(f'pseudo-3D for the student: --config.train.pseudo3d={out["pseudo3d"]}')


if __name__ == '__main__':
  loop.run_cli(main)
