"""Tests for nrsfm_jax.ablation's cross-subject (leave-one-subject-out) protocol."""

import json
import os

import numpy as np
import pytest

from nrsfm_jax import ablation, configs
from nrsfm_jax import data as data_lib


def test_cross_subject_folds_leave_each_subject_out_once():
  folds = ablation.cross_subject_folds(['002', '003', '005', '006'])
  assert [s for s, _ in folds] == ['002', '003', '005', '006']
  for held_out, trained_on in folds:
    assert held_out not in trained_on and sorted(trained_on + [held_out]) == ['002', '003', '005', '006']
  with pytest.raises(ValueError, match='two distinct'):
    ablation.cross_subject_folds(['002'])
  with pytest.raises(ValueError, match='two distinct'):
    ablation.cross_subject_folds(['002', '002'])


def _tiny_lifter(row):
  c = configs.get('tiny', row)
  c.train.num_steps = 2
  c.train.parallel = 'none'
  return c


@pytest.mark.slow
def test_cross_subject_run_reports_every_fold_and_the_mean(tmp_path):
  lines = []
  result = ablation.run_cmu17_cross_subject(
      str(tmp_path), ['lifter'], ['002', '003'], student_config=_tiny_lifter, log=lines.append
  )
  assert set(result['folds']) == {'002', '003'}
  for held_out, fold in result['folds'].items():
    assert set(fold) == {'lifter', 'depth0'}
    # Each fold tests on every frame of its held-out subject only.
    assert {name[:3] for name in fold['lifter']['per_sequence']} == {held_out}
    assert fold['lifter']['frames'] == fold['depth0']['frames']
    with open(os.path.join(tmp_path, f'fold_{held_out}', 'lifter', 'config.json')) as f:
      text = f.read()
    assert f'"val_subjects": "{held_out}"' in text
  mean = result['mean']['lifter']
  folds = [result['folds'][s]['lifter']['overall']['mpjpe'] for s in ('002', '003')]
  np.testing.assert_allclose(mean['mpjpe'], np.mean(folds))
  assert mean['folds'] == 2 and result['mean']['depth0']['folds'] == 2
  table = ablation.cross_subject_table(result)
  assert 'MPJPE 002 (mm) | MPJPE 003 (mm) | mean MPJPE' in table and 'depth 0 (reference)' in table
  assert f'{mean["mpjpe"]:.1f}' in table and '+ smoothness' not in table
  _, md_path = ablation.write_results(str(tmp_path), None, None, ['cmd'], cross_subject=result)
  with open(md_path) as f:
    assert table in f.read()
  # Rerunning resumes: the finished folds are only re-scored.
  again = ablation.run_cmu17_cross_subject(
      str(tmp_path), ['lifter'], ['002', '003'], student_config=_tiny_lifter, log=lines.append
  )
  np.testing.assert_allclose(again['mean']['lifter']['mpjpe'], mean['mpjpe'], rtol=1e-5)
  # Folds run apart (one process each) are collected from their fold_results.json, not rerun.
  collected = ablation.run_cmu17_cross_subject(
      str(tmp_path), ['lifter'], ['002', '003'], student_config=_tiny_lifter, log=lines.append, folds=[]
  )
  assert collected['folds'] == json.loads(json.dumps(again['folds']))
  assert sum('collected from' in line for line in lines) == 2
  only = ablation.run_cmu17_cross_subject(
      str(tmp_path / 'other'), ['lifter'], ['002', '003'], student_config=_tiny_lifter, log=lines.append, folds=[]
  )
  assert only['folds'] == {} and only['mean'] == {}
  with pytest.raises(ValueError, match="folds \\['007'\\]"):
    ablation.run_cmu17_cross_subject(
        str(tmp_path), ['lifter'], ['002', '003'], student_config=_tiny_lifter, folds=['007']
    )


