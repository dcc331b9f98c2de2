"""Tests for nrsfm_jax.data: loaders, cameras, windows, datasets and batching."""

import dataclasses
import re

import numpy as np
import pytest

from nrsfm_jax import configs, data, plotting
from nrsfm_jax.data import h36m


@pytest.fixture(scope='module')
def mocap():
  return data.load_mocap()


# ----------------------------------------------------------------------------- mocap


def test_load_mocap_default(mocap):
  assert len(mocap) == 46
  assert list(mocap) == sorted(mocap)
  for points in mocap.values():
    assert points.dtype == np.float32 and points.ndim == 3 and points.shape[1:] == (17, 3)
  assert len(data.CMU_JOINTS) == 17 and data.CMU_JOINTS[0] == 'Hip'
  assert data.list_subjects() == ['002', '003', '005', '006']
  assert data.load_mocap_info()['sequences']['002_01']['frames'] == len(mocap['002_01'])


def test_load_mocap_subjects(mocap):
  trials = data.load_mocap(subjects=['003', '006'])
  assert set(trials) == {k for k in mocap if k[:3] in ('003', '006')}
  np.testing.assert_array_equal(trials['003_01'], mocap['003_01'])
  assert set(data.load_mocap(subjects='003')) == {'003_01', '003_02'}
  with pytest.raises(ValueError, match=r"unknown subject.*'999'.*available.*'002', '003'"):
    data.load_mocap(subjects=['002', '999'])


def test_load_mocap_trials(mocap):
  # A trial key selects that trial; a leading '-' holds a trial (or subject) back.
  assert set(data.load_mocap(subjects='002_04')) == {'002_04'}
  held = data.load_mocap(subjects=['002', '003', '-002_04'])
  assert set(held) == {k for k in mocap if k[:3] in ('002', '003')} - {'002_04'}
  assert set(data.load_mocap(subjects=['002', '003', '-003'])) == {k for k in mocap if k[:3] == '002'}
  with pytest.raises(ValueError, match=r"unknown subject or trial '002_99'"):
    data.load_mocap(subjects=['002', '-002_99'])
  with pytest.raises(ValueError, match=r'selects no trial'):
    data.load_mocap(subjects=['003', '-003'])


def test_load_mocap_errors(tmp_path):
  missing = tmp_path / 'nope.npz'
  with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
    data.load_mocap(missing)
  bad = tmp_path / 'bad.npz'
  np.savez(bad, **{'001_01': np.zeros((5, 17, 3)), '001_02': np.zeros((5, 17))})
  with pytest.raises(ValueError, match=r"bad\.npz: trial '001_02' has shape \(5, 17\)"):
    data.load_mocap(bad)
  empty = tmp_path / 'empty.npz'
  np.savez(empty)
  with pytest.raises(ValueError, match=r'empty\.npz: the archive holds no trials'):
    data.load_mocap(empty)
  zero = tmp_path / 'zero.npz'
  np.savez(zero, **{'001_01': np.zeros((0, 17, 3))})
  with pytest.raises(ValueError, match=r"zero\.npz: trial '001_01' has shape \(0, 17, 3\)"):
    data.load_mocap(zero)
  for name, value in (('nan', np.nan), ('inf', np.inf), ('huge', 1e39)):
    points = np.zeros((5, 17, 3))
    points[3, 7, 1] = value
    path = tmp_path / f'{name}.npz'
    np.savez(path, **{'001_01': np.zeros((5, 17, 3)), '001_02': points})
    with pytest.raises(ValueError, match=rf"{name}\.npz: trial '001_02' has 1 non-finite 3D points.*frame 3, joint 7"):
      data.load_mocap(path)
  points = np.random.default_rng(0).normal(size=(5, 17, 3)) * 300
  points[3, 7, 1] = 1e30  # Finite, but no pose: issue #11's silent 1e25 predictions.
  np.savez(tmp_path / 'outlier.npz', **{'001_01': points})
  with pytest.raises(
      ValueError, match=r"outlier\.npz: trial '001_01': 3D point at frame 3, point 7 lies 1e\+30 .*1000x the typical"
  ):
    data.load_mocap(tmp_path / 'outlier.npz')


def test_load_mocap_custom_file_and_json_subjects(tmp_path):
  path = tmp_path / 'mine.npz'
  np.savez(path, a_1=np.ones((4, 5, 3)), b_1=np.ones((2, 5, 3)))
  assert data.load_mocap_info(path) == {}
  assert data.list_subjects(path) == ['a', 'b']
  (tmp_path / 'mine.json').write_text('{"sequences": {"a_1": {"subject": "x"}}}')
  assert data.list_subjects(path) == ['b', 'x']
  assert list(data.load_mocap(path, subjects=['x'])) == ['a_1']


def test_cmu_bones_have_constant_length(mocap):
  assert len(data.CMU_BONES) == 16
  points = mocap['002_01']
  for a, b in data.CMU_BONES:
    lengths = np.linalg.norm(points[:, a] - points[:, b], axis=-1)
    assert lengths.std() < 1.0 and lengths.mean() > 20.0


# ----------------------------------------------------------------------------- cameras


def test_orthographic_views_match_hand_built_camera(mocap):
  points = mocap['005_03']
  views = data.orthographic_views(points)
  assert views.shape == (4, *points.shape) and views.dtype == np.float32
  a, e = np.deg2rad(135.0), np.deg2rad(10.0)
  r_y = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
  r_x = np.array([[1, 0, 0], [0, np.cos(e), -np.sin(e)], [0, np.sin(e), np.cos(e)]])
  expected = points.astype(np.float64) @ (r_x @ r_y).T
  np.testing.assert_allclose(views[1], expected, rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(data.camera_rotation(135.0, 10.0), r_x @ r_y, atol=1e-12)


def test_camera_sign_convention():
  rotation = data.camera_rotation(0.0, 10.0)
  # A world point higher up (y) gets a larger z_c: nearer a camera looking along -z_c, i.e. the
  # camera looks down. Its viewing direction in the world has y component -sin(10°).
  assert (rotation @ [0.0, 1.0, 0.0])[2] > 0
  np.testing.assert_allclose((rotation.T @ [0.0, 0.0, -1.0])[1], -np.sin(np.deg2rad(10.0)))
  np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)
  np.testing.assert_allclose(np.linalg.det(rotation), 1.0)


