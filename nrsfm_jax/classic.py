"""Classic NRSfM solvers as pure, jittable JAX functions (no Flax, no IO, no config).

The orthographic low-rank model: each frame's centred 2D ``w_f [P, 2]`` is the
projection ``Π R_f S_f`` of a shape ``S_f [P, 3]`` that is a combination of
``K`` basis shapes. Two solvers build on one rotation recovery:

* :func:`prior_free` -- in the spirit of Dai, Li and He's prior-free method
  ("A Simple Prior-free Method for Non-Rigid Structure-from-Motion
  Factorization", CVPR 2012 / IJCV 2014): the rank-``3K`` factorisation of the
  measurement matrix, rotations from its corrective matrix (the orthonormality
  constraints on ``Q = G Gᵀ``, solved here over a rank-3 ``G`` directly, with
  several starts in one ``vmap``), then the shapes of least nuclear norm of the
  ``F × 3P`` reshuffled shape matrix that reproject onto the 2D (accelerated
  proximal gradient with singular-value thresholding).
* :func:`trajectory` -- Akhter et al.'s trajectory space ("Trajectory Space: A
  Dual Representation for Nonrigid Structure from Motion", TPAMI 2011): every
  point's 3D trajectory is a combination of ``K`` low-frequency DCT
  trajectories; with the rotations known each point is a small linear least
  squares problem, solved exactly with its own visibility.

A third refines either one's reconstruction:

* :func:`procrustean` -- EM for Lee, Cho and Oh's Procrustean normal distribution
  (EM-PND): shapes aligned to a mean are Gaussian with a full covariance, the depth
  (and any hidden point) latent; :func:`fit` starts it from the prior-free solution.

Missing points (``visibility = 0``) are filled by low-rank matrix completion
(:func:`complete_low_rank`) before the rotations are recovered; both shape
steps fit the visible points only. Every function takes ``[F, P, 2]`` tracks
and ``[F, P]`` visibility and is batched by ``jax.vmap`` over sequences of one
size; sizes (``rank``, iteration counts) are static arguments under ``jax.jit``.
:func:`fit` chooses the sizes from the 2D alone: the prior-free ``K`` whose shapes are of
lowest rank (:func:`shape_rank_ratio`), the DCT size by agreement with that solution.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nrsfm_jax import geometry

Array = jax.Array


class Reconstruction(NamedTuple):
  """A classic solver's output.

  Attributes:
    points: ``[F, P, 3]`` camera-frame 3D, centred per frame: ``x, y`` reproject the
      (centred) tracks, ``z`` is the recovered depth.
    rotations: ``[F, 3, 3]`` camera rotations (``points_f = S_f R_fᵀ``).
    shapes: ``[F, P, 3]`` the shapes in the object frame.
    translation: ``[F, 2]`` the 2D centroid subtracted from each frame.
  """

  points: Array
  rotations: Array
  shapes: Array
  translation: Array


def _visibility(tracks: Array, visibility: Array | None) -> Array:
  if visibility is None:
    return jnp.ones(tracks.shape[:-1], tracks.dtype)
  return visibility.astype(tracks.dtype)


def _to_matrix(w: Array) -> Array:
  """``[F, P, 2] -> [2F, P]``: rows ``x_1, y_1, x_2, y_2, ...`` (the measurement matrix)."""
  return jnp.swapaxes(w, -1, -2).reshape(-1, w.shape[-2])


def _from_matrix(m: Array) -> Array:
  """``[2F, P] -> [F, P, 2]``."""
  return jnp.swapaxes(m.reshape(-1, 2, m.shape[-1]), -1, -2)


def truncate(matrix: Array, rank: int) -> Array:
  """The best rank-``rank`` approximation of ``[M, N]`` (truncated SVD)."""
  u, s, vt = jnp.linalg.svd(matrix, full_matrices=False)
  return (u[:, :rank] * s[:rank]) @ vt[:rank]


def centre(tracks: Array, visibility: Array | None = None) -> tuple[Array, Array]:
  """Subtracts each frame's centroid of visible points: ``([F, P, 2] centred, 0 where hidden; [F, 2])``."""
  vis = _visibility(tracks, visibility)
  t = jnp.sum(tracks * vis[..., None], -2) / jnp.maximum(jnp.sum(vis, -1, keepdims=True), 1e-12)
  return (tracks - t[..., None, :]) * vis[..., None], t


@functools.partial(jax.jit, static_argnames=('rank', 'num_iters'))
def complete_low_rank(
    tracks: Array, visibility: Array | None = None, *, rank: int, num_iters: int = 1000
) -> tuple[Array, Array]:
  """Fills hidden points so that the centred measurement matrix has rank ``rank`` (hard impute).

  Alternates: hidden entries ← the current low-rank estimate plus the frame's
  translation; translation ← the mean of the filled frame; estimate ← the best
  rank-``rank`` approximation of the centred matrix. Visible entries are never
  changed. With every point visible it returns the centred tracks at once.

  Args:
    tracks: ``[F, P, 2]`` 2D tracks (hidden entries are ignored).
    visibility: ``[F, P]``, 1 visible, 0 hidden (default: all visible).
    rank: the rank of the centred ``[2F, P]`` measurement matrix (``3K``).
    num_iters: alternations.

  Returns:
    ``(centred [F, P, 2], translation [F, 2])``: complete centred tracks.
  """
  vis = _visibility(tracks, visibility)
  observed = tracks * vis[..., None]
  centred0, t0 = centre(tracks, vis)

  def body(_, carry):
    low, t = carry
    filled = observed + (1 - vis[..., None]) * (low + t[..., None, :])
    t = jnp.mean(filled, -2)
    low = _from_matrix(truncate(_to_matrix(filled - t[..., None, :]), rank))
    return low, t

  def impute():
    low0 = _from_matrix(truncate(_to_matrix(centred0), rank))
    low, t = jax.lax.fori_loop(0, num_iters, body, (low0, t0))
    filled = observed + (1 - vis[..., None]) * (low + t[..., None, :])
    t = jnp.mean(filled, -2)
    return filled - t[..., None, :], t

  # Nothing to fill when every point is visible: skip the alternations.
  return jax.lax.cond(jnp.all(vis > 0), lambda: (centred0, t0), impute)


