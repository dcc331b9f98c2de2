"""The diffusion teacher end to end on tiny settings: supervised and self modes, cache, student use."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from nrsfm_jax import configs, data, plotting, teacher


def _tiny_teacher(mode='supervised'):
  c = configs.get('teacher', mode)
  c.data = configs.get('tiny').data
  c.model.width = 32
  c.model.num_heads = 2
  c.model.depth = 1
  c.diffusion.num_hypotheses = 2
  c.diffusion.num_steps = 2
  c.eval.grid = ((1, 1), (2, 2))
  c.train.batch_size = 4
  c.train.num_steps = 6
  c.train.log_every = 3
  c.train.checkpoint_every = 3
  c.train.eval_batch_size = 16
  c.train.plot = False
  c.optim.warmup_steps = 2
  return c


@pytest.fixture(scope='module')
def supervised_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('teacher_sup'))
  lines = []
  out = teacher.train_teacher(_tiny_teacher(), workdir, log=lines.append)
  return workdir, out, lines


@pytest.mark.slow
def test_supervised_teacher_scores_and_caches_pseudo3d(supervised_run):
  workdir, out, lines = supervised_run
  with open(os.path.join(workdir, 'teacher_eval.json')) as f:
    result = json.load(f)
  assert set(result) == {'H1_K1', 'H2_K2'}
  for entry in result.values():
    assert set(entry) == {'mean', 'jpma'}
    assert all(np.isfinite(v) for s in entry.values() for v in s.values())
  # One hypothesis: both aggregations are the same sample.
  assert result['H1_K1']['mean'] == result['H1_K1']['jpma']
  assert os.path.exists(out['pseudo3d']) and any('ETA' in line for line in lines)
  # The cache is hit for the same teacher and windows; it fits the student's windows.
  again = []
  assert teacher.generate_pseudo3d(workdir, log=again.append) == out['pseudo3d']
  assert any('cached' in line for line in again)
  student = configs.get('tiny', 'teacher')
  train_ds, _ = data.make_datasets(student)
  pseudo = data.load_pseudo3d(out['pseudo3d'], train_ds)
  assert pseudo.shape == train_ds.points3d.shape and np.all(np.isfinite(pseudo))
  np.testing.assert_allclose(pseudo[..., 0, :], 0.0, atol=1e-6)  # Root-relative.
  _, spread = data.load_pseudo3d(out['pseudo3d'], train_ds, spread=True)
  assert spread.shape == pseudo.shape[:-1] and np.all(spread >= 0) and np.any(spread > 0)
  # Both the first sampling and the cache hit say how far the hypotheses disagree, in data units,
  # over the visible joints of real frames only.
  summary = teacher.spread_summary(spread, train_ds)
  assert summary in lines and summary in again
  keep = (train_ds.mask[..., None] > 0) & (train_ds.visibility > 0)
  median = float(np.median(spread[keep])) * train_ds.scale
  assert f'median {median:.3g},' in summary
  padded = np.where(keep, spread, 1e6)  # padding and hidden joints do not count
  assert teacher.spread_summary(padded, train_ds) == summary


@pytest.mark.slow
def test_teacher_predictions_do_not_depend_on_batch_size(supervised_run):
  workdir, _, _ = supervised_run
  config, model, params, _ = teacher.load_teacher(workdir)
  _, eval_ds = teacher._datasets(config)
  kw = dict(num_hypotheses=2, num_steps=2, seed=3)
  a = teacher.predict(model.apply, params, teacher.schedule_of(config), eval_ds, batch_size=3, **kw)
  b = teacher.predict(model.apply, params, teacher.schedule_of(config), eval_ds, batch_size=8, **kw)
  for k in a:
    np.testing.assert_allclose(a[k], b[k], atol=1e-5)


def _tiny_student(row):
  c = configs.get('tiny', row)
  # One device: the data-parallel step has its own tests, and 4 fake devices on 2 cores are slow.
  c.train.parallel = 'none'
  return c


def _fast(c):
  c.optim.schedule = 'constant'  # So a shorter run is a true prefix of a longer one (resume test).
  c.eval.grid = ()
  c.diffusion.num_hypotheses = 1
  c.diffusion.num_steps = 1
  return c


def _scored(c):
  c.eval.grid = ((1, 1),)  # The pseudo-3D's own setting, so the table has the teacher alone.
  return c


@pytest.mark.slow
def test_resumed_teacher_matches_uninterrupted(tmp_path):
  c = _fast(_tiny_teacher())
  full = teacher.train_teacher(c, str(tmp_path / 'full'), log=lambda s: None)
  half = _fast(_tiny_teacher())
  half.train.num_steps = 3
  teacher.train_teacher(half, str(tmp_path / 'split'), log=lambda s: None)
  resumed = teacher.train_teacher(c, str(tmp_path / 'split'), log=lambda s: None)
  a = teacher.load_teacher(str(tmp_path / 'full'))[2]
  b = teacher.load_teacher(str(tmp_path / 'split'))[2]
  jax.tree.map(np.testing.assert_array_equal, a, b)
  np.testing.assert_array_equal(np.load(full['pseudo3d'])['pseudo3d'], np.load(resumed['pseudo3d'])['pseudo3d'])


@pytest.mark.slow
def _limbs(config):
  config.teacher.hinge_filter = 'limbs'
  return config


def test_ablation_with_a_self_mode_teacher_end_to_end(tmp_path):
  """All the rows on tiny settings: the self teacher learns from the tcn row, the student uses it."""
  from nrsfm_jax import ablation

  workdir = str(tmp_path / 'cmu17')
  lines = []
  results = ablation.run_cmu17(
      workdir,
      ['teacher'],  # (the lifter row is a plain student run: tested in test_train and test_ablation)
      student_config=_tiny_student,
      teacher_config=lambda: _limbs(_scored(_fast(_tiny_teacher('self')))),
      log=lines.append,
  )
  # teacher.hinge_filter='limbs' (set below) trained the self teacher with per-joint target weights.
  assert any("hinge_filter='limbs'" in line and 'target joints kept' in line for line in lines)
  # tcn comes with a self-mode teacher row; the references ride along.
  assert set(results) == {'tcn', 'teacher', 'teacher_eval', 'teacher_alone', 'teacher_as_student', 'depth0'}
  assert results['teacher_alone']['overall'] == results['teacher_eval']['H1_K1']['mean']
  # The fair reference: the same samples with the student's observed x, y and bone projection.
  fair = results['teacher_as_student']['overall']
  assert fair['mpjpe'] != results['teacher_alone']['overall']['mpjpe']
  assert any('scored as the student' in line for line in lines)
  cached = [f for f in os.listdir(os.path.join(workdir, 'teacher_self')) if f.startswith('as_student_')]
  assert len(cached) == 1
  with open(os.path.join(workdir, 'teacher_self', cached[0])) as f:
    assert json.load(f)['overall'] == fair
  # One sampling of the eval split serves both references: the teacher's own score kept both
  # aggregations, and the as-student score (recomputed from scratch below) read its 'mean'.
  (samples,) = os.listdir(os.path.join(workdir, 'teacher_self', 'eval3d'))
  with np.load(os.path.join(workdir, 'teacher_self', 'eval3d', samples)) as f:
    assert sorted(f.files) == ['jpma', 'mean']
  from nrsfm_jax import scoring

  tcfg, model, params, meta = teacher.load_teacher(os.path.join(workdir, 'teacher_self'))
  scfg = _tiny_student('teacher')
  eval_ds = data.make_dataset(scfg.data, 'eval', scale=meta['scale'], length=data.window_length(scfg.data, 'train'))
  pred = teacher.predict(
      model.apply, params, teacher.schedule_of(tcfg), eval_ds, num_hypotheses=1, num_steps=1, aggregations=('mean',)
  )['mean']
  expected = scoring.score(scoring.as_evaluated(scfg, pred, eval_ds) * eval_ds.scale, eval_ds)['overall']
  assert fair == pytest.approx({k: float(v) for k, v in expected.items()}, rel=1e-5)
  assert any('as it makes them' in line and os.path.join(workdir, 'tcn') in line for line in lines)
  with open(os.path.join(workdir, 'teacher', 'config.json')) as f:
    assert json.load(f)['train']['pseudo3d'].startswith(os.path.join(workdir, 'teacher_self'))
  with open(os.path.join(workdir, 'teacher', 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  losses = [r for r in rows if 'total' in r]  # (the others: eval scores)
  assert losses and all('teacher' in r and np.isfinite(r['teacher']) for r in losses)
  table = ablation.cmu17_table(results)
  assert ablation.TITLES['teacher'] in table and '| + smoothness |' not in table
  assert '+0.0%' in ablation.cmu17_table({**results, 'lifter': results['tcn']})  # each row vs the lifter's
  assert 'depth 0 (reference)' in table and 'teacher alone' in table and 'official C3DPO' not in table
  assert '| teacher alone, scored as the student' in table
  assert '| official C3DPO, 25 CPU-minutes (reference) | 78.9 |' in ablation.cmu17_table(results, c3dpo=True)
  # A supervised teacher needs no tcn row.
  assert ablation._check_rows(['lifter', 'teacher'], self_teacher=False) == ['lifter', 'teacher']
  png = plotting.plot_rows(
      workdir, configs.get('tiny'), ablation.ROWS, str(tmp_path / 'cmu17.png'), titles=ablation.TITLES
  )
  assert os.path.getsize(png) > 10_000
  diag = {'cmu17': {'tcn': ablation.depth_diagnostics(os.path.join(workdir, 'tcn'), configs.get('tiny'))}}
  assert diag['cmu17']['tcn']['depth_spread_ratio'] > 0 and diag['cmu17']['tcn']['relative_2d_error'] > 0
  assert 0 < diag['cmu17']['tcn']['nonrigidity_ratio'] < 10  # the canonical shapes over the true 3D's
  _, md_path = ablation.write_results(str(tmp_path), results, None, ['cmd'], diag)
  with open(md_path) as f:
    text = f.read()
  assert table in text and ablation.diagnostics_table(diag) in text
  with pytest.raises(ValueError, match='rows'):
    ablation.run_cmu17(workdir, ['nope'])
  # Self mode refuses a student trained on other data, and needs a student at all.
  other = _fast(_tiny_teacher('self'))
  other.teacher.student_workdir = os.path.join(workdir, 'tcn')
  other.data.train_subjects = '003'
  with pytest.raises(ValueError, match='scale'):
    teacher.train_teacher(other, str(tmp_path / 'other'), log=lambda s: None)
  with pytest.raises(ValueError, match='student_workdir'):
    teacher.train_teacher(_fast(_tiny_teacher('self')), str(tmp_path / 'missing'), log=lambda s: None)
  # teacher.resolve_flips=True: each frame flipped to the handedness of the student's mean shape.
  train_ds = data.make_dataset(scfg.data, 'train', scale=meta['scale'])
  lines = []
  made = teacher.reconstruction_targets(os.path.join(workdir, 'tcn'), train_ds, resolve_flips=False, log=lines.append)
  resolved = teacher.reconstruction_targets(os.path.join(workdir, 'tcn'), train_ds, log=lines.append)
  assert any("flipped to the mean shape's handedness" in line for line in lines)
  np.testing.assert_allclose(np.abs(resolved), np.abs(made), atol=1e-6)  # Only depth signs change.
  # teacher.hinge_filter: the per-joint weights reach the denoising loss (ones change nothing).
  from nrsfm_jax import loop

  batch = loop.window_batches(train_ds, 4, 0, target=made)(0)
  key = jax.random.PRNGKey(1)
  schedule = teacher.schedule_of(tcfg)
  weighed = jax.jit(
      lambda w: teacher.teacher_loss(params, model.apply, schedule, {**batch, 'target_weight': w}, key)[0]
  )
  plain = weighed(np.asarray(batch['mask'])[..., None].repeat(made.shape[-2], -1))  # the frame mask alone
  ones = weighed(np.ones((4, *made.shape[1:-1]), np.float32))
  legs = np.zeros((4, *made.shape[1:-1]), np.float32)
  legs[..., :7] = 1.0
  some = weighed(legs)
  assert float(ones) == pytest.approx(float(plain), rel=1e-6) and float(some) != pytest.approx(float(plain), rel=1e-3)


def test_nrsfm_table_marks_rows_that_beat_bmm():
  from nrsfm_jax import ablation

  entry = lambda e3d, akhter: {'per_sequence': {'drink': {'e3d': e3d, 'e3d_akhter': akhter}}}
  table = ablation.nrsfm_table({'drink': {'tcn': entry(0.5, 0.6), 'teacher': entry(0.01, 0.02)}})
  assert '0.5000 / 0.6000' in table and '0.0100 / **0.0200**' in table and '0.0266' in table
  assert '‡' not in table and 'fit seconds' not in table  # No classic row, no time table.
  # Below EM-PND's 0.0047 too: marked; a classic row's fit time gets its own table.
  pnd = dict(entry(0.002, 0.004), seconds=12.4)
  table = ablation.nrsfm_table({'drink': {'tcn': entry(0.5, 0.6), 'classic_procrustean': pnd}})
  assert '0.0020 / **0.0040** ‡' in table and '| drink | 12 |' in table.splitlines()[-1]


def test_hinge_weights_leave_out_limbs_bent_against_their_frame(tmp_path):
  mocap = data.load_mocap(subjects='006')['006_01'][::10]
  from nrsfm_jax import losses

  body = mocap[np.asarray(losses.hinge_bend(mocap, data.CMU_HINGES)).min(-1) > 0.1][:6]
  a, b, c = data.CMU_HINGES[3][:3]  # left shoulder, elbow, wrist
  bad = body.copy()
  bad[1:3, [b, c], 2] = 2 * bad[1:3, [a], 2] - bad[1:3, [b, c], 2]  # frames 1, 2: the left arm mirrored
  targets = np.stack([body, bad])  # [N=2, L=6, P, 3]
  mask = np.ones((2, 6), np.float32)
  mask[0, 5] = 0.0  # a padding frame
  assert teacher.hinge_weights(targets, mask, data.CMU_HINGES, 'none') is None
  frames = teacher.hinge_weights(targets, mask, data.CMU_HINGES, 'frames')
  limbs = teacher.hinge_weights(targets, mask, data.CMU_HINGES, 'limbs')
  assert frames.shape == limbs.shape == targets.shape[:-1]
  expect = np.ones_like(frames)
  expect[0, 5] = 0.0
  np.testing.assert_array_equal(limbs[0], expect[0])
  np.testing.assert_array_equal(frames[1, [0, 3, 4, 5]], 1.0)
  np.testing.assert_array_equal(frames[1, 1:3], 0.0)
  np.testing.assert_array_equal(limbs[1, 1:3, [b, c]], 0.0)
  assert np.sum(limbs[1, 1:3] == 0) == 4  # only the elbow and wrist, on the two frames
  with pytest.raises(configs.ConfigError, match='hinge_filter'):
    teacher.hinge_weights(targets[..., :8, :], mask, data.CMU_HINGES, 'limbs')
  with pytest.raises(configs.ConfigError, match='hinge_filter'):
    teacher.hinge_weights(targets, mask, data.CMU_HINGES, 'joints')
  # A supervised teacher trains on the 3D: the filter is refused before any training.
  config = _tiny_teacher()
  config.teacher.hinge_filter = 'limbs'
  with pytest.raises(configs.ConfigError, match="self-mode teacher's targets"):
    teacher.train_teacher(config, str(tmp_path / 'sup'), log=lambda s: None)
  assert not os.path.exists(tmp_path / 'sup' / 'checkpoints')


def test_novel_views_turn_targets_and_project_their_2d():
  import jax.numpy as jnp

  from nrsfm_jax import geometry

  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  x = geometry.root_relative(jax.random.normal(keys[0], (8, 5, 17, 3)))
  vis = (jax.random.uniform(keys[1], (8, 5, 17)) > 0.2).astype(jnp.float32)
  kp, _ = data.center_2d(x[..., :2], vis, xp=jnp)
  batch = {'target': x, 'keypoints': kp, 'visibility': vis, 'mask': jnp.ones((8, 5))}
  views = jax.jit(lambda b, k, p: teacher.novel_views(b, k, prob=p, yaw_deg=180.0, pitch_deg=20.0))
  out = views(batch, keys[2], 0.5)
  turned = np.asarray(jnp.any(jnp.abs(out['target'] - x) > 1e-5, axis=(1, 2, 3)))
  assert 0 < turned.sum() < 8  # about half the windows, each turned as a whole
  # A rigid turn about the root: the root stays at 0, every joint's distance to it is kept.
  np.testing.assert_allclose(out['target'][..., 0, :], 0.0, atol=1e-6)
  np.testing.assert_allclose(jnp.linalg.norm(out['target'], axis=-1), jnp.linalg.norm(x, axis=-1), atol=1e-5)
  # The 2D is the turned target's, centred on the visible points as the data's; invisible ones 0.
  np.testing.assert_allclose(out['keypoints'], data.center_2d(out['target'][..., :2], vis, xp=jnp)[0], atol=1e-6)
  np.testing.assert_array_equal(np.asarray(out['keypoints'])[np.asarray(vis) == 0], 0.0)
  np.testing.assert_array_equal(np.asarray(out['keypoints'])[~turned], np.asarray(kp)[~turned])
  # One rotation per window, the same for every frame: a least-squares fit on frame 0 maps them all.
  w = int(np.argmax(turned))
  source, dest = np.asarray(x[w], np.float64), np.asarray(out['target'][w], np.float64)
  rot_t = np.linalg.lstsq(source[0], dest[0], rcond=None)[0]  # [3, 3]: dest = source @ Rᵀ
  np.testing.assert_allclose(source @ rot_t, dest, atol=1e-4)
  np.testing.assert_allclose(rot_t.T @ rot_t, np.eye(3), atol=1e-4)
  assert np.abs(rot_t - np.eye(3)).max() > 1e-3
  # prob = 0 leaves the batch alone; the config range is checked before any training.
  off = views(batch, keys[3], 0.0)
  np.testing.assert_array_equal(off['target'], x)
  np.testing.assert_array_equal(off['keypoints'], kp)
  config = _tiny_teacher('self')
  config.teacher.novel_views = 1.5
  with pytest.raises(configs.ConfigError, match='teacher.novel_views'):
    configs.validate(config)


def _turning_body(frames: int = 120):
  """A bundled trial's true 3D turned half a circle about the vertical over its frames (a body that
  turns before the camera, so a classic solver can recover its depth), in the camera frame."""
  points = data.load_mocap(subjects='006')['006_10'][:frames].astype(np.float64)
  yaw = np.linspace(0.0, np.pi, frames)
  c, s = np.cos(yaw), np.sin(yaw)
  turn = np.stack(
      [np.stack([c, 0 * c, s], -1), np.stack([0 * c, 1 + 0 * c, 0 * c], -1), np.stack([-s, 0 * c, c], -1)], 1
  )
  centred = points - points.mean(1, keepdims=True)
  return np.einsum('fij,fpj->fpi', turn, centred).astype(np.float32)


def test_hinge_agreement_is_high_on_a_body_and_flips_with_the_depth():
  body = _turning_body()
  vis = np.ones(body.shape[:2], np.float32)
  share = teacher.hinge_agreement(body, vis, data.CMU_HINGES)
  mirrored = teacher.hinge_agreement(body * np.asarray([1.0, 1.0, -1.0], np.float32), vis, data.CMU_HINGES)
  assert share > 0.9 and abs(share + mirrored - 1.0) < 1e-6
  assert np.isnan(teacher.hinge_agreement(body, np.zeros_like(vis), data.CMU_HINGES))


def test_classic_targets_recover_a_turning_body_with_its_depth_sign_and_cache_it(tmp_path, monkeypatch):
  body = _turning_body()
  sequences = {'turn': (body[None], body[None, ..., :2], np.ones((1,) + body.shape[:2], np.float32))}
  ds = data.build_dataset(sequences, length=50)
  logs = []
  targets, passed, info = teacher.classic_targets(
      ds, 'prior_free', data.CMU_HINGES, cache_dir=str(tmp_path), log=logs.append
  )
  assert targets.shape == ds.keypoints.shape[:-1] + (3,) and passed.all() and info['turn/0']['passed']
  truth = np.asarray(teacher.supervised_targets(ds))
  real = ds.mask > 0
  rel = lambda x: np.linalg.norm(x - truth, axis=-1)[real].mean() / np.linalg.norm(truth, axis=-1)[real].mean()
  err, mirrored = rel(targets), rel(targets * np.asarray([1.0, 1.0, -1.0], np.float32))
  assert err < 0.15 and err < 0.5 * mirrored, (err, mirrored)  # Near the body, with its depth sign.
  assert os.path.exists(tmp_path / 'turn_v0.npz') and 'pass' in logs[-1]

  def refit(*args, **kwargs):
    raise AssertionError('the cached solution should have been reused')

  monkeypatch.setattr(teacher.classic, 'fit', refit)
  again, _, _ = teacher.classic_targets(ds, 'prior_free', data.CMU_HINGES, cache_dir=str(tmp_path), log=logs.append)
  np.testing.assert_array_equal(again, targets)
  # Another fold's 2D scale: the same 2D a few ulps apart still reads the cache.
  rescaled = dataclasses.replace(ds, keypoints=ds.keypoints / np.float32(1.1), scale=ds.scale * 1.1)
  other, _, _ = teacher.classic_targets(rescaled, 'prior_free', data.CMU_HINGES, cache_dir=str(tmp_path))
  np.testing.assert_allclose(other * 1.1, targets, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match='below the data'):
    teacher.classic_targets(ds, 'prior_free', ((0, 1, 2, 3, 40),))
