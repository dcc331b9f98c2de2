"""Tests for nrsfm_jax.evaluation (reload, evaluate, export, Ψ study) on one tiny trained run."""

import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nrsfm_jax import checkpoint, data, evaluation, geometry, models
from nrsfm_jax.models import Student


def _raw_view(trial='006_01', frames=40):
  """Raw (uncentred) 2D of one cmu17 trial in data units: ``[F, 17, 2]``, and its camera 3D."""
  points = data.orthographic_views(data.load_mocap(subjects='006')[trial][:frames], (45.0,), 10.0)[0]
  return points[..., :2], points


# ----------------------------------------------------------------------------- evaluate_run


def test_evaluate_default_split_matches_eval_json(run):
  workdir, _ = run
  result = evaluation.evaluate_run(workdir, log=lambda s: None)
  with open(os.path.join(workdir, 'eval.json')) as f:
    expected = json.load(f)
  assert result['overall'] == expected['overall']
  assert result['per_sequence'] == expected['per_sequence']
  assert result['frames'] == expected['frames']
  assert result['output'] == os.path.join(workdir, 'evaluate_cmu17_006_01_006_09.json')
  with open(result['output']) as f:
    assert json.load(f)['overall'] == expected['overall']
  with np.load(result['predictions']) as f:
    assert f['006_01/view0'].shape[1:] == (17, 3)


def test_evaluate_eval_context_overrides_the_runs(run, tmp_path):
  workdir, _ = run
  config = evaluation.load_run(workdir)[0]
  widened = evaluation.evaluate_run(workdir, output=str(tmp_path / 'rf.json'), log=lambda s: None)
  bare = evaluation.evaluate_run(workdir, eval_context='none', output=str(tmp_path / 'bare.json'), log=lambda s: None)
  m = config.model
  assert tuple(widened['eval_context']) == models.context_frames(m.tcn_kernel, m.tcn_dilations, m.tcn_causal) != (0, 0)
  assert bare['eval_context'] == [0, 0]
  with np.load(widened['predictions']) as a, np.load(bare['predictions']) as b:
    # The first window of every sequence starts at its first frame either way.
    window = data.window_length(config.data, 'eval')
    for k in a.files:
      np.testing.assert_allclose(a[k][:1], b[k][:1], atol=1e-5)
      assert a[k].shape == b[k].shape and (len(a[k]) <= window or not np.allclose(a[k], b[k], atol=1e-6))
  with pytest.raises(ValueError, match='eval_context'):
    evaluation.evaluate_run(workdir, eval_context='nope', output=str(tmp_path / 'x.json'), log=lambda s: None)


def test_evaluate_without_refiner_scores_the_per_frame_lifter_of_a_tcn_run(run, tmp_path):
  workdir, _ = run
  refined = evaluation.evaluate_run(workdir, output=str(tmp_path / 'r.json'), log=lambda s: None)
  base = evaluation.evaluate_run(workdir, without_refiner=True, log=lambda s: None)
  assert base['output'] == os.path.join(workdir, 'evaluate_cmu17_006_01_006_09_without_refiner.json')
  assert base['without_refiner'] and not refined['without_refiner']
  assert base['eval_context'] == [0, 0]  # A per-frame model reads no context.
  assert np.isfinite(base['overall']['mpjpe']) and base['overall']['mpjpe'] != refined['overall']['mpjpe']
  # The same as a student built without the refiner from the same weights, frame for frame.
  config, _, params, meta = evaluation.load_run(workdir)
  frames = jnp.asarray(data.make_dataset(config.data, 'eval', scale=meta['scale']).take([0])['keypoints'])
  vis = jnp.ones(frames.shape[:-1])
  mask = jnp.ones(frames.shape[:2])
  full = models.from_config('student', config.model, 17).apply(params, frames, vis, mask)
  config.model.use_refiner = False
  alone = models.from_config('student', config.model, 17).apply(params, frames, vis, mask)
  np.testing.assert_allclose(alone['points'], full['points_init'], atol=1e-6)
  os.remove(base['output'])
  os.remove(base['predictions'])
  lifter_dir = tmp_path / 'lifter'
  os.makedirs(lifter_dir)
  with open(os.path.join(workdir, 'config.json')) as f:
    saved = json.load(f)
  saved['model']['use_refiner'] = False
  (lifter_dir / 'config.json').write_text(json.dumps(saved))
  os.symlink(os.path.join(workdir, 'checkpoints'), lifter_dir / 'checkpoints')
  with pytest.raises(ValueError, match='no TCN refiner'):
    evaluation.evaluate_run(str(lifter_dir), without_refiner=True, log=lambda s: None)