def orthonormality_residual(motion: Array, g: Array, scale_weight: float = 0.0) -> Array:
  """How far ``motion_f @ g`` is from a scaled orthographic camera, scale-free; 0 when exact.

  For ``K > 1`` every combination of the true column-triples is an exact
  solution, with per-frame scales ``λ_f`` (a combination of the frame's shape
  coefficients) that may pass through 0: there the camera is undetermined and
  its sign flips (a per-frame depth reflection). ``scale_weight`` adds the
  scales' squared coefficient of variation, which picks, among the exact
  solutions, one whose scales stay even (on human motion, the mean shape's).

  Args:
    motion: ``[F, 2, 3K]`` the per-frame rows of the factorised motion matrix.
    g: ``[3K, 3]`` a corrective matrix (one column-triple).
    scale_weight: weight of the scales' evenness term.

  Returns:
    ``Σ_f ‖P_f P_fᵀ − s_f I‖² / Σ_f s_f² + scale_weight · Var(s) / mean(s)²`` with
    ``P_f = motion_f g`` and ``s_f = tr(P_f P_fᵀ) / 2 = λ_f²``.
  """
  p = motion @ g
  gram = p @ jnp.swapaxes(p, -1, -2)
  s = 0.5 * (gram[..., 0, 0] + gram[..., 1, 1])
  resid = gram - s[..., None, None] * jnp.eye(2, dtype=p.dtype)
  value = jnp.sum(resid**2) / jnp.maximum(jnp.sum(s**2), 1e-30)
  mean = jnp.mean(s)
  return value + scale_weight * jnp.mean((s - mean) ** 2) / jnp.maximum(mean**2, 1e-30)


def max_rank(num_frames: int, num_points: int) -> int:
  """The largest rank ``3K`` the ``[2F, P]`` measurement matrix can have: ``min(2F, P)``."""
  return min(2 * num_frames, num_points)


def camera_from_projection(p: Array) -> Array:
  """The rotations nearest to scaled orthographic cameras: ``[..., 2, 3] -> [..., 3, 3]``.

  The first two rows are the orthonormal polar factor of ``p``; the third is their cross product.
  """
  u, _, vt = jnp.linalg.svd(p, full_matrices=False)
  top = u @ vt
  return jnp.concatenate([top, jnp.cross(top[..., 0, :], top[..., 1, :])[..., None, :]], -2)


@functools.partial(jax.jit, static_argnames=('num_bases', 'num_starts', 'num_steps'))
def recover_rotations(
    centred: Array,
    key: Array,
    *,
    num_bases: int,
    num_starts: int = 8,
    num_steps: int = 300,
    scale_weight: float = 1e-3,
) -> tuple[Array, Array]:
  """Camera rotations of complete centred tracks by the low-rank factorisation and its corrective matrix.

  ``W = M̂ B̂`` is the rank-``3K`` SVD factorisation of the ``[2F, P]`` matrix;
  the corrective column-triple ``G [3K, 3]`` makes every ``M̂_f G`` a scaled
  rotation. It minimises :func:`orthonormality_residual` by L-BFGS from
  ``num_starts`` random starts (one ``vmap``); the best start wins.

  Args:
    centred: ``[F, P, 2]`` complete, centred tracks (:func:`complete_low_rank`).
    key: PRNG key of the random starts.
    num_bases: ``K``.
    num_starts: random starts.
    num_steps: L-BFGS steps per start.
    scale_weight: :func:`orthonormality_residual`'s evenness weight.

  Returns:
    ``(rotations [F, 3, 3], residual)``: the rotations (up to one global rotation and reflection)
    and the best start's orthonormality residual (evenness term included).
  """
  import optax  # Local: the pure solvers need optax only here.

  rank, limit = 3 * num_bases, max_rank(centred.shape[0], centred.shape[1])
  if rank > limit:
    raise ValueError(
        f'num_bases={num_bases} needs rank 3K = {rank}, more than the {centred.shape[0]} x {centred.shape[1]} '
        f'tracks allow (3K <= min(2F, P) = {limit}).'
    )
  u, s, _ = jnp.linalg.svd(_to_matrix(centred), full_matrices=False)
  motion = (u[:, :rank] * jnp.sqrt(s[:rank])).reshape(-1, 2, rank)
  motion = motion / jnp.sqrt(jnp.mean(jnp.sum(motion**2, (-2, -1))))
  loss = functools.partial(orthonormality_residual, motion, scale_weight=scale_weight)
  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(loss)

  def solve(g0):
    def step(carry, _):
      g, state = carry
      value, grad = value_and_grad(g, state=state)
      updates, state = opt.update(grad, state, g, value=value, grad=grad, value_fn=loss)
      return (optax.apply_updates(g, updates), state), None

    (g, _), _ = jax.lax.scan(step, (g0, opt.init(g0)), None, length=num_steps)
    return g, loss(g)

  starts = jax.random.normal(key, (num_starts, rank, 3), centred.dtype)
  gs, residuals = jax.vmap(solve)(starts)
  residuals = jnp.where(jnp.isfinite(residuals), residuals, jnp.inf)
  best = jnp.argmin(residuals)
  return camera_from_projection(motion @ gs[best]), residuals[best]


def _svt(matrix: Array, threshold: Array) -> Array:
  u, s, vt = jnp.linalg.svd(matrix, full_matrices=False)
  return (u * jnp.maximum(s - threshold, 0.0)) @ vt


