"""Tests for nrsfm_jax.train (the student's trainer) and nrsfm_jax.loop: resume, non-finite stop, e2e."""

import dataclasses
import json
import os

import chex
import jax
import numpy as np
import pytest

from nrsfm_jax import configs, data, geometry, loop, models, objective, scoring, train


def _params_of(workdir):
  from nrsfm_jax import checkpoint

  params, _ = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints')).restore_params()
  return params


@pytest.mark.slow
def test_end_to_end_resume_matches_uninterrupted(tmp_path):
  config = configs.get('tiny')
  config.train.parallel = 'none'
  config.train.eval_every = 2
  config.train.plot = True  # (off in 'tiny')
  logs = []
  full_dir, cut_dir = str(tmp_path / 'full'), str(tmp_path / 'cut')
  result = train.train_and_evaluate(config, full_dir, log=logs.append)
  config.train.plot = False
  assert set(result['overall']) == {'mpjpe', 'pa_mpjpe', 'stress', 'accel_error'}
  assert all(np.isfinite(v) for v in result['overall'].values())
  assert result['frames'] > 0 and '006_01' in result['per_sequence']
  assert any('ETA' in line for line in logs)
  for name in ('config.json', 'metrics.jsonl', 'eval.json', 'eval_predictions.npz', 'training.png'):
    assert os.path.exists(os.path.join(full_dir, name)), name
  with open(os.path.join(full_dir, 'training.png'), 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  assert any('loss curves and eval scores' in line for line in logs)
  with open(os.path.join(full_dir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  losses = [r for r in rows if 'reproj' in r]
  assert losses[-1]['step'] == config.train.num_steps
  # Eval scores over steps: every eval_every steps, and the final evaluation (= eval.json).
  evals = [r for r in rows if 'eval/mpjpe' in r]
  assert [r['step'] for r in evals] == [2, 4, 6]
  assert evals[-1]['eval/mpjpe'] == pytest.approx(result['overall']['mpjpe'])
  assert any(line.startswith('eval at step 2: mpjpe=') for line in logs)

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
  assert not os.path.exists(os.path.join(cut_dir, 'training.png'))  # train.plot=False draws none


@pytest.mark.slow
def test_non_finite_loss_stops_with_named_term(tmp_path):
  config = configs.get('tiny')
  config.train.parallel = 'none'
  config.loss.terms.reproj.scale = 1e-30  # scale² underflows float32: the reprojection term is inf.
  with pytest.raises(loop.NonFiniteLossError, match=r'reproj.* at step 0.*a rerun starts afresh'):
    train.train_and_evaluate(config, str(tmp_path), log=lambda s: None)
  assert not os.path.exists(os.path.join(tmp_path, 'checkpoints', '0'))  # Nothing suspect is saved.


def _toy_run(workdir, lr, num_steps, log=lambda s: None):
  """run_loop on a 3-parameter quadratic with Adam: the loop and objective.accept_if_finite, no model."""
  import jax.numpy as jnp
  import ml_collections
  import optax

  from nrsfm_jax import checkpoint, objective

  state = objective.TrainState.create(apply_fn=None, params={'w': jnp.ones(3)}, tx=optax.adam(lr))
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'), max_to_keep=1)
  state, _ = ckpt.restore(state)

  @jax.jit
  def step_fn(state, batch):
    loss, grads = jax.value_and_grad(lambda p: jnp.sum((p['w'] * batch['x']) ** 2))(state.params)
    new, grad_norm, finite = objective.accept_if_finite(state.apply_gradients(grads=grads), state, loss, grads)
    return new, {'loss': loss, 'grad_norm': grad_norm, 'finite': finite.astype(jnp.float32)}

  cfg = ml_collections.ConfigDict({'log_every': 1, 'checkpoint_every': 3})
  batch_fn = lambda step: {'x': jnp.full(3, 1e9)}  # (w x)² overflows float32 once |w| passes ~1e10.
  state = loop.run_loop(
      state, step_fn, batch_fn, num_steps=num_steps, ckpt=ckpt, meta={}, workdir=workdir, train_config=cfg, log=log
  )
  return state, ckpt


def test_diverging_lr_keeps_the_good_checkpoint_and_a_sane_rerun_resumes(tmp_path):
  """Issue #11: lr = 1e30 used to save a diverged state as "the last good state", rotating out a good one."""
  workdir = str(tmp_path)
  good, ckpt = _toy_run(workdir, 1e-3, 3)
  assert ckpt.manager.all_steps() == [3]
  with pytest.raises(
      loop.NonFiniteLossError, match=r'at step \d+: the step was not applied.*checkpoint of step 3 .* is kept'
  ):
    _toy_run(workdir, 1e30, 9)
  # max_to_keep=1: any save of the diverged state would have replaced step 3.
  restored, ckpt = _toy_run(workdir, 1e-3, 3)
  assert ckpt.manager.all_steps() == [3]
  chex.assert_trees_all_equal(restored.params, good.params)
  lines = []
  final, _ = _toy_run(workdir, 1e-3, 6, log=lines.append)
  assert int(final.step) == 6 and np.all(np.abs(final.params['w']) < 2.0)
  # A finite loss and gradient whose update overflows the parameters is refused too.
  # (lr = 1e39 is inf in float32: the first update makes w infinite while its loss and gradient are not.)
  with pytest.raises(loop.NonFiniteLossError, match=r'non-finite updated parameters at step 0.*rerun starts afresh'):
    _toy_run(str(tmp_path / 'fresh'), 1e39, 9)
  assert not os.path.exists(os.path.join(tmp_path, 'fresh', 'checkpoints', '0'))


@pytest.mark.slow
def test_nrsfm_protocol_end_to_end(tmp_path):
  config = configs.get('nrsfm', 'pickup')
  tiny = configs.get('tiny')
  config.model, config.loss = tiny.model, tiny.loss
  config.data.window = 64
  config.train.num_steps = 2
  config.train.batch_size = 4
  config.train.parallel = 'none'
  config.train.plot = False
  result = train.train_and_evaluate(config, str(tmp_path), log=lambda s: None)
  assert set(result['per_sequence']) == {'pickup'}
  assert result['frames'] == 357
  assert np.isfinite(result['overall']['e3d']) and np.isfinite(result['overall']['e3d_akhter'])
  assert os.path.exists(os.path.join(tmp_path, 'eval.json'))


def test_unknown_config_keys_are_errors():
  config = configs.get('tiny')
  config.model.tcn_dilation = (1, 2)  # Typo for tcn_dilations.
  with pytest.raises(ValueError, match='tcn_dilation'):
    models.from_config('student', config.model, 17)


def test_check_resume_names_every_differing_key(tmp_path):
  new = {'seed': 0, 'scale': 1.0, 'mode': 'self'}
  loop.check_resume(str(tmp_path), None, new, ('seed', 'scale'))
  loop.check_resume(str(tmp_path), {'seed': 0, 'scale': 1.0 + 1e-9}, new, ('seed', 'scale'))
  loop.check_resume(str(tmp_path), {'scale': 1.0}, new, ('seed', 'scale'))  # Older metadata: no seed.
  with pytest.raises(ValueError, match=r'seed 1 \(this config: 0\), scale 2.0.*another --workdir'):
    loop.check_resume(str(tmp_path), {'seed': 1, 'scale': 2.0}, new, ('seed', 'scale'))


def test_c3dpo_lifter_config_is_the_recipe_the_readme_ran():
  """configs/c3dpo.py:lifter is the lifter row with the overrides of README's "C3DPO's recipe in JAX" run."""
  ran = configs.get('default', 'lifter')
  overrides = {
      'model.lifter_width': 1024,
      'model.lifter_blocks': 6,
      'model.canon_width': 1024,
      'model.canon_blocks': 6,
      'loss.z_aug_deg': 22.5,
      'loss.z_equivariance_deg': 22.5,
      'model.norm': 'batch',
      'optim.name': 'sgd',
      'optim.schedule': 'constant',
      'optim.weight_decay': 5e-4,
      'optim.grad_clip': 0.0,
      'optim.warmup_steps': 0,
      'loss.terms.bones.weight': 0.0,
      'loss.terms.reproj.scale': 0.01,
      'loss.terms.canon.scale': 0.01,
      'train.cpu_dots': 'eigen',
      'train.restarts': 1,
      'model.trunk_init': 'c3dpo',
  }
  for key, value in overrides.items():
    *path, last = key.split('.')
    section = ran
    for p in path:
      section = section[p]
    section[last] = value
  assert configs.get('c3dpo', 'lifter').to_dict() == ran.to_dict()
  # The other variants only take C3DPO's size.
  tcn = configs.get('c3dpo', 'tcn')
  assert tcn.model.lifter_width == 1024 and tcn.model.norm == 'layer' and tcn.optim.name == 'adam'


def test_save_config_reports_changed_keys(tmp_path):
  config = configs.get('tiny')
  logs = []
  loop.save_config(str(tmp_path), config, logs.append)
  assert not logs
  config.train.num_steps = 7
  loop.save_config(str(tmp_path), config, logs.append)
  assert logs and 'train.num_steps' in logs[0]
  with open(tmp_path / 'config.json') as f:
    assert json.load(f)['train']['num_steps'] == 7


def test_init_from_takes_every_matching_parameter(run, loaded):
  import flax.traverse_util

  workdir, _ = run
  _, _, source, meta = loaded
  config = configs.get('tiny', 'lifter')  # No refiner: a strict subset of the tcn run's parameters.
  _, state = train.create_state(config, 17, 1, jax.random.PRNGKey(7))
  logs = []
  params = train.init_params_from(workdir, state.params, meta['scale'], logs.append)
  flat = flax.traverse_util.flatten_dict(params, sep='/')
  src = flax.traverse_util.flatten_dict(jax.device_get(source), sep='/')
  assert flat and all(np.array_equal(v, src[k]) for k, v in flat.items())
  assert 'new: none' in logs[0]
  with pytest.raises(ValueError, match='2D scale'):
    train.init_params_from(workdir, state.params, 2 * meta['scale'])


def test_stacked_rows_start_from_the_lifter_row():
  from nrsfm_jax import ablation

  cfg = ablation.stacked(configs.get('tiny', 'tcn'), '/runs/lifter')
  assert cfg.train.init_from == '/runs/lifter' and cfg.train.num_steps == ablation.STACK_OVERRIDES['train.num_steps']
  assert cfg.optim.lr == ablation.STACK_OVERRIDES['optim.lr']
  with pytest.raises(ValueError, match='include lifter'):
    ablation.run_cmu17('/nonexistent', ['tcn'], stack=True)


def test_teacher_confidence_weights_from_the_cached_spread(tmp_path):
  from nrsfm_jax import data, objective

  config = configs.get('tiny', 'teacher')
  train_ds, _ = data.make_datasets(config)
  pseudo = np.zeros(train_ds.keypoints.shape[:-1] + (3,), np.float32)
  spread = np.ones(pseudo.shape[:-1], np.float32)
  spread[..., 3] = 3.0  # One joint the hypotheses disagree on.
  path = str(tmp_path / 'p.npz')
  data.save_pseudo3d(path, pseudo, train_ds, spread=spread)
  config.train.pseudo3d = path
  lines = []
  off = train._teacher_targets(config, objective.loss_config(config), train_ds, lines.append)
  assert off[1] is None and off[0].shape == pseudo.shape
  config.loss.terms.teacher.confidence_scale = 1.0
  _, weight = train._teacher_targets(config, objective.loss_config(config), train_ds, lines.append)
  # τ = the median spread (1): agreeing joints weigh 1/2, the disputed one 1/10.
  np.testing.assert_allclose(weight[..., 0], 0.5, rtol=1e-5)
  np.testing.assert_allclose(weight[..., 3], 0.1, rtol=1e-5)
  assert any('median spread' in line for line in lines)
  config.loss.terms.teacher.confidence_scale = -1.0
  with pytest.raises(ValueError, match='confidence_scale'):
    train._teacher_targets(config, objective.loss_config(config), train_ds, lines.append)


def test_pseudo3d_hinge_filter_leaves_mirrored_limbs_of_the_targets_out(tmp_path):
  from nrsfm_jax import data, losses, objective

  config = configs.get('tiny', 'teacher')
  train_ds, _ = data.make_datasets(config)
  mocap = data.load_mocap(subjects='006')['006_01'][::10]
  body = mocap[np.asarray(losses.hinge_bend(mocap, data.CMU_HINGES)).min(-1) > 0.1][0]
  pseudo = np.broadcast_to(body, train_ds.keypoints.shape[:-1] + (3,)).astype(np.float32).copy()
  a, b, c = data.CMU_HINGES[3][:3]  # left shoulder, elbow, wrist
  pseudo[0, 1:3, [b, c], 2] = 2 * pseudo[0, 1:3, [a], 2] - pseudo[0, 1:3, [b, c], 2]  # the left arm mirrored
  path = str(tmp_path / 'p.npz')
  data.save_pseudo3d(path, pseudo, train_ds, spread=np.ones(pseudo.shape[:-1], np.float32))
  config.train.pseudo3d = path
  lines = []
  assert train._teacher_targets(config, objective.loss_config(config), train_ds, lines.append)[1] is None
  config.train.pseudo3d_hinge_filter = 'limbs'
  targets, weight = train._teacher_targets(config, objective.loss_config(config), train_ds, lines.append)
  np.testing.assert_allclose(targets, pseudo)  # The targets stay; only their weights change.
  mask = np.broadcast_to(np.asarray(train_ds.mask)[..., None] > 0, weight.shape)
  expect = mask.astype(np.float32)
  expect[0, 1:3, [b, c]] = 0.0
  np.testing.assert_array_equal(weight, expect)
  assert any("pseudo3d_hinge_filter='limbs' keeps" in line for line in lines)
  # With the hypotheses' confidence the two weights multiply.
  config.loss.terms.teacher.confidence_scale = 1.0
  _, both = train._teacher_targets(config, objective.loss_config(config), train_ds, lines.append)
  np.testing.assert_allclose(both, 0.5 * expect, rtol=1e-5)
  config.train.pseudo3d_hinge_filter = 'joints'
  with pytest.raises(configs.ConfigError, match='train.pseudo3d_hinge_filter'):
    train._teacher_targets(config, objective.loss_config(config), train_ds, lines.append)


def test_one_run_per_workdir(tmp_path):
  import socket
  import subprocess

  workdir = str(tmp_path)
  lock = os.path.join(workdir, loop.LOCK_NAME)
  lines = []
  with loop.workdir_lock(workdir, lines.append):
    with open(lock) as f:
      assert json.load(f) == {'pid': os.getpid(), 'host': socket.gethostname()}
    with pytest.raises(loop.WorkdirBusyError, match=f'in use by process {os.getpid()}'):
      with loop.workdir_lock(workdir):
        pass
  assert not os.path.exists(lock)  # Released, also after the error inside.
  # A live holder (this test's parent process): the trainer refuses before touching anything.
  with open(lock, 'w') as f:
    json.dump({'pid': os.getppid(), 'host': socket.gethostname()}, f)
  with pytest.raises(loop.WorkdirBusyError, match=rf'{os.getppid()} on {socket.gethostname()}.*another --workdir'):
    train.train_and_evaluate(configs.get('tiny'), workdir, log=lines.append)
  assert sorted(os.listdir(workdir)) == [loop.LOCK_NAME]
  # A holder that is gone: taken over with a note, then released.
  gone = subprocess.Popen(['true'])
  gone.wait()
  with open(lock, 'w') as f:
    json.dump({'pid': gone.pid, 'host': socket.gethostname()}, f)
  with loop.workdir_lock(workdir, lines.append):
    pass
  assert any(f'taking over the lock of process {gone.pid}' in line for line in lines)
  assert not os.path.exists(lock)
  with open(lock, 'w') as f:
    f.write('{not json')
  with pytest.raises(loop.WorkdirBusyError, match='cannot be read'):
    with loop.workdir_lock(workdir):
      pass


def _train_script(workdir, *flags):
  """Runs ``experiments.train`` on the tiny config with ``flags``; returns the finished process."""
  import subprocess
  import sys

  return subprocess.run(
      [sys.executable, '-m', 'experiments.train', f'--workdir={workdir}', '--config=nrsfm_jax/configs/tiny.py', *flags],
      capture_output=True,
      text=True,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
      timeout=120,
  )


def _one_error_line(proc) -> str:
  """The single stderr line of a script that stopped on a user error (exit 1, no traceback)."""
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 1 and len(lines) == 1 and 'Traceback' not in proc.stderr, proc.stderr
  return lines[0]


def test_train_script_reports_a_busy_workdir_in_one_line(tmp_path):
  import socket

  with open(tmp_path / loop.LOCK_NAME, 'w') as f:
    json.dump({'pid': os.getppid(), 'host': socket.gethostname()}, f)
  proc = _train_script(tmp_path)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1].startswith(f'error: {tmp_path} is in use by process {os.getppid()}')
  assert 'Traceback' not in proc.stderr


@pytest.mark.parametrize(
    'flag, message',
    [
        (
            '--config.train.num_step=1',
            "--config.train.num_step=1: config.train has no key 'num_step' (did you mean 'num_steps'?)",
        ),
        ('--config.foo.bar=1', "--config.foo.bar=1: config has no key 'foo'"),
        (
            '--config.data.sequence=nope',
            "config.data.sequence='nope' does not apply to config.data.name='cmu17' (it is read by: nrsfm)",
        ),
        ('--config.train.batch_size=0', 'config.train.batch_size must be >= 1; got 0.'),
        ('--config.train.cpu_dots=mkl', "config.train.cpu_dots must be one of ('ynn', 'eigen'); got 'mkl'."),
    ],
)
def test_train_script_reports_config_mistakes_in_one_line(tmp_path, flag, message):
  """Issue #11: an unknown key was a 55-line traceback, data.sequence with cmu17 was ignored."""
  assert _one_error_line(_train_script(tmp_path, flag)).startswith(f'error: {message}')


def test_the_bones_term_is_on_only_where_the_skeleton_is_the_human_one():
  assert configs.get('default', 'lifter').loss.terms.bones.weight > 0  # cmu17: CMU_BONES apply.
  for variant in ('lifter', 'windows', 'tcn'):  # Marker sets: no bone list.
    assert configs.get('nrsfm', f'drink:{variant}').loss.terms.bones.weight == 0


def test_validate_names_the_config_key_at_fault():
  for name, arg in (('default', None), ('tiny', None), ('paper', None), ('nrsfm', 'pickup'), ('teacher', 'self')):
    configs.validate(configs.get(name, arg))
  cases = [
      ('default', lambda c: setattr(c.data, 'dropout', 1.0), r'config\.data\.dropout must be in \[0, 1\); got 1\.0'),
      ('default', lambda c: setattr(c.optim, 'lr', -1.0), r'config\.optim\.lr must be finite and > 0'),
      (
          'default',
          lambda c: setattr(c.loss.terms.smooth, 'weight', -0.1),
          r'config\.loss\.terms\.smooth\.weight must be',
      ),
      (
          'default',
          lambda c: setattr(c.data, 'name', 'cmu'),
          r"config\.data\.name='cmu' is not a data source \(did you mean 'cmu17'\?\)",
      ),
      (
          'teacher',
          lambda c: setattr(c.diffusion, 'num_hypotheses', 0),
          r'config\.diffusion\.num_hypotheses must be >= 1',
      ),
      (
          'default',
          lambda c: setattr(c.train, 'eval_bone_projection', 'snap'),
          r"config\.train\.eval_bone_projection must be one of \('none', 'clip', 'full'\); got 'snap'",
      ),
      (
          'default',
          lambda c: setattr(c.train, 'eval_bone_gain', 0.0),
          r'config\.train\.eval_bone_gain must be finite and > 0',
      ),
      (
          'default',
          lambda c: setattr(c.loss.terms.smooth, 'components', 'z'),
          r"config\.loss\.terms\.smooth\.components must be one of \('xyz', 'depth'\); got 'z'",
      ),
      (
          'default',
          lambda c: setattr(c.loss.terms.bones, 'length_quantile', 1.5),
          r'config\.loss\.terms\.bones\.length_quantile must be in \(0, 1\]',
      ),
  ]
  for name, change, message in cases:
    config = configs.get(name, 'pickup' if name == 'nrsfm' else None)
    change(config)
    with pytest.raises(configs.ConfigError, match=message):
      configs.validate(config)
  # Keys a user set that the chosen source does not read (the command line's overrides).
  config = configs.get('nrsfm', 'pickup')
  configs.check_applies(config, ['data.sequence', 'data.window', 'train.num_steps'])
  with pytest.raises(
      configs.ConfigError,
      match=r"config\.data\.train_subjects='' does not apply to config\.data\.name='nrsfm' "
      r'\(it is read by: cmu17, h36m\)',
  ):
    configs.check_applies(config, ['data.train_subjects'])
  assert loop.overridden_keys(['--config.data.sequence=x', '--workdir=w', '--config=f.py', '--config.a.b=1']) == [
      'data.sequence',
      'a.b',
  ]


def test_train_script_reports_unusable_data_in_one_line(tmp_path):
  """Issue #11: a 2D coordinate of 1e30 trained "fine" into predictions of 1e25."""

  keypoints = np.random.default_rng(0).uniform(0, 640, size=(30, 17, 2))
  keypoints[4, 2, 0] = 1e30
  np.savez(tmp_path / 'tracks.npz', keypoints=keypoints)
  proc = _train_script(tmp_path / 'run', '--config.data.name=tracks', f'--config.data.path={tmp_path / "tracks.npz"}')
  assert _one_error_line(proc).startswith(
      f"error: {tmp_path / 'tracks.npz'}: 'keypoints': 2D keypoint at frame 4, point 2 lies 1e+30"
  )


@pytest.mark.slow
def test_restarts_keep_the_seed_with_the_lowest_training_objective(tmp_path):
  config = configs.get('tiny', 'lifter')
  config.train.parallel = 'none'
  config.train.restarts = 2
  config.train.selection = 'objective'
  config.seed = 3
  workdir = str(tmp_path / 'run')
  logs = []
  assert train.train_and_evaluate(config, workdir, log=logs.append, evaluate=False) == {}
  with open(os.path.join(workdir, 'restarts.json')) as f:
    summary = json.load(f)
  entries = summary['restarts']
  assert [e['seed'] for e in entries] == [3, 4]
  totals = [e['objective']['total'] for e in entries]
  assert all(np.isfinite(totals)) and totals[0] != totals[1]
  chosen = entries[int(np.argmin(totals))]
  assert summary['chosen_seed'] == chosen['seed']
  # The run's checkpoint is the chosen restart's, and its objective is the one recorded.
  chex.assert_trees_all_equal(_params_of(workdir), _params_of(chosen['workdir']))
  from nrsfm_jax import data as data_lib
  from nrsfm_jax import runs

  _, model, params, meta = runs.load_run(workdir)
  assert meta['seed'] == chosen['seed']
  again = train.selection_objective(config, model.apply, params, data_lib.make_datasets(config)[0])
  np.testing.assert_allclose(again['total'], chosen['objective']['total'], rtol=1e-5)
  assert any(f'kept seed {chosen["seed"]}' in line for line in logs)
  # Every restart also has its hinge score (the 'hinges' selection's), from the training 2D.
  for e in entries:
    assert 0.0 <= e['hinge_disagreement'] <= 0.5
  again = train.hinge_disagreement(config, model.apply, params, data_lib.make_datasets(config)[0])
  np.testing.assert_allclose(again, chosen['hinge_disagreement'], rtol=1e-5)


def test_select_restart_by_objective_or_by_hinges():
  entries = [
      {'seed': 0, 'objective': {'total': 0.30}, 'hinge_disagreement': 0.10},
      {'seed': 1, 'objective': {'total': 0.27}, 'hinge_disagreement': 0.20},
      {'seed': 2, 'objective': {'total': 0.31}, 'hinge_disagreement': 0.1004},
  ]
  assert train.select_restart(entries, 'objective')['seed'] == 1
  # Seeds 0 and 2 tie on hinges at 1e-3: the lower objective decides.
  assert train.select_restart(entries, 'hinges')['seed'] == 0
  with pytest.raises(configs.ConfigError, match='selection must be one of'):
    train.select_restart(entries, 'nope')
  with pytest.raises(configs.ConfigError, match='no hinge_disagreement'):
    train.select_restart([{'seed': 0, 'objective': {'total': 1.0}}], 'hinges')
  config = configs.get('tiny', 'lifter')
  config.train.selection = 'bogus'
  with pytest.raises(configs.ConfigError, match='train.selection'):
    configs.validate(config)


def test_hinge_selection_on_data_without_those_joints_stops_before_training(tmp_path):
  config = configs.get('tiny', 'lifter')
  config.train.restarts = 2
  config.train.selection = 'hinges'
  config.loss.terms.hinges.hinges = ((0, 1, 2, 3, 40),)
  with pytest.raises(configs.ConfigError, match="selection='hinges' needs"):
    train.train_and_evaluate(config, str(tmp_path / 'run'), log=lambda _: None)
  assert not os.path.exists(tmp_path / 'run' / 'restarts')


def test_pseudo3d_from_a_run_is_that_runs_own_reconstructions(run, loaded):
  # train.pseudo3d = a student run's workdir: the teacher term fits its reconstructions, unflipped.
  workdir, _ = run
  config, model, params, _ = loaded
  config = configs.get('tiny')
  config.train.pseudo3d = workdir
  config.loss.terms.teacher.weight = 1.0
  train_ds, _ = data.make_datasets(config)
  lcfg = objective.loss_config(config)
  targets, weights = train._teacher_targets(config, lcfg, train_ds, log=lambda s: None)
  # As the run is evaluated: its TCN sees its receptive field around every window.
  context = scoring.eval_context(loaded[0])
  assert context != (0, 0)
  expected = geometry.root_relative(scoring.predict(model.apply, params, train_ds, context=context))
  np.testing.assert_allclose(targets, expected, atol=1e-6)
  assert weights is None
  # train.pseudo3d_sigma smooths them over time within each window, padding excluded.
  config.train.pseudo3d_sigma = 2.0
  smoothed, _ = train._teacher_targets(config, lcfg, train_ds, log=lambda s: None)
  np.testing.assert_allclose(smoothed, geometry.smooth_over_time(expected, 2.0, train_ds.mask), atol=1e-6)
  present = train_ds.mask > 0
  accel = lambda x: np.abs(np.diff(np.asarray(x), 2, axis=1))[present[:, 2:] & present[:, 1:-1] & present[:, :-2]]
  assert accel(smoothed).mean() < 0.5 * accel(expected).mean()
  config.train.pseudo3d_sigma = 0.0
  config.loss.terms.teacher.confidence_scale = 1.0
  with pytest.raises(ValueError, match='needs hypotheses'):
    train._teacher_targets(config, objective.loss_config(config), train_ds, log=lambda s: None)


def test_pseudo3d_projection_eval_gives_targets_the_rows_test_time_treatment(tmp_path):
  # train.pseudo3d_projection='eval': a teacher's pseudo-3D gets the observed x, y of the visible
  # points and the row's test-time bone projection, what the row's own outputs get when scored.
  config = configs.get('tiny')
  config.loss.terms.teacher.weight = 1.0
  config.train.eval_bone_gain = 2.0
  train_ds, _ = data.make_datasets(config)
  rng = np.random.default_rng(0)
  raw = rng.normal(size=train_ds.keypoints.shape[:-1] + (3,)).astype(np.float32)
  config.train.pseudo3d = str(tmp_path / 'pseudo3d.npz')
  data.save_pseudo3d(config.train.pseudo3d, raw, train_ds)
  lcfg = objective.loss_config(config)
  same, _ = train._teacher_targets(config, lcfg, train_ds, log=lambda s: None)
  np.testing.assert_allclose(same, raw)  # 'none', the default: the targets as the teacher made them.
  config.train.pseudo3d_projection = 'eval'
  lines = []
  treated, _ = train._teacher_targets(config, lcfg, train_ds, log=lines.append)
  assert any('observed x, y, bone projection clip (gain 2)' in line for line in lines)
  seen = train_ds.visibility > 0
  assert np.any(seen) and not np.all(seen)
  expected_xy = np.where(seen[..., None], train_ds.keypoints, raw[..., :2])
  bones = tuple(map(tuple, config.loss.terms.bones.bones))
  expected = scoring.project_bones(
      np.concatenate([expected_xy, raw[..., 2:]], -1), train_ds, bones=bones, mode='clip', gain=2.0
  )
  np.testing.assert_allclose(treated, expected, atol=1e-6)
  assert np.abs(treated[..., 2] - raw[..., 2]).max() > 1e-3  # The projection moved some depth.
  # With the projection off only the visible points' x, y change.
  config.train.eval_bone_projection = 'none'
  xy_only, _ = train._teacher_targets(config, lcfg, train_ds, log=lambda s: None)
  np.testing.assert_allclose(xy_only[..., :2], expected_xy, atol=1e-6)
  np.testing.assert_allclose(xy_only[..., 2], raw[..., 2], atol=1e-6)
  config.train.pseudo3d_projection = 'test'
  with pytest.raises(ValueError, match='pseudo3d_projection'):
    train._teacher_targets(config, lcfg, train_ds, log=lambda s: None)
  with pytest.raises(configs.ConfigError, match='train.pseudo3d_projection'):
    configs.validate(config)


def test_self_teacher_targets_as_the_student_is_evaluated(run, loaded):
  # teacher.target_projection='eval': the self-mode teacher's targets are the student's
  # reconstructions as it is scored (observed x, y, then its own test-time bone projection).
  from nrsfm_jax import teacher

  workdir, _ = run
  run_config, model, params, _ = loaded
  assert run_config.train.eval_bone_projection == 'clip'
  train_ds, _ = data.make_datasets(configs.get('tiny'))
  lines = []
  plain = teacher.reconstruction_targets(workdir, train_ds, resolve_flips=False, log=lines.append)
  treated = teacher.reconstruction_targets(workdir, train_ds, resolve_flips=False, as_evaluated=True, log=lines.append)
  raw = scoring.predict(model.apply, params, train_ds, context=scoring.eval_context(run_config))
  np.testing.assert_allclose(plain, geometry.root_relative(raw), atol=1e-6)
  np.testing.assert_allclose(
      treated, geometry.root_relative(scoring.as_evaluated(run_config, raw, train_ds)), atol=1e-6
  )
  assert np.abs(treated - plain).max() > 1e-3
  assert any('bone projection clip (gain 1)' in line for line in lines)
  config = configs.get('teacher', 'self')
  config.teacher.target_projection = 'snap'
  with pytest.raises(configs.ConfigError, match='teacher.target_projection'):
    configs.validate(config)


def test_selection_objective_reads_only_the_training_2d():
  config = configs.get('tiny', 'lifter')
  from nrsfm_jax import data as data_lib

  train_ds = data_lib.make_datasets(config)[0]
  model, state = train.create_state(config, train_ds.num_points, train_ds.window_length, jax.random.PRNGKey(0))
  score = train.selection_objective(config, model.apply, state.params, train_ds, max_windows=8)
  assert set(score) == {'reproj', 'canon', 'bones', 'total'}
  weights = {k: config.loss.terms[k].weight for k in ('reproj', 'canon', 'bones')}
  np.testing.assert_allclose(score['total'], sum(weights[k] * score[k] for k in weights), rtol=1e-5)
  # Deterministic, and 3D-free: the same score with the 3D removed from the dataset.
  assert train.selection_objective(config, model.apply, state.params, train_ds, max_windows=8) == score
  assert train_ds.points3d is not None
  blind = dataclasses.replace(train_ds, points3d=None)
  assert train.selection_objective(config, model.apply, state.params, blind, max_windows=8) == score


def test_tune_malloc_applies_on_glibc_and_can_be_turned_off(monkeypatch):
  import platform
  import sys

  from nrsfm_jax import loop

  monkeypatch.setenv(loop.MALLOC_ENV, '0')
  assert loop.tune_malloc() is False
  monkeypatch.delenv(loop.MALLOC_ENV)
  if sys.platform.startswith('linux') and platform.libc_ver()[0] == 'glibc':
    assert loop.tune_malloc() is True  # every mallopt accepted