def test_override_flag_changes_every_row_and_names_bad_keys():
  from absl import app

  from experiments import ablation as script

  make = script.student_config_fn(['model.norm=batch', 'train.num_steps=7', 'loss.z_aug_deg=22.5', 'seed=3'])
  for row in ablation.ROWS:
    cfg = make(row)
    assert (cfg.model.norm, cfg.train.num_steps, cfg.loss.z_aug_deg, cfg.seed) == ('batch', 7, 22.5, 3)
  with pytest.raises(app.UsageError, match="no config key 'sed'"):
    script.student_config_fn(['sed=1'])('lifter')
  with pytest.raises(app.UsageError, match="no config key 'nope'"):
    script.student_config_fn(['model.nope=1'])('lifter')
  with pytest.raises(app.UsageError, match='a.b=value'):
    script.student_config_fn(['model.norm'])
  # The c3dpo_lifter row is C3DPO's recipe; the overrides still apply on top of it.
  recipe = make('c3dpo_lifter')
  assert (recipe.optim.name, recipe.model.lifter_width, recipe.train.num_steps) == ('sgd', 1024, 7)
  # A row prefix changes that row alone; a later override wins.
  one = script.student_config_fn(['c3dpo_lifter:model.lifter_width=256', 'optim.lr=0.5', 'c3dpo_lifter:optim.lr=5e-3'])
  assert (one('c3dpo_lifter').model.lifter_width, one('c3dpo_lifter').optim.lr) == (256, 5e-3)
  assert (one('lifter').model.lifter_width, one('lifter').optim.lr) == (256, 0.5)
  assert one('tcn').optim.lr == 0.5
  with pytest.raises(app.UsageError, match='row of'):
    script.student_config_fn(['c3dpo_lifer:optim.lr=1'])
  with pytest.raises(app.UsageError, match="no config key 'nope'"):
    script.student_config_fn(['lifter:model.nope=1'])('lifter')


def test_stack_overrides_apply_to_every_row_or_to_the_named_one():
  base = configs.get('tiny', 'tcn')
  assert ablation._stack_overrides_for(True, 'tcn') == {}
  # The teacher row's own defaults (a centred TCN, 1500 steps), under what the user says.
  assert ablation._stack_overrides_for(True, 'teacher') == {'model.tcn_causal': False, 'train.num_steps': 1500}
  stack = {'optim.lr': 1e-4, 'teacher:train.num_steps': 2000}
  assert ablation._stack_overrides_for(stack, 'tcn') == {'optim.lr': 1e-4}
  assert ablation._stack_overrides_for(stack, 'teacher') == {
      'model.tcn_causal': False,
      'optim.lr': 1e-4,
      'train.num_steps': 2000,
  }
  cfg = ablation.stacked(base, '/runs/lifter', ablation._stack_overrides_for(stack, 'teacher'))
  assert (cfg.optim.lr, cfg.train.num_steps, cfg.optim.warmup_steps) == (1e-4, 2000, 20)
  assert not cfg.model.tcn_causal and base.model.tcn_causal
  reseeded = ablation.stacked(base, '/runs/lifter', {'seed': 1})  # Top-level keys too: another seed of stage 2.
  assert reseeded.seed == 1 and base.seed == 0
  nested = ablation.stacked(base, '/runs/lifter', {'loss.terms.smooth.weight': 1.0})  # Deeper keys too.
  assert nested.loss.terms.smooth.weight == 1.0 and base.loss.terms.smooth.weight != 1.0
  with pytest.raises(ValueError, match="unknown row 'tnc'"):
    ablation._stack_overrides_for({'tnc:optim.lr': 1.0}, 'tcn')


def test_teacher_override_flag_changes_the_teacher_config():
  from absl import app

  from experiments import ablation as script

  cfg = script.teacher_config_fn(['train.num_steps=10', 'diffusion.num_hypotheses=3'], 'self')()
  assert (cfg.train.num_steps, cfg.diffusion.num_hypotheses, cfg.teacher.mode) == (10, 3, 'self')
  # README's command for the whole H x K grid (the default scores only the pseudo-3D's setting).
  grid = ((1, 1), (1, 5), (5, 1), (5, 5), (10, 5))
  assert script.teacher_config_fn([f'eval.grid={grid}'], 'supervised')().eval.grid == grid
  assert configs.get('teacher', 'supervised').eval.grid == ((5, 5),)
  with pytest.raises(app.UsageError, match="--teacher_override train.nope: no config key 'nope'"):
    script.teacher_config_fn(['train.nope=1'], 'supervised')()


