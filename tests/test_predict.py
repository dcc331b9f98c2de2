"""Tests for a user's keypoints: the detector formats, the joint mapping and lifting them."""

import json
import os

import jax
import numpy as np
import pytest

from nrsfm_jax import checkpoint, configs, data, metrics, models, predict
from nrsfm_jax.data import keypoints as kp_lib
from nrsfm_jax.models import Student


def _coco_pose(frames=6):
  """COCO-17 2D poses in pixels (y down) with scores, and the model-order joints they came from."""
  points = data.load_mocap(subjects='002_04')['002_04'][:frames]  # [F, 17, 3] mm, y up
  h36m = points[..., :2] * np.array([0.5, -0.5]) + np.array([640.0, 360.0])  # pixels, y down
  coco = kp_lib.h36m_to_coco(h36m)  # The 12 shared joints; every face point on the Head joint.
  scores = np.full((frames, 17), 0.9)
  return coco, scores, h36m


def test_coco_to_h36m_direct_and_derived_joints():
  coco, scores, h36m = _coco_pose()
  out, out_scores = kp_lib.coco_to_h36m(coco, scores)
  assert out.shape == (6, 17, 2) and out_scores.shape == (6, 17)
  for j in kp_lib._DIRECT:
    i = data.CMU_JOINTS.index(j)
    np.testing.assert_allclose(out[:, i], h36m[:, i], atol=1e-3)
  hips = (coco[:, 11] + coco[:, 12]) / 2
  shoulders = (coco[:, 5] + coco[:, 6]) / 2
  np.testing.assert_allclose(out[:, 0], hips, atol=1e-3)
  np.testing.assert_allclose(out[:, data.CMU_JOINTS.index('Head')], h36m[:, 10], atol=1e-3)
  np.testing.assert_allclose(
      out[:, data.CMU_JOINTS.index('Neck')], shoulders + 0.6 * (h36m[:, 10] - shoulders), atol=1e-3
  )
  # On the CMU rig the derived joints land near the real ones (within ~6 cm of mocap, 0.5 px/mm here).
  for name in ('Hip', 'Spine', 'Thorax', 'Neck'):
    i = data.CMU_JOINTS.index(name)
    assert np.max(np.linalg.norm(out[:, i] - h36m[:, i], axis=-1)) < 30.0, name
  # A missing left hip makes the hip, the spine and the left hip missing, nothing else.
  scores[:, kp_lib.COCO_JOINTS.index('left_hip')] = 0
  _, s = kp_lib.coco_to_h36m(coco, scores)
  missing = {data.CMU_JOINTS[i] for i in np.flatnonzero(s[0] == 0)}
  assert missing == {'Hip', 'Spine', 'LHip'}
  # No face point at all: head, neck and thorax are missing.
  scores[:, list(kp_lib._FACE)] = 0
  _, s = kp_lib.coco_to_h36m(coco, scores)
  assert {'Head', 'Neck', 'Thorax'} <= {data.CMU_JOINTS[i] for i in np.flatnonzero(s[0] == 0)}


def _write_coco(path, coco, scores, *, extra_person=False):
  entries = []
  for f in reversed(range(len(coco))):  # File order is not frame order.
    triples = np.concatenate([coco[f], scores[f][:, None]], -1)
    entries.append({'image_id': 100 + f, 'category_id': 1, 'keypoints': triples.ravel().tolist(), 'score': 0.9})
    if extra_person:
      entries.append({'image_id': 100 + f, 'keypoints': (triples + 5).ravel().tolist()})
  path.write_text(json.dumps(entries))


def _write_openpose(folder, coco, scores):
  folder.mkdir()
  inverse = {c: b for c, b in enumerate(kp_lib.BODY25_TO_COCO)}
  for f in range(len(coco)):
    body = np.zeros((25, 3))
    for c, b in inverse.items():
      body[b] = (*coco[f, c], scores[f, c])
    people = [{'pose_keypoints_2d': body.ravel().tolist()}] if f != 2 else []  # Frame 2: nobody found.
    (folder / f'clip_{f:012d}_keypoints.json').write_text(json.dumps({'version': 1.3, 'people': people}))