@functools.partial(jax.jit, static_argnames=('num_iters',))
def nuclear_norm_shapes(
    centred: Array,
    visibility: Array | None,
    rotations: Array,
    *,
    num_iters: int = 500,
    final_weight: float = 1e-4,
) -> Array:
  """Shapes of least nuclear norm (of the ``[F, 3P]`` shape matrix) that reproject onto the visible 2D.

  Minimises ``½ Σ_f ‖v_f ⊙ (S_f R_fᵀ Π − w_f)‖² + λ ‖S^♯‖_*`` by accelerated
  proximal gradient (FISTA; step 1, since ``Π R_f`` has orthonormal rows),
  with λ decreasing geometrically from ``σ_max(S₀^♯)`` to
  ``final_weight × σ_max`` (continuation): the fit to the 2D tightens while the
  rank stays low. ``S^♯`` is Dai et al.'s reshuffle, row ``f`` =
  ``[x_1..x_P, y_1..y_P, z_1..z_P]`` of frame ``f``.

  Args:
    centred: ``[F, P, 2]`` centred tracks (hidden entries ignored).
    visibility: ``[F, P]`` or None (all visible).
    rotations: ``[F, 3, 3]`` cameras.
    num_iters: proximal steps.
    final_weight: the last λ relative to the starting shape matrix's largest singular value.

  Returns:
    ``[F, P, 3]`` shapes in the object frame.
  """
  vis = _visibility(centred, visibility)
  d = rotations[..., :2, :]  # [F, 2, 3]: Π R_f.
  w = centred * vis[..., None]
  num_frames, num_points = centred.shape[0], centred.shape[1]

  def sharp(s):  # [F, P, 3] -> [F, 3P]
    return jnp.swapaxes(s, -1, -2).reshape(num_frames, 3 * num_points)

  def unsharp(m):
    return jnp.swapaxes(m.reshape(num_frames, 3, num_points), -1, -2)

  s0 = jnp.einsum('fpi,fij->fpj', w, d)  # Zero depth in each camera: the pseudo-inverse.
  sigma = jnp.linalg.norm(sharp(s0), ord=2)
  decay = final_weight ** (1.0 / max(num_iters - 1, 1))

  def body(i, carry):
    s, y, t = carry
    resid = (jnp.einsum('fpj,fij->fpi', y, d) - w) * vis[..., None]
    grad = jnp.einsum('fpi,fij->fpj', resid, d)
    lam = sigma * decay**i
    s_new = unsharp(_svt(sharp(y - grad), lam))
    t_new = 0.5 * (1 + jnp.sqrt(1 + 4 * t * t))
    y = s_new + ((t - 1) / t_new) * (s_new - s)
    return s_new, y, t_new

  s, _, _ = jax.lax.fori_loop(0, num_iters, body, (s0, s0, jnp.asarray(1.0, centred.dtype)))
  return s


def dct_basis(num_frames: int, num_bases: int, dtype=np.float32) -> np.ndarray:
  """The first ``num_bases`` orthonormal DCT-II trajectories: ``[F, K]`` (column 0 constant)."""
  f = np.arange(num_frames)[:, None]
  k = np.arange(num_bases)[None, :]
  basis = np.cos(np.pi * (2 * f + 1) * k / (2 * num_frames)) * np.sqrt(2.0 / num_frames)
  basis[:, 0] /= np.sqrt(2.0)
  return basis.astype(dtype)


@functools.partial(jax.jit, static_argnames=('num_bases',))
def trajectory_shapes(
    centred: Array, visibility: Array | None, rotations: Array, *, num_bases: int, ridge: float = 1e-6
) -> Array:
  """Each point's trajectory as ``K`` DCT trajectories, fitted to its visible 2D by least squares.

  Point ``p`` at frame ``f`` is ``X_p(f) = β_pᵀ θ_f`` (``θ_f`` the DCT row,
  ``β_p [K, 3]``); its projection ``Π R_f X_p(f)`` is linear in ``β_p``, so
  every point is one ``3K × 3K`` solve over its own visible frames.

  Args:
    centred: ``[F, P, 2]`` centred tracks.
    visibility: ``[F, P]`` or None.
    rotations: ``[F, 3, 3]``.
    num_bases: ``K`` (``≤ F``).
    ridge: Tikhonov weight relative to the normal matrix's mean diagonal (keeps hidden stretches finite).

  Returns:
    ``[F, P, 3]`` shapes in the object frame.
  """
  vis = _visibility(centred, visibility)
  theta = jnp.asarray(dct_basis(centred.shape[0], num_bases), centred.dtype)  # [F, K]
  d = rotations[..., :2, :]  # [F, 2, 3]
  # A_f = D_f (I_3 ⊗ θ_fᵀ): [F, 2, 3K] with coefficient order (axis, basis).
  a = jnp.einsum('fij,fk->fijk', d, theta).reshape(centred.shape[0], 2, 3 * num_bases)
  normal = jnp.einsum('fp,fia,fib->pab', vis, a, a)
  rhs = jnp.einsum('fp,fia,fpi->pa', vis, a, centred * vis[..., None])
  scale = jnp.mean(jnp.diagonal(normal, axis1=-2, axis2=-1), -1)[:, None, None]
  beta = jnp.linalg.solve(normal + ridge * scale * jnp.eye(3 * num_bases, dtype=centred.dtype), rhs[..., None])
  beta = beta[..., 0].reshape(centred.shape[1], 3, num_bases)  # [P, 3, K]
  return jnp.einsum('pjk,fk->fpj', beta, theta)


