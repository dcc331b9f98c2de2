"""Tests for nrsfm_jax.scoring. docs/benchmarks.md A end to end: bundled data + cameras + windows + metrics reproduce
the published reference."""

import jax
import numpy as np
import pytest

from nrsfm_jax import configs, data, models, scoring


def test_depth_zero_baseline_matches_benchmarks():
  # docs/benchmarks.md: predicting depth 0 everywhere on subject 006 gives
  # MPJPE 129.3, PA-MPJPE 97.4, Stress 48.6, acceleration error 1.9.
  ds = data.cmu17_dataset('006', length=243)
  pred = ds.points3d.copy()
  pred[..., 2] = 0.0
  result = scoring.score(pred, ds, protocol='cmu17')
  overall = result['overall']
  np.testing.assert_allclose(overall['mpjpe'], 129.3, atol=0.05)
  np.testing.assert_allclose(overall['pa_mpjpe'], 97.4, atol=0.05)
  np.testing.assert_allclose(overall['stress'], 48.6, atol=0.05)
  np.testing.assert_allclose(overall['accel_error'], 1.9, atol=0.05)
  # Every frame of every trial, four views, exactly once.
  frames = sum(len(v) for v in data.load_mocap(subjects=['006']).values())
  assert result['frames'] == 4 * frames
  assert set(result['per_sequence']) == {k for k in data.load_mocap(subjects=['006'])}
  # The truth itself scores zero.
  np.testing.assert_allclose(scoring.score(ds.points3d, ds)['overall']['mpjpe'], 0.0, atol=1e-3)


def test_depth_zero_reference_is_the_benchmarks_number():
  ds = data.cmu17_dataset('006', length=243)
  depth0 = scoring.depth_zero_score(ds)
  np.testing.assert_allclose([depth0['overall']['mpjpe'], depth0['overall']['stress']], [129.3, 48.6], atol=0.05)
  config = configs.get('default')
  text = scoring.format_references({'overall': dict(depth0['overall'], mpjpe=80.0)}, depth0, config)
  assert 'official C3DPO' in text and '78.90' in text and 'MPJPE beats depth 0.' in text
  config.data.val_subjects = '002'
  text = scoring.format_references(depth0, depth0, config)
  assert 'official C3DPO' not in text and 'does NOT beat' in text


def test_padded_batches_cover_every_window_once_and_shrink_for_small_sets():
  def windows(frames):
    kp = np.random.default_rng(0).normal(size=(1, frames, 17, 2)).astype(np.float32)
    return data.build_dataset({'s': (None, kp, np.ones(kp.shape[:-1], np.float32))}, 8)

  for frames, batch, sizes in ((20, 64, [4]), (8 * 70, 64, [64, 64]), (8, 64, [1])):
    dataset = windows(frames)
    got = list(scoring.padded_batches(dataset, batch))
    assert [b['keypoints'].shape[0] for _, b in got] == sizes
    index = np.concatenate([b['index'][:count] for count, b in got])
    np.testing.assert_array_equal(index, np.arange(dataset.num_windows))


@pytest.mark.parametrize('causal', [True, False])
def test_predict_with_context_matches_the_whole_sequence(causal):
  # A TCN run on windows widened by its receptive field gives every frame what it gives when the
  # whole sequence is one window; without the context the frames at window edges differ.
  kp = np.random.default_rng(0).normal(size=(1, 50, 17, 2)).astype(np.float32)
  track = {'s': (None, kp, np.ones(kp.shape[:-1], np.float32))}
  windows, whole = data.build_dataset(track, 12), data.build_dataset(track, 50)
  sizes = dict(lifter_width=16, lifter_blocks=1, canon_width=16, canon_blocks=1, tcn_channels=8, mlp_width=16)
  config = models.StudentConfig(num_points=17, num_bases=4, tcn_dilations=(1, 2), tcn_causal=causal, **sizes)
  model = models.Student(config)
  params = model.init(jax.random.PRNGKey(0), whole.keypoints, whole.visibility, whole.mask, method=model.init_all)
  # A nonzero refiner output (its last layer starts at zero).
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.1 if 'mlp_out' in jax.tree_util.keystr(path) else x, params
  )
  run = configs.get('default')
  run.model.tcn_dilations, run.model.tcn_causal = (1, 2), causal
  run.train.eval_context = 'receptive_field'
  context = scoring.eval_context(run)
  assert context == ((6, 0) if causal else (3, 3))
  reference = scoring.predict(model.apply, params, whole)[0]
  got = data.unwindow(scoring.predict(model.apply, params, windows, context=context), windows.mask)
  np.testing.assert_allclose(got, reference, atol=1e-5)
  bare = data.unwindow(scoring.predict(model.apply, params, windows), windows.mask)
  assert not np.allclose(bare, reference, atol=1e-3)
  run.train.eval_context = 'none'
  assert scoring.eval_context(run) == (0, 0)
  run.train.eval_context = 'receptive_field'
  run.model.use_refiner = False
  assert scoring.eval_context(run) == (0, 0)
