"""Loss terms of eq. 19, as elementwise values plus an explicit masked reduction.

Every ``*_loss`` function returns a pair ``(values, weights)`` of equal shape:
per-element losses whose masked entries are exactly zero (in value *and*
gradient, even when the masked inputs are garbage such as NaN or coincident
points), and the weights the reduction should use. Reduce explicitly::

    loss = masked_mean(*reprojection_loss(pred, keypoints, mask=visibility, scale=0.03))

Robust penalties act on squared distances ``d²`` so gradients stay finite at
``d = 0``:

* ``'pseudo_huber'`` (C3DPO's default): ``c · (√(1 + d²/c²) − 1)``.
* ``'huber'``: the true Huber of the distance ``d`` with threshold ``c``.
* ``'l2'``: the distance ``d`` itself (MPJPE-style; safe gradient at 0).
* ``'squared'``: ``d²``.

Pure JAX: no Flax, IO or config objects.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from nrsfm_jax import geometry

Array = jax.Array

ROBUST_KINDS = ('pseudo_huber', 'huber', 'l2', 'squared')


def pseudo_huber(sq_dist: Array, *, scale: float) -> Array:
  """C3DPO's robust penalty on squared distances: ``c · (√(1 + d²/c²) − 1)``.

  Quadratic ``d²/(2c)`` for ``d ≪ c``, linear ``d − c`` for ``d ≫ c``. Computed
  as ``c·u / (√(1 + u) + 1)`` with ``u = d²/c²``, which is the same value
  without float32 cancellation at small ``d``.
  """
  u = sq_dist / (scale * scale)
  return scale * u / (jnp.sqrt(1.0 + u) + 1.0)


def safe_sqrt(x: Array) -> Array:
  """``√x`` for ``x ≥ 0`` with gradient 0 (not inf/NaN) at ``x = 0``."""
  positive = x > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def huber_sq(sq_dist: Array, *, delta: float) -> Array:
  """True Huber of the distance ``d = √sq_dist``, with a safe gradient at 0."""
  return jnp.where(sq_dist <= delta * delta, 0.5 * sq_dist, delta * (safe_sqrt(sq_dist) - 0.5 * delta))


def robust(sq_dist: Array, *, kind: str = 'pseudo_huber', scale: float = 1.0) -> Array:
  """Applies the robust penalty ``kind`` (see module doc) to squared distances."""
  if kind == 'pseudo_huber':
    return pseudo_huber(sq_dist, scale=scale)
  if kind == 'huber':
    return huber_sq(sq_dist, delta=scale)
  if kind == 'l2':
    return safe_sqrt(sq_dist)
  if kind == 'squared':
    return sq_dist
  raise ValueError(f'Unknown robust loss kind {kind!r}; expected one of {ROBUST_KINDS}.')


def masked_mean(values: Array, weights: Array | None = None, axis=None, axis_name: str | None = None) -> Array:
  """``Σ w·v / Σ w`` over ``axis`` (all axes by default); 0 where ``Σ w = 0``.

  Entries with zero weight contribute nothing, even if their value is NaN.
  With ``axis_name`` (inside ``pmap`` / ``shard_map``) the count is summed
  over that axis: each device returns its share ``Σ_local w·v / Σ_global w``
  of the global mean, so a ``psum`` of the shares is the global masked mean.
  """
  if weights is None:
    if axis_name is not None:
      weights = jnp.ones_like(values)
    else:
      return jnp.mean(values, axis=axis)
  weights = jnp.broadcast_to(weights, values.shape).astype(values.dtype)
  total = jnp.sum(jnp.where(weights > 0, values * weights, 0.0), axis=axis)
  count = jnp.sum(weights, axis=axis)
  if axis_name is not None:
    count = jax.lax.psum(count, axis_name)
  return total / jnp.maximum(count, 1e-12)


def _sq_dist(a: Array, b: Array, mask: Array | None) -> tuple[Array, Array]:
  """Squared distances over the last axis, with masked entries replaced by 0."""
  diff = a - b
  if mask is None:
    mask = jnp.ones(diff.shape[:-1], diff.dtype)
  mask = jnp.broadcast_to(mask, diff.shape[:-1]).astype(diff.dtype)
  diff = jnp.where(mask[..., None] > 0, diff, 0.0)
  return jnp.sum(diff * diff, -1), mask


def _zero_masked(values: Array, mask: Array) -> tuple[Array, Array]:
  return jnp.where(mask > 0, values, 0.0), mask


def reprojection_loss(
    points_cam: Array, keypoints: Array, *, mask: Array | None = None, kind: str = 'pseudo_huber', scale: float = 1.0
) -> tuple[Array, Array]:
  """Robust orthographic reprojection error (eq. 12).

  Args:
    points_cam: ``[..., P, 3]`` camera-frame reconstruction ``R_t S_t``.
    keypoints: ``[..., P, 2]`` observed 2D keypoints (same normalisation).
    mask: ``[..., P]`` visibility (1 visible, 0 missing or padding).
    kind: robust penalty (module doc).
    scale: its scale ``c``.

  Returns:
    ``(values [..., P], weights [..., P])``.
  """
  sq, mask = _sq_dist(geometry.orthographic_project(points_cam), keypoints, mask)
  return _zero_masked(robust(sq, kind=kind, scale=scale), mask)


SMOOTH_COMPONENTS = ('xyz', 'depth')


def smoothness_loss(
    points: Array,
    *,
    mask: Array | None = None,
    alpha: float = 1.0,
    beta: float = 1.0,
    kind: str = 'huber',
    scale: float = 1.0,
    components: str = 'xyz',
) -> tuple[Array, Array]:
  """First- and second-order temporal smoothness (eq. 13).

  ``value_t = α ρ(‖S_t − S_{t−1}‖²) + β ρ(‖S_t − 2S_{t−1} + S_{t−2}‖²)`` per point,
  where each difference counts only if all frames it spans are present. The
  values are aligned at the later frame ``t``; the weights are those of the
  first differences, so ``masked_mean`` averages over present frame pairs.

  Args:
    points: ``[..., T, P, 3]`` reconstructions over time.
    mask: ``[..., T]`` frame mask or ``[..., T, P]`` per-point mask.
    alpha: weight of the first-order term (the paper's: 1).
    beta: weight of the second-order term.
    kind: robust penalty.
    scale: its scale.
    components: ``'xyz'`` (the paper's) or ``'depth'``: only the last coordinate's differences
      (of camera-frame points, the depth; the image coordinates are pinned by the 2D already).

  Returns:
    ``(values [..., T, P], weights [..., T, P])`` (frame 0 has weight 0).
  """
  if components not in SMOOTH_COMPONENTS:
    raise ValueError(f'smoothness_loss: components must be one of {SMOOTH_COMPONENTS}; got {components!r}.')
  if components == 'depth':
    points = points[..., 2:]
  shape = points.shape[:-1]
  if mask is None:
    mask = jnp.ones(shape, points.dtype)
  elif mask.ndim == points.ndim - 2:
    mask = jnp.broadcast_to(mask[..., None], shape)
  mask = jnp.broadcast_to(mask, shape).astype(points.dtype)
  zeros_p = jnp.zeros_like(points[..., :1, :, :])
  zeros_m = jnp.zeros_like(mask[..., :1, :])
  # First difference aligned at t: S_t − S_{t−1}, valid for t ≥ 1.
  prev = jnp.concatenate([zeros_p, points[..., :-1, :, :]], -3)
  prev_m = jnp.concatenate([zeros_m, mask[..., :-1, :]], -2)
  m1 = mask * prev_m
  sq1, _ = _sq_dist(points, prev, m1)
  # Second difference aligned at t: S_t − 2 S_{t−1} + S_{t−2}, valid for t ≥ 2.
  prev2 = jnp.concatenate([zeros_p, prev[..., :-1, :, :]], -3)
  prev2_m = jnp.concatenate([zeros_m, prev_m[..., :-1, :]], -2)
  m2 = m1 * prev2_m
  sq2, _ = _sq_dist(points - prev, prev - prev2, m2)
  values = alpha * jnp.where(m1 > 0, robust(sq1, kind=kind, scale=scale), 0.0) + beta * jnp.where(
      m2 > 0, robust(sq2, kind=kind, scale=scale), 0.0
  )
  return values * (m1 > 0), m1


def teacher_loss(
    points: Array,
    pseudo: Array,
    *,
    mask: Array | None = None,
    root: int | None = 0,
    kind: str = 'l2',
    scale: float = 1.0,
) -> tuple[Array, Array]:
  """Distance to the teacher's pseudo-3D (eq. 16), on root-relative 3D.

  Args:
    points: ``[..., P, 3]`` student camera-frame 3D.
    pseudo: ``[..., P, 3]`` teacher pseudo-3D in the same frame and units.
    mask: ``[..., P]`` weights (e.g. window padding × visibility).
    root: root joint subtracted from both (``None``: no centring).
    kind: robust penalty; ``'l2'`` is the per-joint Euclidean distance (MPJPE).
    scale: its scale.

  Returns:
    ``(values [..., P], weights [..., P])``.
  """
  sq, mask = _sq_dist(geometry.root_relative(points, root), geometry.root_relative(pseudo, root), mask)
  return _zero_masked(robust(sq, kind=kind, scale=scale), mask)


def bone_loss(
    points: Array,
    bones: tuple[tuple[int, int], ...],
    *,
    pairs: tuple[tuple[int, int], ...] = (),
    temporal: float = 1.0,
    lengths: Array | None = None,
    absolute: float = 1.0,
    over: str = 'window',
    mask: Array | None = None,
    kind: str = 'squared',
    scale: float = 1.0,
    axis_name: str | None = None,
) -> tuple[Array, Array]:
  """Skeleton rigidity, a 3D-free prior: bones keep their length over time, and paired bones match.

  Per frame ``t``, on length residuals in the points' own units:

  * symmetry, for each bone pair ``(a, b)`` (e.g. left and right thigh): ``r = ℓ_a − ℓ_b``;
  * ``temporal`` × constancy, for each bone: ``r = ℓ_t − mean ℓ``, the mean over the window's
    present frames (``over='window'``; needs ``T > 1``) or over every present frame of the
    batch (``over='batch'``, summed over ``axis_name`` too: one person, or people of similar
    build, in a batch of independent frames);
  * ``absolute`` × length, for each bone, when ``lengths`` are given: ``r = ℓ_t − L``, with
    ``L`` e.g. a high quantile of the bone's 2D length over its sequence
    (``data.sequence_bone_lengths``): under an orthographic camera of fixed scale a bone's
    image is never longer than the bone, and as long as it when the bone lies parallel to
    the image plane, so ``L`` comes from the 2D alone. With the x, y fitted by reprojection,
    this pins each bone's depth extent ``|Δz| = √(L² − ℓ₂ᴅ²)`` and leaves only its sign.

  A lifter that inflates the depth relief stretches the bones that point at the
  camera and not the others, so both residuals grow with it; neither uses any
  ground-truth 3D. The residuals are absolute, not relative: with the 2D
  fixed by reprojection, relative ones vanish as every depth grows without
  bound (measured: they drove the lifter there).

  Args:
    points: ``[..., T, P, 3]`` reconstructions (any frame: lengths are rotation-invariant).
    bones: ``E`` (parent, child) joint indices.
    pairs: bone pairs ``(a, b)``, indices into ``bones``, that should be equally long.
    temporal: weight of the constancy residual (0: symmetry only).
    lengths: ``[..., E]`` (one per window, broadcast over ``T``) or ``[..., T, E]`` target
      bone lengths in the points' units, or None (no length residual).
    absolute: weight of the length residual.
    over: ``'window'`` or ``'batch'``: the frames whose mean length a bone keeps.
    mask: ``[..., T]`` frame mask (window padding).
    kind: robust penalty of the squared residuals.
    scale: its scale.
    axis_name: the data-parallel axis (``over='batch'``).

  Returns:
    ``(values [..., T], weights [..., T])``: each frame's mean over its residuals.
  """
  if not bones:
    raise ValueError('bone_loss needs at least one bone (parent, child) pair.')
  if over not in ('window', 'batch'):
    raise ValueError(f"bone_loss: over must be 'window' or 'batch', got {over!r}.")
  idx = jnp.asarray(bones, jnp.int32)
  vec = points[..., idx[:, 1], :] - points[..., idx[:, 0], :]
  if mask is None:
    mask = jnp.ones(points.shape[:-2], points.dtype)
  mask = jnp.broadcast_to(mask, points.shape[:-2]).astype(points.dtype)
  length = jnp.where(mask[..., None] > 0, safe_sqrt(jnp.sum(jnp.square(vec), -1)), 0.0)  # [..., T, E]
  values = jnp.zeros_like(mask)
  count = 0
  if pairs:
    pidx = jnp.asarray(pairs, jnp.int32)
    la, lb = length[..., pidx[:, 0]], length[..., pidx[:, 1]]
    values = values + jnp.sum(robust(jnp.square(la - lb), kind=kind, scale=scale), -1)
    count += len(pairs)
  if lengths is not None and absolute:
    target = jnp.asarray(lengths, length.dtype)
    if target.shape[-1] != len(bones):
      raise ValueError(f'bone_loss: lengths has {target.shape[-1]} bones in its last axis, bones has {len(bones)}.')
    if target.ndim == length.ndim - 1:  # One per window: broadcast over its frames.
      target = target[..., None, :]
    values = values + absolute * jnp.sum(robust(jnp.square(length - target), kind=kind, scale=scale), -1)
    count += len(bones)
  frames_axes = tuple(range(length.ndim - 1)) if over == 'batch' else (length.ndim - 2,)
  if temporal and points.ndim >= 3 and (over == 'batch' or points.shape[-3] > 1):
    m = mask[..., None]
    total, present = jnp.sum(length * m, frames_axes, keepdims=True), jnp.sum(m, frames_axes, keepdims=True)
    if over == 'batch' and axis_name is not None:
      total, present = jax.lax.psum((total, present), axis_name)
    mean = total / jnp.maximum(present, 1.0)
    values = values + temporal * jnp.sum(robust(jnp.square(length - mean), kind=kind, scale=scale), -1)
    count += len(bones)
  if not count:
    raise ValueError(
        'bone_loss has nothing to compare: give bone pairs, target lengths, or windows of T > 1 frames '
        'with temporal > 0.'
    )
  return _zero_masked(values / count, mask)


def hinge_bend(points: Array, hinges: tuple[tuple[int, int, int, int, int], ...]) -> Array:
  """Which way each hinge joint bends: ``[..., P, 3] -> [..., H]``, in ``[-1, 1]``.

  For a hinge ``(a, b, c, l, r)`` (e.g. hip, knee, ankle, then right hip and left hip):
  ``((b − a) × (c − b)) · (r − l)`` over the three vectors' lengths, i.e. the sine of the bend
  times the cosine between the bend's axis and the body's ``l → r`` axis. A knee or an elbow
  bends one way only, so with ``l, r`` chosen for it the value is positive on a real body. It is
  invariant to rotations and to scale, and changes sign under a reflection (a depth flip), so
  it tells a limb from its mirror image, which the 2D cannot.
  """
  idx = jnp.asarray(hinges, jnp.int32)
  joint = lambda k: points[..., idx[:, k], :]
  upper, lower, axis = joint(1) - joint(0), joint(2) - joint(1), joint(4) - joint(3)
  norm = lambda v: safe_sqrt(jnp.sum(jnp.square(v), -1))
  return jnp.sum(jnp.cross(upper, lower) * axis, -1) / (norm(upper) * norm(lower) * norm(axis) + 1e-8)


def hinge_loss(
    points: Array,
    hinges: tuple[tuple[int, int, int, int, int], ...],
    *,
    margin: float = 0.05,
    mask: Array | None = None,
    flip_invariant: bool = False,
) -> tuple[Array, Array]:
  """Knees and elbows bend the anatomical way, a 3D-free prior: ``max(0, margin − bend)``.

  ``bend`` is :func:`hinge_bend` (sine of the bend angle, signed by its direction about the
  body's left-right axis). A depth-flipped limb, which reprojects exactly as the true one does,
  has the opposite sign and pays; the true limb pays nothing once bent by more than
  ``asin(margin)``. No ground-truth 3D is used: only which way human knees and elbows bend.

  Args:
    points: ``[..., T, P, 3]`` reconstructions (any frame: the bend is rotation-invariant).
    hinges: ``H`` joint-index tuples ``(a, b, c, l, r)``: the limb ``a → b → c`` bending at ``b``,
      and the axis ``l → r`` it bends about with a positive sign.
    margin: the bend (as a sine) below which a limb still pays.
    mask: ``[..., T]`` frame mask (window padding).
    flip_invariant: each frame pays the smaller of its cost and its depth-flipped copy's
      (``bend → −bend``): a whole-body mirror image, which the 2D and MPJPE cannot tell from
      the body, is free, and only hinges that disagree with the frame's others pay (one knee
      bent forwards and one backwards). This is what a depth that fits the observed 2D can be
      asked for without a global handedness.

  Returns:
    ``(values [..., T], weights [..., T])``: each frame's mean over its hinges.
  """
  if not hinges:
    raise ValueError('hinge_loss needs at least one (a, b, c, l, r) hinge.')
  if mask is None:
    mask = jnp.ones(points.shape[:-2], points.dtype)
  mask = jnp.broadcast_to(mask, points.shape[:-2]).astype(points.dtype)
  points = jnp.where(mask[..., None, None] > 0, points, 0.0)  # Padding may hold anything (NaN).
  bend = hinge_bend(points, hinges)
  values = jnp.mean(jax.nn.relu(margin - bend), -1)
  if flip_invariant:
    values = jnp.minimum(values, jnp.mean(jax.nn.relu(margin + bend), -1))
  return _zero_masked(values, mask)


def spread_confidence(spread: Array, tau: float | Array) -> Array:
  """Per-joint confidence from the teacher hypotheses' spread: ``1 / (1 + (spread / τ)²)``.

  Args:
    spread: ``[..., P]`` RMS distance of the hypotheses to their mean (``diffusion.hypothesis_spread``).
    tau: the spread at which a joint's weight halves (same units; > 0).

  Returns:
    ``[..., P]`` weights in ``(0, 1]``: 1 where the hypotheses agree.
  """
  return 1.0 / (1.0 + jnp.square(spread / tau))


def canonical_loss(
    shape: Array, reconstruction: Array, *, mask: Array | None = None, kind: str = 'pseudo_huber', scale: float = 1.0
) -> tuple[Array, Array]:
  """Canonicalization consistency (eq. 18): ``ρ(‖X_k − Ψ(R X)_k‖²)`` per point.

  Args:
    shape: ``[..., P, 3]`` canonical shape ``X``.
    reconstruction: ``[..., P, 3]`` the canonicalizer's output for ``R X``.
    mask: ``[..., P]`` weights.
    kind: robust penalty.
    scale: its scale.

  Returns:
    ``(values [..., P], weights [..., P])``.
  """
  sq, mask = _sq_dist(shape, reconstruction, mask)
  return _zero_masked(robust(sq, kind=kind, scale=scale), mask)


def procrustes_loss(
    shapes: Array, reference: Array, *, mask: Array | None = None, kind: str = 'squared', scale: float = 1.0
) -> tuple[Array, Array]:
  """Distance of each shape to a reference after the best rotation (eq. 17).

  ``min_R ‖R S_i − S̄‖`` per point. By the envelope theorem the gradient of a
  minimum does not flow through the minimiser, so ``R`` is held fixed
  (``stop_gradient``), which also keeps the SVD out of the backward pass.
  Shapes are centred on their (visible) centroid first.

  Args:
    shapes: ``[..., P, 3]``.
    reference: ``[P, 3]`` or ``[..., P, 3]``.
    mask: ``[..., P]`` weights.
    kind: robust penalty (``'squared'`` is the classic least-squares form).
    scale: its scale.

  Returns:
    ``(values [..., P], weights [..., P])``.
  """
  reference = jnp.broadcast_to(reference, shapes.shape)
  shapes = shapes - geometry.weighted_centroid(shapes, mask)
  reference = reference - geometry.weighted_centroid(reference, mask)
  rot = jax.lax.stop_gradient(geometry.procrustes_rotation(shapes, reference, mask=mask))
  sq, mask = _sq_dist(geometry.rotate(shapes, rot), reference, mask)
  return _zero_masked(robust(sq, kind=kind, scale=scale), mask)