def cameras(
    tracks: Array, visibility: Array, key: Array, *, num_bases: int, num_starts: int = 8, complete_iters: int = 1000
) -> tuple[Array, Array, Array]:
  """Rotations of (possibly incomplete) tracks, and the tracks centred on the completed frames.

  Returns:
    ``(rotations [F, 3, 3], centred [F, P, 2] (0 where hidden), translation [F, 2])``: the
    completion's centroid (:func:`complete_low_rank`), so hidden points do not bias the centring.
  """
  complete, t = complete_low_rank(tracks, visibility, rank=3 * num_bases, num_iters=complete_iters)
  rotations, _ = recover_rotations(complete, key, num_bases=num_bases, num_starts=num_starts)
  return rotations, (tracks - t[..., None, :]) * visibility[..., None], t


def reconstruction(shapes: Array, rotations: Array, translation: Array) -> Reconstruction:
  """Object-frame shapes ``[F, P, 3]`` seen by cameras ``[F, 3, 3]``: the camera-frame points,
  centred per frame, with the shapes, cameras and the 2D ``translation [F, 2]`` alongside."""
  points = jnp.einsum('fpj,fij->fpi', shapes, rotations)
  points = points - jnp.mean(points, -2, keepdims=True)
  return Reconstruction(points=points, rotations=rotations, shapes=shapes, translation=translation)


@functools.partial(jax.jit, static_argnames=('num_bases', 'num_starts', 'num_iters', 'complete_iters'))
def prior_free(
    tracks: Array,
    visibility: Array | None = None,
    key: Array | None = None,
    *,
    num_bases: int,
    num_starts: int = 8,
    num_iters: int = 500,
    complete_iters: int = 1000,
    final_weight: float = 1e-4,
) -> Reconstruction:
  """Dai-Li-He style prior-free NRSfM: rank-``3K`` rotations, then nuclear-norm shapes.

  Args:
    tracks: ``[F, P, 2]`` 2D tracks (hidden entries ignored).
    visibility: ``[F, P]`` (default all visible).
    key: PRNG key of the corrective matrix's random starts (default ``PRNGKey(0)``).
    num_bases: ``K``, the shape basis size.
    num_starts: corrective-matrix starts.
    num_iters: nuclear-norm proximal steps.
    complete_iters: missing-data completion alternations (unused when all are visible).
    final_weight: see :func:`nuclear_norm_shapes`.

  Returns:
    A :class:`Reconstruction`.
  """
  key = jax.random.PRNGKey(0) if key is None else key
  vis = _visibility(tracks, visibility)
  rotations, centred, t = cameras(
      tracks, vis, key, num_bases=num_bases, num_starts=num_starts, complete_iters=complete_iters
  )
  shapes = nuclear_norm_shapes(centred, vis, rotations, num_iters=num_iters, final_weight=final_weight)
  return reconstruction(shapes, rotations, t)


@functools.partial(jax.jit, static_argnames=('num_bases', 'rotation_bases', 'num_starts', 'complete_iters'))
def trajectory(
    tracks: Array,
    visibility: Array | None = None,
    key: Array | None = None,
    *,
    num_bases: int,
    rotation_bases: int = 2,
    num_starts: int = 8,
    complete_iters: int = 1000,
) -> Reconstruction:
  """Akhter et al.'s trajectory-space NRSfM: rotations, then ``num_bases`` DCT trajectories per point.

  The rotations come from :func:`recover_rotations` with ``rotation_bases``
  shape bases. Akhter et al. use the rigid factorisation (``rotation_bases=1``);
  on drink its cameras give e3D-akhter 0.23 against 0.0135 with ``K = 3``
  (20 DCT bases), hence the default 2.

  Args:
    tracks: ``[F, P, 2]``.
    visibility: ``[F, P]`` (default all visible).
    key: PRNG key (default ``PRNGKey(0)``).
    num_bases: DCT trajectories per point.
    rotation_bases: ``K`` of the rotation recovery.
    num_starts: corrective-matrix starts.
    complete_iters: missing-data completion alternations.

  Returns:
    A :class:`Reconstruction`.
  """
  key = jax.random.PRNGKey(0) if key is None else key
  vis = _visibility(tracks, visibility)
  rotations, centred, t = cameras(
      tracks, vis, key, num_bases=rotation_bases, num_starts=num_starts, complete_iters=complete_iters
  )
  shapes = trajectory_shapes(centred, vis, rotations, num_bases=num_bases)
  return reconstruction(shapes, rotations, t)


def prior_free_candidate(
    tracks: Array, visibility: Array, key: Array, num_bases: int
) -> tuple[Array, Callable[[Array, Array], Reconstruction]]:
  """One prior-free candidate size: its cameras (:func:`cameras`), then a shape solver on them.

  Returns:
    ``(centred [F, P, 2], solve)``: ``solve(centred, visibility)`` is the nuclear-norm
    :class:`Reconstruction` on these cameras (:func:`heldout_error` calls it on subsets).
  """
  rotations, centred, t = cameras(tracks, visibility, key, num_bases=num_bases)
  return centred, lambda c, v: reconstruction(nuclear_norm_shapes(c, v, rotations), rotations, t)


def heldout_error(fit, centred: Array, visibility: Array | None, key: Array, *, fraction: float = 0.1) -> Array:
  """2D cross-validation: RMS error on a random ``fraction`` of the visible entries held out of ``fit``.

  A criterion that reads the 2D alone, for choosing a solver's sizes (the
  number of bases) on a sequence without its 3D.

  Args:
    fit: ``(centred, visibility) -> points [F, P, 3]`` (camera frame; only ``x, y`` are read).
    centred: ``[F, P, 2]`` centred tracks.
    visibility: ``[F, P]`` or None.
    key: PRNG key of the held-out draw.
    fraction: share of the visible entries held out.

  Returns:
    Scalar: the RMS 2D error over the held-out entries.
  """
  vis = _visibility(centred, visibility)
  held = (jax.random.uniform(key, vis.shape) < fraction).astype(vis.dtype) * vis
  points = fit(centred * (vis - held)[..., None], vis - held)
  err = jnp.sum(((points[..., :2] - centred) ** 2) * held[..., None])
  return jnp.sqrt(err / jnp.maximum(2 * jnp.sum(held), 1.0))