def test_read_keypoints_formats_agree(tmp_path):
  coco, scores, _ = _coco_pose()
  scores[3, 9] = 0.1  # Below min_score: left wrist of frame 3 missing.
  expected, expected_scores = kp_lib.coco_to_h36m(coco, np.where(scores >= 0.3, scores, 0))

  _write_coco(tmp_path / 'dets.json', coco, scores, extra_person=True)
  got = kp_lib.read_keypoints(tmp_path / 'dets.json')
  assert got.source == 'coco' and list(got.frames) == list(range(100, 106))
  np.testing.assert_allclose(got.keypoints, expected, atol=1e-3)
  np.testing.assert_array_equal(got.visibility, expected_scores > 0)
  assert got.visibility[3, data.CMU_JOINTS.index('LWrist')] == 0
  second = kp_lib.read_keypoints(tmp_path / 'dets.json', person=1)
  np.testing.assert_allclose(second.keypoints[0, 1], got.keypoints[0, 1] + 5, atol=1e-3)

  _write_openpose(tmp_path / 'openpose', coco, scores)
  op = kp_lib.read_keypoints(tmp_path / 'openpose')
  assert op.source == 'openpose' and not op.visibility[2].any()
  keep = [0, 1, 3, 4, 5]
  np.testing.assert_allclose(op.keypoints[keep], expected[keep], atol=1e-3)

  with open(tmp_path / 'long.csv', 'w') as f:
    f.write('frame,joint,x,y,score\n')
    for fr in range(len(coco)):
      for j, name in enumerate(kp_lib.COCO_JOINTS):
        f.write(f'{fr},{name},{coco[fr, j, 0]},{coco[fr, j, 1]},{scores[fr, j]}\n')
  csv_kp = kp_lib.read_keypoints(tmp_path / 'long.csv')
  np.testing.assert_allclose(csv_kp.keypoints, expected, atol=1e-3)

  data.save_tracks(tmp_path / 'ours.npz', expected)
  ours = kp_lib.read_keypoints(tmp_path / 'ours.npz')
  np.testing.assert_array_equal(ours.keypoints, expected)


@pytest.mark.parametrize(
    'name, text, match',
    [
        ('bad.json', '{"images": []}', r"bad\.json: a dict without 'annotations'"),
        (
            'bad.json',
            '[{"image_id": 1, "keypoints": [1, 2, 3]}]',
            r'bad\.json: entry 0: 3 keypoint values, expected 17',
        ),
        ('bad.json', '[{"keypoints": []}]', r'bad\.json: entry 0 has none of'),
        ('bad.json', '[1, 2', r'bad\.json: not valid JSON'),
        ('bad.csv', 'frame,x,y\n0,1,2\n', r"bad\.csv: the header .* lacks \['joint'\]"),
        ('bad.csv', 'frame,joint,x,y\n0,elbow,1,2\n', r'bad\.csv: joints .* neither all COCO-17'),
        ('bad.csv', 'frame,joint,x,y\n0,nose,a,2\n', r'bad\.csv, line 2: x, y and score must be numbers'),
        ('bad.txt', '', r'bad\.txt: cannot tell the format'),
    ],
)
def test_read_keypoints_names_the_file_and_what_was_expected(tmp_path, name, text, match):
  (tmp_path / name).write_text(text)
  with pytest.raises(ValueError, match=match):
    kp_lib.read_keypoints(tmp_path / name)


