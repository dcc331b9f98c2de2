"""Multi-process data parallelism on JAX's own runtime (``config.train.distributed``), on one machine.

Two processes × two fake CPU devices each, gloo collectives, against one process with four
devices: the same global batches, so the same parameters.
"""

import os
import socket
import subprocess
import sys

import chex
import numpy as np
import pytest

from nrsfm_jax import configs, runs, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _train(workdir, devices: int, *flags, env_extra=None) -> subprocess.Popen:
  xla = [f for f in os.environ.get('XLA_FLAGS', '').split() if 'device_count' not in f]  # (conftest's others)
  env = dict(os.environ, XLA_FLAGS=' '.join([*xla, f'--xla_force_host_platform_device_count={devices}']))
  env.update(env_extra or {})
  env.pop('JAX_PLATFORMS', None)
  return subprocess.Popen(
      [
          sys.executable,
          '-m',
          'experiments.train',
          f'--workdir={workdir}',
          '--config=nrsfm_jax/configs/tiny.py',
          '--config.train.num_steps=3',
          '--config.train.batch_size=8',
          '--config.train.parallel=shard_map',
          *flags,
      ],
      cwd=ROOT,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
  )


@pytest.mark.slow
def test_two_processes_match_one_process_with_as_many_devices(tmp_path):
  port = _free_port()
  shared = str(tmp_path / 'two_processes')
  procs = [
      _train(
          shared,
          2,
          '--config.train.distributed=True',
          f'--config.train.coordinator_address=localhost:{port}',
          '--config.train.num_processes=2',
          f'--config.train.process_id={i}',
          '--config.train.plot=True',  # (off in tiny.py)
      )
      for i in range(2)
  ]
  # The reference, one process with four devices, runs here meanwhile (conftest's four fake CPU
  # devices, the same XLA flags): what the subprocesses would get from the same command.
  single_log = []
  train.train_and_evaluate(_config(), str(tmp_path / 'one_process'), log=single_log.append, evaluate=False)
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  primary_out, worker_out = outs[0][0], outs[1][0]
  assert 'distributed: process 0 of 2, 2 local / 4 global cpu devices' in primary_out
  assert 'parallel=shard_map on 4 cpu device(s)' in primary_out
  assert any('parallel=shard_map on 4 cpu device(s)' in line for line in single_log)
  # Process 1 says where it stands, then trains silently; process 0 logs, writes and scores.
  assert 'distributed: process 1 of 2' in worker_out and 'step 3/3' not in worker_out and 'eval' not in worker_out
  assert 'step 3/3' in primary_out and 'MPJPE' in primary_out
  assert os.path.exists(os.path.join(shared, 'eval.json')) and os.path.exists(os.path.join(shared, 'training.png'))
  _, _, params_two, meta_two = runs.load_run(shared)
  _, _, params_one, meta_one = runs.load_run(str(tmp_path / 'one_process'))
  assert meta_two['step'] == meta_one['step'] == 3
  chex.assert_trees_all_close(params_two, params_one, atol=1e-5, rtol=1e-5)
  moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(*map(_leaves, (params_one, _init()))))
  # The three steps did change the parameters (the comparison is not vacuous), by Adam-sized steps
  # from this very initialisation (another key would be off by the init's own scale).
  assert 1e-4 < moved < 0.02, moved


def _config():
  """What :func:`_train`'s flags make of the tiny config."""
  config = configs.get('tiny')
  config.train.num_steps, config.train.batch_size, config.train.parallel = 3, 8, 'shard_map'
  return config


def _leaves(tree):
  import jax

  return jax.tree.leaves(tree)


def _init():
  """The tiny model's initial parameters (step 0 of the same config), for the non-vacuity check.

  Built in-process with the trainer's own key derivation (``train.train_and_evaluate``): the
  parameters' shapes do not depend on the batch, window or device count.
  """
  import jax

  config = configs.get('tiny')
  init_key = jax.random.split(jax.random.PRNGKey(config.seed))[0]
  _, state = train.create_state(config, 17, config.data.window, init_key)
  return state.params


def test_distributed_flags_must_come_together(tmp_path):
  proc = _train(str(tmp_path / 'run'), 1, '--config.train.distributed=True', '--config.train.num_processes=2')
  _, err = proc.communicate(timeout=120)
  lines = err.strip().splitlines()
  assert proc.returncode == 1 and len(lines) == 1, err
  assert 'give all of train.coordinator_address, train.num_processes and train.process_id' in lines[0]