def test_seeds_table_lists_every_run_then_the_mean_and_spread():
  def run(scores):
    folds = {
        s: {
            'lifter': {'overall': {'mpjpe': v, 'pa_mpjpe': v / 2, 'stress': v / 4}},
            'depth0': {'overall': {'mpjpe': 100.0}},
        }
        for s, v in zip(('a', 'b'), scores)
    }
    mean = {
        'lifter': {'mpjpe': float(np.mean(scores)), 'pa_mpjpe': 1.0, 'stress': 2.0},
        'depth0': {'mpjpe': 100.0, 'pa_mpjpe': 3.0, 'stress': 4.0},
    }
    return {'cmu17_cross_subject': {'folds': folds, 'mean': mean}}

  table = ablation.seeds_table({'s0': run([90.0, 110.0]), 's1': run([80.0, 90.0])})
  lines = table.splitlines()
  assert lines[2] == '| depth 0 (reference) | 100.0 | 100.0 | 100.0 | 3.0 | 4.0 | – |'
  assert lines[3] == '| s0 | 90.0 | 110.0 | 100.0 | 1.0 | 2.0 | 1/2 |'
  assert lines[4] == '| s1 | 80.0 | 90.0 | 85.0 | 1.0 | 2.0 | 2/2 |'
  # Mean 92.5, standard deviation (ddof 1) of 100 and 85: 10.6.
  assert lines[5] == '| **mean over 2 runs** | 85.0 | 100.0 | **92.5** ± 10.6 | **1.0** ± 0.0 | **2.0** ± 0.0 | 3/4 |'
  with pytest.raises(ValueError, match="run 'x' lacks row 'tcn'"):
    ablation.seeds_table({'x': run([1.0, 2.0])}, 'tcn')
  # The per-fold choice (train.restarts' rule): fold a from s0, fold b from s1.
  runs = {'s0': run([90.0, 110.0]), 's1': run([80.0, 90.0])}
  chosen = ablation.seeds_table(runs, chosen={'a': 's0', 'b': 's1'}).splitlines()[-1]
  expected = '| **lowest training objective (a: s0, b: s1)** | 90.0 | 90.0 | **90.0** | **45.0** | **22.5** | 2/2 |'
  assert chosen == expected
  with pytest.raises(ValueError, match="for folds \\['b'\\]"):
    ablation.seeds_table(runs, chosen={'a': 's0'})


@pytest.mark.slow
def test_classic_rows_score_a_sequence_and_reread_it(tmp_path):
  import sys

  sys.path.insert(0, os.path.dirname(__file__))
  from test_classic import _synthetic

  _, points, _ = _synthetic(seed=5)
  path = str(tmp_path / 'toy.npz')
  np.savez(path, points3d=points)
  config_fn = lambda seq: configs.get('nrsfm', seq)
  # (40 EM iterations: the compiled program of tests/test_classic.py's procrustean tests.)
  kwargs = dict(shape_bases=(2,), trajectory_bases=(4,), procrustean_iters=40)
  logs = []
  out = ablation.run_classic(str(tmp_path / 'runs'), [path], config_fn=config_fn, log=logs.append, **kwargs)
  rows = out[path]
  assert set(rows) == {'classic_prior_free', 'classic_trajectory', 'classic_procrustean'}
  # A two-basis object under random cameras: the prior-free row recovers it, and the PND keeps it.
  assert rows['classic_prior_free']['overall']['e3d_akhter'] < 2e-2
  assert rows['classic_procrustean']['overall']['e3d_akhter'] < 2e-2
  assert rows['classic_procrustean']['choice']["('toy', 0)"]['procrustean_iters'] == 40
  assert rows['classic_trajectory']['choice']["('toy', 0)"]['trajectory_bases'] == 4
  again = ablation.run_classic(str(tmp_path / 'runs'), [path], config_fn=config_fn, log=logs.append, **kwargs)
  assert again == out and sum('read from' in line for line in logs) == 3
  # The solution, cut into the student's training windows, is a valid teacher-term target.
  train_ds = data_lib.make_datasets(config_fn(path))[0]
  target = os.path.join(ablation.sequence_dir(str(tmp_path / 'runs'), path), 'classic_prior_free', 'pseudo3d.npz')
  pseudo = data_lib.load_pseudo3d(target, train_ds)
  assert pseudo.shape == train_ds.points3d.shape and np.all(pseudo[train_ds.mask == 0] == 0)

  # Other data settings (20% of the points missing) are fitted again, not read.
  def dropped(seq):
    cfg = configs.get('nrsfm', seq)
    cfg.data.dropout = 0.2
    return cfg

  ablation.run_classic(str(tmp_path / 'runs'), [path], ['prior_free'], config_fn=dropped, log=logs.append, **kwargs)
  assert sum('other data settings' in line for line in logs) == 1
  table = ablation.nrsfm_table(out)
  assert 'classic: prior-free low rank' in table.splitlines()[0]


