"""Rotations, projection and SVD Procrustes alignment.

Pure JAX: every function broadcasts over arbitrary leading axes, is jit- and
vmap-compatible, and has finite gradients everywhere (including the degenerate
inputs where a naive SVD backward pass returns NaN: repeated singular values of
symmetric, planar or identical shapes). Conventions:

* Points are row vectors in arrays ``[..., P, 3]``; a rotation ``R [..., 3, 3]``
  acts as ``points @ R^T`` (i.e. ``R p`` for each point ``p``).
* The camera is orthographic with ``Π = [[1, 0, 0], [0, 1, 0]]``: image
  coordinates are the first two camera-frame coordinates and ``z`` is depth.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

Array = jax.Array

# Below this squared angle so3_exp switches to its Taylor expansion.
_SMALL_ANGLE_SQ = 1e-8
# Denominators (sums of singular values) below this are treated as degenerate
# directions of the Procrustes problem: their gradient contribution is zeroed.
_SVD_EPS = 1e-9


def hat(omega: Array) -> Array:
  """Skew-symmetric matrix ``[ω]_×`` with ``[ω]_× v = ω × v``.

  Args:
    omega: ``[..., 3]`` vectors.

  Returns:
    ``[..., 3, 3]`` skew-symmetric matrices.
  """
  x, y, z = omega[..., 0], omega[..., 1], omega[..., 2]
  zero = jnp.zeros_like(x)
  return jnp.stack(
      [
          jnp.stack([zero, -z, y], -1),
          jnp.stack([z, zero, -x], -1),
          jnp.stack([-y, x, zero], -1),
      ],
      -2,
  )


def vee(matrix: Array) -> Array:
  """Inverse of :func:`hat` on the skew part: ``[..., 3, 3] -> [..., 3]``."""
  return 0.5 * jnp.stack(
      [
          matrix[..., 2, 1] - matrix[..., 1, 2],
          matrix[..., 0, 2] - matrix[..., 2, 0],
          matrix[..., 1, 0] - matrix[..., 0, 1],
      ],
      -1,
  )


def so3_exp(omega: Array) -> Array:
  """Rodrigues' formula: rotation vector ``[..., 3]`` -> rotation ``[..., 3, 3]``.

  ``R = I + a [ω]_× + b [ω]_×²`` with ``a = sin θ / θ`` and
  ``b = (1 − cos θ) / θ² = 2 sin²(θ/2) / θ²``, switching to the Taylor series
  near ``θ = 0`` so values and gradients are exact and finite at ``ω = 0``.
  """
  theta_sq = jnp.sum(omega * omega, axis=-1)
  small = theta_sq < _SMALL_ANGLE_SQ
  theta_sq_safe = jnp.where(small, 1.0, theta_sq)
  theta = jnp.sqrt(theta_sq_safe)
  a = jnp.where(small, 1.0 - theta_sq / 6.0, jnp.sin(theta) / theta)
  half_sin = jnp.sin(0.5 * theta)
  b = jnp.where(small, 0.5 - theta_sq / 24.0, 2.0 * half_sin * half_sin / theta_sq_safe)
  k = hat(omega)
  eye = jnp.eye(3, dtype=omega.dtype)
  return eye + a[..., None, None] * k + b[..., None, None] * (k @ k)


def rotation_angle(rotation: Array) -> Array:
  """Rotation angle in radians, ``[..., 3, 3] -> [...]`` in [0, π]: ``arccos((tr R − 1) / 2)``."""
  cos = 0.5 * (jnp.trace(rotation, axis1=-2, axis2=-1) - 1.0)
  return jnp.arccos(jnp.clip(cos, -1.0, 1.0))


def so3_log(rotation: Array) -> Array:
  """Rotation ``[..., 3, 3]`` -> rotation vector ``[..., 3]`` with angle in [0, π].

  Uses ``atan2(|vee(R)|, (tr R − 1)/2)`` for the angle, and near π (where the
  skew part vanishes) recovers the axis from the symmetric part ``R + Rᵀ``.
  """
  cos = jnp.clip(0.5 * (jnp.trace(rotation, axis1=-2, axis2=-1) - 1.0), -1.0, 1.0)
  v = vee(rotation)  # = sin(θ) * axis
  sin = jnp.sqrt(jnp.sum(v * v, -1) + 1e-30)
  theta = jnp.arctan2(sin, cos)
  # Generic branch: ω = v θ / sin θ (→ v as θ → 0).
  small = sin < 1e-6
  factor = jnp.where(small, 1.0 + theta * theta / 6.0, theta / jnp.where(small, 1.0, sin))
  omega_generic = v * factor[..., None]
  # Near π: (R + Rᵀ)/2 − cos θ I = (1 − cos θ) a aᵀ; take its largest column.
  sym = 0.5 * (rotation + jnp.swapaxes(rotation, -1, -2))
  outer = sym - cos[..., None, None] * jnp.eye(3, dtype=rotation.dtype)
  diag = jnp.diagonal(outer, axis1=-2, axis2=-1)
  col = jnp.argmax(diag, axis=-1)
  axis = jnp.take_along_axis(outer, col[..., None, None], axis=-1)[..., 0]
  axis = axis / jnp.sqrt(jnp.sum(axis * axis, -1, keepdims=True) + 1e-30)
  sign = jnp.where(jnp.sum(axis * v, -1) < 0, -1.0, 1.0)
  omega_pi = axis * (sign * theta)[..., None]
  near_pi = cos < -0.99
  return jnp.where(near_pi[..., None], omega_pi, omega_generic)


def random_rotation(key: Array, shape: tuple[int, ...] = (), dtype=jnp.float32) -> Array:
  """Rotations drawn uniformly (Haar measure) from SO(3).

  A normalised 4D Gaussian is a uniform unit quaternion, whose rotation matrix
  is Haar-distributed.

  Args:
    key: PRNG key.
    shape: leading batch shape.
    dtype: float dtype of the result.

  Returns:
    ``[*shape, 3, 3]`` rotation matrices.
  """
  q = jax.random.normal(key, (*shape, 4), dtype=dtype)
  q = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
  return quaternion_to_matrix(q)


def quaternion_to_matrix(q: Array) -> Array:
  """Unit quaternions ``[..., 4]`` (w, x, y, z) -> rotations ``[..., 3, 3]``."""
  w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
  return jnp.stack(
      [
          jnp.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
          jnp.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
          jnp.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
      ],
      -2,
  )


def rotation_6d(x: Array) -> Array:
  """Continuous 6D rotation representation (Zhou et al., CVPR 2019) -> ``[..., 3, 3]``.

  Gram–Schmidt on the two 3-vectors in ``x [..., 6]``: rows ``r1 = a/|a|``,
  ``r2 = (b − (r1·b) r1)/|…|``, ``r3 = r1 × r2``. Unlike a rotation vector it has
  no discontinuity and no 2π wrap, which eases regressing large rotations.
  ``x = (1, 0, 0, 0, 1, 0)`` gives the identity.
  """
  a, b = x[..., :3], x[..., 3:]
  r1 = a / jnp.sqrt(jnp.sum(a * a, -1, keepdims=True) + 1e-12)
  b = b - jnp.sum(r1 * b, -1, keepdims=True) * r1
  r2 = b / jnp.sqrt(jnp.sum(b * b, -1, keepdims=True) + 1e-12)
  r3 = jnp.cross(r1, r2)
  return jnp.stack([r1, r2, r3], -2)


def rotation_z(angle: Array) -> Array:
  """Rotation by ``angle`` (radians) about the camera's optical axis z: ``[...] -> [..., 3, 3]``.

  Its top-left 2×2 block is the in-plane image rotation; C3DPO's z-augmentation
  and z-equivariance use these.
  """
  angle = jnp.asarray(angle)
  c, s = jnp.cos(angle), jnp.sin(angle)
  zero, one = jnp.zeros_like(angle), jnp.ones_like(angle)
  rows = [jnp.stack([c, -s, zero], -1), jnp.stack([s, c, zero], -1), jnp.stack([zero, zero, one], -1)]
  return jnp.stack(rows, -2)


def rotate(points: Array, rotation: Array) -> Array:
  """Applies ``R`` to every point: ``[..., P, 3] x [..., 3, 3] -> [..., P, 3]``."""
  return jnp.einsum('...pj,...ij->...pi', points, rotation)


def root_relative(points: Array, root: int | None = 0) -> Array:
  """Subtracts joint ``root`` from every joint: ``[..., P, 3] -> [..., P, 3]`` (``None``: unchanged)."""
  points = jnp.asarray(points)
  if root is None:
    return points
  return points - points[..., root : root + 1, :]


def smooth_over_time(points: Array, sigma: float, mask: Array | None = None) -> Array:
  """Gaussian smoothing over the time axis, normalised by the frames present: ``[..., T, P, D]``.

  Each output frame is ``Σ_s g(t - s) m_s x_s / Σ_s g(t - s) m_s`` with ``g`` a Gaussian of
  ``sigma`` frames truncated at ``3 sigma``, so absent frames (``mask = 0``: padding) neither
  leak into their neighbours nor pull the ends of a window towards zero. A constant sequence
  is unchanged; ``sigma = 0`` returns ``points`` as they are. Absent frames keep their values.

  Args:
    points: ``[..., T, P, D]``.
    sigma: width in frames (static; ``>= 0``).
    mask: ``[..., T]`` 1 on present frames (default: all present).

  Returns:
    ``[..., T, P, D]``.
  """
  if sigma < 0:
    raise ValueError(f'sigma must be >= 0; got {sigma}.')
  points = jnp.asarray(points)
  if sigma == 0:
    return points
  m = jnp.ones(points.shape[:-2], points.dtype) if mask is None else jnp.asarray(mask, points.dtype)
  return _smooth_over_time(points, jnp.broadcast_to(m, points.shape[:-2]), float(sigma))


@functools.partial(jax.jit, static_argnames='sigma')
def _smooth_over_time(points: Array, m: Array, sigma: float) -> Array:
  # (Jitted: called eagerly, each of the 2R + 1 shifted slices would compile on its own.)
  num_frames = points.shape[-3]
  radius = int(min(math.ceil(3 * sigma), max(num_frames - 1, 0)))
  offsets = jnp.arange(-radius, radius + 1)
  kernel = jnp.exp(-0.5 * (offsets / sigma) ** 2).astype(points.dtype)  # [2R+1]
  pad = [(0, 0)] * (points.ndim - 3) + [(radius, radius), (0, 0), (0, 0)]
  xp = jnp.pad(points * m[..., None, None], pad)
  mp = jnp.pad(m, [(0, 0)] * (m.ndim - 1) + [(radius, radius)])
  num = sum(kernel[i] * jax.lax.slice_in_dim(xp, i, i + num_frames, axis=-3) for i in range(2 * radius + 1))
  den = sum(kernel[i] * jax.lax.slice_in_dim(mp, i, i + num_frames, axis=-1) for i in range(2 * radius + 1))
  smoothed = num / jnp.maximum(den, 1e-12)[..., None, None]
  return jnp.where(m[..., None, None] > 0, smoothed, points)


def orthographic_project(points: Array) -> Array:
  """Orthographic projection ``Π = [[1,0,0],[0,1,0]]``: ``[..., P, 3] -> [..., P, 2]``."""
  return points[..., :2]


def flip_depth(points: Array) -> Array:
  """Negates depth (z): the reflection that orthographic 2D cannot see. ``[..., 3]``."""
  points = jnp.asarray(points)
  return jnp.concatenate([points[..., :2], -points[..., 2:]], -1)


# ----------------------------------------------------------------------------
# Procrustes.
# ----------------------------------------------------------------------------


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def rotation_from_covariance(cov: Array, allow_reflection: bool = False) -> Array:
  """Orthogonal polar factor of a cross-covariance, with stable gradients.

  Returns ``R = U D Vᵀ`` maximising ``tr(Rᵀ M)`` where ``M = U S Vᵀ`` and
  ``D = diag(1, 1, sign det(U Vᵀ))`` (``D = I`` if ``allow_reflection``).

  The default SVD backward pass divides by ``s_i² − s_j²`` and is NaN whenever
  two singular values coincide (symmetric shapes, identical source and target).
  The polar factor's own derivative only divides by ``σ_i + σ_j`` (σ the signed
  singular values), which vanishes only where the optimal rotation is genuinely
  not unique (e.g. collinear points); there the offending components are zeroed.

  Args:
    cov: ``[..., 3, 3]`` matrices ``M = Σ_p w_p t_p s_pᵀ``.
    allow_reflection: return the best orthogonal matrix, det ±1.

  Returns:
    ``[..., 3, 3]`` rotations (orthogonal matrices if ``allow_reflection``).
  """
  u, d, vt = _signed_svd(cov, allow_reflection)
  del d
  return u @ vt


def _signed_svd(cov, allow_reflection):
  u, s, vt = jnp.linalg.svd(cov, full_matrices=False)
  if allow_reflection:
    return u, s, vt
  det = jnp.linalg.det(u @ vt)
  sign = jnp.where(det < 0, -1.0, 1.0).astype(cov.dtype)
  # Flip the last left singular vector: U D, with signed singular values D S.
  u = u.at[..., :, 2].multiply(sign[..., None])
  s = s.at[..., 2].multiply(sign)
  return u, s, vt


@rotation_from_covariance.defjvp
def _rotation_from_covariance_jvp(allow_reflection, primals, tangents):
  (cov,), (dcov,) = primals, tangents
  u, s, vt = _signed_svd(cov, allow_reflection)
  v = jnp.swapaxes(vt, -1, -2)
  x = jnp.swapaxes(u, -1, -2) @ dcov @ v
  denom = s[..., :, None] + s[..., None, :]
  ok = denom > _SVD_EPS * jnp.maximum(jnp.max(jnp.abs(s), axis=-1, keepdims=True)[..., None], 1e-30)
  omega = jnp.where(ok, (x - jnp.swapaxes(x, -1, -2)) / jnp.where(ok, denom, 1.0), 0.0)
  rot = u @ vt
  return rot, u @ omega @ vt


def _weights(points: Array, mask: Array | None) -> Array:
  if mask is None:
    return jnp.ones(points.shape[:-1], points.dtype)
  return jnp.broadcast_to(mask.astype(points.dtype), points.shape[:-1])


def procrustes_rotation(
    source: Array, target: Array, *, mask: Array | None = None, allow_reflection: bool = False
) -> Array:
  """Rotation ``R`` minimising ``Σ_p w_p ‖R s_p − t_p‖²`` (i.e. ``‖source @ Rᵀ − target‖``).

  No centring is done: centre both point sets first for the usual
  translation-invariant alignment (see :func:`similarity_align`).

  Args:
    source: ``[..., P, 3]`` points to rotate.
    target: ``[..., P, 3]`` points to match.
    mask: optional ``[..., P]`` weights (0 = ignore the point).
    allow_reflection: search the orthogonal group O(3) instead of SO(3).

  Returns:
    ``[..., 3, 3]`` rotation with ``source @ Rᵀ ≈ target``.
  """
  w = _weights(source, mask)
  cov = jnp.einsum('...p,...pi,...pj->...ij', w, target, source)
  return rotation_from_covariance(cov, allow_reflection)


def orthographic_camera(shape: Array, keypoints: Array, *, mask: Array | None = None, ridge: float = 1e-4) -> Array:
  """The camera rotation under which a shape projects best onto its 2D (orthographic, no scale).

  The affine camera ``A [2, 3]`` that best maps the centred shape onto the centred 2D in least
  squares, ``A = Wᵀ S (Sᵀ S + λ I)⁻¹`` over the points with ``mask > 0`` (``λ`` = ``ridge`` ×
  the mean eigenvalue of ``Sᵀ S``, so a flat or vanishing shape stays finite), then its nearest
  rotation: the top two rows are ``A``'s orthonormal polar factor and the third their cross
  product (:func:`rotation_from_covariance` of ``A`` over a zero third row, so the gradients are
  the stable polar-factor ones). Exact when the 2D is a rotated shape's projection (up to
  ``λ``). ``[..., P, 3], [..., P, 2], [..., P] -> [..., 3, 3]``.
  """
  w = _weights(shape, mask)
  shape_c = shape - weighted_centroid(shape, mask)
  kp_c = keypoints - weighted_centroid(keypoints, mask)
  gram = jnp.einsum('...p,...pi,...pj->...ij', w, shape_c, shape_c)
  cross = jnp.einsum('...p,...pi,...pj->...ij', w, kp_c, shape_c)  # [..., 2, 3]
  lam = ridge * jnp.trace(gram, axis1=-2, axis2=-1) / 3 + 1e-12
  affine = jnp.linalg.solve(gram + lam[..., None, None] * jnp.eye(3, dtype=gram.dtype), jnp.swapaxes(cross, -1, -2))
  cov = jnp.concatenate([jnp.swapaxes(affine, -1, -2), jnp.zeros_like(cross[..., :1, :])], -2)
  return rotation_from_covariance(cov)


def procrustes_to_mean(shapes: Array, *, iterations: int = 5) -> Array:
  """Generalised Procrustes (rotation only): ``[..., N, P, 3] -> [..., N, 3, 3]``.

  Each shape is centred and rotated onto the set's mean shape, ``iterations`` rounds of
  aligning every shape to the mean of the aligned set (the first to the unaligned mean). No
  scale, no reflection. Returns ``R_n`` with the aligned shapes ``(x_n − x̄_n) @ R_nᵀ``.
  """
  x = shapes - jnp.mean(shapes, -2, keepdims=True)
  aligned = x
  for _ in range(iterations):
    mean = jnp.mean(aligned, -3, keepdims=True)
    rot = procrustes_rotation(x, jnp.broadcast_to(mean, x.shape))
    aligned = jnp.einsum('...ij,...pj->...pi', rot, x)
  return rot


def weighted_centroid(points: Array, mask: Array | None = None) -> Array:
  """Mean over visible points: ``[..., P, D] -> [..., 1, D]`` (0 if none visible)."""
  w = _weights(points, mask)[..., None]
  return jnp.sum(points * w, -2, keepdims=True) / jnp.maximum(jnp.sum(w, -2, keepdims=True), 1e-12)


def similarity_align(
    source: Array, target: Array, *, mask: Array | None = None, allow_reflection: bool = False
) -> Array:
  """Aligns ``source`` to ``target`` with the best rotation, scale and translation.

  Umeyama's least-squares similarity over the visible points; the result is
  ``c · (source − μ_s) @ Rᵀ + μ_t``.

  Args:
    source: ``[..., P, 3]``.
    target: ``[..., P, 3]``.
    mask: optional ``[..., P]`` weights.
    allow_reflection: allow det(R) = −1.

  Returns:
    ``[..., P, 3]`` aligned copy of ``source``.
  """
  w = _weights(source, mask)
  mu_s = weighted_centroid(source, w)
  mu_t = weighted_centroid(target, w)
  s0, t0 = source - mu_s, target - mu_t
  rot = procrustes_rotation(s0, t0, mask=w, allow_reflection=allow_reflection)
  rotated = rotate(s0, rot)
  num = jnp.sum(w[..., None] * rotated * t0, axis=(-2, -1))
  den = jnp.sum(w[..., None] * s0 * s0, axis=(-2, -1))
  scale = num / jnp.maximum(den, 1e-12)
  return scale[..., None, None] * rotated + mu_t


def resolve_flip_by_reference(points: Array, reference: Array, *, mask: Array | None = None) -> Array:
  """Per frame, ``points`` or its depth flip, whichever a *proper* rotation fits to ``reference`` better.

  The ground-truth-free flip resolution of the teacher's self mode: an
  orthographic reconstruction and its depth flip project identically, but only
  one of them has the reference's handedness, so only one is a rotation of it.
  Both candidates are centred (over ``mask``) and aligned to the centred
  reference in SO(3); the smaller weighted residual wins.

  Args:
    points: ``[..., P, 3]`` reconstructions (e.g. camera frame).
    reference: ``[P, 3]`` or ``[..., P, 3]`` shape with the wanted handedness
      (e.g. the student's mean shape).
    mask: optional ``[..., P]`` weights.

  Returns:
    ``[..., P, 3]``: ``points`` with z negated on the frames where the flip fits better.
  """
  points = jnp.asarray(points)
  reference = jnp.broadcast_to(jnp.asarray(reference, points.dtype), points.shape)
  w = _weights(points, mask)
  ref = reference - weighted_centroid(reference, w)

  def residual(candidate):
    c = candidate - weighted_centroid(candidate, w)
    rot = procrustes_rotation(ref, c, mask=w)
    return jnp.sum(w * jnp.sum((ref @ jnp.swapaxes(rot, -1, -2) - c) ** 2, -1), -1)

  flipped = flip_depth(points)
  use_flip = residual(flipped) < residual(points)
  return jnp.where(use_flip[..., None, None], flipped, points)


BONE_PROJECTIONS = ('none', 'clip', 'full')


def bone_length_projection(
    points: Array, bones: tuple[tuple[int, int], ...], lengths: Array, *, mode: str = 'clip', gain: float = 1.0
) -> Array:
  """Each bone's depth extent made consistent with its length, keeping its x, y: ``[..., P, 3]``.

  Under an orthographic camera a bone of length ``L`` whose image is ``ℓ`` long
  spans ``|Δz| = √(max(L² − ℓ², 0))`` in depth (Taylor's constraint). Walking the
  skeleton from its root, each child's depth becomes its parent's plus the bone's
  ``Δz``:

  * ``'clip'``: ``gain · Δz_points`` clipped to the extent. At ``gain = 1`` only
    physically impossible depth (a bone longer than ``L``) is removed, and a bone the points
    hold nearly side-on stays so; a larger gain also stretches bones the points hold too
    short, continuously in the points' depth (no jump where ``Δz_points`` changes sign);
  * ``'full'``: ``Δz = sign(Δz_points) · extent`` (the limit of an infinite gain): every
    bone takes its full extent, in the direction the points give (``Δz = 0`` goes away from
    the camera);
  * ``'none'``: ``points`` unchanged.

  The root's depth, and the depth of any joint that is no bone's child, is kept. Used at test
  time with ``lengths`` from the sequence's own 2D (``data.sequence_bone_lengths``): a
  per-frame lifter's depth relief, inflated or not, is bounded by what the 2D says each bone
  can span. No 3D is read.

  Args:
    points: ``[..., P, 3]`` with x, y the observed 2D (e.g. the student's ``reconstruction``).
    bones: ``E`` (parent, child) pairs in root-first order (a parent is the root or an
      earlier bone's child), e.g. ``data.CMU_BONES``.
    lengths: ``[..., E]`` bone lengths in the points' units, broadcastable to the points'
      leading axes.
    mode: ``'clip'``, ``'full'`` or ``'none'``.
    gain: ``'clip'``'s factor on the points' depth differences (``>= 1`` to only shorten
      depth that overreaches; any ``> 0`` is accepted).

  Returns:
    ``[..., P, 3]``: the same x, y; the new depths.

  Raises:
    ValueError: for an unknown mode, a bone whose parent is a later bone's child, a joint
      that is the child of two bones, or ``lengths`` without one entry per bone.
  """
  if mode not in BONE_PROJECTIONS:
    raise ValueError(f'bone_length_projection: mode must be one of {BONE_PROJECTIONS}, got {mode!r}.')
  if mode == 'none':
    return points
  if not gain > 0:
    raise ValueError(f'bone_length_projection: gain must be > 0, got {gain}.')
  lengths = jnp.asarray(lengths, points.dtype)
  if lengths.shape[-1] != len(bones):
    raise ValueError(
        f'bone_length_projection: lengths has {lengths.shape[-1]} entries per skeleton, bones has {len(bones)}.'
    )
  children = [b for _, b in bones]
  if len(set(children)) != len(children):
    raise ValueError(f'bone_length_projection: a joint is the child of two bones in {bones!r}.')
  placed: set[int] = set()  # Children of the bones so far.
  for a, b in bones:
    if a in children and a not in placed:
      raise ValueError(
          f'bone_length_projection: bone {(a, b)} comes before the bone that ends at {a}; list bones root first.'
      )
    placed.add(b)
  z = points[..., 2]
  new = [z[..., j] for j in range(points.shape[-2])]
  for e, (a, b) in enumerate(bones):
    image = jnp.sum(jnp.square(points[..., b, :2] - points[..., a, :2]), -1)
    room = jnp.square(lengths[..., e]) - image
    extent = jnp.where(room > 0, jnp.sqrt(jnp.where(room > 0, room, 1.0)), 0.0)  # Finite gradient at 0.
    dz = z[..., b] - z[..., a]
    dz = jnp.clip(gain * dz, -extent, extent) if mode == 'clip' else jnp.where(dz >= 0, extent, -extent)
    new[b] = new[a] + dz
  return jnp.concatenate([points[..., :2], jnp.stack(new, -1)[..., None]], -1)
