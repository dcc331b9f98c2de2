"""Tests for nrsfm_jax.train: the step under jit / pmap / shard_map, resume, non-finite stop, e2e."""

import functools
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nrsfm_jax import configs, train
from nrsfm_jax.data import batch_indices


@pytest.fixture(scope='module')
def setup():
  config = configs.get('tiny')
  train_ds, _ = train.load_datasets(config)
  tx = train.make_optimizer(config, 10, 10)
  model, state = train.create_state(config, train_ds.num_points, train_ds.window_length,
                                    jax.random.PRNGKey(0), tx)
  idx = batch_indices(train_ds.num_windows, 8, seed=0, step=0)
  full = train_ds.take(idx)
  batch = {k: jnp.asarray(full[k]) for k in ('keypoints', 'visibility', 'mask')}
  # Some padding and missing points so the masked reductions are exercised.
  batch['mask'] = batch['mask'].at[1, 20:].set(0.0)
  batch['visibility'] = batch['visibility'].at[1, 20:].set(0.0).at[2, :, 3].set(0.0)
  # Teacher pseudo-3D (any camera-frame 3D will do here) to exercise that term too.
  batch['pseudo3d'] = jax.random.normal(jax.random.PRNGKey(5), batch['keypoints'].shape[:-1] + (3,))
  lcfg = train.LossConfig(**{**train.loss_config(config).__dict__, 'w_teacher': 0.5, 'w_proc': 0.1})
  return config, model, state, batch, lcfg


def _single(state, batch, lcfg, key):
  return jax.jit(functools.partial(train.train_step, loss_config=lcfg))(state, batch, key)


def test_loss_terms_present_and_finite(setup):
  _, _, state, batch, lcfg = setup
  _, metrics = _single(state, batch, lcfg, jax.random.PRNGKey(1))
  for k in train.LOSS_TERMS + ('total', 'grad_norm'):
    assert k in metrics, k
    assert np.isfinite(metrics[k]), k
  assert metrics['finite'] == 1.0
  expected = (metrics['reproj'] + lcfg.w_reproj_init * metrics['reproj_init'] + lcfg.w_smooth * metrics['smooth']
              + lcfg.w_teacher * metrics['teacher'] + lcfg.w_canon * metrics['canon'] + lcfg.w_proc * metrics['proc'])
  np.testing.assert_allclose(metrics['total'], expected, rtol=1e-5)


def test_jit_step_compiles_once_and_learns(setup):
  _, _, state, batch, lcfg = setup
  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(state, batch, key):
    return train.train_step(state, batch, key, loss_config=lcfg)

  key = jax.random.PRNGKey(1)
  losses = []
  for _ in range(4):
    state, m = step(state, batch, key)
    losses.append(float(m['total']))
  assert int(state.step) == 4
  assert losses[-1] < losses[0]


@pytest.mark.parametrize('mode', ['pmap', 'shard_map'])
@pytest.mark.parametrize('num_devices', [2, 4])
def test_data_parallel_matches_single_device(setup, mode, num_devices):
  _, _, state, batch, lcfg = setup
  assert jax.local_device_count() >= num_devices, 'conftest sets 4 fake CPU devices'
  key = jax.random.PRNGKey(1)
  ref_state, ref_metrics = _single(state, batch, lcfg, key)
  step = train.make_step(lcfg, mode, devices=jax.local_devices()[:num_devices])
  # The wrapped step donates its state: hand it a copy of the shared fixture.
  pstate, pmetrics = step(step.prepare(jax.tree.map(jnp.copy, state)), batch, key)
  pstate = step.finish(pstate)
  for k in ('total', 'reproj', 'canon', 'teacher', 'smooth', 'grad_norm'):
    np.testing.assert_allclose(pmetrics[k], ref_metrics[k], rtol=1e-5, atol=1e-6, err_msg=k)
  chex.assert_trees_all_close(pstate.params, ref_state.params, rtol=1e-5, atol=1e-5)
  assert int(pstate.step) == 1


@pytest.fixture(scope='module')
def bn_setup(setup):
  # C3DPO's options: BatchNorm (synced over the data-parallel axis), z-augmentation, z-equivariance.
  config, _, _, batch, _ = setup
  config = configs.get('tiny')
  config.model.norm = 'batch'
  config.loss.z_aug_deg = 22.5
  config.loss.z_equivariance_deg = 22.5
  model, state = train.create_state(config, batch['keypoints'].shape[2], batch['keypoints'].shape[1],
                                    jax.random.PRNGKey(0), train.make_optimizer(config, 10, 10))
  # flax's synced BatchNorm averages the devices' masked means with equal
  # weight, so the data-parallel step is exact when every device holds the
  # same number of real frames: no padded frames here (missing points stay).
  batch = dict(batch, mask=jnp.ones_like(batch['mask']))
  return model, state, batch, train.loss_config(config)


@pytest.mark.parametrize('mode', ['pmap', 'shard_map'])
def test_batchnorm_and_z_equivariance_data_parallel_match_single_device(bn_setup, mode):
  model, state, batch, lcfg = bn_setup
  assert 'batch_stats' in state.params
  key = jax.random.PRNGKey(2)
  ref_state, ref_metrics = _single(state, batch, lcfg, key)
  # The running averages moved (the optimiser does not own them) ...
  moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), ref_state.params['batch_stats'],
                       state.params['batch_stats'])
  assert max(jax.tree.leaves(moved)) > 1e-4
  step = train.make_step(lcfg, mode, devices=jax.local_devices()[:4])
  pstate, pmetrics = step(step.prepare(jax.tree.map(jnp.copy, state)), batch, key)
  pstate = step.finish(pstate)
  # Synced batch statistics are a mean of per-device moments: equal to one
  # device's up to float rounding (1e-4 relative here, not bit-exact).
  for k in ('total', 'reproj', 'canon', 'grad_norm'):
    np.testing.assert_allclose(pmetrics[k], ref_metrics[k], rtol=1e-4, atol=1e-6, err_msg=k)
  # ... identically on 4 devices with synced statistics as on one.
  chex.assert_trees_all_close(pstate.params, ref_state.params, rtol=1e-4, atol=1e-4)