def test_read_openpose_errors(tmp_path):
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match=r'empty: no OpenPose'):
    kp_lib.read_keypoints(tmp_path / 'empty')
  folder = tmp_path / 'op'
  folder.mkdir()
  (folder / 'a_keypoints.json').write_text(json.dumps({'people': [{'pose_keypoints_2d': [0.0] * 30}]}))
  with pytest.raises(ValueError, match=r"a_keypoints\.json: 'pose_keypoints_2d' has 30 values"):
    kp_lib.read_keypoints(folder)
  (folder / 'a_keypoints.json').write_text(json.dumps({'people': [{'pose_keypoints_2d': [0.0] * 75}]}))
  with pytest.raises(ValueError, match=r'no keypoint has a score of at least'):
    kp_lib.read_keypoints(folder)


@pytest.fixture(scope='module')
def random_model(tmp_path_factory):
  """An untrained tiny student, exported (the conventions do not need a trained one)."""
  config = configs.get('tiny')
  model = models.from_config('student', config.model, 17)
  init = jax.jit(lambda key, kp, vis, mask: model.init(key, kp, vis, mask, method=Student.init_all))
  params = init(jax.random.PRNGKey(0), np.zeros((1, 4, 17, 2)), np.ones((1, 4, 17)), np.ones((1, 4)))
  path = str(tmp_path_factory.mktemp('model') / 'student.npz')
  return checkpoint.export_params(path, params, config, scale=300.0, num_points=17)


def test_lift_conventions(random_model):
  predictor = predict.load_predictor(random_model)
  _, _, h36m = _coco_pose(frames=9)
  vis = np.ones(h36m.shape[:2], np.float32)
  vis[4] = 0  # A frame where nobody was found.
  vis[5, 3] = 0
  out = predict.lift(predictor, h36m, vis)
  points = out['points3d']
  assert points.shape == (9, 17, 3) and np.isnan(points[4]).all() and np.isfinite(points[[0, 1, 2, 3, 5]]).all()
  # Root-relative, and (observed x, y) the image x, y of the visible points.
  np.testing.assert_allclose(points[:, 0][vis[:, 0] > 0], 0, atol=1e-3)
  rel = h36m - h36m[:, :1]
  np.testing.assert_allclose(points[0, :, :2], rel[0], rtol=1e-4, atol=1e-2)
  # Scale-equivariant: the same track in other units gives the same 3D in those units.
  scaled = predict.lift(predictor, h36m * 3.0 + 7.0, vis)['points3d']
  np.testing.assert_allclose(scaled[[0, 1, 2, 3, 5]], 3.0 * points[[0, 1, 2, 3, 5]], rtol=1e-3, atol=1e-2)
  with pytest.raises(ValueError, match=r'12 joints per frame; the model .* takes 17'):
    predict.lift(predictor, h36m[:, :12], vis[:, :12])


def test_load_predictor_errors(tmp_path, run):
  with pytest.raises(FileNotFoundError, match='no model at'):
    predict.load_predictor(str(tmp_path / 'nope.npz'))
  predictor = predict.load_predictor(run[0])  # A run's workdir.
  assert predictor.num_points == 17 and predictor.teacher is None  # The shipped teacher goes with its student.
  with pytest.raises(ValueError, match=r'is a student, not a diffusion teacher'):
    predict.load_predictor(run[0], teacher=run[0])
  with pytest.raises(ValueError, match=r'trained at 2D scale .* different data'):
    predict.load_predictor(run[0], teacher=predict.PRETRAINED_TEACHER)
  with pytest.raises(ValueError, match=r"diffusion teacher's export"):
    checkpoint.load_exported(predict.PRETRAINED_TEACHER)
  points = predict.lift(predictor, np.ones((3, 17, 2)) * np.arange(17)[:, None], np.ones((3, 17)))['points3d']
  assert points.shape == (3, 17, 3) and np.isfinite(points).all()


