"""Test setup: 4 fake CPU devices for the data-parallel tests (set before jax is imported), shared runs.

The repository root goes on ``sys.path`` so the tests of ``experiments/`` scripts import
the same way under ``pytest`` as under ``python -m pytest``.
"""

import os
import sys

# The tests are bound by XLA's compile time, not by running the tiny programs: LLVM at -O0 cuts
# a tiny end-to-end run's compile by about 40% (the resume test: 71 s -> 43 s on 2 cores), and
# skipping LLVM's expensive passes and XLA's fusion emitters (the older loop emitters compile
# tiny programs faster) by a further 25% (63 s -> 48 s on another machine).
os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0'
    ' --xla_llvm_disable_expensive_passes=true --xla_cpu_use_fusion_emitters=false'
).strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tempfile  # noqa: E402

import pytest  # noqa: E402  (after XLA_FLAGS)

from nrsfm_jax import configs, loop, runs, train  # noqa: E402

# One persistent XLA compilation cache for the session (fresh each session): the many tiny runs
# compile the same train and eval programs, and a cache hit turns a 6 s compile into a load
# (a tiny train_and_evaluate: 10.7 s cold, 2.8 s warm).
# pytest-xdist's workers (``-n 2``) share it: same run id, same folder (jax's cache writes atomically).
_RUN = os.environ.get('PYTEST_XDIST_TESTRUNUID') or f'{os.getpid()}'
_CACHE = os.path.join(tempfile.gettempdir(), f'nrsfm_jax_test_xla_{_RUN}')
loop.enable_compilation_cache(_CACHE, min_compile_seconds=0.2)
# The scripts the tests start as subprocesses use the same cache, not the user's ~/.cache.
os.environ[loop.CACHE_ENV] = _CACHE


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


def pytest_collection_modifyitems(config, items):
  """The ``slow`` tests first: the two xdist workers then finish together, rather than one
  core sitting idle while the other runs a minute-long test that happened to come last."""
  del config
  items.sort(key=lambda item: item.get_closest_marker('slow') is None)
