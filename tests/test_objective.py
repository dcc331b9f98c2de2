"""Tests for nrsfm_jax.objective: the loss-term registry and the step under jit / pmap / shard_map."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nrsfm_jax import configs, data, loop, losses, objective, optim, train
from nrsfm_jax.data import batch_indices


@pytest.fixture(scope='module')
def setup():
  config = configs.get('tiny')
  train_ds, _ = data.make_datasets(config)
  tx = optim.make_optimizer(config, 10, 10)
  model, state = train.create_state(config, train_ds.num_points, train_ds.window_length, jax.random.PRNGKey(0), tx)
  idx = batch_indices(train_ds.num_windows, 8, seed=0, step=0)
  full = train_ds.take(idx)
  batch = {k: jnp.asarray(full[k]) for k in ('keypoints', 'visibility', 'mask')}
  # Some padding and missing points so the masked reductions are exercised.
  batch['mask'] = batch['mask'].at[1, 20:].set(0.0)
  batch['visibility'] = batch['visibility'].at[1, 20:].set(0.0).at[2, :, 3].set(0.0)
  # Teacher pseudo-3D (any camera-frame 3D will do here) to exercise that term too.
  batch['pseudo3d'] = jax.random.normal(jax.random.PRNGKey(5), batch['keypoints'].shape[:-1] + (3,))
  lcfg = objective.loss_config(config).replace_term('teacher', weight=0.5).replace_term('proc', weight=0.1)
  return config, model, state, batch, lcfg


@functools.cache
def _jitted_step(lcfg):
  # One jitted step per loss config: tests that share a config share its compiles (the suite's budget).
  return jax.jit(functools.partial(objective.train_step, loss_config=lcfg))


def _single(state, batch, lcfg, key):
  return _jitted_step(lcfg)(state, batch, key)


def test_loss_terms_present_and_finite(setup):
  _, _, state, batch, lcfg = setup
  # Here only: each term added to the shared setup costs compiles.
  lcfg = lcfg.replace_term('bones', weight=0.1).replace_term('hinges', weight=0.1)
  _, metrics = _single(state, batch, lcfg, jax.random.PRNGKey(1))
  for k in objective.LOSS_TERMS + ('total', 'grad_norm'):
    assert k in metrics, k
    assert np.isfinite(metrics[k]), k
  assert metrics['finite'] == 1.0
  expected = sum(lcfg.weight(k) * metrics[k] for k in objective.LOSS_TERMS)
  np.testing.assert_allclose(metrics['total'], expected, rtol=1e-5)


def test_jit_step_compiles_once_and_learns(setup):
  _, _, state, batch, lcfg = setup

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(state, batch, key):
    return objective.train_step(state, batch, key, loss_config=lcfg)

  key = jax.random.PRNGKey(1)
  losses = []
  for _ in range(4):
    state, m = step(state, batch, key)
    losses.append(float(m['total']))
  assert int(state.step) == 4
  assert losses[-1] < losses[0]


@pytest.mark.slow
@pytest.mark.parametrize('mode', ['pmap', 'shard_map'])
@pytest.mark.parametrize('num_devices', [4])
def test_data_parallel_matches_single_device(setup, mode, num_devices):
  _, _, state, batch, lcfg = setup
  assert jax.local_device_count() >= num_devices, 'conftest sets 4 fake CPU devices'
  key = jax.random.PRNGKey(1)
  ref_state, ref_metrics = _single(state, batch, lcfg, key)
  step = objective.make_step(lcfg, mode, devices=jax.local_devices()[:num_devices])
  # The wrapped step donates its state: hand it a copy of the shared fixture.
  pstate, pmetrics = step(step.prepare(jax.tree.map(jnp.copy, state)), batch, key)
  pstate = step.finish(pstate)
  for k in ('total', 'reproj', 'canon', 'teacher', 'smooth', 'grad_norm'):
    np.testing.assert_allclose(pmetrics[k], ref_metrics[k], rtol=1e-5, atol=1e-6, err_msg=k)
  chex.assert_trees_all_close(pstate.params, ref_state.params, rtol=1e-5, atol=1e-5)
  assert int(pstate.step) == 1


def test_cpu_dots_eigen_is_the_same_step(setup):
  # train.cpu_dots='eigen' compiles the step with XLA's Eigen dots instead of YNNPACK's fusions:
  # the same function, rounded differently. One device: make_step passes the options to jax.jit
  # the same way for 'none' and 'shard_map', and a shard_map case cost the suite 11 s of compiling.
  _, _, state, batch, lcfg = setup
  key = jax.random.PRNGKey(1)
  ref_state, ref_metrics = _single(state, batch, lcfg, key)
  options = loop.cpu_compiler_options('eigen')
  assert options == {'xla_cpu_experimental_ynn_fusion_type': ''}
  step = objective.make_step(lcfg, 'none', compiler_options=options)
  new_state, metrics = step(step.prepare(jax.tree.map(jnp.copy, state)), batch, key)
  np.testing.assert_allclose(metrics['total'], ref_metrics['total'], rtol=1e-5)
  chex.assert_trees_all_close(step.finish(new_state).params, ref_state.params, rtol=1e-5, atol=1e-5)
  assert loop.cpu_compiler_options('ynn') == {} and loop.cpu_compiler_options('eigen', backend='gpu') == {}
  with pytest.raises(ValueError, match="train.cpu_dots='mkl'"):
    loop.cpu_compiler_options('mkl')


@pytest.fixture(scope='module')
def bn_setup(setup):
  # C3DPO's options: BatchNorm (synced over the data-parallel axis), z-augmentation, z-equivariance.
  config, _, _, batch, _ = setup
  config = configs.get('tiny')
  config.model.norm = 'batch'
  config.loss.z_aug_deg = 22.5
  config.loss.z_equivariance_deg = 22.5
  model, state = train.create_state(
      config,
      batch['keypoints'].shape[2],
      batch['keypoints'].shape[1],
      jax.random.PRNGKey(0),
      optim.make_optimizer(config, 10, 10),
  )
  # flax's synced BatchNorm averages the devices' masked means with equal
  # weight, so the data-parallel step is exact when every device holds the
  # same number of real frames: no padded frames here (missing points stay).
  batch = dict(batch, mask=jnp.ones_like(batch['mask']))
  return model, state, batch, objective.loss_config(config)


@pytest.mark.slow
# shard_map only: pmap runs the same axis_name collectives (test_data_parallel_matches_single_device
# covers both wrappers), and its compile on 4 fake devices cost the suite 19 s.
@pytest.mark.parametrize('mode', ['shard_map'])
def test_batchnorm_and_z_equivariance_data_parallel_match_single_device(bn_setup, mode):
  model, state, batch, lcfg = bn_setup
  assert 'batch_stats' in state.params
  key = jax.random.PRNGKey(2)
  ref_state, ref_metrics = _single(state, batch, lcfg, key)
  # The running averages moved (the optimiser does not own them) ...
  moved = jax.tree.map(
      lambda a, b: float(jnp.max(jnp.abs(a - b))), ref_state.params['batch_stats'], state.params['batch_stats']
  )
  assert max(jax.tree.leaves(moved)) > 1e-4
  step = objective.make_step(lcfg, mode, devices=jax.local_devices()[:4])
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


def test_loss_config_reads_the_term_table_and_names_bad_keys():
  config = configs.get('tiny')
  lcfg = objective.loss_config(config)
  assert lcfg.weight('smooth') == config.loss.terms.smooth.weight
  assert lcfg.term('canon').get('n_rot') == config.loss.terms.canon.n_rot
  assert lcfg.weight('no_such_term') == 0.0
  config.loss.terms.smoothe = {'weight': 1.0}  # Typo for smooth.
  with pytest.raises(ValueError, match='smoothe.*registered terms'):
    objective.loss_config(config)
  config = configs.get('tiny')
  config.loss.w_smooth = 1.0  # The flat keys of older configs.
  with pytest.raises(ValueError, match='w_smooth'):
    objective.loss_config(config)


@pytest.mark.slow
def test_a_registered_term_is_one_function_and_one_config_line(setup):
  _, _, state, batch, lcfg = setup
  name = 'test_depth_l2'
  try:

    @objective.register_term(name)
    def depth_term(out, batch, ctx, term):  # A depth-magnitude penalty, for the test.
      del ctx, term
      return objective.Term(
          out['points'][..., 2] ** 2, jnp.broadcast_to(batch['mask'][..., None], out['points'].shape[:-1])
      )

    cfg = lcfg.replace_term(name, weight=0.25)
    _, metrics = _single(state, batch, cfg, jax.random.PRNGKey(1))
    assert name in metrics and np.isfinite(metrics[name]) and metrics[name] > 0
    _, base = _single(state, batch, lcfg, jax.random.PRNGKey(1))
    np.testing.assert_allclose(metrics['total'], base['total'] + 0.25 * metrics[name], rtol=1e-5)
  finally:
    objective.TERMS.pop(name, None)
    objective.LOSS_TERMS = tuple(objective.TERMS)


def test_frozen_modules_are_not_updated(setup):
  config, _, state, batch, lcfg = setup
  config = configs.get('tiny')
  config.optim.freeze = ('lifter', 'basis')
  state = state.replace(tx=optim.make_optimizer(config, 10, 10))
  state = state.replace(opt_state=state.tx.init(state.params))
  new_state = state
  for _ in range(2):  # The warm-up's first learning rate is 0.
    new_state, _ = _single(new_state, batch, lcfg, jax.random.PRNGKey(1))
  for name in ('lifter', 'basis'):
    chex.assert_trees_all_equal(new_state.params['params'][name], state.params['params'][name])
  moved = jax.tree.map(
      lambda a, b: float(jnp.max(jnp.abs(a - b))),
      new_state.params['params']['refiner'],
      state.params['params']['refiner'],
  )
  assert max(jax.tree.leaves(moved)) > 0


def test_teacher_term_weighs_joints_by_pseudo3d_weight():
  fn, needs = objective.TERMS['teacher']
  assert needs == ('pseudo3d',)
  term = objective.TermConfig(name='teacher', weight=1.0, kind='l2')
  points = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 17, 3))
  batch = {'pseudo3d': points.at[..., 4, 0].add(1.0), 'mask': jnp.ones((2, 5))}
  plain = losses.masked_mean(*fn({'points': points}, batch, None, term))
  ones = dict(batch, pseudo3d_weight=jnp.ones((2, 5, 17)))
  np.testing.assert_allclose(losses.masked_mean(*fn({'points': points}, ones, None, term)), plain, rtol=1e-6)
  # Only joint 4 counts: the term becomes that joint's distance (1 for the shifted joint).
  only = dict(batch, pseudo3d_weight=jnp.zeros((2, 5, 17)).at[..., 4].set(1.0))
  np.testing.assert_allclose(losses.masked_mean(*fn({'points': points}, only, None, term)), 1.0, rtol=1e-5)
  np.testing.assert_allclose(plain, 1.0 / 17, rtol=1e-5)


def test_teacher_term_on_the_lifters_own_points_leaves_the_refiner_to_the_other_terms(setup):
  _, _, state, batch, _ = setup
  fn, _ = objective.TERMS['teacher']
  term = objective.TermConfig(name='teacher', weight=1.0, kind='l2')
  out = {'points': batch['pseudo3d'] * 1.5, 'points_init': batch['pseudo3d']}
  b = {'pseudo3d': batch['pseudo3d'] + jnp.arange(17.0)[:, None] * 0.1, 'mask': batch['mask']}

  def value(on, outputs=out):
    return float(losses.masked_mean(*fn(outputs, b, None, term.replace(options=(('on', on),)))))

  on_points, on_init = value('points'), value('points_init')
  assert on_points != on_init
  np.testing.assert_allclose(value('points+points_init'), (on_points + on_init) / 2, rtol=1e-6)
  with pytest.raises(ValueError, match="teacher.on='shape'"):
    value('shape')
  # Through the student: held on points_init, the term sends the TCN refiner no gradient at all;
  # held on the refined points it does (the refiner is zero at init, so give it some weights first).
  params = jax.tree.map(lambda x: x + 0.01, state.params)
  lcfg = objective.LossConfig(terms=(term,))
  for on, moves in (('points_init', False), ('points', True)):
    lc = lcfg.replace_term('teacher', on=on)
    grads = jax.grad(lambda p: objective.compute_loss(p, state.apply_fn, batch, jax.random.PRNGKey(0), lc)[0])(params)
    refiner = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads['params']['refiner']))
    lifter = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads['params']['lifter']))
    assert (refiner > 0) == moves, (on, refiner)
    assert lifter > 0, on


def test_depth_smoothness_term_ignores_image_motion_and_needs_camera_points():
  fn, _ = objective.TERMS['smooth']
  options = (('alpha', 0.0), ('beta', 1.0), ('on', 'points'), ('components', 'depth'))
  term = objective.TermConfig(name='smooth', weight=1.0, kind='squared', options=options)
  t = jnp.arange(6.0)[None, :, None, None]
  # Every joint but the root accelerates in x (image motion): no depth term. Then in z: a term.
  xy = jnp.zeros((1, 6, 4, 3)).at[:, :, 1:, 0].set(jnp.broadcast_to(t[..., 0] ** 2, (1, 6, 3)))
  batch = {'mask': jnp.ones((1, 6))}
  assert float(losses.masked_mean(*fn({'points': xy}, batch, None, term))) == 0.0
  z = xy[..., [2, 1, 0]]
  assert float(losses.masked_mean(*fn({'points': z}, batch, None, term))) > 0.0
  with pytest.raises(ValueError, match="needs on='points'"):
    fn({'shape': z}, batch, None, term.replace(options=(*options[:2], ('on', 'shape'), options[3])))


def test_bone_term_reads_the_skeleton_from_its_config_and_names_a_bad_one():
  lcfg = objective.loss_config(configs.get('default'))
  term = lcfg.term('bones').replace(weight=1.0)
  assert term.get('bones') == data.CMU_BONES and term.get('pairs') == data.CMU_BONE_PAIRS
  fn, _ = objective.TERMS['bones']
  mocap = data.load_mocap(subjects='002')['002_01'][:8] / 1000.0  # A real skeleton: equal limbs, rigid bones.
  out = {'shape': jnp.asarray(mocap)[None]}
  batch = {'mask': jnp.ones((1, 8))}
  loss = jax.jit(lambda o: losses.masked_mean(*fn(o, batch, None, term)))
  assert float(loss(out)) < 1e-6
  assert float(loss({'shape': out['shape'].at[..., 3, 2].add(0.3)})) > 1e-3  # Right foot pushed away in depth.
  with pytest.raises(ValueError, match=r'config\.loss\.terms\.bones\.bones must list .* below 5'):
    fn({'shape': jnp.zeros((1, 8, 5, 3))}, batch, None, term)
  # Target lengths (loss.terms.bones.lengths > 0) come with the batch, one row per window.
  with_lengths = term.replace(options=tuple(sorted(dict(term.options, lengths=1.0).items())))
  with pytest.raises(ValueError, match=r"bones\.lengths > 0 needs batch\['bone_lengths'\]"):
    fn(out, batch, None, with_lengths)
  bones = np.asarray(data.CMU_BONES)
  true = np.linalg.norm(mocap[0, bones[:, 1]] - mocap[0, bones[:, 0]], axis=-1)[None]
  loss = jax.jit(lambda o, l: losses.masked_mean(*fn(o, dict(batch, bone_lengths=l), None, with_lengths)))
  assert float(loss(out, true)) < 1e-6 < float(loss(out, 1.2 * true))
  # The trainer fills it from the training 2D alone (data.sequence_bone_lengths), only when weighed.
  ds = data.cmu17_dataset(['002'], length=16)
  lcfg_on = lcfg.replace_term('bones', weight=1.0, lengths=1.0)
  extra = train.per_window_inputs(lcfg_on, ds)
  assert extra['bone_lengths'].shape == (ds.num_windows, len(data.CMU_BONES))
  assert train.per_window_inputs(lcfg, ds) == {}


def test_hinge_term_reads_its_joints_from_the_config_and_names_a_bad_one():
  lcfg = objective.loss_config(configs.get('default'))
  term = lcfg.term('hinges').replace(weight=1.0)
  assert term.get('hinges') == data.CMU_HINGES
  fn, _ = objective.TERMS['hinges']
  mocap = jnp.asarray(data.load_mocap(subjects='002')['002_01'][:8] / 1000.0)  # Bent the anatomical way.
  batch = {'mask': jnp.ones((1, 8))}
  loss = jax.jit(lambda o: losses.masked_mean(*fn(o, batch, None, term)))
  assert float(loss({'shape': mocap[None]})) < float(loss({'shape': (mocap * jnp.array([1, 1, -1.0]))[None]}))
  with pytest.raises(ValueError, match=r'config\.loss\.terms\.hinges\.hinges must list .* below 5'):
    fn({'shape': jnp.zeros((1, 8, 5, 3))}, batch, None, term)