def test_shipped_model_beats_depth0_on_a_held_back_trial():
  assert os.path.getsize(predict.PRETRAINED) + os.path.getsize(predict.PRETRAINED_TEACHER) < 10 * 2**20
  predictor = predict.load_predictor(teacher=None)
  # Trial 002_04, held back from the shipped model, from a camera angle it never saw, in pixels.
  pixels, truth = predict.demo_view()
  points = predict.lift(predictor, pixels, np.ones(pixels.shape[:2], np.float32))['points3d']
  error = float(np.mean(metrics.mpjpe(points, truth)))
  depth0 = float(np.mean(metrics.mpjpe(truth * np.array([1.0, 1.0, 0.0]), truth)))
  assert error < 0.7 * depth0, (error, depth0)


def _predict_script(*flags):
  import subprocess
  import sys

  return subprocess.run(
      [sys.executable, '-m', 'experiments.predict', *flags],
      capture_output=True,
      text=True,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
      timeout=300,
  )


@pytest.mark.slow
def test_predict_script_lifts_coco_json_and_openpose_folders_with_no_training(tmp_path):
  coco, scores, _ = _coco_pose(frames=12)
  _write_coco(tmp_path / 'dets.json', coco, scores)
  _write_openpose(tmp_path / 'openpose', coco, scores)
  proc = _predict_script(f'--input={tmp_path / "dets.json"}', f'--output={tmp_path / "out"}', '--gif_frames=3')
  assert proc.returncode == 0, proc.stderr
  assert 'cmu17_student.npz' in proc.stdout and 'cmu17_teacher.npz' in proc.stdout
  names = sorted(os.listdir(tmp_path / 'out'))
  assert names == ['dets.gif', 'dets_3d.csv', 'dets_3d.npz', 'dets_sheet.png']
  with np.load(tmp_path / 'out' / 'dets_3d.npz') as f:
    assert f['points3d'].shape == (12, 17, 3) and np.isfinite(f['points3d']).all()
    assert list(f['frames']) == list(range(100, 112)) and list(f['joints']) == list(data.CMU_JOINTS)
    # The shipped teacher's per-joint uncertainty: 0 at the root (root-relative), positive elsewhere.
    assert f['uncertainty'].shape == (12, 17) and f['teacher3d'].shape == (12, 17, 3)
    np.testing.assert_allclose(f['uncertainty'][:, 0], 0.0, atol=1e-3)
    assert (f['uncertainty'][:, 1:] > 0).all() and np.isfinite(f['uncertainty']).all()
  lines = (tmp_path / 'out' / 'dets_3d.csv').read_text().splitlines()
  assert lines[0] == 'frame,joint,x,y,z,uncertainty' and len(lines) == 1 + 12 * 17
  # The same pipeline in-process (the script is a thin flag layer over it): an OpenPose folder,
  # the output folder defaulting to <input>_3d, a frame without a person left NaN.
  out = predict.predict_file(str(tmp_path / 'openpose'), teacher=None, pictures=False, log=lambda s: None)
  assert np.isnan(out['points3d'][2]).all() and np.isfinite(out['points3d'][[0, 1, 3]]).all()
  assert out['written'][0] == str(tmp_path / 'openpose_3d' / 'openpose_3d.npz')
  demo = predict.predict_file(None, str(tmp_path / 'demo'), demo=True, pictures=False, log=lambda s: None)
  assert demo['mpjpe'] < 0.7 * demo['depth0'] and os.path.exists(tmp_path / 'demo' / 'demo_002_04.json')
  # The uncertainty says where the student errs (Spearman 0.59 measured), and the teacher's own
  # aggregate beats depth 0 too.
  assert demo['uncertainty_error_corr'] > 0.3 and demo['teacher_mpjpe'] < 0.7 * demo['depth0']
  (tmp_path / 'broken.json').write_text('[{"image_id": 0, "keypoints": [1, 2]}]')
  proc = _predict_script(f'--input={tmp_path / "broken.json"}')
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 1 and len(lines) == 1, proc.stderr
  assert 'broken.json: entry 0: 2 keypoint values, expected 17' in lines[0]