def test_bone_projection_bounds_every_bone_by_its_2d_length(run, tmp_path):
  workdir, _ = run
  plain = evaluation.evaluate_run(
      workdir, bone_projection='none', output=str(tmp_path / 'plain.json'), log=lambda s: None
  )
  clipped = evaluation.evaluate_run(workdir, output=str(tmp_path / 'clip.json'), log=lambda s: None)  # The default.
  assert plain['bone_projection'] == 'none' and clipped['bone_projection'] == 'clip'
  # The bound: the 0.99 quantile of each bone's image lengths over one camera's frames (by='view').
  bones = np.asarray(data.CMU_BONES)
  shortened = 0
  with np.load(plain['predictions']) as p, np.load(clipped['predictions']) as c:
    assert len(c.files) > 1
    for k in c.files:
      image = np.linalg.norm(c[k][:, bones[:, 1], :2] - c[k][:, bones[:, 0], :2], axis=-1)
      bound = np.quantile(image, 0.99, axis=0)
      np.testing.assert_allclose(c[k][..., :2], p[k][..., :2])  # x, y untouched
      length = np.linalg.norm(c[k][:, bones[:, 1]] - c[k][:, bones[:, 0]], axis=-1)
      before = np.linalg.norm(p[k][:, bones[:, 1]] - p[k][:, bones[:, 0]], axis=-1)
      # A bone keeps its image and loses depth extent beyond the bound (none if its image is longer).
      assert np.all(length <= np.maximum(bound, image) + 1e-3)
      assert np.all(length <= before + 1e-3)
      shortened += int(np.sum(length < before - 1e-3))
  assert shortened > 0  # The tiny run's depth does overreach somewhere: the projection acted.
  with pytest.raises(ValueError, match='bone projection'):
    evaluation.evaluate_run(workdir, bone_projection='snap', output=str(tmp_path / 'x.json'), log=lambda s: None)


def test_a_second_evaluation_compiles_nothing(run):
  """Fixed eval shapes and jitted functions keyed on the (shared) model: reloading the same run
  and scoring it again reuses every compiled function."""
  from nrsfm_jax import profiling

  workdir, _ = run
  evaluation.evaluate_run(workdir, log=lambda s: None)
  before = profiling.compile_seconds()
  evaluation.evaluate_run(workdir, log=lambda s: None)
  assert profiling.compile_seconds() == before


def test_subjects_split_uses_training_scale(run, loaded):
  # The eval trials named explicitly give the eval split's windows exactly (so its metrics),
  # normalised with the training scale, not with a scale recomputed from those trials.
  workdir, _ = run
  config, _, _, meta = loaded
  default, protocol, name = evaluation.build_eval_dataset(config, meta)
  subject, sub_protocol, sub_name = evaluation.build_eval_dataset(config, meta, subjects='006_01,006_09')
  assert (protocol, name, sub_protocol, sub_name) == ('cmu17', 'cmu17_006_01_006_09', 'cmu17', 'cmu17_006_01_006_09')
  assert subject.scale == default.scale == meta['scale']
  np.testing.assert_array_equal(subject.keypoints, default.keypoints)
  np.testing.assert_array_equal(subject.points3d, default.points3d)
  own_scale = data.cmu17_dataset('006', length=config.data.window, azimuths_deg=config.data.azimuths).scale
  assert abs(own_scale - meta['scale']) > 1.0
  wrong = data.cmu17_dataset('006', length=config.data.window, scale=own_scale)
  with pytest.raises(ValueError, match=r'normalised with scale .* trained with'):
    evaluation.build_eval_dataset(config, meta, data=wrong)
  # With evaluation windows longer than training windows (the default config),
  # explicitly named subjects are still cut like the run's own eval split.
  longer = config.copy_and_resolve_references()
  longer.data.eval_window = 3 * config.data.window
  own, _, _ = evaluation.build_eval_dataset(longer, meta)
  named, _, _ = evaluation.build_eval_dataset(longer, meta, subjects='006_01,006_09')
  assert own.window_length == named.window_length == 3 * config.data.window
  np.testing.assert_array_equal(named.keypoints, own.keypoints)
  with pytest.raises(ValueError, match=r"unknown subject.*'999'"):
    evaluation.evaluate_run(workdir, subjects='006,999', log=lambda s: None)
  with pytest.raises(ValueError, match='at most one of'):
    evaluation.evaluate_run(workdir, subjects='006', sequence='drink', log=lambda s: None)


