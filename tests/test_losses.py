"""Tests for nrsfm_jax.losses: closed forms, masking (value and gradient), reductions."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nrsfm_jax import geometry, losses


@pytest.mark.parametrize('x', [0.0, 0.3, -0.9, 1.0, 2.5, -7.0])
def test_huber_closed_form(x):
  delta = 1.0
  expected = 0.5 * x * x if abs(x) <= delta else delta * (abs(x) - 0.5 * delta)
  # huber_sq is the true Huber of the distance.
  np.testing.assert_allclose(losses.huber_sq(jnp.asarray(x * x), delta=delta), expected, rtol=1e-6)


def test_pseudo_huber_closed_form_and_regimes():
  c = 0.03
  sq = jnp.array([0.0, 1e-6, 4.0])
  expected = c * (np.sqrt(1 + np.asarray(sq) / c**2) - 1)
  np.testing.assert_allclose(losses.pseudo_huber(sq, scale=c), expected, rtol=1e-5)
  # Quadratic regime d << c: ≈ d²/(2c); linear regime d >> c: ≈ d − c.
  np.testing.assert_allclose(losses.pseudo_huber(jnp.array(1e-8), scale=c), 1e-8 / (2 * c), rtol=1e-3)
  np.testing.assert_allclose(losses.pseudo_huber(jnp.array(4.0), scale=c), 2.0 - c, rtol=1e-3)


def test_robust_gradients_finite_at_zero():
  for kind in losses.ROBUST_KINDS:
    g = jax.grad(lambda x: losses.robust(jnp.sum(x * x), kind=kind, scale=0.5))(jnp.zeros(3))
    chex.assert_tree_all_finite(g)
  with pytest.raises(ValueError, match='Unknown robust loss kind'):
    losses.robust(jnp.ones(3), kind='cauchy')


def test_masked_mean_ignores_nan():
  values = jnp.array([1.0, 3.0, jnp.nan])
  np.testing.assert_allclose(losses.masked_mean(values, jnp.array([1.0, 1.0, 0.0])), 2.0)
  np.testing.assert_allclose(losses.masked_mean(values[:2]), 2.0)
  np.testing.assert_allclose(losses.masked_mean(jnp.ones(3), jnp.zeros(3)), 0.0)


def _random(key, shape):
  return jax.random.normal(jax.random.PRNGKey(key), shape)


@pytest.mark.parametrize('kind', losses.ROBUST_KINDS)
def test_reprojection_mask(kind):
  pts = _random(0, (4, 17, 3))
  kp = _random(1, (4, 17, 2))
  mask = jnp.ones((4, 17)).at[1, 3].set(0.0)

  def f(inputs, m):
    p, k = inputs
    return losses.masked_mean(*losses.reprojection_loss(p, k, mask=m, kind=kind, scale=0.5))

  base = jax.value_and_grad(f)((pts, kp), mask)
  # NaN and identical points at the masked entry: no effect on value or gradient.
  for bad in (jnp.nan, 5.0):
    garbage = (pts.at[1, 3].set(bad), kp.at[1, 3].set(bad))
    val, grad = jax.value_and_grad(f)(garbage, mask)
    np.testing.assert_allclose(val, base[0], rtol=1e-6)
    for g0, g1 in zip(base[1], grad):
      np.testing.assert_allclose(g1, g0, rtol=1e-6, atol=1e-9)
      np.testing.assert_array_equal(g1[1, 3], 0.0)


def test_reprojection_zero_on_exact_projection_and_ignores_depth():
  pts = _random(2, (3, 5, 3))
  values, weights = losses.reprojection_loss(pts, pts[..., :2], scale=0.1)
  chex.assert_shape(values, (3, 5))
  np.testing.assert_allclose(values, 0.0, atol=1e-7)
  np.testing.assert_array_equal(weights, 1.0)
  deeper = pts.at[..., 2].add(10.0)
  np.testing.assert_allclose(losses.reprojection_loss(deeper, pts[..., :2], scale=0.1)[0], 0.0, atol=1e-7)


def test_smoothness_closed_form():
  # One point moving along x with positions 0, 1, 3, 6: first diffs 1, 2, 3; second diffs 1, 1.
  x = jnp.array([0.0, 1.0, 3.0, 6.0])
  pts = jnp.stack([x, jnp.zeros(4), jnp.zeros(4)], -1)[:, None, :]
  beta = 0.5
  values, weights = losses.smoothness_loss(pts, beta=beta, kind='squared')
  np.testing.assert_allclose(values[:, 0], [0.0, 1.0, 4.0 + beta * 1.0, 9.0 + beta * 1.0])
  np.testing.assert_array_equal(weights[:, 0], [0.0, 1.0, 1.0, 1.0])
  # l2 / huber variants use distances.
  values, _ = losses.smoothness_loss(pts, beta=0.0, kind='l2')
  np.testing.assert_allclose(values[:, 0], [0.0, 1.0, 2.0, 3.0], rtol=1e-6)


def test_smoothness_alpha_and_depth_only():
  # x moves 0, 1, 3, 6 and z moves 0, 2, 2, 2: with components='depth' only z counts.
  x = jnp.array([0.0, 1.0, 3.0, 6.0])
  z = jnp.array([0.0, 2.0, 2.0, 2.0])
  pts = jnp.stack([x, jnp.zeros(4), z], -1)[:, None, :]
  values, weights = losses.smoothness_loss(pts, alpha=0.0, beta=1.0, kind='squared', components='depth')
  # z's second differences at t = 2, 3: -2, 0.
  np.testing.assert_allclose(values[:, 0], [0.0, 0.0, 4.0, 0.0])
  np.testing.assert_array_equal(weights[:, 0], [0.0, 1.0, 1.0, 1.0])
  values, _ = losses.smoothness_loss(pts, alpha=2.0, beta=0.0, kind='squared', components='depth')
  np.testing.assert_allclose(values[:, 0], [0.0, 8.0, 0.0, 0.0])
  # All three coordinates, α = 2: first diffs² 1 + 4, 4, 9.
  values, _ = losses.smoothness_loss(pts, alpha=2.0, beta=0.0, kind='squared')
  np.testing.assert_allclose(values[:, 0], [0.0, 10.0, 8.0, 18.0])
  with pytest.raises(ValueError, match='components'):
    losses.smoothness_loss(pts, components='z')


def test_smoothness_only_across_present_frames():
  pts = _random(3, (2, 6, 4, 3))
  frame_mask = jnp.ones((2, 6)).at[0, 3].set(0.0)

  def f(p, m):
    return losses.masked_mean(*losses.smoothness_loss(p, mask=m, beta=1.0, kind='huber', scale=0.5))

  val, grad = jax.value_and_grad(f)(pts, frame_mask)
  val2, grad2 = jax.value_and_grad(f)(pts.at[0, 3].set(jnp.nan), frame_mask)
  np.testing.assert_allclose(val, val2, rtol=1e-6)
  np.testing.assert_allclose(grad, grad2, rtol=1e-6)
  np.testing.assert_array_equal(grad2[0, 3], 0.0)
  _, weights = losses.smoothness_loss(pts, mask=frame_mask)
  # Pairs (2,3) and (3,4) are gone for sequence 0.
  np.testing.assert_array_equal(weights[0, :, 0], [0, 1, 1, 0, 0, 1])
  np.testing.assert_array_equal(weights[1, :, 0], [0, 1, 1, 1, 1, 1])
  # A constant sequence is perfectly smooth.
  const = jnp.broadcast_to(pts[:, :1], pts.shape)
  np.testing.assert_allclose(losses.smoothness_loss(const)[0], 0.0, atol=1e-7)


def test_teacher_loss_root_relative_mpjpe():
  pred = _random(4, (3, 17, 3))
  pseudo = pred + jnp.array([1.0, -2.0, 0.5])  # A pure translation.
  values, _ = losses.teacher_loss(pred, pseudo)
  np.testing.assert_allclose(values, 0.0, atol=1e-5)
  other = pred.at[:, 5].add(jnp.array([0.3, 0.4, 0.0]))
  values, _ = losses.teacher_loss(other, pred)
  np.testing.assert_allclose(values[:, 5], 0.5, rtol=1e-5)
  np.testing.assert_allclose(losses.masked_mean(values), 0.5 / 17, rtol=1e-5)
  mask = jnp.ones(17).at[5].set(0.0)
  np.testing.assert_allclose(losses.masked_mean(*losses.teacher_loss(other, pred, mask=mask)), 0.0, atol=1e-6)
  chex.assert_tree_all_finite(jax.grad(lambda p: losses.masked_mean(*losses.teacher_loss(p, p)))(pred))


def test_spread_confidence_halves_at_tau_and_orders_joints():
  spread = jnp.array([0.0, 0.5, 1.0, 4.0])
  w = losses.spread_confidence(spread, 1.0)
  np.testing.assert_allclose(w, [1.0, 0.8, 0.5, 1 / 17], rtol=1e-6)
  assert bool(jnp.all(jnp.diff(w) < 0))


_BONES = ((0, 1), (1, 2), (0, 3), (3, 4))  # Two 2-bone limbs from a root.
_PAIRS = ((0, 2), (1, 3))


def _rigid_skeleton_over_time(num_frames=6):
  rest = jnp.array([[0.0, 0, 0], [0.3, -0.4, 0.1], [0.3, -0.9, 0.2], [-0.3, -0.4, 0.1], [-0.3, -0.9, 0.2]])
  angles = jnp.linspace(0.0, 2.0, num_frames)
  rots = jax.vmap(lambda a: geometry.so3_exp(jnp.array([0.2, 1.0, 0.1]) * a))(angles)
  return geometry.rotate(jnp.broadcast_to(rest, (num_frames, 5, 3)), rots) + angles[:, None, None]


def test_bone_loss_zero_for_a_rigid_symmetric_skeleton_and_grows_with_depth_inflation():
  points = _rigid_skeleton_over_time()
  values, weights = losses.bone_loss(points, _BONES, pairs=_PAIRS, kind='squared')
  assert values.shape == weights.shape == (6,)
  np.testing.assert_allclose(values, 0.0, atol=1e-10)
  # Inflating depth (what the lifter did on subject 002) stretches bones unequally over time.
  loss = jax.jit(lambda p: losses.masked_mean(*losses.bone_loss(p, _BONES, pairs=_PAIRS)))
  inflate = lambda s: loss(points * jnp.array([1, 1, s]))
  assert 0.0 < inflate(1.5) < inflate(2.0) < inflate(3.0)
  # Each residual alone: symmetry is per frame (works with T = 1); constancy needs T > 1.
  one = points[:1].at[0, 2].add(jnp.array([0.0, -0.2, 0.0]))
  sym, _ = losses.bone_loss(one, _BONES, pairs=_PAIRS, kind='squared')
  assert sym[0] > 0
  with pytest.raises(ValueError, match='nothing to compare'):
    losses.bone_loss(one, _BONES)
  # over='batch': single frames of one skeleton agree with each other; a stretched one does not.
  batch_loss = jax.jit(lambda p: losses.bone_loss(p, _BONES, over='batch', kind='squared')[0])
  frames = points[:, None]  # [B=6, T=1, P, 3]
  np.testing.assert_allclose(batch_loss(frames), 0.0, atol=1e-10)
  values = batch_loss(frames.at[2, 0, 2].multiply(1.5))
  assert values.shape == (6, 1) and np.all(values > 0)
  # Under data parallelism the batch mean spans every device (psum): 3 devices x 2 frames = 6 frames.
  sharded = jax.pmap(
      lambda p: losses.bone_loss(p, _BONES, over='batch', kind='squared', axis_name='d')[0],
      axis_name='d',
      devices=jax.devices()[:3],
  )(frames.at[2, 0, 2].multiply(1.5).reshape(3, 2, 1, 5, 3))
  # (float32 sums in another order: a few ulp of the ~1e-3 values, 4e-6 relative under -O0.)
  np.testing.assert_allclose(sharded.reshape(6, 1), values, rtol=2e-5)


def test_bone_loss_target_lengths_per_window():
  points = _rigid_skeleton_over_time()  # [6, 5, 3]: one window of six frames.
  true = jnp.stack([jnp.linalg.norm(points[0, b] - points[0, a]) for a, b in _BONES])
  values, _ = losses.bone_loss(points, _BONES, lengths=true, temporal=0.0, kind='squared')
  np.testing.assert_allclose(values, 0.0, atol=1e-10)
  # Lengths 10% off: each frame's residual is the mean squared length error over the bones.
  values, _ = losses.bone_loss(points, _BONES, lengths=1.1 * true, temporal=0.0, kind='squared')
  np.testing.assert_allclose(values, jnp.mean(jnp.square(0.1 * true)), rtol=1e-5)
  # One row of lengths per window, for a batch of windows: [B, E] broadcasts over T.
  batch = jnp.stack([points, points])
  values, _ = losses.bone_loss(batch, _BONES, lengths=jnp.stack([true, 1.1 * true]), temporal=0.0, kind='squared')
  assert values.shape == (2, 6)
  np.testing.assert_allclose(values[0], 0.0, atol=1e-10)
  assert np.all(values[1] > 0)
  # absolute weighs it; a wrong bone count is named.
  half, _ = losses.bone_loss(points, _BONES, lengths=1.1 * true, absolute=0.5, temporal=0.0, kind='squared')
  np.testing.assert_allclose(half, 0.5 * jnp.mean(jnp.square(0.1 * true)), rtol=1e-5)
  with pytest.raises(ValueError, match='3 bones'):
    losses.bone_loss(points, _BONES, lengths=true[:3], temporal=0.0)


def test_bone_loss_masks_frames_in_value_and_gradient():
  points = _rigid_skeleton_over_time()
  broken = points.at[4].set(jnp.nan)  # A padding frame may hold anything.
  mask = jnp.ones(6).at[4].set(0.0)
  f = lambda p: losses.masked_mean(*losses.bone_loss(p, _BONES, pairs=_PAIRS, mask=mask))
  np.testing.assert_allclose(jax.jit(f)(broken), 0.0, atol=1e-6)
  grads = jax.jit(jax.grad(f))(points.at[1, 2].add(0.1))
  assert np.all(np.isfinite(grads)) and np.all(grads[4] == 0.0) and np.any(grads[1] != 0.0)
  coincident = jnp.zeros((3, 5, 3))  # Zero-length bones: finite gradients.
  assert np.all(
      np.isfinite(
          jax.jit(jax.grad(lambda p: losses.masked_mean(*losses.bone_loss(p, _BONES, pairs=_PAIRS))))(coincident)
      )
  )


def test_canonical_loss_mask():
  x = _random(5, (8, 17, 3))
  y = _random(6, (8, 17, 3))
  mask = jnp.ones((8, 17)).at[2, 7].set(0.0)

  def f(inputs, m):
    return losses.masked_mean(*losses.canonical_loss(*inputs, mask=m, scale=0.1))

  val, grad = jax.value_and_grad(f)((x, y), mask)
  val2, grad2 = jax.value_and_grad(f)((x.at[2, 7].set(jnp.nan), y), mask)
  np.testing.assert_allclose(val, val2, rtol=1e-6)
  np.testing.assert_allclose(grad[0], grad2[0], rtol=1e-6)
  np.testing.assert_array_equal(grad2[0][2, 7], 0.0)


def test_procrustes_loss_rotation_invariant():
  ref = _random(7, (17, 3))
  rots = geometry.random_rotation(jax.random.PRNGKey(8), (5,))
  shapes = geometry.rotate(jnp.broadcast_to(ref, (5, 17, 3)), rots) + 3.0
  values, _ = losses.procrustes_loss(shapes, ref)
  np.testing.assert_allclose(values, 0.0, atol=1e-5)
  noisy = shapes + 0.1 * _random(9, shapes.shape)
  grad = jax.grad(lambda s: losses.masked_mean(*losses.procrustes_loss(s, ref)))(noisy)
  chex.assert_tree_all_finite(grad)
  # Envelope theorem: gradient with R held fixed equals the numerical gradient.
  f = lambda s: losses.masked_mean(*losses.procrustes_loss(s, ref))
  chex.assert_numerical_grads(jax.jit(f), (noisy[0],), order=1, atol=2e-2, rtol=2e-2)


def test_losses_vmap_and_jit():
  pts = _random(10, (4, 6, 17, 3))
  kp = _random(11, (4, 6, 17, 2))
  f = jax.jit(lambda p, k: losses.masked_mean(*losses.reprojection_loss(p, k, scale=0.1)))
  per_sample = jax.vmap(f)(pts, kp)
  chex.assert_shape(per_sample, (4,))
  np.testing.assert_allclose(jnp.mean(per_sample), f(pts, kp), rtol=1e-5)


def test_hinge_bend_is_rotation_and_scale_invariant_and_flips_with_depth():
  from nrsfm_jax import data

  mocap = jnp.asarray(data.load_mocap(subjects='006')['006_01'][::10])  # [F, 17, 3], mm, a real body.
  bend = losses.hinge_bend(mocap, data.CMU_HINGES)
  assert bend.shape == (mocap.shape[0], 4) and np.all(np.abs(bend) <= 1.0 + 1e-6)
  assert np.mean(np.asarray(bend) > 0) > 0.95  # Knees and elbows bend the anatomical way.
  rot = geometry.so3_exp(jnp.array([0.3, -1.2, 0.7]))
  np.testing.assert_allclose(losses.hinge_bend(2.5 * geometry.rotate(mocap, rot), data.CMU_HINGES), bend, atol=1e-5)
  mirrored = mocap * jnp.array([1.0, 1.0, -1.0])  # What a depth flip does: same 2D, every sign flipped.
  np.testing.assert_allclose(losses.hinge_bend(mirrored, data.CMU_HINGES), -bend, atol=1e-5)


def test_hinge_loss_charges_the_mirrored_limb_only_and_masks_frames():
  from nrsfm_jax import data

  mocap = jnp.asarray(data.load_mocap(subjects='006')['006_01'][::10]) / 1000.0
  loss = jax.jit(lambda p, m: losses.masked_mean(*losses.hinge_loss(p, data.CMU_HINGES, margin=0.0, mask=m)))
  ones = jnp.ones(mocap.shape[0])
  good = np.asarray(losses.hinge_bend(mocap, data.CMU_HINGES)).min(-1) > 0  # Frames with every hinge right.
  frames = mocap[good]
  assert float(loss(frames, ones[good])) == 0.0
  # The body mirrored in depth (the same 2D): every knee and elbow bends backwards and pays.
  flipped = frames * jnp.array([1.0, 1.0, -1.0])
  assert float(loss(flipped, ones[good])) > 0.1
  # Padding frames count for nothing, in value and gradient, whatever they hold.
  mask = ones[good].at[0].set(0.0)
  padded = flipped.at[0].set(jnp.nan)
  grads = jax.grad(loss)(padded, mask)
  assert np.all(np.isfinite(grads)) and np.all(grads[0] == 0.0)
  assert np.isfinite(float(loss(padded, mask)))
  # Degenerate limbs (zero length): finite gradients.
  assert np.all(np.isfinite(jax.grad(loss)(jnp.zeros((2, 17, 3)), jnp.ones(2))))
  with pytest.raises(ValueError, match='at least one'):
    losses.hinge_loss(mocap, ())


def test_flip_invariant_hinge_loss_frees_the_whole_mirror_and_charges_one_mirrored_limb():
  from nrsfm_jax import data

  mocap = jnp.asarray(data.load_mocap(subjects='006')['006_01'][::10]) / 1000.0
  frames = mocap[np.asarray(losses.hinge_bend(mocap, data.CMU_HINGES)).min(-1) > 0.1]  # every hinge bent
  loss = jax.jit(lambda p: losses.hinge_loss(p, data.CMU_HINGES, margin=0.0, flip_invariant=True)[0])
  flipped = frames * jnp.array([1.0, 1.0, -1.0])
  np.testing.assert_array_equal(loss(frames), 0.0)
  np.testing.assert_array_equal(loss(flipped), 0.0)  # the whole body mirrored in depth: free
  # One shin mirrored in depth about its knee (the same 2D): where that knee now bends the other
  # way from the frame's other hinges, the frame pays in either global sign; elsewhere it is free.
  _, knee, foot = data.CMU_HINGES[0][:3]
  shin = frames[:, foot] - frames[:, knee]
  bent = frames.at[:, foot].set(frames[:, knee] + shin * jnp.array([1.0, 1.0, -1.0]))
  signs = np.sign(np.asarray(losses.hinge_bend(bent, data.CMU_HINGES)))
  mixed = (signs > 0).any(-1) & (signs < 0).any(-1)
  assert mixed.sum() >= 3
  assert np.all(np.asarray(loss(bent))[mixed] > 0) and np.all(np.asarray(loss(bent))[~mixed] == 0)
  np.testing.assert_allclose(loss(bent * jnp.array([1.0, 1.0, -1.0])), loss(bent), atol=1e-6)
  # Not flip-invariant, the mirrored body pays for every hinge.
  assert float(jnp.mean(losses.hinge_loss(flipped, data.CMU_HINGES, margin=0.0)[0])) > 0.1