def shape_rank_ratio(shapes: Array) -> Array:
  """``‖S^♯‖_* / ‖S^♯‖_F`` of ``[..., F, P, 3]`` shapes: a scale-free measure of their rank (no 3D truth).

  ``S^♯ [F, 3P]`` is Dai et al.'s reshuffle (:func:`nuclear_norm_shapes`). The ratio is 1 for
  a rank-1 matrix, ``√r`` for ``r`` equal singular values, and does not change when the shapes
  are scaled. Dai et al.'s method asks for the shapes of least nuclear norm that reproject
  onto the 2D; among cameras that all reproject it (every candidate ``K`` of :func:`fit`),
  the ones whose shapes come out of lowest rank fit that model best.

  Args:
    shapes: ``[..., F, P, 3]`` in the object frame (:attr:`Reconstruction.shapes`; the camera
      frame's per-frame rotations would raise the rank).

  Returns:
    ``[...]``: the ratio, ≥ 1.
  """
  *batch, num_frames, num_points, _ = shapes.shape
  sharp = jnp.swapaxes(shapes, -1, -2).reshape(*batch, num_frames, 3 * num_points)
  sv = jnp.linalg.svd(sharp, compute_uv=False)
  return jnp.sum(sv, -1) / jnp.maximum(jnp.sqrt(jnp.sum(sv**2, -1)), 1e-30)


# ----------------------------------------------------------------------------
# The Procrustean normal distribution (after Lee, Cho and Oh).
# ----------------------------------------------------------------------------


def translation_free_basis(num_points: int, dtype=np.float32) -> np.ndarray:
  """``[P, P − 1]`` orthonormal columns orthogonal to the all-ones vector (Helmert's contrasts).

  ``Uᵀ X`` drops a ``[P, 3]`` shape's translation without losing anything else, and
  ``U (Uᵀ X)`` is the shape centred.
  """
  if num_points < 2:
    raise ValueError(f'a translation-free basis needs at least 2 points, got {num_points}.')
  basis = np.zeros((num_points, num_points - 1))
  for k in range(1, num_points):
    basis[:k, k - 1] = 1.0
    basis[k, k - 1] = -float(k)
    basis[:, k - 1] /= np.sqrt(k * (k + 1.0))
  return basis.astype(dtype)


def pnd_alignment(shape: Array, mean: Array) -> tuple[Array, Array]:
  """The similarity that takes ``shape [Q, 3]`` onto ``mean [Q, 3]`` in the PND's sense.

  Returns ``(scale, rotation [3, 3])`` with ``scale · shape @ rotation ≈ mean``: the rotation
  is the orthogonal Procrustes one (``det = +1``) and the scale makes the aligned shape's
  component along the mean exactly the mean, ``⟨scale · shape R, mean⟩ = ‖mean‖² = 1`` for a
  unit mean, so the rest (the deformation) is orthogonal to it.
  """
  rotation = geometry.rotation_from_covariance(shape.T @ mean)
  return 1.0 / jnp.maximum(jnp.sum((shape @ rotation) * mean), 1e-12), rotation


def _pnd_null(mean: Array) -> Array:
  """``[3Q, 4]``: the directions a PND deformation has no part in: the mean and its three
  infinitesimal rotations ``mean @ A_k`` (``A_k`` the generators of so(3))."""
  gens = np.zeros((3, 3, 3), np.float32)
  gens[0, 1, 2], gens[0, 2, 1] = -1.0, 1.0
  gens[1, 0, 2], gens[1, 2, 0] = 1.0, -1.0
  gens[2, 0, 1], gens[2, 1, 0] = -1.0, 1.0
  rotated = jnp.einsum('qi,kij->kqj', mean, jnp.asarray(gens, mean.dtype))
  return jnp.concatenate([mean.reshape(-1, 1), rotated.reshape(3, -1).T], 1)


def _pnd_precision(mean: Array, moment: Array, jitter: Array) -> Array:
  """The PND's shape precision ``N (Nᵀ H N)⁻¹ Nᵀ`` on the deformation subspace, from the aligned
  shapes' second moment ``moment [3Q, 3Q]`` (``N`` the complement of :func:`_pnd_null`; written
  as ``H⁻¹ − H⁻¹ Z (Zᵀ H⁻¹ Z)⁻¹ Zᵀ H⁻¹`` with ``Z`` the null directions, so no basis is built)."""
  n = moment.shape[0]
  h = moment + jitter * jnp.eye(n, dtype=moment.dtype)
  hinv = jnp.linalg.inv(0.5 * (h + h.T))
  null = _pnd_null(mean)
  hz = hinv @ null
  return hinv - hz @ jnp.linalg.solve(null.T @ hz, hz.T)