def test_classic_anchor_points_every_row_but_the_teacher_at_the_classic_solution(tmp_path, monkeypatch):
  trained, classic_runs = {}, []

  def fake_train(cfg, workdir, log=print):
    trained[os.path.basename(workdir)] = cfg
    return {'overall': {}}

  monkeypatch.setattr(ablation.train_lib, 'train_and_evaluate', fake_train)
  fake_classic = lambda workdir, seqs, solvers, **kw: classic_runs.append((seqs, solvers))
  monkeypatch.setattr(ablation, 'run_classic', fake_classic)
  ablation.run_nrsfm(str(tmp_path), ['drink'], ['lifter', 'smooth'], classic_anchor=('trajectory', 2.0), log=print)
  assert classic_runs == [(['drink'], ['trajectory'])]
  target = os.path.join(ablation.sequence_dir(str(tmp_path), 'drink'), 'classic_trajectory', 'pseudo3d.npz')
  for row in ('lifter', 'smooth'):
    assert trained[row].train.pseudo3d == target and trained[row].loss.terms.teacher.weight == 2.0
  with pytest.raises(ValueError, match='unknown solver'):
    ablation.run_nrsfm(str(tmp_path), ['drink'], ['lifter'], classic_anchor=('bmm', 1.0))


def test_stack_anchor_points_the_stage2_rows_at_the_lifter_run(tmp_path, monkeypatch):
  trained = {}

  def fake_train(cfg, workdir, log=print):  # The wiring only: train.pseudo3d's run targets are tested in test_train.
    trained[os.path.basename(workdir)] = cfg
    return {'overall': {}}

  monkeypatch.setattr(ablation.train_lib, 'train_and_evaluate', fake_train)
  ablation.run_cmu17(str(tmp_path), ['lifter', 'windows', 'smooth'], stack=True, anchor=0.5, log=print)
  for row in ('windows', 'smooth'):
    assert trained[row].train.pseudo3d == str(tmp_path / 'lifter') and trained[row].loss.terms.teacher.weight == 0.5
    assert trained[row].train.init_from == str(tmp_path / 'lifter')
  # Anchored to C3DPO's recipe lifter instead: its own config file, per frame, never stacked.
  trained.clear()
  rows = ['lifter', 'c3dpo_lifter', 'windows', 'tcn']
  ablation.run_cmu17(str(tmp_path), rows, stack=True, anchor=1.0, anchor_row='c3dpo_lifter', log=print)
  assert list(trained) == rows
  assert trained['c3dpo_lifter'].to_dict() == configs.get('c3dpo', 'lifter').to_dict()
  for row in ('windows', 'tcn'):
    assert trained[row].train.pseudo3d == str(tmp_path / 'c3dpo_lifter')
    assert trained[row].train.init_from == str(tmp_path / 'lifter')
  with pytest.raises(ValueError, match='include c3dpo_lifter'):
    ablation.run_cmu17(str(tmp_path), ['lifter', 'tcn'], stack=True, anchor=1.0, anchor_row='c3dpo_lifter')
  with pytest.raises(ValueError, match='anchored to one of'):
    ablation.run_cmu17(str(tmp_path), ['lifter', 'tcn'], stack=True, anchor=1.0, anchor_row='tcn')
  assert trained['lifter'].train.pseudo3d == '' and trained['lifter'].loss.terms.teacher.weight == 0


