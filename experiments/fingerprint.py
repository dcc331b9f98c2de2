r"""Digest of a run's parameters and optimiser state after N steps: the bit-exact refactoring check.

  python -m experiments.fingerprint --kind=student --steps=200 \
      --config=nrsfm_jax/configs/default.py:lifter
  python -m experiments.fingerprint --kind=teacher --steps=200 --config=nrsfm_jax/configs/teacher.py

Trains ``--steps`` steps from scratch in a temporary workdir (or ``--workdir``)
and prints one SHA-256 over every leaf of the saved train state (parameters,
optimiser state, step), in flattened-path order, plus the per-leaf digests
with ``--verbose``. Two commits that print the same digest trained bit for bit
the same. Evaluation is skipped: only the training path is fingerprinted.
"""

import hashlib
import os
import tempfile

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_enum('kind', 'student', ['student', 'teacher'], 'Which trainer to run.')
flags.DEFINE_integer('steps', 200, 'Training steps.')
flags.DEFINE_string('workdir', None, 'Workdir (default: a temporary directory, removed afterwards).')
flags.DEFINE_bool('verbose', False, 'Also print each leaf digest.')
config_flags.DEFINE_config_file(
    'config', 'nrsfm_jax/configs/default.py:lifter', 'Experiment config file.', lock_config=False
)


def state_digest(tree) -> tuple[str, dict[str, str]]:
  """SHA-256 over ``tree``'s leaves (dtype, shape, bytes) in flattened-path order, and one digest per leaf."""
  leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]
  total, per_leaf = hashlib.sha256(), {}
  for path, leaf in leaves:
    arr = np.ascontiguousarray(np.asarray(leaf))
    name = jax.tree_util.keystr(path)
    h = hashlib.sha256(f'{name}|{arr.dtype}|{arr.shape}|'.encode() + arr.tobytes()).hexdigest()
    per_leaf[name] = h
    total.update(h.encode())
  return total.hexdigest(), per_leaf


def _restore_state(workdir: str):
  """The saved train state (params, opt_state, step) as plain arrays, from the workdir's latest checkpoint."""
  from nrsfm_jax import checkpoint as ckpt_lib

  return ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints')).restore_tree()[0]


def run(config, kind: str, steps: int, workdir: str) -> str:
  config.train.num_steps = steps
  if kind == 'student':
    config.train.num_epochs = 0
    from nrsfm_jax import train

    train.train_and_evaluate(config, workdir, evaluate=False)
  else:
    from nrsfm_jax import teacher

    teacher.train_teacher(config, workdir, evaluate=False)
  digest, per_leaf = state_digest(_restore_state(workdir))
  if FLAGS.verbose:
    for name, h in per_leaf.items():
      print(f'{h[:16]}  {name}')
  return digest


def main(argv):
  logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if FLAGS.workdir:
    digest = run(FLAGS.config, FLAGS.kind, FLAGS.steps, FLAGS.workdir)
  else:
    with tempfile.TemporaryDirectory() as workdir:
      digest = run(FLAGS.config, FLAGS.kind, FLAGS.steps, workdir)
  print(f'fingerprint {FLAGS.kind} {FLAGS.steps} steps: {digest}')


if __name__ == '__main__':
  from nrsfm_jax import loop  # pylint: disable=g-import-not-at-top  (nrsfm_jax imports stay lazy here)

  loop.run_cli(main)