def test_batchnorm_prediction_is_per_frame(bn_setup):
  # At test time BatchNorm uses its running averages: a frame's output does not
  # depend on what else is in the batch.
  model, state, batch, _ = bn_setup
  full = model.apply(state.params, batch['keypoints'], batch['visibility'], batch['mask'])['points']
  one = model.apply(state.params, batch['keypoints'][:1], batch['visibility'][:1], batch['mask'][:1])['points']
  np.testing.assert_allclose(one, full[:1], atol=1e-5)


def test_non_finite_step_is_not_applied(setup):
  _, _, state, batch, lcfg = setup
  bad = dict(batch, keypoints=batch['keypoints'].at[0, 0, 0, 0].set(jnp.nan))
  bad['visibility'] = bad['visibility'].at[0, 0, 0].set(1.0)
  new_state, m = _single(state, bad, lcfg, jax.random.PRNGKey(1))
  assert m['finite'] == 0.0
  assert int(new_state.step) == int(state.step)
  chex.assert_trees_all_equal(new_state.params, state.params)


def _params_of(workdir):
  from nrsfm_jax import checkpoint
  params, _ = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints')).restore_params()
  return params


def test_end_to_end_resume_matches_uninterrupted(tmp_path):
  config = configs.get('tiny')
  config.train.parallel = 'none'
  logs = []
  full_dir, cut_dir = str(tmp_path / 'full'), str(tmp_path / 'cut')
  result = train.train_and_evaluate(config, full_dir, log=logs.append)
  assert set(result['overall']) == {'mpjpe', 'pa_mpjpe', 'stress', 'accel_error'}
  assert all(np.isfinite(v) for v in result['overall'].values())
  assert result['frames'] > 0 and '006_01' in result['per_sequence']
  assert any('ETA' in line for line in logs)
  for name in ('config.json', 'metrics.jsonl', 'eval.json', 'eval_predictions.npz'):
    assert os.path.exists(os.path.join(full_dir, name)), name
  with open(os.path.join(full_dir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  assert rows[-1]['step'] == config.train.num_steps and 'reproj' in rows[-1]

  # Kill the run (Ctrl-C) after step 4, then rerun the same command.
  def interrupt(line):
    if line.startswith('step 4/'):
      raise KeyboardInterrupt
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(config, cut_dir, log=interrupt)
  resumed_logs = []
  train.train_and_evaluate(config, cut_dir, log=resumed_logs.append)
  assert any('resuming from the checkpoint at step 4' in line for line in resumed_logs)
  chex.assert_trees_all_equal(_params_of(cut_dir), _params_of(full_dir))


def test_non_finite_loss_stops_with_named_term(tmp_path):
  config = configs.get('tiny')
  config.train.parallel = 'none'
  config.loss.reproj_scale = 0.0  # 0/0 in the pseudo-Huber: the reprojection term is NaN.
  with pytest.raises(train.NonFiniteLossError, match=r'reproj.* at step 0'):
    train.train_and_evaluate(config, str(tmp_path), log=lambda s: None)
  assert os.path.isdir(os.path.join(tmp_path, 'checkpoints', '0'))


def test_nrsfm_protocol_end_to_end(tmp_path):
  config = configs.get('nrsfm', 'pickup')
  tiny = configs.get('tiny')
  config.model, config.loss = tiny.model, tiny.loss
  config.data.window = 64
  config.train.num_steps = 2
  config.train.batch_size = 4
  config.train.parallel = 'none'
  result = train.train_and_evaluate(config, str(tmp_path), log=lambda s: None)
  assert set(result['per_sequence']) == {'pickup'}
  assert result['frames'] == 357
  assert np.isfinite(result['overall']['e3d']) and np.isfinite(result['overall']['e3d_akhter'])
  assert os.path.exists(os.path.join(tmp_path, 'eval.json'))


def test_pseudo3d_file_must_match_the_training_windows(tmp_path):
  config = configs.get('tiny')
  train_ds, _ = train.load_datasets(config)
  pseudo = np.random.default_rng(0).normal(size=train_ds.keypoints.shape[:-1] + (3,)).astype(np.float32)
  path = str(tmp_path / 'pseudo.npz')
  train.save_pseudo3d(path, pseudo, train_ds)
  np.testing.assert_array_equal(train.load_pseudo3d(path, train_ds), pseudo)
  other = train.load_datasets(configs.get('tiny'), scale=2 * train_ds.scale)[0]
  with pytest.raises(ValueError, match='scale'):
    train.load_pseudo3d(path, other)
  np.savez(str(tmp_path / 'bare.npz'), pseudo3d=pseudo)
  with pytest.raises(KeyError, match='save_pseudo3d'):
    train.load_pseudo3d(str(tmp_path / 'bare.npz'), train_ds)
  with pytest.raises(FileNotFoundError, match='nope.npz'):
    train.load_pseudo3d(str(tmp_path / 'nope.npz'), train_ds)


def test_unknown_config_keys_are_errors():
  config = configs.get('tiny')
  config.model.tcn_dilation = (1, 2)  # Typo for tcn_dilations.
  with pytest.raises(ValueError, match="tcn_dilation"):
    train.student_config(config, 17)