@functools.partial(jax.jit, static_argnames=('num_iters', 'batch_size', 'update_mean'))
def procrustean(
    tracks: Array,
    visibility: Array | None,
    init: Array,
    *,
    num_iters: int = 100,
    initial_noise: float = 1e-4,
    jitter: float = 1e-4,
    batch_size: int = 64,
    update_mean: bool = False,
) -> Reconstruction:
  """EM for a Procrustean normal distribution of the shapes, after Lee, Cho and Oh (EM-PND).

  The model ("Procrustean Normal Distribution for Non-Rigid Structure from Motion", CVPR
  2013 / TPAMI 2017): each frame's centred camera-frame shape ``X_f [P, 3]``, aligned by a
  similarity to a unit mean shape ``M`` (:func:`pnd_alignment`: ``s_f X_f R_f = M + D_f``),
  deforms by ``D_f`` that is Gaussian with zero mean and a full covariance on the
  subspace orthogonal to ``M`` and to its infinitesimal rotations (no basis size ``K``).
  The visible 2D is ``X_f``'s ``x, y`` plus isotropic noise. The depth (and any hidden
  point) is latent:

  * E-step: each frame's Gaussian posterior over its whole translation-free shape
    (``3(P − 1)`` numbers), given the visible 2D (centred on the visible points) and the
    prior ``s_f² R_f Σ⁻¹ R_fᵀ``;
  * M-step: the noise variance from the expected residual (allowed to fall by at most half per
    iteration, so the covariance can follow; the authors' code instead keeps it within
    ``[new, 2 new]``, which scored drink 0.0174 against 0.0111 in a session-30 probe), each frame's
    alignment to the mean from its posterior mean, and the covariance as the aligned shapes'
    expected second moment. The mean stays the Procrustes mean of the starting reconstruction
    (``update_mean=False``). The authors descend the likelihood in ``M``; re-estimating it here
    as the Procrustes mean of the posterior means at every iteration did worse on stretch
    (e3D-akhter 0.0333 against 0.0219 after 60 iterations).

  Written from the papers; the authors' MATLAB was read to learn the method, not copied.
  Started from another solver's reconstruction (``init``; :func:`fit` uses the prior-free
  solution of its chosen ``K``).

  Args:
    tracks: ``[F, P, 2]`` 2D tracks (hidden entries ignored).
    visibility: ``[F, P]`` or None (all visible).
    init: ``[F, P, 3]`` camera-frame reconstruction to start from (its ``x, y`` are not read
      where the 2D is visible).
    num_iters: EM iterations (:func:`fit` uses :data:`PROCRUSTEAN_ITERS`, the same 100).
    initial_noise: the first noise variance, relative to the tracks' mean squared norm per frame.
    jitter: added to the second moment's diagonal (relative to its mean diagonal) before it is
      inverted. It floors every deformation direction's variance, which float32 needs (1e-6 lost
      the stretch fit). The authors add none after the start and work in float64; a session-30
      probe (the 3D read to score) found 1e-5 better on drink (0.0067 against 0.0111) and pickup,
      float64 with 1e-8 better still on drink (0.0051) but worse on yoga, stretch and dance; 1e-4,
      fixed in session 28, stays.
    batch_size: frames per batch of the E-step's ``3(P − 1)``-square solves.
    update_mean: re-estimate the mean shape at every iteration (see above; off by default).

  Returns:
    A :class:`Reconstruction`; ``points`` are the posterior means (centred over all points,
    hidden ones included), ``translation`` what to add to their ``x, y`` to meet the visible 2D.
  """
  vis = _visibility(tracks, visibility)
  num_frames, num_points = tracks.shape[0], tracks.shape[1]
  q = num_points - 1
  n = 3 * q
  basis = jnp.asarray(translation_free_basis(num_points), tracks.dtype)  # [P, Q]
  centred, t = centre(tracks, vis)  # Hidden entries 0.
  scale = jnp.sqrt(jnp.sum(centred**2) / num_frames)
  obs = centred / scale
  # Each frame's 2D likelihood in the translation-free coordinates: visible points centred on
  # their own centroid, ‖P_V (w − U_V x)‖²: precision U_Vᵀ P_V U_V, linear term U_Vᵀ w̃.
  uv = basis[None] * vis[..., None]  # [F, P, Q]
  colsum = jnp.sum(uv, 1)  # [F, Q]
  count = jnp.maximum(jnp.sum(vis, -1), 1.0)
  obs_prec = jnp.einsum('fpa,fpb->fab', uv, uv) - jnp.einsum('fa,fb->fab', colsum, colsum) / count[:, None, None]
  lin = jnp.concatenate([jnp.einsum('fpa,fpi->fai', uv, obs), jnp.zeros((num_frames, q, 1), obs.dtype)], -1)
  lin = lin.reshape(num_frames, n)
  resid0 = jnp.sum(obs**2)
  dof = 2.0 * jnp.sum(jnp.maximum(jnp.sum(vis, -1) - 1.0, 0.0))
  xy = jnp.asarray([1.0, 1.0, 0.0], obs.dtype)

  def estep(precision, s, r, noise):
    def one(args):
      sf, rf, wf, bf = args
      prior = sf**2 * jnp.einsum('ij,ajbl,kl->aibk', rf, precision.reshape(q, 3, q, 3), rf).reshape(n, n)
      like = jnp.einsum('ab,i,ik->aibk', wf, xy, jnp.eye(3, dtype=xy.dtype)).reshape(n, n)
      cov = jnp.linalg.inv(prior + like / noise)
      cov = 0.5 * (cov + cov.T)
      return cov @ bf / noise, cov

    # Frames padded (with copies of frame 0) to a whole number of batches: with a remainder,
    # lax.map's extra vmapped call hung XLA CPU's runtime inside this loop (jax 0.10.2: 85 frames
    # of 17 points at batch 64 never returned; 85 at batch 85 took 1.6 s).
    size = min(batch_size, num_frames)
    pad = -num_frames % size
    args = [s, r, obs_prec, lin]
    if pad:
      args = [jnp.concatenate([a, jnp.repeat(a[:1], pad, 0)], 0) for a in args]
    mu, cov = jax.lax.map(one, tuple(args), batch_size=size)
    return mu[:num_frames], cov[:num_frames]

  def align_all(means, mean):
    return jax.vmap(pnd_alignment, (0, None))(means, mean)

  def procrustes_mean(means, mean):
    for _ in range(3):
      s, r = align_all(means, mean)
      mean = jnp.mean(s[:, None, None] * jnp.einsum('fqi,fij->fqj', means, r), 0)
      mean = mean / jnp.linalg.norm(mean)
    return mean

  def second_moment(mean, means, covs):
    s, r = align_all(means, mean)
    m4 = (covs + jnp.einsum('fa,fb->fab', means.reshape(num_frames, n), means.reshape(num_frames, n))).reshape(
        num_frames, q, 3, q, 3
    )
    h = jnp.einsum('f,fij,faibk,fkl->ajbl', s**2, r, m4, r).reshape(n, n) / num_frames
    return h, s, r

  x0 = jnp.einsum('pa,fpi->fai', basis, init) / scale
  mean = jnp.mean(x0, 0)
  mean = procrustes_mean(x0, mean / jnp.maximum(jnp.linalg.norm(mean), 1e-12))
  h, s, r = second_moment(mean, x0, jnp.zeros((num_frames, n, n), obs.dtype))
  h = h + initial_noise * jnp.eye(n, dtype=obs.dtype)  # the initial shapes carry no posterior spread
  noise = jnp.asarray(initial_noise, obs.dtype)

  def body(_, carry):
    mean, h, s, r, noise, _ = carry
    precision = _pnd_precision(mean, h, jitter * jnp.trace(h) / n)
    mu, cov = estep(precision, s, r, noise)
    second = (cov + jnp.einsum('fa,fb->fab', mu, mu)).reshape(num_frames, q, 3, q, 3)[:, :, :2, :, :2]
    expected = resid0 - 2 * jnp.sum(lin * mu) + jnp.einsum('fab,faibi->', obs_prec, second)
    noise = jnp.maximum(jnp.maximum(expected / dof, 1e-10), 0.5 * noise)
    means = mu.reshape(num_frames, q, 3)
    if update_mean:
      mean = procrustes_mean(means, mean)
    h, s, r = second_moment(mean, means, cov)
    return mean, h, s, r, noise, means

  _, _, s, r, _, means = jax.lax.fori_loop(0, num_iters, body, (mean, h, s, r, noise, x0))
  points = jnp.einsum('pa,fai->fpi', basis, means) * scale
  shapes = jnp.einsum('fpi,fij->fpj', points, r)
  _, offset = centre(points[..., :2], vis)  # The points' own centroid over the visible ones.
  return Reconstruction(points=points, rotations=r, shapes=shapes, translation=t - offset)


