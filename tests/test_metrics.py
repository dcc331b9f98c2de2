"""Tests for nrsfm_jax.metrics against docs/benchmarks.md's definitions."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nrsfm_jax import geometry, losses, metrics


def _pose(seed, shape=(10, 17, 3)):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32) * 100


def test_mpjpe_hand_computed():
  gt = np.zeros((1, 3, 3), np.float32)
  gt[0, 1] = [1, 0, 0]
  gt[0, 2] = [0, 1, 0]
  pred = gt.copy()
  pred[0, 1] = [1, 0, 3]  # off by 3 in depth: flip makes it 3 still (|−3 − 0|).
  pred[0, 2] = [0, 1, 0]
  np.testing.assert_allclose(metrics.mpjpe(pred, gt), [1.0])
  # Root-centring: a global translation changes nothing.
  np.testing.assert_allclose(metrics.mpjpe(pred + 7.0, gt), [1.0], rtol=1e-6)


def test_mpjpe_flip_invariance():
  gt = _pose(0)
  pred = gt + _pose(1) * 0.1
  flipped = np.asarray(geometry.flip_depth(pred))
  np.testing.assert_allclose(metrics.mpjpe(flipped, gt), metrics.mpjpe(pred, gt), rtol=1e-5)
  # Without flip resolution the mirrored prediction is penalised.
  assert np.all(metrics.mpjpe(flipped, gt, flip=False) > metrics.mpjpe(pred, gt, flip=False))
  np.testing.assert_allclose(metrics.mpjpe(gt, gt), 0.0, atol=1e-4)


def test_mpjpe_per_frame_flip_choice():
  gt = _pose(2, (2, 17, 3))
  pred = gt.copy()
  pred[1] = np.asarray(geometry.flip_depth(pred[1]))
  resolved = metrics.flip_resolve(pred, gt)
  np.testing.assert_allclose(resolved, gt - gt[:, :1], atol=1e-4)


def test_pa_mpjpe_invariant_to_similarity():
  gt = _pose(3)
  pred = gt + _pose(4) * 0.2
  rot = np.asarray(geometry.random_rotation(jax.random.PRNGKey(0), (10,)))
  moved = 1.7 * np.einsum('fpj,fij->fpi', pred, rot) + np.array([10.0, -5.0, 3.0])
  np.testing.assert_allclose(metrics.pa_mpjpe(moved, gt), metrics.pa_mpjpe(pred, gt), rtol=1e-3)
  np.testing.assert_allclose(metrics.pa_mpjpe(gt, gt), 0.0, atol=1e-3)
  assert np.all(metrics.pa_mpjpe(pred, gt) <= metrics.mpjpe(pred, gt, flip=False) + 1e-3)
  # A depth-flipped prediction is a reflection: only the flip-resolved PA undoes it.
  flipped = np.asarray(geometry.flip_depth(pred))
  np.testing.assert_allclose(metrics.pa_mpjpe(flipped, gt), metrics.pa_mpjpe(pred, gt), rtol=1e-3)
  assert np.all(metrics.pa_mpjpe(flipped, gt, flip=False) > metrics.pa_mpjpe(pred, gt) + 1.0)
  assert np.all(metrics.pa_mpjpe(flipped, gt) <= metrics.mpjpe(flipped, gt) + 1e-3)


def test_stress_invariances_and_value():
  gt = _pose(5)
  pred = gt + _pose(6) * 0.2
  rot = np.asarray(geometry.random_rotation(jax.random.PRNGKey(1), (10,)))
  moved = np.einsum('fpj,fij->fpi', pred, rot) + 42.0
  np.testing.assert_allclose(metrics.stress(moved, gt), metrics.stress(pred, gt), rtol=1e-4)
  np.testing.assert_allclose(
      metrics.stress(np.asarray(geometry.flip_depth(pred)), gt), metrics.stress(pred, gt), rtol=1e-4
  )
  # Hand value: 3 points, one pair distance off by 1.
  g = np.array([[0.0, 0, 0], [3, 0, 0], [0, 4, 0]])
  p = np.array([[0.0, 0, 0], [4, 0, 0], [0, 4, 0]])  # d01: 3→4, d02: 4, d12: 5→√32.
  expected = (1.0 + 0.0 + abs(5.0 - np.sqrt(32))) / 3
  np.testing.assert_allclose(metrics.stress(p, g), expected, rtol=1e-6)


def test_accel_error():
  gt = _pose(7, (20, 17, 3))
  np.testing.assert_allclose(metrics.accel_error(gt, gt), 0.0, atol=1e-3)
  chex.assert_shape(metrics.accel_error(gt, gt), (18,))
  # A constant-velocity drift of one joint has zero acceleration error.
  drift = gt.copy()
  drift[:, 5] += np.arange(20)[:, None] * np.array([1.0, 0, 0])
  np.testing.assert_allclose(metrics.accel_error(drift, gt), 0.0, atol=1e-3)
  # A single-frame spike of size 17 on one joint: second differences 17, −34, 17 at that joint.
  spike = gt.copy()
  spike[10, 3] += np.array([17.0, 0, 0])
  err = np.asarray(metrics.accel_error(spike, gt, flip=False))
  np.testing.assert_allclose(err[[8, 9, 10]], [1.0, 2.0, 1.0], rtol=1e-4)
  np.testing.assert_allclose(np.delete(err, [8, 9, 10]), 0.0, atol=1e-3)


def test_e3d_zero_on_truth_and_hand_value():
  gt = _pose(8, (6, 41, 3))
  np.testing.assert_allclose(metrics.e3d(gt, gt), 0.0, atol=1e-6)
  np.testing.assert_allclose(metrics.e3d(np.asarray(geometry.flip_depth(gt)) + 5.0, gt), 0.0, atol=1e-5)
  pred = gt * 1.1  # Error is 10% of the (centred) norm per frame.
  np.testing.assert_allclose(metrics.e3d(pred, gt), 0.1, rtol=1e-4)
  # Explicit per-frame formula.
  noisy = gt + _pose(9, gt.shape) * 0.3
  c = lambda x: x - x.mean(1, keepdims=True)
  per_frame = [
      min(np.linalg.norm(c(noisy)[f] - c(gt)[f]), np.linalg.norm(c(noisy)[f] * [1, 1, -1] - c(gt)[f]))
      / np.linalg.norm(c(gt)[f])
      for f in range(6)
  ]
  np.testing.assert_allclose(metrics.e3d(noisy, gt), np.mean(per_frame), rtol=1e-4)


def test_e3d_akhter():
  gt = _pose(10, (8, 41, 3)).astype(np.float64)
  np.testing.assert_allclose(metrics.e3d_akhter(gt, gt), 0.0, atol=1e-5)
  # Invariant to global scale, translation and a global reflection. (Not to
  # rotations: the scale s, a mean of per-axis stds, depends on orientation.)
  moved = 3.0 * np.asarray(geometry.flip_depth(gt)) + 4.0
  np.testing.assert_allclose(metrics.e3d_akhter(moved, gt), 0.0, atol=1e-5)
  rot = np.asarray(geometry.random_rotation(jax.random.PRNGKey(2)))
  assert float(metrics.e3d_akhter(gt @ rot.T, gt)) < 0.05
  # Hand computation with numpy.
  noisy = gt + _pose(11, gt.shape) * 0.2
  c = lambda x: x - x.mean(1, keepdims=True)
  p, g = c(noisy), c(gt)
  p = p / np.mean(np.std(p, axis=1, ddof=1))
  g = g / np.mean(np.std(g, axis=1, ddof=1))
  u, _, vt = np.linalg.svd(g.reshape(-1, 3).T @ p.reshape(-1, 3))
  q = u @ vt
  expected = np.mean(np.linalg.norm(p @ q.T - g, axis=-1).mean(-1))
  np.testing.assert_allclose(metrics.e3d_akhter(noisy, gt), expected, rtol=1e-4)


def test_metrics_jit_and_numpy_agree():
  gt = _pose(12)
  pred = gt + _pose(13) * 0.1
  for fn in (metrics.mpjpe, metrics.pa_mpjpe, metrics.stress):
    np.testing.assert_allclose(jax.jit(fn)(jnp.asarray(pred), jnp.asarray(gt)), fn(pred, gt), rtol=1e-4)


@pytest.mark.parametrize('fn', [metrics.mpjpe, metrics.pa_mpjpe, metrics.stress])
def test_per_frame_shapes(fn):
  chex.assert_shape(fn(_pose(14, (2, 5, 17, 3)), _pose(15, (2, 5, 17, 3))), (2, 5))


def test_wrong_hinges_forgives_a_mirrored_body_and_counts_a_mirrored_limb():
  from nrsfm_jax import data

  gt = jnp.asarray(data.load_mocap(subjects='006')['006_01'][::10])  # [F, 17, 3]
  good = np.asarray(losses.hinge_bend(gt, data.CMU_HINGES)).min(-1) > 0.2  # Every limb clearly bent.
  gt = gt[good]
  np.testing.assert_array_equal(metrics.wrong_hinges(gt, gt, data.CMU_HINGES), 0.0)
  # The whole body mirrored in depth: MPJPE takes the flip, so nothing is bent wrong.
  np.testing.assert_array_equal(metrics.wrong_hinges(gt * jnp.array([1.0, 1.0, -1.0]), gt, data.CMU_HINGES), 0.0)
  # One limb mirrored against the rest of the body (its middle joint's depth negated): counted.
  hinge = ((0, 1, 2, 3, 4),)  # a -> b -> c bending about l -> r.
  body = jnp.array([[0, 0, 0], [0, -1, 0.3], [0, -2, 0], [-1, 0, 0], [1, 0, 0], [0, 1, 1.0]])
  bent_back = body.at[1, 2].set(-0.3)  # The same 2D; flipping the whole body would cost more.
  assert float(losses.hinge_bend(body, hinge)[0]) > 0 > float(losses.hinge_bend(bent_back, hinge)[0])
  np.testing.assert_array_equal(metrics.wrong_hinges(bent_back[None], body[None], hinge), [1.0])


def test_nonrigidity_ignores_rotation_and_translation_and_measures_deformation():
  rng = np.random.default_rng(0)
  base = rng.normal(size=(17, 3))
  rot = np.asarray(geometry.random_rotation(jax.random.PRNGKey(1), (40,)))
  rigid = np.einsum('nij,pj->npi', rot, base) + rng.normal(size=(40, 1, 3))
  assert float(metrics.nonrigidity(rigid)) < 1e-5
  # A body whose limb (point 0) swings by ±d along one axis deforms: about d / P on average.
  swing = np.where(np.arange(40) % 2 == 0, 1.0, -1.0)[:, None] * np.array([0.5, 0.0, 0.0])
  moved = np.repeat(base[None], 40, 0)
  moved[:, 0] += swing
  value = float(metrics.nonrigidity(np.einsum('nij,npj->npi', rot, moved)))
  assert 0.2 / 17 < value < 0.5  # far above the rigid set's, and bounded by the swing
  tripled = float(metrics.nonrigidity(3.0 * moved))
  np.testing.assert_allclose(tripled, 3.0 * float(metrics.nonrigidity(moved)), rtol=1e-4)
  assert metrics.nonrigidity(np.stack([rigid, moved])).shape == (2,)


def test_hinge_minority_needs_no_truth_and_ignores_a_whole_mirror():
  from nrsfm_jax import data, losses

  mocap = jnp.asarray(data.load_mocap(subjects='006')['006_01'][::10])
  body = mocap[np.asarray(losses.hinge_bend(mocap, data.CMU_HINGES)).min(-1) > 0.1]  # every hinge bent right
  np.testing.assert_array_equal(metrics.hinge_minority(body, data.CMU_HINGES), 0.0)
  np.testing.assert_array_equal(metrics.hinge_minority(body * jnp.array([1.0, 1.0, -1.0]), data.CMU_HINGES), 0.0)
  # One hinge's own sign flipped (its limb mirrored against the body): 1 of the 4 disagrees.
  bend = losses.hinge_bend(body, data.CMU_HINGES)
  one = jnp.concatenate([-bend[:, :1], bend[:, 1:]], -1)
  right = jnp.mean((one > 0).astype(jnp.float32), -1)
  np.testing.assert_allclose(jnp.minimum(right, 1 - right), 0.25)
  out = metrics.hinge_minority(jnp.zeros((3, 5, 17, 3)).at[..., 0].set(jnp.arange(17.0)), data.CMU_HINGES)
  assert out.shape == (3, 5) and np.all((np.asarray(out) >= 0) & (np.asarray(out) <= 0.5))


def test_hinge_outliers_name_the_limb_mirrored_against_its_frame():
  from nrsfm_jax import data, losses

  mocap = jnp.asarray(data.load_mocap(subjects='006')['006_01'][::10])
  body = mocap[np.asarray(losses.hinge_bend(mocap, data.CMU_HINGES)).min(-1) > 0.1]
  assert body.shape[0] > 5
  hinges = np.asarray(data.CMU_HINGES)

  def mirror_limb(points, h):  # the limb's knee and foot (elbow and wrist) reflected in depth about its root
    a, b, c = hinges[h, :3]
    z = points[..., 2]
    z = z.at[..., b].set(2 * z[..., a] - z[..., b]).at[..., c].set(2 * z[..., a] - z[..., c])
    return points.at[..., 2].set(z)

  assert not np.any(metrics.hinge_outliers(body, data.CMU_HINGES))
  assert not np.any(metrics.hinge_outliers(body * jnp.array([1.0, 1.0, -1.0]), data.CMU_HINGES))
  one = metrics.hinge_outliers(mirror_limb(body, 2), data.CMU_HINGES)
  np.testing.assert_array_equal(one, np.broadcast_to([False, False, True, False], one.shape))
  # The same limb mirrored on a depth-flipped body: still that limb alone.
  flipped = mirror_limb(body * jnp.array([1.0, 1.0, -1.0]), 2)
  np.testing.assert_array_equal(metrics.hinge_outliers(flipped, data.CMU_HINGES), one)
  # Two of four against two: a tie, which the 2D cannot settle, flags all four.
  assert np.all(metrics.hinge_outliers(mirror_limb(mirror_limb(body, 0), 1), data.CMU_HINGES))