def test_views_preserve_bone_lengths_and_depth(mocap):
  points = mocap['006_01'][:50]
  views = data.orthographic_views(points, azimuths_deg=(0.0, 90.0, 200.0), elevation_deg=-30.0)
  for view in views:
    for a, b in data.CMU_BONES:
      np.testing.assert_allclose(
          np.linalg.norm(view[:, a] - view[:, b], axis=-1),
          np.linalg.norm(points[:, a] - points[:, b], axis=-1),
          rtol=1e-4,
      )
  # Depth is the third camera coordinate: the world point's component along R_cam's last row.
  rotation = data.camera_rotation(90.0, -30.0)
  np.testing.assert_allclose(views[1][..., 2], points @ rotation[2], rtol=1e-4, atol=1e-2)
  keypoints, _ = data.observe(views, key_or_seed=0)
  np.testing.assert_array_equal(keypoints, views[..., :2])


def test_observe_noise_dropout_and_seed():
  points = np.random.default_rng(1).normal(size=(4, 500, 17, 3)).astype(np.float32) * 100
  keypoints, visibility = data.observe(points, key_or_seed=7, noise_std=5.0, dropout=0.2)
  assert keypoints.shape == (4, 500, 17, 2) and visibility.shape == (4, 500, 17)
  assert keypoints.dtype == np.float32 and visibility.dtype == np.float32
  assert abs((1 - visibility.mean()) - 0.2) < 0.01
  assert np.all(keypoints[visibility == 0] == 0)
  residual = (keypoints - points[..., :2])[visibility > 0]
  assert abs(residual.std() - 5.0) < 0.1 and abs(residual.mean()) < 0.1
  again = data.observe(points, key_or_seed=7, noise_std=5.0, dropout=0.2)
  np.testing.assert_array_equal(again[0], keypoints)
  np.testing.assert_array_equal(again[1], visibility)
  other = data.observe(points, key_or_seed=8, noise_std=5.0, dropout=0.2)
  assert not np.array_equal(other[1], visibility)
  # The dropout pattern does not depend on the noise level.
  np.testing.assert_array_equal(data.observe(points, key_or_seed=7, dropout=0.2)[1], visibility)
  with pytest.raises(ValueError, match='dropout'):
    data.observe(points, key_or_seed=0, dropout=1.5)


# ----------------------------------------------------------------------------- nrsfm


@pytest.mark.parametrize(
    'name, shape',
    [
        ('drink', (1102, 41, 3)),
        ('pickup', (357, 41, 3)),
        ('yoga', (307, 41, 3)),
        ('stretch', (370, 41, 3)),
        ('DANCE', (264, 75, 3)),
    ],
)
def test_load_nrsfm_bundled(name, shape):
  points = data.load_nrsfm_sequence(name)
  assert points.shape == shape and points.dtype == np.float64


def test_load_nrsfm_path_and_errors(tmp_path):
  path = tmp_path / 'mine.npz'
  expected = np.random.default_rng(0).normal(size=(6, 9, 3))
  np.savez(path, points3d=expected)
  np.testing.assert_array_equal(data.load_nrsfm_sequence(path), expected)
  np.testing.assert_array_equal(data.load_nrsfm_sequence(str(path)), expected)

  with pytest.raises(ValueError, match=r"unknown NRSfM sequence 'walking'.*'drink'"):
    data.load_nrsfm_sequence('walking')
  with pytest.raises(FileNotFoundError, match='missing.npz'):
    data.load_nrsfm_sequence(tmp_path / 'missing.npz')
  cases = {
      'nokey': ({'W': np.zeros((3, 4, 3))}, KeyError, r"nokey\.npz: no key 'points3d'.*\['W'\]"),
      'ndim': ({'points3d': np.zeros((3, 4))}, ValueError, r'shape \(3, 4\), expected \(F, P, 3\)'),
      'axis': ({'points3d': np.zeros((3, 4, 2))}, ValueError, r'expected \(F, P, 3\)'),
      'empty': ({'points3d': np.zeros((0, 4, 3))}, ValueError, 'empty'),
      'nan': ({'points3d': np.full((3, 4, 3), np.nan)}, ValueError, '12 non-finite 3D points'),
      'outlier': (
          {'points3d': np.where(np.arange(4)[:, None] == 1, 1e30, np.arange(36.0).reshape(3, 4, 3))},
          ValueError,
          r"outlier\.npz: 'points3d': 3D point at frame 0, point 1 lies",
      ),
  }
  for name, (arrays, error, message) in cases.items():
    np.savez(tmp_path / f'{name}.npz', **arrays)
    with pytest.raises(error, match=message):
      data.load_nrsfm_sequence(tmp_path / f'{name}.npz')
  (tmp_path / 'text.npz').write_text('not an archive')
  with pytest.raises(ValueError, match=r'text\.npz: not a readable \.npz'):
    data.load_nrsfm_sequence(tmp_path / 'text.npz')


# ----------------------------------------------------------------------------- tracks


def test_tracks_roundtrip(tmp_path):
  keypoints = np.random.default_rng(0).normal(size=(10, 5, 2)).astype(np.float32)
  visibility = (np.arange(50).reshape(10, 5) % 3 > 0).astype(np.float32)
  path = data.save_tracks(tmp_path / 'tracks', keypoints, visibility)
  assert path.name == 'tracks.npz'
  loaded = data.load_tracks(path)
  np.testing.assert_array_equal(loaded[0], keypoints)
  np.testing.assert_array_equal(loaded[1], visibility)
  data.save_tracks(tmp_path / 'plain.npz', keypoints)
  np.testing.assert_array_equal(data.load_tracks(tmp_path / 'plain.npz')[1], 1.0)


def test_tracks_nan_become_missing(tmp_path):
  keypoints = np.ones((4, 3, 2))
  keypoints[0, 1, 0] = np.nan
  keypoints[2, 2] = np.nan
  np.savez(tmp_path / 't.npz', keypoints=keypoints)
  with pytest.warns(UserWarning, match=r't\.npz: 3 NaN keypoint coordinates treated as missing'):
    loaded, visibility = data.load_tracks(tmp_path / 't.npz')
  assert visibility.sum() == 10 and visibility[0, 1] == 0 and visibility[2, 2] == 0
  assert np.isfinite(loaded).all() and np.all(loaded[visibility == 0] == 0)