# Candidate sizes for :func:`fit`'s choice.
SHAPE_BASES = (2, 3, 4, 5, 6, 7, 8, 10)
TRAJECTORY_BASES = (5, 10, 15, 20, 30)
SOLVERS = ('prior_free', 'trajectory', 'procrustean')
# :func:`procrustean`'s EM iterations in :func:`fit`.
PROCRUSTEAN_ITERS = 100
# How :func:`fit` chooses the prior-free ``K``: the lowest :func:`shape_rank_ratio` of the
# solution ('low_rank'), or the lowest :func:`heldout_error` ('heldout', the rule before
# 2026-11-27; on dance it varies by 6% across K = 2..10 and chose K = 2, the worst but one).
CRITERIA = ('low_rank', 'heldout')


def fit(
    solver: str,
    tracks: Array,
    visibility: Array | None = None,
    key: Array | None = None,
    **kwargs,
) -> tuple[Reconstruction, dict[str, object]]:
  """A classic solver with its sizes chosen from the 2D alone, no 3D read.

  ``fit(solver, ...)`` is ``fit_many((solver,), ...)[solver]``: see :func:`fit_many` for the
  solvers, their size choices and the arguments.

  Returns:
    ``(reconstruction, info)``; ``info`` holds the chosen sizes and every candidate's criterion.
  """
  return fit_many((solver,), tracks, visibility, key, **kwargs)[solver]