def test_stack_anchor_to_a_classic_solver_mixes_its_bodies_with_the_lifter_run(tmp_path, monkeypatch):
  trained, calls = {}, []

  def fake_train(cfg, workdir, log=print):
    trained[os.path.basename(workdir)] = cfg
    return {'overall': {}}

  def fake_classic(ds, solver, hinges, *, cache_dir, log):
    calls.append((solver, cache_dir))
    passed = np.arange(ds.num_windows) % 2 == 0
    return np.ones(ds.keypoints.shape[:-1] + (3,), np.float32), passed, {'a/0': {'passed': True}}

  lifter = lambda workdir, ds, **kw: np.full(ds.keypoints.shape[:-1] + (3,), 2.0, np.float32)
  monkeypatch.setattr(ablation.train_lib, 'train_and_evaluate', fake_train)
  monkeypatch.setattr(ablation.teacher, 'classic_targets', fake_classic)
  monkeypatch.setattr(ablation.teacher, 'reconstruction_targets', lifter)
  workdir = tmp_path / 'fold_006'
  rows = ['lifter', 'windows', 'tcn']
  ablation.run_cmu17(str(workdir), rows, stack=True, anchor=1.0, anchor_row='classic_procrustean', log=print)
  path = str(workdir / 'anchor_classic_procrustean.npz')
  for row in ('windows', 'tcn'):
    assert trained[row].train.pseudo3d == path and trained[row].train.init_from == str(workdir / 'lifter')
  assert calls == [('procrustean', str(tmp_path / ablation.CLASSIC_CACHE / 'procrustean'))]  # Made once.
  with np.load(path) as f:
    np.testing.assert_array_equal(f['pseudo3d'][0::2], 1.0)  # Windows whose sequence passed: the classic solution.
    np.testing.assert_array_equal(f['pseudo3d'][1::2], 2.0)  # The others: the lifter run's reconstructions.
  assert json.load(open(path.replace('.npz', '.json'))) == {'a/0': {'passed': True}}


def test_results_without_deep_rows_have_no_empty_diagnostics_table(tmp_path):
  from nrsfm_jax import ablation

  entry = {'per_sequence': {'drink': {'e3d': 0.01, 'e3d_akhter': 0.02}}}
  _, md_path = ablation.write_results(
      str(tmp_path), None, {'drink': {'classic_prior_free': entry}}, ['cmd'], {'nrsfm/drink': {}}
  )
  text = open(md_path).read()
  assert '0.0100 / **0.0200**' in text and 'Diagnostics' not in text


def test_sweep_table_reads_kept_runs_seeds_and_unfinished_folds(tmp_path):
  from experiments import sweep_table

  def fold(run, subject, kept, depth0, seeds):
    d = tmp_path / run / 'cmu17_cross_subject' / f'fold_{subject}'
    (d / 'lifter').mkdir(parents=True)
    score = lambda m: {'mpjpe': m, 'pa_mpjpe': m / 2, 'stress': m / 4, 'accel_error': 1.0}
    if kept is not None:
      (d / 'fold_results.json').write_text(
          json.dumps({'lifter': {'overall': score(kept)}, 'depth0': {'overall': score(depth0)}})
      )
    restarts = [{'seed': s, 'objective': {'total': 0.1}, 'eval_overall': score(m)} for s, m in enumerate(seeds)]
    (d / 'lifter' / 'restarts.json').write_text(json.dumps({'chosen_seed': 0, 'restarts': restarts}))

  fold('a', '002', 100.0, 130.0, [100.0, 140.0])
  fold('a', '003', 150.0, 120.0, [150.0, 90.0])
  fold('b', '002', 80.0, 130.0, [80.0, 120.0])
  fold('b', '003', None, None, [70.0])  # still training: seeds, no kept run yet
  variants = {r: sweep_table.read_variant(str(tmp_path / r), 'lifter') for r in ('a', 'b')}
  lines = sweep_table.table(variants).splitlines()
  assert lines[2].startswith('| depth 0 (reference) | 130.0 | 120.0 | 125.0 |')
  # kept 100 and 150 (mean 125, PA 62.5, Stress 31.2); all four seeds 120.0; best per fold (100 + 90) / 2.
  assert lines[3] == '| a | 100.0 | 150.0 | 125.0 | 62.5 | 31.2 | 120.0 (4 runs) | 95.0 | 1/2 |'
  assert lines[4] == '| b | 80.0 | – | 80.0 (1 of 2 folds) | 40.0 | 20.0 | 90.0 (3 runs) | 75.0 | 1/1 |'


