"""Property tests for nrsfm_jax.geometry."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nrsfm_jax import geometry

jax.config.update('jax_enable_x64', False)


def _shape(key, num_points=17):
  return jax.random.normal(key, (num_points, 3))


class SO3Test(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_exp_log_roundtrip(self):
    omega = jax.random.normal(jax.random.PRNGKey(0), (64, 3))
    omega = omega / jnp.linalg.norm(omega, axis=-1, keepdims=True) * jnp.linspace(0.0, 3.1, 64)[:, None]
    rot = self.variant(geometry.so3_exp)(omega)
    np.testing.assert_allclose(rot @ jnp.swapaxes(rot, -1, -2), np.broadcast_to(np.eye(3), rot.shape), atol=1e-5)
    np.testing.assert_allclose(jnp.linalg.det(rot), 1.0, atol=1e-5)
    np.testing.assert_allclose(self.variant(geometry.so3_log)(rot), omega, atol=2e-4)

  def test_log_near_pi(self):
    axis = jnp.array([0.3, -0.5, 0.81])
    axis = axis / jnp.linalg.norm(axis)
    for angle in (jnp.pi - 1e-3, jnp.pi):
      omega = geometry.so3_log(geometry.so3_exp(axis * angle))
      np.testing.assert_allclose(geometry.so3_exp(omega), geometry.so3_exp(axis * angle), atol=1e-4)

  def test_exp_matches_rodrigues_and_small_angle(self):
    omega = jnp.array([0.2, -0.4, 0.1])
    theta = jnp.linalg.norm(omega)
    k = geometry.hat(omega / theta)
    expected = jnp.eye(3) + jnp.sin(theta) * k + (1 - jnp.cos(theta)) * k @ k
    np.testing.assert_allclose(geometry.so3_exp(omega), expected, atol=1e-6)
    np.testing.assert_allclose(geometry.so3_exp(jnp.zeros(3)), jnp.eye(3), atol=0)

  def test_exp_gradients_finite_at_zero(self):
    grad = jax.jacfwd(geometry.so3_exp)(jnp.zeros(3))
    chex.assert_tree_all_finite(grad)
    # d/dω (I + [ω]×) at 0 is the hat generator.
    np.testing.assert_allclose(grad[..., 0], geometry.hat(jnp.array([1.0, 0, 0])), atol=1e-6)
    grad_rev = jax.grad(lambda w: jnp.sum(geometry.so3_exp(w) * jnp.arange(9.0).reshape(3, 3)))(jnp.zeros(3))
    chex.assert_tree_all_finite(grad_rev)

  def test_exp_numerical_grads(self):
    omega = jnp.array([0.3, -0.2, 0.5], jnp.float64) if jax.config.jax_enable_x64 else jnp.array([0.3, -0.2, 0.5])
    f = lambda w: jnp.sum(geometry.so3_exp(w) * jnp.arange(9.0).reshape(3, 3))
    chex.assert_numerical_grads(jax.jit(f), (omega,), order=1, atol=5e-2, rtol=5e-2)

  def test_random_rotation_haar(self):
    n = 100_000
    rot = geometry.random_rotation(jax.random.PRNGKey(0), (n,))
    chex.assert_shape(rot, (n, 3, 3))
    np.testing.assert_allclose(rot @ jnp.swapaxes(rot, -1, -2), np.broadcast_to(np.eye(3), rot.shape), atol=1e-5)
    np.testing.assert_allclose(jnp.linalg.det(rot), 1.0, atol=1e-5)
    # Haar: E[R] = 0 (entries have variance 1/3), and tr(R) has mean 0 and
    # variance 1. Tolerances are 5 standard errors.
    np.testing.assert_allclose(jnp.mean(rot, 0), np.zeros((3, 3)), atol=5 * (1 / 3) ** 0.5 / n**0.5)
    trace = jnp.trace(rot, axis1=-2, axis2=-1)
    assert abs(float(jnp.mean(trace))) < 5 / n**0.5
    assert abs(float(jnp.var(trace)) - 1.0) < 0.03

  def test_random_rotation_keyed(self):
    a = geometry.random_rotation(jax.random.PRNGKey(3), (4,))
    b = geometry.random_rotation(jax.random.PRNGKey(3), (4,))
    c = geometry.random_rotation(jax.random.PRNGKey(4), (4,))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


class ProcrustesTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_recovers_known_rotation(self):
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    src = jax.random.normal(keys[0], (32, 17, 3))
    rot = geometry.random_rotation(keys[1], (32,))
    tgt = geometry.rotate(src, rot)
    est = self.variant(geometry.procrustes_rotation)(src, tgt)
    np.testing.assert_allclose(est, rot, atol=1e-5)

  def test_vmap_matches_batched(self):
    keys = jax.random.split(jax.random.PRNGKey(1), 2)
    src = jax.random.normal(keys[0], (8, 10, 3))
    tgt = jax.random.normal(keys[1], (8, 10, 3))
    np.testing.assert_allclose(
        jax.vmap(geometry.procrustes_rotation)(src, tgt), geometry.procrustes_rotation(src, tgt), atol=1e-6
    )

  def test_mask_ignores_outliers(self):
    keys = jax.random.split(jax.random.PRNGKey(2), 3)
    src = jax.random.normal(keys[0], (17, 3))
    rot = geometry.random_rotation(keys[1])
    tgt = geometry.rotate(src, rot)
    corrupt = tgt.at[:4].set(100.0 * jax.random.normal(keys[2], (4, 3)))
    mask = jnp.ones(17).at[:4].set(0.0)
    np.testing.assert_allclose(geometry.procrustes_rotation(src, corrupt, mask=mask), rot, atol=1e-5)

  def test_reflection(self):
    src = _shape(jax.random.PRNGKey(5))
    reflect = jnp.diag(jnp.array([1.0, 1.0, -1.0]))
    tgt = geometry.rotate(src, reflect)
    proper = geometry.procrustes_rotation(src, tgt)
    np.testing.assert_allclose(jnp.linalg.det(proper), 1.0, atol=1e-5)
    improper = geometry.procrustes_rotation(src, tgt, allow_reflection=True)
    np.testing.assert_allclose(improper, reflect, atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_similarity_recovers_transform(self):
    keys = jax.random.split(jax.random.PRNGKey(6), 3)
    src = jax.random.normal(keys[0], (5, 17, 3))
    rot = geometry.random_rotation(keys[1], (5,))
    shift = jax.random.normal(keys[2], (5, 1, 3))
    tgt = 2.5 * geometry.rotate(src, rot) + shift
    aligned = self.variant(geometry.similarity_align)(src, tgt)
    np.testing.assert_allclose(aligned, tgt, atol=1e-5)

  def test_numerical_grads_generic(self):
    keys = jax.random.split(jax.random.PRNGKey(7), 3)
    src = jax.random.normal(keys[0], (12, 3))
    tgt = jax.random.normal(keys[1], (12, 3))
    probe = jax.random.normal(keys[2], (3, 3))

    def f(s, t):
      return jnp.sum(geometry.procrustes_rotation(s, t) * probe)

    chex.assert_numerical_grads(jax.jit(f), (src, tgt), order=1, atol=2e-2, rtol=2e-2)
    g = lambda s, t: jnp.sum(geometry.similarity_align(s, t) * tgt)
    chex.assert_numerical_grads(jax.jit(g), (src, tgt), order=1, atol=5e-2, rtol=5e-2)

  def test_gradients_finite_on_degenerate_shapes(self):
    key = jax.random.PRNGKey(8)
    generic = _shape(key)
    line = jnp.outer(jnp.linspace(-1, 1, 17), jnp.array([1.0, 2.0, 0.5]))
    planar = generic.at[:, 2].set(0.0)
    # Symmetric: points on the axes -> repeated singular values.
    sym = jnp.concatenate([jnp.eye(3), -jnp.eye(3)], 0)
    square = jnp.array([[1.0, 0, 0], [0, 1, 0], [-1, 0, 0], [0, -1, 0]])
    cases = [
        (generic, generic),
        (line, line),
        (planar, planar),
        (sym, sym),
        (square, square),
        (sym, geometry.rotate(sym, geometry.random_rotation(key))),
        (jnp.zeros((5, 3)), jnp.zeros((5, 3))),
    ]

    def loss(s, t):
      return jnp.sum((geometry.similarity_align(s, t) - t) ** 2) + jnp.sum(geometry.procrustes_rotation(s, t))

    # Jitted: one compile per point count, rather than every op of the SVD's gradient eagerly.
    grad, jac = jax.jit(jax.grad(loss, argnums=(0, 1))), jax.jit(jax.jacrev(geometry.procrustes_rotation))
    for src, tgt in cases:
      chex.assert_tree_all_finite(grad(src, tgt))
      chex.assert_tree_all_finite(jac(src, tgt))

  def test_identical_source_target_is_identity_with_zero_grad(self):
    src = _shape(jax.random.PRNGKey(9))
    np.testing.assert_allclose(geometry.procrustes_rotation(src, src), jnp.eye(3), atol=1e-5)
    grad = jax.grad(lambda s: jnp.sum((geometry.similarity_align(s, src) - src) ** 2))(src)
    np.testing.assert_allclose(grad, 0.0, atol=1e-4)


def test_project_and_flip():
  pts = jnp.arange(12.0).reshape(4, 3)
  np.testing.assert_array_equal(geometry.orthographic_project(pts), pts[:, :2])
  np.testing.assert_array_equal(geometry.flip_depth(pts)[:, 2], -pts[:, 2])


@pytest.mark.parametrize('shape', [(), (2,), (2, 3)])
def test_batching_any_leading_axes(shape):
  omega = jnp.zeros((*shape, 3)) + 0.1
  chex.assert_shape(geometry.so3_exp(omega), (*shape, 3, 3))
  chex.assert_shape(geometry.so3_log(geometry.so3_exp(omega)), (*shape, 3))
  src = jnp.ones((*shape, 5, 3)) * jnp.arange(5.0)[:, None] + jnp.eye(5, 3)
  chex.assert_shape(geometry.procrustes_rotation(src, src), (*shape, 3, 3))


def test_rotation_6d():
  x = jax.random.normal(jax.random.PRNGKey(11), (50, 6))
  rot = geometry.rotation_6d(x)
  np.testing.assert_allclose(rot @ jnp.swapaxes(rot, -1, -2), np.broadcast_to(np.eye(3), rot.shape), atol=1e-5)
  np.testing.assert_allclose(jnp.linalg.det(rot), 1.0, atol=1e-5)
  np.testing.assert_allclose(geometry.rotation_6d(jnp.array([1.0, 0, 0, 0, 1, 0])), jnp.eye(3), atol=1e-7)
  # The first two rows of any rotation map back to it.
  np.testing.assert_allclose(geometry.rotation_6d(rot[:, :2].reshape(50, 6)), rot, atol=1e-5)
  chex.assert_tree_all_finite(jax.grad(lambda v: jnp.sum(geometry.rotation_6d(v)))(x[0]))


def test_resolve_flip_by_reference_restores_handedness():
  rng = np.random.default_rng(3)
  reference = rng.normal(size=(9, 3)).astype(np.float32)
  rots = np.stack([np.asarray(geometry.random_rotation(jax.random.PRNGKey(i))) for i in range(6)])
  frames = np.einsum('fij,pj->fpi', rots, reference) + rng.normal(size=(6, 1, 3)).astype(np.float32)
  frames += rng.normal(scale=0.01, size=frames.shape).astype(np.float32)
  flipped = frames.copy()
  flip = np.array([True, False, True, True, False, False])
  flipped[flip] = np.asarray(geometry.flip_depth(frames[flip]))
  out = np.asarray(geometry.resolve_flip_by_reference(flipped, reference))
  np.testing.assert_allclose(out, frames, atol=1e-6)
  # A masked-out point cannot decide it: corrupting it changes nothing.
  mask = np.ones((6, 9), np.float32)
  mask[:, 4] = 0.0
  corrupted = flipped.copy()
  corrupted[:, 4] = 1e3
  out = np.asarray(geometry.resolve_flip_by_reference(corrupted, reference, mask=mask))
  keep = np.arange(9) != 4
  np.testing.assert_allclose(out[:, keep], frames[:, keep], atol=1e-6)


def test_orthographic_camera_recovers_the_rotation_and_ignores_hidden_points():
  key1, key2, key3 = jax.random.split(jax.random.PRNGKey(3), 3)
  shape = jax.random.normal(key1, (6, 17, 3)) * jnp.asarray([1.0, 3.0, 0.5])  # anisotropic, as a body
  rot = geometry.random_rotation(key2, (6,))
  kp = geometry.orthographic_project(geometry.rotate(shape, rot)) + jnp.asarray([0.3, -2.0])
  mask = (jnp.arange(17) % 5 != 0).astype(jnp.float32)
  kp = kp.at[..., ::5, :].set(jax.random.normal(key3, (6, 4, 2)) * 50.0)  # hidden: garbage
  np.testing.assert_allclose(geometry.orthographic_camera(shape, kp, mask=mask, ridge=0.0), rot, atol=1e-4)
  np.testing.assert_allclose(geometry.orthographic_camera(shape, kp, mask=mask), rot, atol=1e-3)
  assert np.abs(np.linalg.det(geometry.orthographic_camera(shape, kp, mask=mask)) - 1).max() < 1e-5
  # Differentiable, finite even for a vanishing shape (a student's at initialisation).
  grad = jax.grad(lambda s: jnp.sum(geometry.orthographic_camera(s, kp, mask=mask)[..., :2, :] * rot[..., :2, :]))
  for s in (shape, 1e-4 * shape):
    g = grad(s)
    assert np.isfinite(g).all() and np.abs(g).max() > 0


def test_smooth_over_time_matches_a_gaussian_and_respects_the_mask():
  from scipy.ndimage import gaussian_filter1d

  x = np.random.default_rng(0).normal(size=(2, 60, 4, 3)).astype(np.float32)
  inner = slice(10, 50)  # away from the ends, where scipy reflects and this renormalises
  np.testing.assert_allclose(
      geometry.smooth_over_time(x, 2.0)[:, inner], gaussian_filter1d(x, 2.0, axis=1, truncate=3.0)[:, inner], atol=1e-5
  )
  np.testing.assert_array_equal(geometry.smooth_over_time(x, 0.0), x)
  mask = np.ones((2, 60), np.float32)
  mask[:, 50:] = 0  # padding: kept as it is, and never mixed into present frames
  padded = x.copy()
  padded[:, 50:] = 1e6
  out = np.asarray(geometry.smooth_over_time(padded, 3.0, mask))
  np.testing.assert_array_equal(out[:, 50:], padded[:, 50:])
  np.testing.assert_allclose(out[:, :50], np.asarray(geometry.smooth_over_time(x[:, :50], 3.0)), atol=1e-5)
  const = np.broadcast_to(np.arange(12.0).reshape(4, 3), (60, 4, 3))
  np.testing.assert_allclose(geometry.smooth_over_time(const, 5.0, mask[0]), const, rtol=1e-6)
  short = geometry.smooth_over_time(x[:, :3], 10.0)  # a kernel wider than the window
  assert short.shape == (2, 3, 4, 3) and np.all(np.isfinite(short))
  with pytest.raises(ValueError, match='sigma'):
    geometry.smooth_over_time(x, -1.0)


_TREE = ((0, 1), (1, 2), (0, 3), (3, 4))  # Two 2-bone limbs from the root.


def _skeletons(key, num=8):
  """Random skeletons ``[num, 5, 3]`` and their bone lengths ``[num, 4]``."""
  points = jax.random.normal(key, (num, 5, 3))
  lengths = jnp.stack([jnp.linalg.norm(points[:, b] - points[:, a], axis=-1) for a, b in _TREE], -1)
  return points, lengths


def test_bone_length_projection_full_recovers_depth_from_lengths_and_signs():
  points, lengths = _skeletons(jax.random.PRNGKey(0))
  # Depth magnitudes scrambled, every bone's depth sign kept: Taylor's reconstruction is exact.
  z = points[..., 2]
  new = {0: z[:, 0] + 3.0}
  for (a, b), factor in zip(_TREE, (2.5, 0.3, 4.0, 1.7)):
    new[b] = new[a] + factor * (z[:, b] - z[:, a])
  scrambled = points.at[..., 2].set(jnp.stack([new[j] for j in range(5)], -1))
  out = jax.jit(lambda p, l: geometry.bone_length_projection(p, _TREE, l, mode='full'))(scrambled, lengths)
  np.testing.assert_allclose(out[..., :2], points[..., :2])
  np.testing.assert_allclose(out[..., 2] - out[:, :1, 2], points[..., 2] - points[:, :1, 2], atol=1e-5)
  # 'clip' leaves a skeleton whose bones already have their lengths unchanged.
  np.testing.assert_allclose(geometry.bone_length_projection(points, _TREE, lengths), points, atol=1e-6)
  assert geometry.bone_length_projection(points, _TREE, lengths, mode='none') is points


def test_bone_length_projection_clip_only_shortens_and_is_differentiable():
  points, lengths = _skeletons(jax.random.PRNGKey(1))
  inflated = points.at[..., 2].multiply(3.0)
  out = geometry.bone_length_projection(inflated, _TREE, lengths, mode='clip')
  for e, (a, b) in enumerate(_TREE):
    got = jnp.linalg.norm(out[:, b] - out[:, a], axis=-1)
    before = jnp.linalg.norm(inflated[:, b] - inflated[:, a], axis=-1)
    assert np.all(got <= lengths[:, e] + 1e-5) and np.all(got <= before + 1e-5)
  # A gain stretches depth that falls short, continuously, up to the full extent ('full' is its limit).
  short = points.at[..., 2].multiply(0.2)
  full = geometry.bone_length_projection(short, _TREE, lengths, mode='full')
  huge = geometry.bone_length_projection(short, _TREE, lengths, gain=1e6)
  np.testing.assert_allclose(huge, full, atol=1e-5)
  stretched = geometry.bone_length_projection(short, _TREE, lengths, gain=3.0)
  np.testing.assert_allclose(
      stretched[:, 1, 2] - stretched[:, 0, 2],
      jnp.clip(
          3.0 * (short[:, 1, 2] - short[:, 0, 2]),
          -jnp.abs(points[:, 1, 2] - points[:, 0, 2]),
          jnp.abs(points[:, 1, 2] - points[:, 0, 2]),
      ),
      atol=1e-5,
  )
  with pytest.raises(ValueError, match='gain'):
    geometry.bone_length_projection(short, _TREE, lengths, gain=0.0)
  # Per-window lengths broadcast over frames; vmap over a batch agrees with broadcasting.
  windows = jnp.stack([inflated, inflated * 0.5])  # [2, 8, 5, 3]
  lw = jnp.stack([lengths[0], lengths[1]])[:, None, :]
  np.testing.assert_allclose(
      jax.vmap(lambda p, l: geometry.bone_length_projection(p, _TREE, l))(windows, lw),
      geometry.bone_length_projection(windows, _TREE, lw),
  )
  # Finite gradients, including a bone seen exactly at its full length in the image (no depth room).
  flat = points.at[..., 2].set(0.0)
  flat_len = jnp.stack([jnp.linalg.norm(flat[:, b] - flat[:, a], axis=-1) for a, b in _TREE], -1)
  for mode in ('clip', 'full'):
    grad = jax.grad(lambda p: jnp.sum(geometry.bone_length_projection(p, _TREE, flat_len, mode=mode)))(flat)
    chex.assert_tree_all_finite(grad)


def test_bone_length_projection_rejects_bad_skeletons():
  points, lengths = _skeletons(jax.random.PRNGKey(2))
  with pytest.raises(ValueError, match='root first'):
    geometry.bone_length_projection(points, ((1, 2), (0, 1), (0, 3), (3, 4)), lengths)
  with pytest.raises(ValueError, match='child of two'):
    geometry.bone_length_projection(points, ((0, 1), (1, 2), (0, 2), (3, 4)), lengths)
  with pytest.raises(ValueError, match='3 entries'):
    geometry.bone_length_projection(points, _TREE, lengths[:, :3])
  with pytest.raises(ValueError, match='mode'):
    geometry.bone_length_projection(points, _TREE, lengths, mode='snap')