def test_tracks_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='absent.npz'):
    data.load_tracks(tmp_path / 'absent.npz')
  np.save(tmp_path / 'single.npy', np.zeros((3, 4, 2)))
  with pytest.raises(ValueError, match=r'single\.npy: not an \.npz archive'):
    data.load_tracks(tmp_path / 'single.npy')
  cases = {
      'nokey': ({'kp': np.zeros((3, 4, 2))}, KeyError, r"no key 'keypoints'.*\['kp'\]"),
      'ndim': ({'keypoints': np.zeros((3, 8))}, ValueError, r'shape \(3, 8\), expected \(F, P, 2\)'),
      'axis': ({'keypoints': np.zeros((3, 4, 3))}, ValueError, r'expected \(F, P, 2\)'),
      'vis': (
          {'keypoints': np.zeros((3, 4, 2)), 'visibility': np.ones((3, 5))},
          ValueError,
          r"'visibility' has shape \(3, 5\), expected \(3, 4\)",
      ),
      'empty': ({'keypoints': np.zeros((0, 4, 2))}, ValueError, 'empty'),
      'invisible': (
          {'keypoints': np.zeros((3, 4, 2)), 'visibility': np.zeros((3, 4))},
          ValueError,
          r'invisible\.npz: every keypoint is missing.*entirely unusable',
      ),
  }
  for name, (arrays, error, message) in cases.items():
    np.savez(tmp_path / f'{name}.npz', **arrays)
    with pytest.raises(error, match=message):
      data.load_tracks(tmp_path / f'{name}.npz')
  keypoints = np.random.default_rng(0).uniform(0, 640, size=(6, 17, 2))
  keypoints[4, 2, 0] = 1e30
  np.savez(tmp_path / 'outlier.npz', keypoints=keypoints)
  with pytest.raises(ValueError, match=r"outlier\.npz: 'keypoints': 2D keypoint at frame 4, point 2 lies 1e\+30"):
    data.load_tracks(tmp_path / 'outlier.npz')
  keypoints[4, 2, 0] = 1e39  # Beyond float32: infinite.
  np.savez(tmp_path / 'huge.npz', keypoints=keypoints)
  with pytest.raises(ValueError, match=r"huge\.npz: 'keypoints' has 1 infinite"):
    data.load_tracks(tmp_path / 'huge.npz')
  keypoints[4, 2, 0] = np.nan  # NaN stays "missing", and a missing point is not an outlier.
  keypoints[5, 3] = 1e30
  visibility = np.ones((6, 17))
  visibility[5, 3] = 0
  np.savez(tmp_path / 'hidden.npz', keypoints=keypoints, visibility=visibility)
  with pytest.warns(UserWarning, match='1 NaN'):
    assert data.load_tracks(tmp_path / 'hidden.npz')[1].sum() == 6 * 17 - 2
  np.savez(tmp_path / 'allnan.npz', keypoints=np.full((2, 3, 2), np.nan))
  with pytest.warns(UserWarning, match='12 NaN'), pytest.raises(ValueError, match='unusable'):
    data.load_tracks(tmp_path / 'allnan.npz')


# ----------------------------------------------------------------------------- h36m


def _h36m_files(tmp_path, frames_3d=10):
  """Tiny files in VideoPose3D's layout; joint j of the 3D holds the value j (metres).

  Walking has 10 frames of 3D; its 2D is longer for S1 (12 frames per camera) and has one
  shorter camera (9 frames) for S5.
  """
  frames_2d = {'S1': (12, 12, 12, 12), 'S5': (12, 9, 12, 12)}
  joint_values = np.broadcast_to(np.arange(32, dtype=np.float32)[:, None], (32, 3))
  positions_3d = {
      subject: {
          'Walking': (joint_values + np.arange(frames_3d)[:, None, None] * 100).astype(np.float32),
          'Eating 2': np.zeros((5, 32, 3), np.float32),
      }
      for subject in ('S1', 'S5')
  }
  positions_2d = {
      subject: {
          'Walking': [np.full((n, 17, 2), c, np.float32) for c, n in enumerate(frames_2d[subject])],
          'Eating 2': [np.zeros((5, 17, 2), np.float32)] * 4,
      }
      for subject in ('S1', 'S5')
  }
  metadata = {'num_joints': 17, 'keypoints_symmetry': [[4, 5, 6, 11, 12, 13], [1, 2, 3, 14, 15, 16]]}
  np.savez_compressed(tmp_path / 'data_3d_h36m.npz', positions_3d=positions_3d)
  np.savez_compressed(tmp_path / 'data_2d_h36m_gt.npz', positions_2d=positions_2d, metadata=metadata)
  return tmp_path / 'data_3d_h36m.npz', tmp_path / 'data_2d_h36m_gt.npz'


def test_h36m_joint_selection_units_and_truncation(tmp_path):
  path_3d, path_2d = _h36m_files(tmp_path)
  assert h36m.H36M_KEPT_JOINTS == (0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 15, 17, 18, 19, 25, 26, 27)
  only_3d = data.load_h36m(path_3d)
  assert list(only_3d) == ['S1', 'S5'] and list(only_3d['S1']) == ['Walking', 'Eating 2']
  walking = only_3d['S1']['Walking']
  assert set(walking) == {'points3d'}
  assert walking['points3d'].shape == (10, 17, 3) and walking['points3d'].dtype == np.float32
  np.testing.assert_array_equal(walking['points3d'][0, :, 0], np.array(h36m.H36M_KEPT_JOINTS) * 1000.0)
  np.testing.assert_array_equal(walking['points3d'][3, :, 1], (np.array(h36m.H36M_KEPT_JOINTS) + 300) * 1000.0)

  both = data.load_h36m(path_3d, path_2d, subjects=['S5'])
  assert list(both) == ['S5']
  walking = both['S5']['Walking']
  assert walking['points3d'].shape == (9, 17, 3)  # shortest camera has 9 frames
  assert walking['keypoints'].shape == (4, 9, 17, 2) and walking['keypoints'].dtype == np.float32
  np.testing.assert_array_equal(walking['keypoints'][:, 0, 0, 0], [0, 1, 2, 3])
  longer_2d = data.load_h36m(path_3d, path_2d)['S1']['Walking']
  assert longer_2d['keypoints'].shape == (4, 10, 17, 2)
  assert longer_2d['points3d'].shape == (10, 17, 3)


