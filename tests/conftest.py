"""Test setup: 4 fake CPU devices for the data-parallel tests (set before jax is imported), shared runs.

The repository root goes on ``sys.path`` so the tests of ``experiments/`` scripts import
the same way under ``pytest`` as under ``python -m pytest``.
"""

import os
import sys

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=4').strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402  (after XLA_FLAGS)

from nrsfm_jax import configs, runs, train  # noqa: E402


@pytest.fixture(scope='session')
def run(tmp_path_factory):
  """A tiny cmu17 run trained for 2 steps: ``(workdir, eval result)``."""
  config = configs.get('tiny')
  config.train.parallel = 'none'
  config.train.num_steps = 2
  workdir = str(tmp_path_factory.mktemp('run'))
  result = train.train_and_evaluate(config, workdir, log=lambda s: None)
  return workdir, result


@pytest.fixture(scope='session')
def loaded(run):
  return runs.load_run(run[0])