def test_evaluate_sequence_with_other_point_count_is_a_clear_error(run):
  with pytest.raises(ValueError, match=r"'drink' has 41 points per frame .* trained on 17 points"):
    evaluation.evaluate_run(run[0], sequence='drink', log=lambda s: None)


def test_evaluate_tracks_writes_predictions(run, tmp_path):
  keypoints, _ = _raw_view(frames=45)
  keypoints = keypoints.copy()
  keypoints[3, 5] = np.nan  # A missing point.
  path = data.save_tracks(tmp_path / 'clip.npz', keypoints)
  logs = []
  with pytest.warns(UserWarning, match='NaN'):
    result = evaluation.evaluate_run(run[0], tracks=str(path), log=logs.append)
  assert 'overall' not in result and result['frames'] == 45
  assert result['output'] == os.path.join(run[0], 'evaluate_tracks_clip.json')
  with np.load(result['predictions']) as f:
    pred = f['clip/view0']
  assert pred.shape == (45, 17, 3) and np.isfinite(pred).all()
  assert any('no ground-truth 3D' in line for line in logs)


# ----------------------------------------------------------------------------- export


def test_export_matches_original_model(run, loaded, tmp_path):
  workdir, _ = run
  _, model, params, meta = loaded
  logs = []
  path = evaluation.export_run(workdir, log=logs.append)
  assert path == os.path.join(workdir, 'export', 'params.npz') and os.path.exists(path)
  n = sum(x.size for x in jax.tree.leaves(params))
  assert any(f'{n:,} parameters' in line for line in logs)
  assert any('load_exported' in line for line in logs)
  apply_fn, exported = checkpoint.load_exported(path)
  chex.assert_trees_all_equal(exported, jax.device_get(params))

  raw, _ = _raw_view()  # Raw 2D in data units (mm), not centred.
  visibility = np.ones(raw.shape[:-1], np.float32)
  visibility[7, 2] = 0.0
  raw_nan = np.where(visibility[..., None] > 0, raw, np.nan)
  got = np.asarray(apply_fn(exported, raw_nan))
  scale = meta['scale']
  centred, _ = data.center_2d(raw, visibility)
  ref = (
      jax.jit(model.apply)(
          params, jnp.asarray(centred / scale)[None], jnp.asarray(visibility)[None], jnp.ones((1, len(raw)))
      )['reconstruction'][0]
      * scale
  )
  assert got.shape == (len(raw), 17, 3)
  np.testing.assert_allclose(got / scale, np.asarray(ref) / scale, atol=1e-5)


# ----------------------------------------------------------------------------- canonical study