def fit_many(
    solvers: tuple[str, ...] | list[str],
    tracks: Array,
    visibility: Array | None = None,
    key: Array | None = None,
    *,
    shape_bases: tuple[int, ...] = SHAPE_BASES,
    trajectory_bases: tuple[int, ...] = TRAJECTORY_BASES,
    fraction: float = 0.1,
    criterion: str = 'low_rank',
    procrustean_iters: int = PROCRUSTEAN_ITERS,
) -> dict[str, tuple[Reconstruction, dict[str, object]]]:
  """Several classic solvers on one sequence, sharing their prior-free stage; no 3D read.

  Every solver starts from the prior-free solution, so asking for several at once fits the
  prior-free candidates once (``fit`` asks for one).
  ``prior_free``: ``K`` (the rank ``3K`` of the camera recovery, :func:`cameras`) from
  ``shape_bases``. Every candidate's nuclear-norm shapes reproject the 2D about equally well,
  so ``criterion='low_rank'`` (default) keeps the candidate whose shapes are of lowest rank
  (:func:`shape_rank_ratio`, Dai et al.'s own objective made scale-free); ``'heldout'`` the
  lowest 2D cross-validation error (:func:`heldout_error`, on ``fraction`` of the 2D held out).
  ``procrustean``: :func:`procrustean` (``procrustean_iters`` EM iterations) started from the
  prior-free solution of the chosen ``K`` (the PND itself has no ``K``).
  ``trajectory``: the cameras of the chosen prior-free ``K`` (Akhter et al.'s
  rigid cameras are far worse on the benchmark), then the DCT size from
  ``trajectory_bases`` (capped at ``F``) whose reconstruction agrees best with
  the prior-free one (:func:`relative_distance`). Sizes are static, so each
  candidate compiles once per sequence shape.

  Args:
    solvers: names from :data:`SOLVERS` (at least one).
    tracks: ``[F, P, 2]``.
    visibility: ``[F, P]`` (default all visible).
    key: PRNG key (default ``PRNGKey(0)``).
    shape_bases, trajectory_bases: candidate sizes (shape bases above the tracks' rank, 3K > min(2F, P),
      are skipped: 17 keypoints allow K <= 5).
    fraction: share of the visible 2D held out (``criterion='heldout'``, and the DCT size's
      reported held-out errors).
    criterion: ``'low_rank'`` or ``'heldout'`` (:data:`CRITERIA`).
    procrustean_iters: :func:`procrustean`'s EM iterations (``solver='procrustean'``).

  Returns:
    ``{solver: (reconstruction, info)}``; each ``info`` holds the chosen sizes, every candidate's
    criterion and ``seconds`` (wall time of the shared prior-free stage plus the solver's own).
  """
  solvers = tuple(solvers)
  if not solvers:
    raise ValueError(f'no classic solver asked for; expected some of {SOLVERS}.')
  for solver in solvers:
    if solver not in SOLVERS:
      raise ValueError(f'unknown classic solver {solver!r}; expected one of {SOLVERS}.')
  if criterion not in CRITERIA:
    raise ValueError(f'unknown criterion {criterion!r}; expected one of {CRITERIA}.')
  key = jax.random.PRNGKey(0) if key is None else key
  rot_key, cv_key = jax.random.split(key)
  tracks = jnp.asarray(tracks)
  vis = _visibility(tracks, visibility)
  # A candidate needs rank 3K <= min(2F, P): 17 keypoints allow K <= 5.
  limit = max_rank(tracks.shape[0], tracks.shape[1])
  shape_bases = tuple(k for k in shape_bases if 3 * k <= limit)
  if not shape_bases:
    raise ValueError(
        f'no shape basis size fits {tracks.shape[0]} frames of {tracks.shape[1]} points: K needs '
        f'3K <= min(2F, P) = {limit}.'
    )
  t0 = time.perf_counter()
  info: dict[str, object] = {}
  solved, solutions, scores = {}, {}, {}
  for k in shape_bases:
    solved[k] = centred, solve = prior_free_candidate(tracks, vis, rot_key, k)
    if criterion == 'low_rank':
      solutions[k] = solve(centred, vis)
      scores[k] = float(shape_rank_ratio(solutions[k].shapes))
    else:
      scores[k] = float(heldout_error(lambda c, v, s=solve: s(c, v).points, centred, vis, cv_key, fraction=fraction))
  k = min(scores, key=lambda c: scores[c])
  name = 'shape_rank_ratio' if criterion == 'low_rank' else 'heldout_error'
  info.update(num_bases=k, criterion=criterion, **{name: {str(c): e for c, e in scores.items()}})
  centred, solve = solved[k]
  prior = solutions[k] if k in solutions else solve(centred, vis)
  jax.block_until_ready(prior.points)
  shared = time.perf_counter() - t0
  out: dict[str, tuple[Reconstruction, dict[str, object]]] = {}
  for solver in solvers:
    t1 = time.perf_counter()
    extra: dict[str, object] = {}
    if solver == 'prior_free':
      rec = prior
    elif solver == 'procrustean':
      rec = procrustean(tracks, vis, prior.points, num_iters=procrustean_iters)
      extra = {'procrustean_iters': procrustean_iters}
    else:
      rec, extra = _trajectory_from(prior, centred, vis, cv_key, trajectory_bases, fraction)
    jax.block_until_ready(rec.points)
    out[solver] = rec, {**info, **extra, 'seconds': round(shared + time.perf_counter() - t1, 2)}
  return out


def _trajectory_from(
    prior: Reconstruction,
    centred: Array,
    vis: Array,
    cv_key: Array,
    trajectory_bases: tuple[int, ...],
    fraction: float,
) -> tuple[Reconstruction, dict[str, object]]:
  """:func:`fit_many`'s ``trajectory``: DCT shapes on the prior-free cameras, size by agreement."""
  # The DCT size: the one whose reconstruction agrees best with the prior-free one. The 2D
  # cross-validation error falls with every added trajectory (on pickup, 30 bases fit the held-out
  # 2D best while the depth goes wild), so it cannot choose here; it is reported.
  rotations, t, reference = prior.rotations, prior.translation, prior.points
  num_frames = centred.shape[0]
  traj_errors, agreement, candidates = {}, {}, {}
  for b in sorted({min(b, num_frames) for b in trajectory_bases}):
    fit_b = lambda c, v, b=b: reconstruction(trajectory_shapes(c, v, rotations, num_bases=b), rotations, t)
    traj_errors[b] = float(heldout_error(lambda c, v: fit_b(c, v).points, centred, vis, cv_key, fraction=fraction))
    candidates[b] = fit_b(centred, vis)
    agreement[b] = float(relative_distance(candidates[b].points, reference))
  b = min(agreement, key=lambda c: agreement[c])
  return candidates[b], {
      'trajectory_bases': b,
      'trajectory_agreement': {str(c): e for c, e in agreement.items()},
      'trajectory_heldout_error': {str(c): e for c, e in traj_errors.items()},
  }


def relative_distance(points: Array, reference: Array) -> Array:
  """Mean over frames of ``‖X_f − Y_f‖ / ‖Y_f‖``, each frame against ``Y_f`` or its depth flip (no 3D truth).

  Args:
    points: ``[F, P, 3]`` centred reconstructions.
    reference: ``[F, P, 3]`` centred reconstructions to compare with.

  Returns:
    Scalar.
  """
  flipped = jnp.concatenate([reference[..., :2], -reference[..., 2:]], -1)
  norm = jnp.sqrt(jnp.sum(reference**2, (-2, -1)))
  err = jnp.minimum(
      jnp.sqrt(jnp.sum((points - reference) ** 2, (-2, -1))), jnp.sqrt(jnp.sum((points - flipped) ** 2, (-2, -1)))
  )
  return jnp.mean(err / jnp.maximum(norm, 1e-12))
