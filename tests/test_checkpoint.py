"""Tests for nrsfm_jax.checkpoint: orbax save / restore, flat export and its loader."""

import os
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nrsfm_jax import checkpoint, configs, data, optim, train


def _state(config, window=8):
  return train.create_state(config, 17, window, jax.random.PRNGKey(0), optim.make_optimizer(config, 10, 10))


def test_save_restore_round_trip_and_no_overwrite(tmp_path):
  config = configs.get('tiny')
  _, state = _state(config)
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'ckpt'), max_to_keep=2)
  assert ckpt.latest_step() is None
  assert ckpt.restore(state) == (state, None)
  ckpt.save(3, state, {'seed': 0, 'scale': 1.5})
  changed = state.replace(params=jax.tree.map(lambda x: x + 1.0, state.params))
  ckpt.save(3, changed, {'seed': 9})  # Step 3 exists: nothing is overwritten.
  restored, meta = ckpt.restore(jax.tree.map(jnp.zeros_like, state))
  chex.assert_trees_all_equal(restored.params, state.params)
  chex.assert_trees_all_equal(restored.opt_state, state.opt_state)
  assert meta == {'seed': 0, 'scale': 1.5, 'step': 3}
  params, meta = ckpt.restore_params()
  chex.assert_trees_all_equal(params, jax.device_get(state.params))
  for step in (4, 5):
    ckpt.save(step, state, {})
  assert sorted(ckpt.manager.all_steps()) == [4, 5]  # max_to_keep
  with pytest.raises(FileNotFoundError, match='No checkpoint'):
    checkpoint.Checkpointer(str(tmp_path / 'empty')).restore_params()


def _damage(step_dir, how):
  """Empties every OCDBT manifest ('manifest') or truncates every data file ('truncate') of a saved step."""
  for root, _, files in os.walk(step_dir):
    for name in files:
      path = os.path.join(root, name)
      if how == 'manifest' and name == 'manifest.ocdbt':
        open(path, 'w').close()
      elif how == 'truncate' and os.path.basename(root) == 'd':
        with open(path, 'r+b') as f:
          f.truncate(10)


def test_a_damaged_checkpoint_is_reported_set_aside_and_the_previous_one_restored(tmp_path):
  """Issue #11: a damaged newest checkpoint used to end the run in a 44-440 line traceback."""
  config = configs.get('tiny')
  _, state = _state(config)
  later = state.replace(params=jax.tree.map(lambda x: x + 1.0, state.params))
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'ckpt'), max_to_keep=3)
  ckpt.save(1, state, {'seed': 0})
  ckpt.save(2, later, {'seed': 0})
  _damage(tmp_path / 'ckpt' / '2', 'manifest')
  zeros = jax.tree.map(jnp.zeros_like, state)
  lines = []
  # Reading (evaluation) skips it and leaves it where it is.
  params, meta = ckpt.restore_params(log=lines.append)
  assert meta['step'] == 1 and sorted(ckpt.manager.all_steps()) == [1, 2]
  lines.clear()
  # Resuming sets it aside (never deletes it) and restores the previous one.
  restored, meta = ckpt.restore(zeros, log=lines.append)
  assert meta['step'] == 1
  chex.assert_trees_all_equal(restored.params, state.params)
  assert len(lines) == 1, lines
  assert re.fullmatch(
      rf'warning: checkpoint {tmp_path}/ckpt/2 cannot be restored \(ValueError: DATA_LOSS: .+\); '
      rf'moved to {tmp_path}/ckpt.damaged/2; trying step 1',
      lines[0],
  ), lines[0]
  assert os.path.isdir(tmp_path / 'ckpt.damaged' / '2' / 'state')
  assert ckpt.manager.all_steps() == [1]
  ckpt.save(2, later, {'seed': 0})  # The step saves again.
  assert sorted(ckpt.manager.all_steps()) == [1, 2]
  # Asked for by step, a damaged checkpoint is an error naming its folder.
  _damage(tmp_path / 'ckpt' / '1', 'truncate')
  with pytest.raises(
      checkpoint.CheckpointError, match=rf'checkpoint {tmp_path}/ckpt/1 cannot be restored: ValueError: OUT_OF_RANGE'
  ):
    ckpt.restore_params(1)
  # None restores: the run starts afresh, and both are kept aside.
  _damage(tmp_path / 'ckpt' / '2', 'truncate')
  lines.clear()
  assert ckpt.restore(zeros, log=lines.append) == (zeros, None)
  assert len(lines) == 2 and lines[-1].endswith(
      'moved to ' + str(tmp_path / 'ckpt.damaged' / '1') + '; no older checkpoint: starting afresh'
  )
  assert sorted(os.listdir(tmp_path / 'ckpt.damaged')) == ['1', '2', '2-2']


@pytest.mark.slow
def test_export_of_a_batchnorm_model_predicts_with_its_running_averages(tmp_path):
  config = configs.get('tiny')
  config.model.norm = 'batch'
  model, state = _state(config)
  # Move the running averages away from their initial values, as training does.
  stats = jax.tree.map(lambda x: x + 0.3, state.params['batch_stats'])
  params = {**state.params, 'batch_stats': stats}
  path = checkpoint.export_params(str(tmp_path / 'bn.npz'), params, config, scale=2.0, num_points=17)
  apply_fn, exported = checkpoint.load_exported(path)
  chex.assert_trees_all_equal(exported, jax.device_get(params))
  keypoints = np.random.default_rng(0).normal(size=(12, 17, 2)).astype(np.float32) * 2.0
  got = np.asarray(apply_fn(exported, keypoints))
  visibility = np.ones(keypoints.shape[:-1], np.float32)
  centred, _ = data.center_2d(keypoints, visibility)
  ref = (
      model.apply(params, jnp.asarray(centred / 2.0)[None], jnp.asarray(visibility)[None], jnp.ones((1, 12)))[
          'reconstruction'
      ][0]
      * 2.0
  )
  np.testing.assert_allclose(got, np.asarray(ref), atol=1e-4)
  # Per frame: a frame's 3D does not depend on the rest of the window's batch statistics.
  np.testing.assert_allclose(np.asarray(apply_fn(exported, keypoints[:1])), got[:1], atol=1e-4)


def test_load_params_names_the_bad_key(tmp_path):
  config = configs.get('tiny')
  _, state = _state(config)
  params = state.params
  config.train.pseudo3d = str(tmp_path / 'teacher' / 'pseudo3d' / 'abc.npz')  # A machine-local path ...
  path = checkpoint.export_params(str(tmp_path / 'p.npz'), params, config, scale=1.0, num_points=17)
  with np.load(path) as f:
    arrays = dict(f)
  assert str(tmp_path) not in open(path[:-4] + '.json').read()  # ... does not travel with the export.
  assert str(tmp_path) not in str(arrays['__config__']) and 'abc.npz' in str(arrays['__config__'])
  key = sorted(k for k in arrays if not k.startswith('__'))[0]

  missing = dict(arrays)
  del missing[key]
  np.savez(tmp_path / 'missing.npz', **missing)
  with pytest.raises(KeyError, match=f'missing.*{key}'):
    checkpoint.load_params(str(tmp_path / 'missing.npz'), params)

  reshaped = dict(arrays, **{key: np.zeros(arrays[key].shape + (2,), arrays[key].dtype)})
  np.savez(tmp_path / 'reshaped.npz', **reshaped)
  with pytest.raises(ValueError, match=f'{key}.*shape'):
    checkpoint.load_params(str(tmp_path / 'reshaped.npz'), params)