def test_h36m_errors(tmp_path):
  path_3d, path_2d = _h36m_files(tmp_path)
  with pytest.raises(ValueError, match=r"data_3d_h36m\.npz: unknown subject.*'S7'.*'S1', 'S5'"):
    data.load_h36m(path_3d, subjects=['S7'])
  with pytest.raises(KeyError, match=r"data_2d_h36m_gt\.npz: no key 'positions_3d'"):
    data.load_h36m(path_2d)
  with pytest.raises(FileNotFoundError, match='absent.npz'):
    data.load_h36m(path_3d, tmp_path / 'absent.npz')
  np.savez_compressed(tmp_path / 'partial_2d.npz', positions_2d={'S1': {'Walking': [np.zeros((10, 17, 2))] * 4}})
  with pytest.raises(KeyError, match=r"partial_2d\.npz: no action 'Eating 2' for subject 'S1'"):
    data.load_h36m(path_3d, tmp_path / 'partial_2d.npz', subjects=['S1'])
  with pytest.raises(KeyError, match=r"partial_2d\.npz: no subject 'S5'"):
    data.load_h36m(path_3d, tmp_path / 'partial_2d.npz', subjects=['S5'])
  np.savez_compressed(tmp_path / 'bad_3d.npz', positions_3d={'S1': {'A': np.zeros((4, 20, 3))}})
  with pytest.raises(ValueError, match=r'S1/A has shape \(4, 20, 3\)'):
    data.load_h36m(tmp_path / 'bad_3d.npz')
  poses = np.random.default_rng(0).normal(size=(4, 32, 3))
  cases_3d = {
      'zero': (np.zeros((0, 32, 3)), r'S1/A has 0 frames'),
      'nan': (
          np.where(np.arange(32)[:, None] == 7, np.nan, poses),
          r'S1/A has 4 non-finite 3D points.*frame 0, point 5',
      ),
      'inf': (
          np.where(np.arange(32)[:, None] == 0, np.inf, poses),
          r'S1/A has 4 non-finite 3D points.*frame 0, point 0',
      ),
      'outlier': (
          np.where((np.arange(32)[:, None] == 2) & (np.arange(3) == 1), 1e30, poses),
          r'S1/A: 3D point at frame 0, point 2 lies',
      ),
  }
  for name, (points, message) in cases_3d.items():
    np.savez_compressed(tmp_path / f'{name}_3d.npz', positions_3d={'S1': {'A': points}})
    with pytest.raises(ValueError, match=rf'{name}_3d\.npz: {message}'):
      data.load_h36m(tmp_path / f'{name}_3d.npz')
  for name, content, message in (
      ('nosubject', {}, 'holds no subjects'),
      ('noaction', {'S1': {}}, "subject 'S1' holds no actions"),
  ):
    np.savez_compressed(tmp_path / f'{name}_3d.npz', positions_3d=content)
    with pytest.raises(ValueError, match=rf'{name}_3d\.npz: .*{message}'):
      data.load_h36m(tmp_path / f'{name}_3d.npz')
  np.savez_compressed(tmp_path / 'ok_3d.npz', positions_3d={'S1': {'A': poses}})
  keypoints = np.random.default_rng(1).uniform(0, 1000, size=(4, 17, 2))
  cases_2d = {
      'zero': (np.zeros((0, 17, 2)), r'camera 1 has shape \(0, 17, 2\), expected \[F, 17, 2\] with F > 0'),
      'inf': (np.where(np.arange(17)[:, None] == 3, np.inf, keypoints), r'camera 1 has 4 infinite 2D points'),
      'outlier': (
          np.where(np.arange(17)[:, None] == 3, 1e30, keypoints),
          r'camera 1: 2D keypoint at frame 0, point 3 lies',
      ),
  }
  for name, (camera, message) in cases_2d.items():
    np.savez_compressed(tmp_path / f'{name}_2d.npz', positions_2d={'S1': {'A': [keypoints, camera]}})
    with pytest.raises(ValueError, match=rf'{name}_2d\.npz: S1/A {message}'):
      data.load_h36m(tmp_path / 'ok_3d.npz', tmp_path / f'{name}_2d.npz')
  with_nan = np.where(np.arange(17)[:, None] == 3, np.nan, keypoints)  # NaN 2D is a missing point.
  np.savez_compressed(tmp_path / 'nan_2d.npz', positions_2d={'S1': {'A': [keypoints, with_nan]}})
  assert np.isnan(data.load_h36m(tmp_path / 'ok_3d.npz', tmp_path / 'nan_2d.npz')['S1']['A']['keypoints']).sum() == 8


def test_normalize_screen_coordinates():
  x = np.array([[0.0, 0.0], [1000.0, 1002.0], [500.0, 501.0]], np.float32)
  out = data.normalize_screen_coordinates(x, w=1000, h=1002)
  np.testing.assert_allclose(out, [[-1, -1.002], [1, 1.002], [0, 0]], atol=1e-6)
  assert out.dtype == np.float32


# ----------------------------------------------------------------------------- windows


