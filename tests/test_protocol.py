"""BENCHMARKS.md A end to end: bundled data + cameras + windows + metrics reproduce the published reference."""

import numpy as np

from nrsfm_jax import data, train


def test_depth_zero_baseline_matches_benchmarks():
  # BENCHMARKS.md: predicting depth 0 everywhere on subject 006 gives
  # MPJPE 129.3, PA-MPJPE 97.4, Stress 48.6, acceleration error 1.9.
  ds = data.cmu17_dataset('006', length=243)
  pred = ds.points3d.copy()
  pred[..., 2] = 0.0
  result = train.score(pred, ds, protocol='cmu17')
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
  np.testing.assert_allclose(train.score(ds.points3d, ds)['overall']['mpjpe'], 0.0, atol=1e-3)