def test_truth_rotations_recover_the_cameras_of_a_rigid_body_and_the_table_reads_the_study():
  import jax

  from nrsfm_jax import geometry

  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  body = np.asarray(jax.random.normal(keys[0], (12, 3)))
  cams = np.asarray(geometry.random_rotation(keys[1], (20,)))
  points = np.einsum('pj,fij->fpi', body, cams) + 5.0  # X_f = S R_fᵀ, off-centre
  rotations = ablation.truth_rotations(points)
  assert rotations.shape == (20, 3, 3)
  np.testing.assert_allclose(np.linalg.det(rotations), 1.0, atol=1e-5)
  # Up to one global rotation G: R_f = cams_f G for every frame.
  g = np.einsum('fji,fjk->fik', cams, rotations)  # cams_fᵀ R_f
  np.testing.assert_allclose(g, np.broadcast_to(g[0], g.shape), atol=1e-4)
  row = lambda e, r, **x: {'e3d': e, 'e3d_akhter': e, 'shape_rank_ratio': r, **x}
  study = {
      'drink': {
          'num_bases': 2,
          'chosen': row(0.02, 1.2),
          'starts': [row(0.05, 1.3, residual=1e-3), row(0.01, 1.1, residual=2e-3), row(0.03, 1.25, residual=5e-4)],
          'truth_rotations': row(0.005, 1.05),
      }
  }
  table = ablation.rotation_study_table(study)
  cells = table.splitlines()[-1].split(' | ')
  assert cells[0] == '| drink (2)' and cells[1] == '0.0200 (1.2000)'
  assert cells[2] == '0.0300 (1.2500)' and cells[3] == cells[4] == '0.0100 (1.1000)'
  assert cells[5] == '0.0300' and cells[6] == '0.0050 (1.0500) |'


def test_c3dpo_lifter_row_is_titled_by_the_size_it_trained():
  cfg = ablation.row_config('default', 'c3dpo_lifter')
  assert '1024 × 6' in ablation.row_title('c3dpo_lifter', cfg)
  cfg.model.lifter_width, cfg.model.lifter_blocks = 256, 3
  small = ablation.row_title('c3dpo_lifter', cfg)
  assert '256 × 3' in small and ablation.row_title('tcn', cfg) == ablation.TITLES['tcn']
  overall = {'mpjpe': 80.0, 'pa_mpjpe': 60.0, 'stress': 30.0, 'accel_error': 4.0}
  row = {'overall': overall, 'title': small}
  assert f'| {small} | 80.0 |' in ablation.cmu17_table({'c3dpo_lifter': row})
  folds = {'002': {'c3dpo_lifter': row}, '003': {'c3dpo_lifter': {'overall': overall}}}
  table = ablation.cross_subject_table({'folds': folds, 'mean': ablation.fold_means(folds)})
  assert f'| {small} | 80.0 | 80.0 |' in table
  # Results saved before rows carried a title keep the static one.
  old = {'002': {'c3dpo_lifter': {'overall': overall}}}
  table = ablation.cross_subject_table({'folds': old, 'mean': ablation.fold_means(old)})
  assert ablation.TITLES['c3dpo_lifter'] in table