def test_canonical_study(loaded):
  _, model, params, _ = loaded
  shapes = np.random.default_rng(0).normal(size=(5, 17, 3)).astype(np.float32)  # Any shapes will do.
  calls = []

  def apply_fn(*args, **kwargs):
    calls.append(1)  # Python runs this once per trace: once in all if vmap batches the rotations.
    return model.apply(*args, **kwargs)

  key = jax.random.PRNGKey(3)
  study = evaluation.canonical_study(apply_fn, params, shapes, key=key, num_rotations=16, num_bins=12)
  assert len(calls) == 1
  np.testing.assert_allclose(study['bin_edges'][[0, -1]], [0.0, 180.0])
  for k, shape in dict(
      bin_centers=(12,),
      mean=(12,),
      std=(12,),
      count=(12,),
      angles=(16,),
      values=(16, 5),
      per_rotation=(16,),
      rotations=(16, 3, 3),
  ).items():
    assert study[k].shape == shape, k
  assert study['count'].sum() == 16 * 5
  assert np.isfinite(study['values']).all() and (study['values'] >= 0).all()
  filled = study['count'] > 0
  assert np.isfinite(study['mean'][filled]).all() and np.isnan(study['mean'][~filled]).all()
  assert ((study['angles'] >= 0) & (study['angles'] <= 180)).all()
  np.testing.assert_allclose(study['rotations'], geometry.random_rotation(key, (16,)))

  # The same numbers as a plain Python loop over rotations.
  reconstruct = jax.jit(lambda x, rot: model.apply(params, geometry.rotate(x, rot), method=Student.canonicalize))
  for r in range(3):
    rec = np.asarray(reconstruct(shapes, study['rotations'][r]))
    dist = np.linalg.norm(shapes - rec, axis=-1).mean(-1)  # Mean joint distance ('l2').
    np.testing.assert_allclose(study['values'][r], dist, rtol=1e-5, atol=1e-7)
  # Bin statistics are those of the pairs whose rotation falls in the bin.
  b = int(np.argmax(study['count']))
  in_bin = (study['angles'] >= study['bin_edges'][b]) & (study['angles'] < study['bin_edges'][b + 1])
  np.testing.assert_allclose(study['mean'][b], study['values'][in_bin].mean(), rtol=1e-6)
  np.testing.assert_allclose(study['std'][b], study['values'][in_bin].std(), rtol=1e-6)

  # The angle of a known rotation is recovered (azimuth-only cameras rotate about y).
  known = np.stack([data.camera_rotation(a, 0.0) for a in (10.0, 90.0, 170.0)]).astype(np.float32)
  angles = evaluation.rotation_angle(known)
  np.testing.assert_allclose(angles, [10.0, 90.0, 170.0], atol=1e-3)


def test_run_canonical_study_writes_csv_and_png(run, tmp_path):
  logs = []
  result = evaluation.run_canonical_study(
      run[0], num_rotations=8, num_frames=6, num_bins=6, output_dir=str(tmp_path), log=logs.append
  )
  assert result['num_shapes'] == 6 and result['count'].sum() == 48
  assert np.isfinite(result['values']).all()
  with open(result['csv']) as f:
    rows = f.read().splitlines()
  assert rows[0].startswith('angle_lo,angle_hi,count,mean,std') and len(rows) == 7
  assert os.path.getsize(result['png']) > 1000
  scale = result['scale']
  filled = int(np.argmax(result['count'] > 0))
  assert float(rows[1 + filled].split(',')[3]) == pytest.approx(result['mean'][filled] * scale, rel=1e-5)
  assert any('mean joint distance' in line for line in logs)


def test_evaluate_script_prints_diagnostics(run):
  import subprocess
  import sys

  workdir, _ = run
  cmd = [sys.executable, '-m', 'experiments.evaluate', f'--workdir={workdir}', '--diagnostics']
  out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
  assert 'nonrigidity_ratio:' in out and 'depth_spread_ratio:' in out
  bad = subprocess.run([*cmd, '--subjects=005'], capture_output=True, text=True)
  assert bad.returncode != 0 and '--diagnostics reads' in bad.stderr + bad.stdout


def test_bone_projection_study_scores_every_setting(run, tmp_path):
  import subprocess
  import sys

  workdir, _ = run
  os.makedirs(tmp_path / 'cmu17')
  os.symlink(workdir, tmp_path / 'cmu17' / 'lifter')  # The development-split layout of an ablation.
  cmd = [sys.executable, '-m', 'experiments.bone_projection_study', f'--workdir={tmp_path}', '--settings=none,clip:1']
  out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
  table = (tmp_path / 'bone_projection.md').read_text().splitlines()
  rows = {line.split(' | ')[0].strip('| '): line for line in table[2:] if '| kept run' in line}
  assert set(rows) == {'none', 'clip:1'} and 'MPJPE dev 006_01,006_09 (mm)' in table[0]
  # The 'none' row is the run's plain evaluation; the projected one differs.
  plain = evaluation.evaluate_run(workdir, bone_projection='none', output=str(tmp_path / 'p.json'), log=lambda s: None)
  assert f'| {plain["overall"]["mpjpe"]:.1f} |' in rows['none'] and rows['none'] != rows['clip:1'].replace(
      'clip:1', 'none'
  )
  assert 'wrote' in out
  bad = subprocess.run([*cmd[:-1], '--settings=snap:2'], capture_output=True, text=True)
  assert bad.returncode != 0 and "is not 'none', 'full' or 'clip:<gain>'" in bad.stderr + bad.stdout


