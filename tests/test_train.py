"""Tests for nrsfm_jax.train (the student's trainer) and nrsfm_jax.loop: resume, non-finite stop, e2e."""

import json
import os

import chex
import jax
import numpy as np
import pytest

from nrsfm_jax import configs, loop, models, train


def _params_of(workdir):
  from nrsfm_jax import checkpoint

  params, _ = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints')).restore_params()
  return params


@pytest.mark.slow
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


@pytest.mark.slow
def test_non_finite_loss_stops_with_named_term(tmp_path):
  config = configs.get('tiny')
  config.train.parallel = 'none'
  config.loss.terms.reproj.scale = 0.0  # 0/0 in the pseudo-Huber: the reprojection term is NaN.
  with pytest.raises(loop.NonFiniteLossError, match=r'reproj.* at step 0'):
    train.train_and_evaluate(config, str(tmp_path), log=lambda s: None)
  assert os.path.isdir(os.path.join(tmp_path, 'checkpoints', '0'))


@pytest.mark.slow
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
