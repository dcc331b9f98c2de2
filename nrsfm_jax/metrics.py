"""Evaluation metrics, exactly as defined in docs/benchmarks.md.

All functions take numpy or JAX arrays, are jit-compatible, and return JAX
arrays (``np.asarray`` them for reporting). Per-frame metrics return one value
per frame so callers can average over all frames of all sequences and report
per-trial numbers from the same arrays.

Depth flip: an orthographic camera cannot tell a shape from its mirror image
through the image plane (``z → −z``); "flip-resolved" metrics take, per frame,
the better of the prediction and its depth-flipped copy (C3DPO's "MPJPE best").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from nrsfm_jax import geometry, losses

Array = jax.Array


def _joint_mean(dist: Array, mask: Array | None) -> Array:
  if mask is None:
    return jnp.mean(dist, -1)
  return losses.masked_mean(dist, jnp.asarray(mask, dist.dtype), axis=-1)


def _dist(a: Array, b: Array) -> Array:
  return jnp.linalg.norm(a - b, axis=-1)


def flip_resolve(pred: Array, gt: Array, *, root: int | None = 0, mask: Array | None = None) -> Array:
  """Root-centres ``pred`` and, per frame, keeps it or its depth flip, whichever is closer.

  Args:
    pred: ``[..., P, 3]`` predictions (camera frame).
    gt: ``[..., P, 3]`` ground truth (camera frame).
    root: root joint index (``None``: no centring).
    mask: optional ``[..., P]`` joint weights.

  Returns:
    ``[..., P, 3]`` root-centred, flip-resolved predictions.
  """
  p = geometry.root_relative(pred, root)
  flip = flip_is_closer(pred, gt, root=root, mask=mask)
  return jnp.where(flip[..., None, None], geometry.flip_depth(p), p)


def flip_is_closer(pred: Array, gt: Array, *, root: int | None = 0, mask: Array | None = None) -> Array:
  """``[...]`` bool per frame: the depth flip of ``pred`` is strictly closer to ``gt`` (the frames
  :func:`flip_resolve` flips), mean joint distance after root-centring both.
  """
  p, g = geometry.root_relative(pred, root), geometry.root_relative(gt, root)
  return _joint_mean(_dist(geometry.flip_depth(p), g), mask) < _joint_mean(_dist(p, g), mask)


def mpjpe(pred: Array, gt: Array, *, root: int | None = 0, flip: bool = True, mask: Array | None = None) -> Array:
  """Mean per-joint position error per frame, root-centred, no scale/rotation fit.

  With ``flip=True`` (C3DPO's "MPJPE best") the better of the prediction and
  its depth-flipped copy is scored per frame.

  Args:
    pred: ``[..., P, 3]``.
    gt: ``[..., P, 3]``.
    root: root joint index (``None``: no centring).
    flip: resolve the depth flip per frame.
    mask: optional ``[..., P]`` joint weights.

  Returns:
    ``[...]`` per-frame errors, in the units of the inputs.
  """
  g = geometry.root_relative(gt, root)
  p = flip_resolve(pred, gt, root=root, mask=mask) if flip else geometry.root_relative(pred, root)
  return _joint_mean(_dist(p, g), mask)


def pa_mpjpe(pred: Array, gt: Array, *, mask: Array | None = None, flip: bool = True) -> Array:
  """MPJPE after per-frame similarity Procrustes alignment (rotation, scale, translation).

  A rotation cannot undo the depth flip (a reflection), so with ``flip=True``
  the better of the prediction and its depth-flipped copy is aligned per
  frame, as in the "MPJPE best" protocol: this amounts to an O(3)
  (reflection-allowed) similarity alignment. ``flip=False`` is VideoPose3D's
  usual (proper-rotation) PA-MPJPE.

  Args:
    pred: ``[..., P, 3]``.
    gt: ``[..., P, 3]``.
    mask: optional ``[..., P]`` joint weights.
    flip: also try the depth-flipped prediction per frame.

  Returns:
    ``[...]`` per-frame errors.
  """
  pred, gt = jnp.asarray(pred), jnp.asarray(gt)
  err = _joint_mean(_dist(geometry.similarity_align(pred, gt, mask=mask), gt), mask)
  if flip:
    flipped = geometry.similarity_align(geometry.flip_depth(pred), gt, mask=mask)
    err = jnp.minimum(err, _joint_mean(_dist(flipped, gt), mask))
  return err


def wrong_hinges(pred: Array, gt: Array, hinges, *, root: int | None = 0) -> Array:
  """Per frame, the fraction of hinge joints bent the other way from the truth: ``[...]``.

  ``pred`` first takes the depth sign MPJPE takes (:func:`flip_resolve`), so a whole-body
  mirror image costs nothing and only limbs mirrored against the rest of the body count.
  ``hinges``: ``(a, b, c, l, r)`` tuples (:func:`losses.hinge_bend`, e.g. ``data.CMU_HINGES``).
  """
  bend_pred = losses.hinge_bend(flip_resolve(pred, gt, root=root), hinges)
  bend_gt = losses.hinge_bend(gt, hinges)
  return jnp.mean((jnp.sign(bend_pred) != jnp.sign(bend_gt)).astype(jnp.float32), -1)


def hinge_minority(pred: Array, hinges) -> Array:
  """Per frame, the fraction of hinge joints bent against the rest of their frame: ``[..., P, 3] -> [...]``.

  The hinges (:func:`losses.hinge_bend`; e.g. ``data.CMU_HINGES``) whose bend has the frame's
  minority sign, in ``[0, 0.5]``. Needs no ground truth: a depth flip of the whole frame (which
  the 2D cannot tell from the body) flips every bend and leaves it unchanged, and on real bodies
  the hinges agree (a knee or an elbow bends one way only), so a high value flags limbs mirrored
  against the rest of the body.
  """
  right = jnp.mean((losses.hinge_bend(pred, hinges) > 0).astype(jnp.float32), -1)
  return jnp.minimum(right, 1.0 - right)


def hinge_outliers(pred: Array, hinges) -> Array:
  """Per frame and hinge, whether it bends against the rest of its frame: ``[..., P, 3] -> [..., H]`` bool.

  A hinge (:func:`losses.hinge_bend`) is an outlier when its bend has the frame's minority sign
  (:func:`hinge_minority` counts them); on a tie (as many bent each way) every hinge is, since
  the 2D cannot say which side is right. A whole-frame depth flip changes none of it.
  """
  right = losses.hinge_bend(pred, hinges) > 0
  share = jnp.mean(right.astype(jnp.float32), -1, keepdims=True)
  tie = share == 0.5
  return jnp.where(share > 0.5, ~right, right) | tie


def pairwise_distances(points: Array) -> Array:
  """``[..., P, 3] -> [..., P, P]`` Euclidean distances (zero diagonal)."""
  diff = points[..., :, None, :] - points[..., None, :, :]
  sq = jnp.sum(diff * diff, -1)
  return jnp.sqrt(jnp.maximum(sq, 0.0))


def stress(pred: Array, gt: Array) -> Array:
  """C3DPO's Stress per frame: mean over pairs ``i < j`` of ``| ‖g_i−g_j‖ − ‖p_i−p_j‖ |``.

  Invariant to rotating, translating or reflecting either input.

  Args:
    pred: ``[..., P, 3]``.
    gt: ``[..., P, 3]``.

  Returns:
    ``[...]`` per-frame values.
  """
  pred, gt = jnp.asarray(pred), jnp.asarray(gt)
  num_points = pred.shape[-2]
  i, j = jnp.triu_indices(num_points, k=1)
  dp = pairwise_distances(pred)[..., i, j]
  dg = pairwise_distances(gt)[..., i, j]
  return jnp.mean(jnp.abs(dg - dp), -1)


def accel_error(pred: Array, gt: Array, *, root: int | None = 0, flip: bool = True) -> Array:
  """Acceleration error per frame (units per frame²).

  Mean joint distance between the second finite differences of the
  root-centred (and, with ``flip``, per-frame flip-resolved) prediction and of
  the ground truth.

  Args:
    pred: ``[..., F, P, 3]`` a sequence (``F ≥ 3``).
    gt: ``[..., F, P, 3]``.
    root: root joint index.
    flip: resolve the depth flip per frame first.

  Returns:
    ``[..., F − 2]`` per-frame values (centred at frames 1 … F−2).
  """
  g = geometry.root_relative(gt, root)
  p = flip_resolve(pred, gt, root=root) if flip else geometry.root_relative(pred, root)

  def accel(x):
    return x[..., 2:, :, :] - 2.0 * x[..., 1:-1, :, :] + x[..., :-2, :, :]

  return jnp.mean(_dist(accel(p), accel(g)), -1)


def _frame_centre(points: Array) -> Array:
  points = jnp.asarray(points)
  return points - jnp.mean(points, -2, keepdims=True)


def nonrigidity(shapes: Array, *, iterations: int = 5) -> Array:
  """How much a set of shapes deforms beyond a rotation: ``[..., N, P, 3] -> [...]``.

  Each shape is centred and rotated onto the set's mean shape (generalised
  Procrustes, rotation only: no scale, no reflection; ``iterations`` rounds of
  aligning every shape to the mean of the aligned set), then the mean over
  shapes and points of the distance to that mean, in the shapes' units. 0 for
  a rigid body seen from any angle; compare a model's canonical shapes with the
  ground truth's to see whether it uses its shape space at all.
  """
  x = _frame_centre(shapes)
  rot = geometry.procrustes_to_mean(jnp.asarray(shapes), iterations=iterations)  # centres as x is
  aligned = jnp.einsum('...ij,...pj->...pi', rot, x)
  mean = jnp.mean(aligned, -3, keepdims=True)
  return jnp.mean(jnp.linalg.norm(aligned - mean, axis=-1), (-2, -1))


def e3d(pred: Array, gt: Array) -> Array:
  """Normalised 3D error (PND convention), a sequence-level scalar.

  Mean over frames of ``‖Ŝ_f − S_f‖_F / ‖S_f‖_F`` after centring each frame,
  taking per frame the better of ``Ŝ_f`` and its depth flip.

  Args:
    pred: ``[F, P, 3]``.
    gt: ``[F, P, 3]``.

  Returns:
    Scalar.
  """
  p, g = _frame_centre(pred), _frame_centre(gt)
  norm_g = jnp.sqrt(jnp.sum(g * g, axis=(-2, -1)))
  err = jnp.sqrt(jnp.sum((p - g) ** 2, axis=(-2, -1)))
  err_flip = jnp.sqrt(jnp.sum((geometry.flip_depth(p) - g) ** 2, axis=(-2, -1)))
  return jnp.mean(jnp.minimum(err, err_flip) / norm_g)


def akhter_scale(points: Array, *, ddof: int = 1) -> Array:
  """Mean over the ``3F`` coordinate rows of each row's std across points.

  ``ddof=1`` matches MATLAB's ``std`` used by Akhter et al.'s code.

  Args:
    points: ``[F, P, 3]`` (centred per frame).

  Returns:
    Scalar.
  """
  return jnp.mean(jnp.std(jnp.asarray(points), axis=-2, ddof=ddof))


def e3d_akhter(pred: Array, gt: Array) -> Array:
  """Akhter et al.'s ``compareStructs`` error as defined in docs/benchmarks.md B.

  Centre each frame; divide prediction and truth each by its own
  :func:`akhter_scale`; align the whole sequence with one orthogonal 3×3 matrix
  (least squares, reflection allowed); per frame the mean over points of the
  Euclidean distance; then the mean over frames. (Akhter's original divides
  both by the truth's scale and projects an affine fit onto the orthogonal
  group; on the benchmark sequences the two differ by at most 0.003.)

  Args:
    pred: ``[F, P, 3]``.
    gt: ``[F, P, 3]``.

  Returns:
    Scalar.
  """
  p, g = _frame_centre(pred), _frame_centre(gt)
  p = p / akhter_scale(p)
  g = g / akhter_scale(g)
  flat_p, flat_g = p.reshape(-1, 3), g.reshape(-1, 3)
  rot = geometry.procrustes_rotation(flat_p, flat_g, allow_reflection=True)
  aligned = geometry.rotate(p, rot)
  return jnp.mean(jnp.mean(_dist(aligned, g), -1))