def test_bone_signs_and_sign_vote_tell_flicker_from_persistent_errors():
  bones = data.CMU_BONES
  rng = np.random.default_rng(0)
  truth = np.repeat(rng.normal(size=(1, 17, 3)), 40, 0) + 0.01 * rng.normal(size=(40, 17, 3))
  dz = evaluation.bone_depths(truth, bones)
  np.testing.assert_allclose(evaluation.with_bone_depths(truth, bones, dz), truth, atol=1e-12)

  # Bone 3 flipped on one frame (flicker), bone 7 on frames 10-39 (persistent), and frame 20
  # mirrored as a whole (MPJPE's and the count's per-frame flip forgive it).
  d = dz.copy()
  d[5, 3] *= -1
  d[10:, 7] *= -1
  points = evaluation.with_bone_depths(truth, bones, d)
  points[20, :, 2] *= -1
  right, changes = evaluation.bone_signs(points, truth, bones)
  assert right == pytest.approx(1 - (1 + 30) / (40 * len(bones)))
  assert changes == pytest.approx(100 * 3 / (39 * len(bones)))  # bone 3: two changes; bone 7: one
  voted = evaluation.sign_vote(points, bones, sigma=2.0)
  np.testing.assert_allclose(voted[..., :2], points[..., :2])  # x, y kept
  vz = evaluation.bone_depths(voted, bones)  # (frame 20 brought back to its neighbours' handedness)
  np.testing.assert_allclose(np.abs(vz), np.abs(dz), atol=1e-9)  # every extent kept
  assert np.sign(vz[5, 3]) == np.sign(dz[5, 3])  # the flicker is voted away
  assert (np.sign(vz[15:, 7]) != np.sign(dz[15:, 7])).all()  # the persistent error stays


def test_targets_handedness_counts_mirrored_frames_and_switches(run):
  rng = np.random.default_rng(0)
  truth = rng.normal(size=(2, 6, 5, 3))
  flips = np.array([[1, 1, -1, -1, 1, 1], [1, 1, 1, 1, 1, 1]], float)  # 2 mirrored frames, 2 switches
  points = truth * np.stack([np.ones_like(flips), np.ones_like(flips), flips], -1)[:, :, None, :]
  mask = np.ones((2, 6))
  right, changes = evaluation.handedness(points, truth, mask)
  assert right == pytest.approx(10 / 12) and changes == pytest.approx(100 * 2 / 10)
  mask[0, 3:] = 0  # Padding frames count neither way.
  right, changes = evaluation.handedness(points, truth, mask)
  assert right == pytest.approx(8 / 9) and changes == pytest.approx(100 * 1 / 7)
  workdir, _ = run
  t = evaluation.targets_handedness(workdir)
  assert all(0 <= t[k][0] <= 1 and 0 <= t[k][1] <= 100 for k in ('raw', 'resolved'))


def test_temporal_study_jitter_scores_each_variant(run):
  from experiments import temporal_study

  workdir, _ = run
  with open(os.path.join(workdir, 'eval.json')) as f:
    scored = json.load(f)['overall']
  got = temporal_study.jitter_row(workdir, 3.0)
  assert tuple(got) == temporal_study.JITTER_VARIANTS
  # 'projected' is the run's own test-time 3D: what eval.json scored.
  for k in temporal_study.JITTER_METRICS:
    np.testing.assert_allclose(got['projected'][k], scored[k], rtol=1e-5)
  # Filtering the depth over time lowers the acceleration error of what it filters last.
  assert got['projected, filtered']['accel_error'] < got['projected']['accel_error']
