"""Tests for nrsfm_jax.checkpoint: orbax save / restore, flat export and its loader."""

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
  path = checkpoint.export_params(str(tmp_path / 'p.npz'), params, config, scale=1.0, num_points=17)
  with np.load(path) as f:
    arrays = dict(f)
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