@pytest.mark.parametrize('num_frames', [1, 5, 16, 17, 40, 48])
def test_windows_cover_every_frame_once(num_frames):
  length = 16
  array = np.arange(num_frames * 3, dtype=np.float32).reshape(num_frames, 3) + 1
  windows, mask = data.make_windows(array, length, pad_value=-1)
  assert windows.shape == (-(-num_frames // length), length, 3) and mask.shape == windows.shape[:2]
  assert mask.dtype == np.float32 and mask.sum() == num_frames
  assert np.all(windows[mask == 0] == -1)
  np.testing.assert_array_equal(data.unwindow(windows, mask), array)
  np.testing.assert_array_equal(data.window_starts(num_frames, length), np.arange(0, num_frames, length))
  with pytest.raises(ValueError, match='at least one frame'):
    data.make_windows(array[:0], length)


def test_with_context_widens_windows_from_their_own_sequence():
  rng = np.random.default_rng(1)
  sequences = {}
  for name, frames, views in (('a', 23, 2), ('b', 4, 1)):
    points = rng.normal(size=(views, frames, 3, 3)).astype(np.float32) + 5
    sequences[name] = (points, points[..., :2], np.ones((views, frames, 3), np.float32))
  dataset = data.build_dataset(sequences, length=10)
  assert data.with_context(dataset, 0, 0) is dataset
  wide = data.with_context(dataset, 4, 2)
  assert wide.keypoints.shape == (dataset.num_windows, 16, 3, 2) and wide.points3d.shape == (
      dataset.num_windows,
      16,
      3,
      3,
  )
  np.testing.assert_array_equal(wide.starts, dataset.starts - 4)
  # The window's own frames are unchanged, frame for frame.
  for field in ('keypoints', 'visibility', 'mask', 'points3d', 'centroids'):
    np.testing.assert_array_equal(getattr(wide, field)[:, 4:14], getattr(dataset, field))
  full = data.reassemble(dataset, dataset.points3d)
  for i, (seq, view, start) in enumerate(zip(dataset.sequence_ids, dataset.view_ids, dataset.starts)):
    truth = full[(dataset.names[seq], int(view))]
    for j, frame in enumerate(range(int(start) - 4, int(start) + 12)):
      inside = 0 <= frame < len(truth)
      assert wide.mask[i, j] == float(inside), (i, j)
      np.testing.assert_array_equal(wide.points3d[i, j], truth[frame] if inside else 0)
      assert inside or np.all(wide.visibility[i, j] == 0)
  with pytest.raises(ValueError, match='>= 0'):
    data.with_context(dataset, -1)


def test_center_2d_and_scale():
  keypoints = np.array([[[0, 0], [2, 0], [100, 100], [1, 3]], [[5, 5], [5, 5], [5, 5], [5, 5]]], np.float32)
  visibility = np.array([[1, 1, 0, 1], [0, 0, 0, 0]], np.float32)
  centred, centroid = data.center_2d(keypoints, visibility)
  np.testing.assert_allclose(centroid, [[1, 1], [0, 0]])
  np.testing.assert_allclose(centred[0], [[-1, -1], [1, -1], [0, 0], [0, 2]])
  np.testing.assert_array_equal(centred[1], 0)
  scale = data.dataset_scale(centred, visibility)
  np.testing.assert_allclose(scale, np.sqrt((2 + 2 + 4) / 6))
  with pytest.raises(ValueError, match='no visible'):
    data.dataset_scale(centred, np.zeros_like(visibility))


def test_build_dataset_and_reassemble():
  rng = np.random.default_rng(0)
  sequences = {}
  for name, frames, views in (('a', 30, 2), ('b', 7, 1), ('c', 20, 3)):
    points = rng.normal(size=(views, frames, 5, 3)).astype(np.float32) * 10 + 3
    visibility = (rng.random((views, frames, 5)) > 0.2).astype(np.float32)
    sequences[name] = (points, points[..., :2] * visibility[..., None], visibility)
  dataset = data.build_dataset(sequences, length=10)
  assert dataset.names == ('a', 'b', 'c')
  assert dataset.num_windows == 2 * 3 + 1 + 3 * 2
  assert (dataset.window_length, dataset.num_points) == (10, 5)
  assert dataset.keypoints.shape == (13, 10, 5, 2) and dataset.points3d.shape == (13, 10, 5, 3)
  assert dataset.mask.sum() == 2 * 30 + 7 + 3 * 20
  assert np.all(dataset.visibility[dataset.mask == 0] == 0)
  np.testing.assert_array_equal(dataset.starts[:3], [0, 10, 20])
  np.testing.assert_array_equal(dataset.view_ids[:6], [0, 0, 0, 1, 1, 1])
  # Normalised keypoints have unit RMS per coordinate over the visible points.
  visible = dataset.visibility > 0
  np.testing.assert_allclose(np.sqrt(np.mean(dataset.keypoints[visible] ** 2)), 1.0, rtol=1e-5)

  parts = data.reassemble(dataset, dataset.points3d)
  assert list(parts) == [('a', 0), ('a', 1), ('b', 0), ('c', 0), ('c', 1), ('c', 2)]
  for (name, view), points in parts.items():
    np.testing.assert_array_equal(points, sequences[name][0][view])
  # rewindow is its inverse, for these windows and for others of another length.
  np.testing.assert_array_equal(data.rewindow(dataset, parts), dataset.points3d)
  other = data.build_dataset(sequences, length=4)
  np.testing.assert_array_equal(data.rewindow(other, parts), other.points3d)
  with pytest.raises(KeyError, match="no sequence for \\('c', 2\\)"):
    data.rewindow(dataset, {k: v for k, v in parts.items() if k != ('c', 2)})
  # Un-normalising the 2D gives back the visible input keypoints.
  restored = data.reassemble(dataset, dataset.keypoints * dataset.scale + dataset.centroids[:, :, None])
  vis = data.reassemble(dataset, dataset.visibility)
  for key, keypoints in restored.items():
    _, expected, visibility = (v[key[1]] for v in sequences[key[0]])
    np.testing.assert_array_equal(vis[key], visibility)
    np.testing.assert_allclose(keypoints[visibility > 0], expected[visibility > 0], atol=1e-4)

  shared = data.build_dataset(sequences, length=10, scale=2.5)
  assert shared.scale == 2.5
  np.testing.assert_allclose(shared.keypoints * 2.5, dataset.keypoints * dataset.scale, atol=1e-5)
  batch = dataset.take([3, 0])
  assert set(batch) == {'keypoints', 'visibility', 'mask', 'points3d', 'index'}
  assert batch['index'].dtype == np.int32 and batch['keypoints'].shape == (2, 10, 5, 2)
  with pytest.raises(ValueError, match="sequence 'b' has 4 points"):
    data.build_dataset({'a': sequences['a'], 'b': tuple(v[:, :, :4] for v in sequences['b'])}, 10)


def test_cmu17_dataset(mocap):
  dataset = data.cmu17_dataset(['003'], length=64, noise_std=2.0, dropout=0.1, seed=3)
  frames = [len(mocap['003_01']), len(mocap['003_02'])]
  assert dataset.names == ('003_01', '003_02')
  assert dataset.num_windows == 4 * sum(-(-f // 64) for f in frames)
  assert dataset.keypoints.shape == (dataset.num_windows, 64, 17, 2)
  assert dataset.points3d.shape == (dataset.num_windows, 64, 17, 3)
  assert dataset.mask.sum() == 4 * sum(frames)
  assert abs(1 - dataset.visibility[dataset.mask > 0].mean() - 0.1) < 0.02
  assert set(dataset.view_ids.tolist()) == {0, 1, 2, 3}
  truth = data.reassemble(dataset, dataset.points3d)
  views = data.orthographic_views(mocap['003_02'])
  np.testing.assert_array_equal(truth[('003_02', 2)], views[2])
  # A trial's observations do not depend on which other subjects are loaded.
  both = data.cmu17_dataset(['003', '006'], length=64, noise_std=2.0, dropout=0.1, seed=3)
  np.testing.assert_array_equal(
      data.reassemble(both, both.visibility)[('003_01', 1)], data.reassemble(dataset, dataset.visibility)[('003_01', 1)]
  )


def test_sequence_bone_lengths_estimate_the_3d_lengths_from_the_2d(mocap):
  dataset = data.cmu17_dataset(['003'], length=64, dropout=0.1, seed=3)
  lengths = data.sequence_bone_lengths(dataset, data.CMU_BONES, by='sequence')
  assert lengths.shape == (dataset.num_windows, len(data.CMU_BONES)) and lengths.dtype == np.float32
  bones = np.asarray(data.CMU_BONES)
  for s, name in enumerate(dataset.names):
    rows = dataset.sequence_ids == s
    assert np.all(lengths[rows] == lengths[rows][:1])  # One estimate per sequence, every view and window.
    true = np.median(np.linalg.norm(mocap[name][:, bones[:, 1]] - mocap[name][:, bones[:, 0]], axis=-1), 0)
    ratio = lengths[rows][0] * dataset.scale / true
    # Never much longer than the bone; within a few percent on average (the hips' short bones, rarely side-on, less).
    assert np.all(ratio < 1.05) and np.all(ratio > 0.8) and abs(ratio.mean() - 1) < 0.04, ratio
  # The longest image (quantile 1) is at least any other quantile.
  assert np.all(data.sequence_bone_lengths(dataset, data.CMU_BONES, quantile=1.0, by='sequence') >= lengths - 1e-6)
  # by='view' (the default): one estimate per camera of a sequence, none above the pooled longest image.
  per_view = data.sequence_bone_lengths(dataset, data.CMU_BONES)
  longest = data.sequence_bone_lengths(dataset, data.CMU_BONES, quantile=1.0, by='sequence')
  assert np.all(per_view <= longest + 1e-6) and not np.all(per_view == lengths)
  for s in range(len(dataset.names)):
    for v in range(4):
      rows = (dataset.sequence_ids == s) & (dataset.view_ids == v)
      assert np.all(per_view[rows] == per_view[rows][:1])
  # A bone never seen with both ends in a sequence takes the other sequences' median.
  hidden = dataclasses.replace(dataset, visibility=dataset.visibility.copy())
  hidden.visibility[hidden.sequence_ids == 0, :, 2] = 0.0
  est = data.sequence_bone_lengths(hidden, data.CMU_BONES, by='sequence')
  np.testing.assert_allclose(est[hidden.sequence_ids == 0, 1], np.median(est[hidden.sequence_ids != 0, 1]))
  with pytest.raises(ValueError, match='quantile'):
    data.sequence_bone_lengths(dataset, data.CMU_BONES, quantile=0.0)
  with pytest.raises(ValueError, match="by must be 'view' or 'sequence'"):
    data.sequence_bone_lengths(dataset, data.CMU_BONES, by='subject')
  with pytest.raises(ValueError, match='outside'):
    data.sequence_bone_lengths(dataset, ((0, 17),))


def test_camera_rings_at_several_elevations(mocap):
  # data.elevations adds a ring of the same azimuths per elevation; view id = ring * azimuths + azimuth.
  config = configs.get('tiny')
  config.data.train_subjects, config.data.azimuths, config.data.elevations = '003', (0.0, 90.0), (30.0,)
  dataset = data.make_dataset(config.data, 'train', seed=0)
  assert set(dataset.view_ids.tolist()) == {0, 1, 2, 3}
  truth = data.reassemble(dataset, dataset.points3d)
  np.testing.assert_array_equal(truth[('003_01', 3)], data.orthographic_views(mocap['003_01'], (90.0,), 30.0)[0])
  np.testing.assert_array_equal(
      truth[('003_01', 1)], data.orthographic_views(mocap['003_01'], (90.0,), config.data.elevation)[0]
  )


def test_nrsfm_and_tracks_datasets(tmp_path):
  dataset = data.nrsfm_dataset('Pickup', length=100)
  assert dataset.names == ('pickup',) and dataset.num_windows == 4
  assert dataset.keypoints.shape == (4, 100, 41, 2)
  points = data.load_nrsfm_sequence('pickup')
  np.testing.assert_allclose(data.reassemble(dataset, dataset.points3d)[('pickup', 0)], points, rtol=1e-6, atol=1e-6)
  path = data.save_tracks(tmp_path / 'mine.npz', points[..., :2])
  tracks = data.tracks_dataset(path, length=100, scale=dataset.scale)
  assert tracks.names == ('mine',) and tracks.points3d is None
  np.testing.assert_allclose(tracks.keypoints, dataset.keypoints, atol=1e-6)
  assert 'points3d' not in tracks.take([0])


def test_batch_indices_stateless_and_resumable():
  num_windows, batch_size, seed = 23, 5, 11
  per_epoch = data.steps_per_epoch(num_windows, batch_size)
  assert per_epoch == 4
  epoch0 = [data.batch_indices(num_windows, batch_size, seed=seed, step=s) for s in range(4)]
  flat = np.concatenate(epoch0)
  assert flat.dtype == np.int32 and len(set(flat.tolist())) == 20  # no repeats in an epoch
  np.testing.assert_array_equal(flat, np.random.default_rng([seed, 0]).permutation(num_windows)[:20])
  epoch1 = np.concatenate([data.batch_indices(num_windows, batch_size, seed=seed, step=s) for s in range(4, 8)])
  assert not np.array_equal(flat, epoch1)
  np.testing.assert_array_equal(data.batch_indices(num_windows, batch_size, seed=seed, step=6), epoch1[10:15])
  # Full-permutation epochs without dropping the remainder.
  assert data.steps_per_epoch(num_windows, batch_size, drop_remainder=False) == 5
  full = np.concatenate(
      [data.batch_indices(num_windows, batch_size, seed=seed, step=s, drop_remainder=False) for s in range(5)]
  )
  np.testing.assert_array_equal(np.sort(full), np.arange(num_windows))
  # Fewer windows than a batch: the permutation is cycled to fill it.
  small = data.batch_indices(3, 8, seed=seed, step=2)
  assert small.shape == (8,) and set(small.tolist()) == {0, 1, 2}
  np.testing.assert_array_equal(small[:3], small[3:6])


def test_batch_iterator_resumes():
  dataset = data.nrsfm_dataset('yoga', length=20)
  stream = data.batch_iterator(dataset, 4, seed=5)
  batches = [next(stream) for _ in range(6)]
  resumed = data.batch_iterator(dataset, 4, seed=5, start_step=4)
  for expected in batches[4:]:
    got = next(resumed)
    for key in expected:
      np.testing.assert_array_equal(got[key], expected[key])


# ----------------------------------------------------------------------------- summary


def test_summarize_bundled(tmp_path):
  summary = data.summarize_bundled()
  cmu = summary['cmu17']
  assert cmu['subjects'] == ['002', '003', '005', '006'] and cmu['num_trials'] == 46
  assert cmu['total_frames'] == 20385 == sum(cmu['frames_per_subject'].values())
  assert cmu['trials_per_subject']['003'] == 2 and sum(cmu['descriptions'].values()) == 46
  assert summary['nrsfm_mocap']['dance'] == {'frames': 264, 'points': 75}
  text = data.format_summary(summary)
  assert '46 trials' in text and 'drink: 1102 frames, 41 points' in text
  pytest.importorskip('matplotlib')
  paths = plotting.plot_bundled(tmp_path)
  assert [p.name for p in paths] == ['cmu17.png', 'nrsfm_mocap.png']
  assert all(p.stat().st_size > 1000 for p in paths)


def test_pseudo3d_file_must_match_the_training_windows(tmp_path):
  config = configs.get('tiny')
  train_ds, _ = data.make_datasets(config)
  pseudo = np.random.default_rng(0).normal(size=train_ds.keypoints.shape[:-1] + (3,)).astype(np.float32)
  path = str(tmp_path / 'pseudo.npz')
  data.save_pseudo3d(path, pseudo, train_ds)
  np.testing.assert_array_equal(data.load_pseudo3d(path, train_ds), pseudo)
  other = data.make_datasets(configs.get('tiny'), scale=2 * train_ds.scale)[0]
  with pytest.raises(ValueError, match='scale'):
    data.load_pseudo3d(path, other)
  np.savez(str(tmp_path / 'bare.npz'), pseudo3d=pseudo)
  with pytest.raises(KeyError, match='save_pseudo3d'):
    data.load_pseudo3d(str(tmp_path / 'bare.npz'), train_ds)
  with pytest.raises(FileNotFoundError, match='nope.npz'):
    data.load_pseudo3d(str(tmp_path / 'nope.npz'), train_ds)
  # The hypotheses' spread travels beside the 3D; a file without it names what is missing.
  with pytest.raises(KeyError, match='confidence'):
    data.load_pseudo3d(path, train_ds, spread=True)
  spread = np.abs(pseudo[..., 0])
  data.save_pseudo3d(path, pseudo, train_ds, spread=spread)
  got, got_spread = data.load_pseudo3d(path, train_ds, spread=True)
  np.testing.assert_array_equal(got, pseudo)
  np.testing.assert_array_equal(got_spread, spread)
  with pytest.raises(ValueError, match='spread has shape'):
    data.save_pseudo3d(path, pseudo, train_ds, spread=spread[..., :-1])


# ----------------------------------------------------------------------------- registry


def test_make_dataset_serves_every_registered_source(tmp_path):
  assert set(data.dataset_names()) >= {'cmu17', 'h36m', 'nrsfm', 'tracks'}
  config = configs.get('tiny')
  train_ds, eval_ds = data.make_datasets(config)
  assert train_ds.window_length == config.data.window and eval_ds.scale == train_ds.scale
  assert {n.split('_')[0] for n in train_ds.names} == {'002'} and {n.split('_')[0] for n in eval_ds.names} == {'006'}
  assert data.protocol_of(config.data) == 'cmu17'
  config.data.name, config.data.sequence = 'nrsfm', 'pickup'
  assert data.make_dataset(config.data, 'eval').names == ('pickup',) and data.protocol_of(config.data) == 'nrsfm'
  path_3d, _ = _h36m_files(tmp_path)
  config.data.name, config.data.path = 'h36m', str(path_3d)
  config.data.train_subjects, config.data.val_subjects = 'S1', 'S5'
  h = data.make_dataset(config.data, 'train', length=4)
  assert all(n.startswith('S1/') for n in h.names) and h.num_points == 17 and h.points3d is not None
  config.data.name = 'nope'
  with pytest.raises(ValueError, match="'nope'.*cmu17"):
    data.make_dataset(config.data, 'train')
  with pytest.raises(ValueError, match='split'):
    data.window_length(configs.get('tiny').data, 'test')


def test_h36m_dataset_turns_z_up_to_y_up(tmp_path):
  path_3d, _ = _h36m_files(tmp_path)
  ds = data.h36m_dataset(path_3d, ['S1'], length=4, azimuths_deg=(0.0,), elevation_deg=0.0)
  world = data.load_h36m(path_3d, subjects=['S1'])
  first = next(iter(world['S1'].values()))['points3d']
  # Azimuth 0, elevation 0: camera = world (y up), so the camera y is H36M's z and depth is -y.
  np.testing.assert_allclose(ds.points3d[0, 0, :, 1], first[0, :, 2], rtol=1e-5)
  np.testing.assert_allclose(ds.points3d[0, 0, :, 2], -first[0, :, 1], rtol=1e-5)


def test_transductive_train_split_adds_the_eval_2d_without_any_3d():
  config = configs.get('tiny')
  config.data.transductive = True
  train_ds, eval_ds = data.make_datasets(config)
  assert train_ds.points3d is None and eval_ds.points3d is not None
  subjects = {n.split('_')[0] for n in train_ds.names}
  assert subjects == {'002', '006'}
  plain = data.make_dataset(configs.get('tiny').data, 'train')
  assert train_ds.num_windows > plain.num_windows
  # The eval windows are the eval subject's own 2D, at the train split's scale.
  assert eval_ds.scale == train_ds.scale and {n.split('_')[0] for n in eval_ds.names} == {'006'}


def _perspective_camera(azimuth_deg: float, distance_mm: float = 5000.0):
  """A Human3.6M-like camera on a ring around the origin, 1.5 m up, looking at it (world z up)."""
  a = np.deg2rad(azimuth_deg)
  centre = np.array([distance_mm * np.cos(a), distance_mm * np.sin(a), 1500.0])
  forward = -centre / np.linalg.norm(centre)
  right = np.cross(forward, [0.0, 0.0, 1.0])
  right /= np.linalg.norm(right)
  down = np.cross(forward, right)
  rotation = np.stack([right, down, forward])  # camera x right, y down, z forward
  k = np.array([[1145.0, 0.0, 512.0], [0.0, 1144.0, 515.0], [0.0, 0.0, 1.0]])
  return k, rotation, -rotation @ centre


def write_h36m_folder(folder, frames: int = 90, subjects=('S1', 'S5', 'S6', 'S7', 'S8', 'S9', 'S11')):
  """Files in VideoPose3D's exact layout, made from bundled mocap: 32-joint world 3D in metres (z up)
  and the 2D of four perspective cameras in pixels. Returns ``{(subject, action, camera): (K, R, t)}``."""
  trials = data.load_mocap()
  keys = sorted(trials)
  y_up_to_z_up = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
  positions_3d, positions_2d, cameras = {}, {}, {}
  for i, subject in enumerate(subjects):
    positions_3d[subject], positions_2d[subject] = {}, {}
    for j, action in enumerate(('Walking', 'Eating 2')):
      points = trials[keys[(2 * i + j) * 3 % len(keys)]][:frames].astype(np.float64)
      points = (points - points[:1, :1] * [1, 0, 1]) @ y_up_to_z_up.T  # mm, z up, started at the origin
      full = np.zeros((len(points), 32, 3))
      full[:, h36m.H36M_KEPT_JOINTS] = points
      positions_3d[subject][action] = (full / 1000.0).astype(np.float32)
      views = []
      for c, azimuth in enumerate((45.0, 135.0, 225.0, 315.0)):
        k, rotation, t = _perspective_camera(azimuth + 7 * i)
        cameras[(subject, action, c)] = (k, rotation, t)
        projected = (points @ rotation.T + t) @ k.T  # the 17 joints VideoPose3D keeps
        views.append((projected[..., :2] / projected[..., 2:]).astype(np.float32))
      positions_2d[subject][action] = views
  metadata = {'num_joints': 17, 'keypoints_symmetry': [[4, 5, 6, 11, 12, 13], [1, 2, 3, 14, 15, 16]]}
  np.savez_compressed(folder / 'data_3d_h36m.npz', positions_3d=positions_3d)
  np.savez_compressed(folder / 'data_2d_h36m_gt.npz', positions_2d=positions_2d, metadata=metadata)
  return cameras


def test_fit_projective_camera_recovers_a_known_camera():
  rng = np.random.default_rng(0)
  points = rng.normal(size=(300, 3)) * 400.0
  k, rotation, t = _perspective_camera(30.0)
  projected = (points @ rotation.T + t) @ k.T
  fit = data.fit_projective_camera(points, projected[:, :2] / projected[:, 2:])
  np.testing.assert_allclose(fit['R'], rotation, atol=1e-9)
  np.testing.assert_allclose(fit['t'], t, atol=1e-6)
  np.testing.assert_allclose(fit['K'], k, atol=1e-6)
  assert fit['rms'] < 1e-6 and np.isclose(np.linalg.det(fit['R']), 1.0)
  with pytest.raises(ValueError, match='at least 6'):
    data.fit_projective_camera(points[:5], projected[:5, :2])
  with pytest.raises(ValueError, match='degenerate'):
    data.fit_projective_camera(np.repeat(points[:1], 20, 0), np.repeat(projected[:1, :2], 20, 0))


def test_h36m_folder_gives_the_real_cameras_views_on_the_papers_split(tmp_path):
  cameras = write_h36m_folder(tmp_path, frames=40)
  config = configs.get('default', 'lifter')
  config.data.name, config.data.path, config.data.window = 'h36m', str(tmp_path), 16
  train, test = data.make_datasets(config)
  assert train.names == tuple(f'{s}/{a}' for s in ('S1', 'S5', 'S6', 'S7', 'S8') for a in ('Walking', 'Eating 2'))
  assert test.names == ('S9/Walking', 'S9/Eating 2', 'S11/Walking', 'S11/Eating 2')
  assert test.scale == train.scale and data.protocol_of(config.data) == 'cmu17'
  truth = data.reassemble(test, test.points3d)
  kp = data.reassemble(test, test.keypoints * test.scale)
  world = data.load_h36m(tmp_path / 'data_3d_h36m.npz', subjects=['S9'])['S9']['Walking']['points3d']
  for c in range(4):
    k, rotation, t = cameras[('S9', 'Walking', c)]
    expected = (world @ rotation.T + t) * np.array([1.0, -1.0, -1.0])  # the library's camera frame (y up), mm
    np.testing.assert_allclose(truth[('S9/Walking', c)], expected, atol=0.05)
    # 2D in mm at the root's depth: the camera-frame x, y up to perspective (a few % here).
    centred = expected[..., :2] - expected[..., :2].mean(1, keepdims=True)
    error = np.abs(kp[('S9/Walking', c)] - centred).max()
    assert error < 0.1 * np.abs(centred).max()
  # 2D that does not belong to the 3D is refused, naming the file, sequence and camera.
  arrays = np.load(tmp_path / 'data_2d_h36m_gt.npz', allow_pickle=True)
  positions_2d = arrays['positions_2d'].item()
  positions_2d['S9']['Walking'][2] = positions_2d['S1']['Eating 2'][0]  # another recording's 2D
  np.savez_compressed(tmp_path / 'data_2d_h36m_gt.npz', positions_2d=positions_2d, metadata=arrays['metadata'])
  with pytest.raises(data.DataError, match=r'data_2d_h36m_gt\.npz: S9/Walking camera 2: its 2D is not a projection'):
    data.make_dataset(config.data, 'eval', scale=1.0)
  config.data.detector = 'cpn'
  with pytest.raises(data.DataError, match=r"data_2d_h36m_cpn\.npz: no such file.*config\.data\.detector='cpn'"):
    data.make_dataset(config.data, 'eval', scale=1.0)


@pytest.mark.slow
def test_h36m_trains_and_evaluates_from_the_command_line(tmp_path):
  """The issue's command, on files in VideoPose3D's layout: the paper's split, its metrics."""
  import json
  import os
  import subprocess
  import sys

  folder = tmp_path / 'h36m'
  folder.mkdir()
  write_h36m_folder(folder, frames=60)
  proc = subprocess.run(
      [
          sys.executable,
          '-m',
          'experiments.train',
          f'--workdir={tmp_path / "run"}',
          '--config=nrsfm_jax/configs/tiny.py',
          '--config.data.name=h36m',
          f'--config.data.path={folder}',
          '--config.data.train_subjects=',  # tiny.py names cmu17 subjects; '' is the source's split
          '--config.data.val_subjects=',
          # One device: the script inherits conftest's 4 fake CPU devices, on which 'auto' would
          # shard the step (the data-parallel step has its own tests; on 2 cores it only slows).
          '--config.train.parallel=none',
      ],
      capture_output=True,
      text=True,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
      timeout=180,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / 'run' / 'eval.json') as f:
    result = json.load(f)
  assert set(result['per_sequence']) == {'S9/Walking', 'S9/Eating 2', 'S11/Walking', 'S11/Eating 2'}
  assert result['frames'] == 4 * 4 * 60  # every frame of every test camera, once
  for metric in ('mpjpe', 'pa_mpjpe', 'stress', 'accel_error'):
    assert np.isfinite(result['overall'][metric]) and result['overall'][metric] > 0


def test_nrsfm_missing_points_and_noise_relative_to_the_extent():
  config = configs.get('nrsfm', 'pickup')
  clean = data.make_dataset(config.data, 'eval')
  config.data.dropout, config.data.noise_extent = 0.2, 0.01
  train, test = data.make_datasets(config)
  same = [data.reassemble(d, d.keypoints * d.scale)[('pickup', 0)] for d in (train, test)]
  np.testing.assert_allclose(*same, rtol=1e-5, atol=1e-5)  # Transductive: the same 2D in both splits.
  np.testing.assert_array_equal(test.points3d, clean.points3d)  # The truth stays clean.
  real = test.mask > 0
  assert abs(float(test.visibility[real].mean()) - 0.8) < 0.01
  seen = (test.visibility > 0) & real[..., None]
  extent = data.windows.extent_2d(clean.points3d[real])
  observed = test.keypoints * test.scale + test.centroids[:, :, None, :]  # back to the raw 2D
  noise = (observed - test.points3d[..., :2])[seen]
  assert 0.007 * extent < float(noise.std()) < 0.013 * extent
  config.data.noise_extent = -1.0
  with pytest.raises(configs.ConfigError, match='noise_extent'):
    configs.validate(config)
