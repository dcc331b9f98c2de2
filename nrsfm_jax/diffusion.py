"""Diffusion as pure functions (eqs. 14–15; D3DP-style x0 parametrisation).

The schedule is an immutable pytree built once; the denoiser is any callable
``denoise(x_t, t) -> x0_hat`` that knows nothing about the schedule (bind the
2D conditioning and the parameters with a closure or ``functools.partial``)::

    sched = cosine_schedule(1000)
    x_t = q_sample(sched, x0, t, noise)                       # training input
    loss = masked_mean(*x0_loss(denoise(x_t, t), x0, mask=m))  # x0 objective
    hyps = sample_hypotheses(denoise, sched, key, x0.shape, num_hypotheses=5, num_steps=5)
    x0_hat = aggregate_joint_reprojection(hyps, keypoints, visibility)

Timesteps are integers in ``[0, T)``; ``t = 0`` is the least noisy step.
Samplers are ``lax.scan`` / ``lax.fori_loop`` loops whose noise comes from
``fold_in(key, i)``, so a sample is a pure function of its key.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nrsfm_jax import geometry, losses

Array = jax.Array
Denoiser = Callable[[Array, Array], Array]


class Schedule(NamedTuple):
  """Noise schedule (a pytree of ``[T]`` float32 arrays).

  Attributes:
    betas: ``β_t``.
    alphas_cumprod: ``ᾱ_t = Π_{s<=t} (1 − β_s)``.
    alphas_cumprod_prev: ``ᾱ_{t−1}`` with ``ᾱ_{−1} = 1``.
    posterior_variance: ``β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)`` (DDPM's reverse variance).
  """

  betas: Array
  alphas_cumprod: Array
  alphas_cumprod_prev: Array
  posterior_variance: Array

  @property
  def num_timesteps(self) -> int:
    return self.betas.shape[-1]


def _from_betas(betas: np.ndarray) -> Schedule:
  betas = np.asarray(betas, np.float64)
  if betas.ndim != 1 or not np.all((betas > 0) & (betas < 1)):
    raise ValueError(f'betas must be a 1-D array in (0, 1), got shape {betas.shape}')
  ab = np.cumprod(1.0 - betas)
  ab_prev = np.concatenate([[1.0], ab[:-1]])
  post = betas * (1.0 - ab_prev) / (1.0 - ab)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  return Schedule(f32(betas), f32(ab), f32(ab_prev), f32(post))


def cosine_schedule(num_timesteps: int = 1000, *, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
  """Nichol & Dhariwal's cosine schedule: ``ᾱ_t ∝ cos²((t/T + s)/(1 + s) · π/2)``, β clipped."""
  if num_timesteps < 1:
    raise ValueError(f'num_timesteps must be >= 1, got {num_timesteps}')
  f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2
  steps = np.arange(num_timesteps, dtype=np.float64)
  betas = np.array([min(1 - f((i + 1) / num_timesteps) / f(i / num_timesteps), max_beta) for i in steps])
  return _from_betas(betas)


def linear_schedule(num_timesteps: int = 1000, *, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
  """DDPM's linear schedule (``β`` from ``beta_start`` to ``beta_end``, for T = 1000)."""
  if num_timesteps < 1:
    raise ValueError(f'num_timesteps must be >= 1, got {num_timesteps}')
  return _from_betas(np.linspace(beta_start, beta_end, num_timesteps))


def make_schedule(kind: str = 'cosine', num_timesteps: int = 1000) -> Schedule:
  """``'cosine'`` or ``'linear'`` schedule."""
  if kind == 'cosine':
    return cosine_schedule(num_timesteps)
  if kind == 'linear':
    return linear_schedule(num_timesteps)
  raise ValueError(f"Unknown schedule {kind!r}; expected 'cosine' or 'linear'.")


def _bcast(values: Array, t: Array, like: Array) -> Array:
  """``values[t]`` shaped ``[B, 1, ..., 1]`` to broadcast against ``like [B, ...]``.

  ``t`` is clipped to ``[0, T)``: DDIM's final ``t_prev = -1`` reads entry 0,
  which :func:`ddim_step` then replaces.
  """
  v = jnp.take(values, jnp.clip(t, 0, values.shape[0] - 1))
  return v.reshape(v.shape + (1,) * (like.ndim - v.ndim))


def q_sample(schedule: Schedule, x0: Array, t: Array, noise: Array) -> Array:
  """Forward process (eq. 14, closed form): ``x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε``.

  Args:
    schedule: the noise schedule.
    x0: ``[B, ...]`` clean data.
    t: int ``[B]`` timesteps (or a scalar).
    noise: ``[B, ...]`` standard normal ``ε``.

  Returns:
    ``[B, ...]`` noisy data.
  """
  ab = _bcast(schedule.alphas_cumprod, jnp.asarray(t), x0)
  return jnp.sqrt(ab) * x0 + jnp.sqrt(1.0 - ab) * noise


def sample_timesteps(key: Array, batch_size: int, num_timesteps: int) -> Array:
  """Uniform int32 timesteps ``[B]`` in ``[0, T)``."""
  return jax.random.randint(key, (batch_size,), 0, num_timesteps)


def x0_loss(pred: Array, x0: Array, *, mask: Array | None = None, root: int | None = 0) -> tuple[Array, Array]:
  """The x0 objective: per-joint Euclidean error on root-relative 3D (MPJPE-style, D3DP).

  Args:
    pred: ``[..., P, 3]`` the denoiser's x0 estimate.
    x0: ``[..., P, 3]`` the clean data.
    mask: ``[..., P]`` weights (e.g. the window padding mask), or None.
    root: root joint subtracted from both (None: no centring).

  Returns:
    ``(values [..., P], weights [..., P])``, unweighted values (reduce with
    ``losses.masked_mean``); masked entries are exactly 0 in value and gradient.
  """
  return losses.teacher_loss(pred, x0, mask=mask, root=root, kind='l2')


def predict_noise(schedule: Schedule, x_t: Array, t: Array, x0: Array) -> Array:
  """``ε`` implied by an x0 estimate: ``(x_t − √ᾱ_t x0) / √(1 − ᾱ_t)``."""
  ab = _bcast(schedule.alphas_cumprod, t, x_t)
  return (x_t - jnp.sqrt(ab) * x0) / jnp.sqrt(1.0 - ab)


def ddpm_step(schedule: Schedule, x_t: Array, t: Array, x0: Array, noise: Array) -> Array:
  """One ancestral step ``x_t → x_{t−1}`` (eq. 15) from an x0 estimate.

  Mean of ``q(x_{t−1} | x_t, x0)``: ``(√ᾱ_{t−1} β_t x0 + √α_t (1 − ᾱ_{t−1}) x_t) / (1 − ᾱ_t)``,
  variance ``β̃_t``; at ``t = 0`` it returns the x0 estimate (no noise).

  Args:
    schedule: the noise schedule.
    x_t: ``[B, ...]``.
    t: int ``[B]`` current timesteps.
    x0: ``[B, ...]`` the denoiser's estimate.
    noise: ``[B, ...]`` standard normal.

  Returns:
    ``x_{t−1}``, ``[B, ...]``.
  """
  beta = _bcast(schedule.betas, t, x_t)
  ab = _bcast(schedule.alphas_cumprod, t, x_t)
  ab_prev = _bcast(schedule.alphas_cumprod_prev, t, x_t)
  var = _bcast(schedule.posterior_variance, t, x_t)
  mean = (jnp.sqrt(ab_prev) * beta * x0 + jnp.sqrt(1.0 - beta) * (1.0 - ab_prev) * x_t) / (1.0 - ab)
  last = (t == 0).reshape(t.shape + (1,) * (x_t.ndim - t.ndim))
  return jnp.where(last, x0, mean + jnp.sqrt(var) * noise)


def ddim_step(
    schedule: Schedule, x_t: Array, t: Array, t_prev: Array, x0: Array, noise: Array, *, eta: float = 0.0
) -> Array:
  """One DDIM step ``x_t → x_{t_prev}`` from an x0 estimate (``t_prev < 0``: return x0).

  ``x_prev = √ᾱ_prev x0 + √(1 − ᾱ_prev − σ²) ε̂ + σ z`` with
  ``σ = η √((1 − ᾱ_prev)/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev)``; η = 0 is deterministic,
  and η = 1 with adjacent timesteps (``t_prev = t − 1``) is DDPM's posterior variance.

  Args:
    schedule: the noise schedule.
    x_t: ``[B, ...]``.
    t: int ``[B]`` current timesteps.
    t_prev: int ``[B]`` next (smaller) timesteps, −1 for the final step.
    x0: ``[B, ...]`` the denoiser's estimate.
    noise: ``[B, ...]`` standard normal ``z``.
    eta: stochasticity.

  Returns:
    ``x_{t_prev}``, ``[B, ...]``.
  """
  ab = _bcast(schedule.alphas_cumprod, t, x_t)
  final = (t_prev < 0).reshape(t_prev.shape + (1,) * (x_t.ndim - t_prev.ndim))
  ab_prev = jnp.where(final, 1.0, _bcast(schedule.alphas_cumprod, t_prev, x_t))
  eps = (x_t - jnp.sqrt(ab) * x0) / jnp.sqrt(1.0 - ab)
  sigma = eta * jnp.sqrt((1.0 - ab_prev) / (1.0 - ab)) * jnp.sqrt(jnp.maximum(1.0 - ab / ab_prev, 0.0))
  direction = jnp.sqrt(jnp.maximum(1.0 - ab_prev - sigma**2, 0.0))
  x_prev = jnp.sqrt(ab_prev) * x0 + direction * eps + sigma * noise
  return jnp.where(final, x0, x_prev)


def ddim_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
  """The K timesteps DDIM visits, from ``T − 1`` down to 0 (evenly spaced), int32 ``[K]``.

  Like the DDIM paper's code, the last call is at ``t = 0`` (K = 5, T = 1000:
  999, 749, 500, 250, 0); D3DP instead spaces K calls over ``[T − 1, 0)`` and
  jumps to x0 after the last, which spends the final call at a higher noise level.
  """
  if not 1 <= num_steps <= num_timesteps:
    raise ValueError(f'num_steps must be in [1, {num_timesteps}], got {num_steps}')
  return np.round(np.linspace(num_timesteps - 1, 0, num_steps)).astype(np.int32)


def ddim_sample(
    denoise: Denoiser, schedule: Schedule, key: Array, shape: tuple[int, ...], *, num_steps: int = 5, eta: float = 0.0
) -> Array:
  """DDIM sampling from ``x_T ~ N(0, I)`` in ``num_steps`` denoiser calls (``lax.scan``).

  Args:
    denoise: ``(x_t [B, ...], t int [B]) -> x0_hat [B, ...]``.
    schedule: the noise schedule.
    key: PRNG key; step i's noise uses ``fold_in(key, i)``.
    shape: ``(B, ...)`` sample shape.
    num_steps: K.
    eta: DDIM stochasticity (0: deterministic given ``x_T``).

  Returns:
    ``[B, ...]`` the final x0 estimate.
  """
  x_init = jax.random.normal(jax.random.fold_in(key, num_steps), shape)
  noise_fn = lambda i: jax.random.normal(jax.random.fold_in(key, i), shape)
  return _ddim_scan(denoise, schedule, x_init, noise_fn, shape[1:], num_steps=num_steps, eta=eta)


def _ddim_scan(
    denoise: Denoiser,
    schedule: Schedule,
    x_init: Array,
    noise_fn,
    example_shape: tuple[int, ...],
    *,
    num_steps: int,
    eta: float,
) -> Array:
  """The K DDIM steps (``lax.scan``) shared by :func:`ddim_sample` and :func:`sample_hypotheses`.

  ``x_init`` is ``[*lead, *example_shape]``; every step flattens the leading
  axes into one denoiser batch. ``noise_fn(i)`` is step i's noise, shaped like ``x_init``.
  """
  ts = ddim_timesteps(schedule.num_timesteps, num_steps)
  prev = np.concatenate([ts[1:], [-1]]).astype(np.int32)
  flat = lambda a: a.reshape((-1,) + tuple(example_shape))
  n = flat(x_init).shape[0]

  def body(x, inputs):
    i, t, t_prev = inputs
    tb = jnp.full((n,), t, jnp.int32)
    x0 = denoise(flat(x), tb)
    step = ddim_step(schedule, flat(x), tb, jnp.full_like(tb, t_prev), x0, flat(noise_fn(i)), eta=eta)
    return step.reshape(x.shape), None

  x, _ = jax.lax.scan(body, x_init, (jnp.arange(num_steps), jnp.asarray(ts), jnp.asarray(prev)))
  return x


def ddpm_sample(denoise: Denoiser, schedule: Schedule, key: Array, shape: tuple[int, ...]) -> Array:
  """Ancestral DDPM sampling over all T steps (``lax.fori_loop``); returns ``[B, ...]``."""
  num = schedule.num_timesteps
  x_init = jax.random.normal(jax.random.fold_in(key, num), shape)

  def body(i, x):
    tb = jnp.full((shape[0],), num - 1 - i, jnp.int32)
    noise = jax.random.normal(jax.random.fold_in(key, i), shape)
    return ddpm_step(schedule, x, tb, denoise(x, tb), noise)

  return jax.lax.fori_loop(0, num, body, x_init)


def sample_hypotheses(
    denoise: Denoiser,
    schedule: Schedule,
    key: Array,
    shape: tuple[int, ...],
    *,
    num_hypotheses: int = 5,
    num_steps: int = 5,
    eta: float = 0.0,
) -> Array:
  """H independent DDIM samples (D3DP's multi-hypothesis inference): ``[H, B, ...]``.

  The hypotheses are batched through the denoiser together (one call of
  batch ``H·B`` per step), hypothesis h using ``fold_in(key, h)``.
  """
  h = num_hypotheses
  if h < 1:
    raise ValueError(f'num_hypotheses must be >= 1, got {h}')
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(h))
  x_init = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, num_steps), shape))(keys)
  noise_fn = lambda i: jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, i), shape))(keys)
  return _ddim_scan(denoise, schedule, x_init, noise_fn, shape[1:], num_steps=num_steps, eta=eta)


def aggregate_mean(hypotheses: Array) -> Array:
  """Mean over hypotheses: ``[H, ..., P, 3] -> [..., P, 3]``."""
  return jnp.mean(hypotheses, axis=0)


def joint_reprojection_errors(hypotheses: Array, keypoints: Array, visibility: Array) -> Array:
  """Per-joint 2D distance of each hypothesis to the observed keypoints (orthographic camera).

  Each hypothesis' x, y is translated so its visible points' centroid matches
  the keypoints' (the closed-form orthographic translation).

  Args:
    hypotheses: ``[H, ..., P, 3]``.
    keypoints: ``[..., P, 2]``.
    visibility: ``[..., P]``.

  Returns:
    ``[H, ..., P]`` distances (meaningless where the joint is invisible).
  """
  xy = hypotheses[..., :2]
  vis = jnp.broadcast_to(visibility, xy.shape[:-1])
  offset = geometry.weighted_centroid(keypoints - xy, vis)  # [H, ..., 1, 2]
  return jnp.linalg.norm(xy + offset - keypoints, axis=-1)


def aggregate_joint_reprojection(hypotheses: Array, keypoints: Array, visibility: Array) -> Array:
  """D3DP's joint-wise reprojection selection (JPMA, orthographic).

  For every joint, take the hypothesis whose projected x, y lies closest to
  the observed 2D; joints that are not visible take the mean hypothesis.

  Args:
    hypotheses: ``[H, ..., P, 3]`` root-relative camera-frame hypotheses.
    keypoints: ``[..., P, 2]`` observed 2D (same units).
    visibility: ``[..., P]``.

  Returns:
    ``[..., P, 3]``.
  """
  err = joint_reprojection_errors(hypotheses, keypoints, visibility)
  best = jnp.argmin(err, axis=0)  # [..., P]
  chosen = jnp.take_along_axis(hypotheses, best[None, ..., None], axis=0)[0]
  return jnp.where(visibility[..., None] > 0, chosen, aggregate_mean(hypotheses))


def hypothesis_spread(hypotheses: Array, root: int | None = 0) -> Array:
  """Per-joint disagreement of the hypotheses: RMS distance to their mean, ``[H, ..., P, 3] -> [..., P]``.

  Computed on root-relative 3D (``root=None``: as given), so a shared
  translation does not count; the teacher's per-joint uncertainty.
  """
  if root is not None:
    hypotheses = hypotheses - hypotheses[..., root : root + 1, :]
  dev = hypotheses - jnp.mean(hypotheses, axis=0, keepdims=True)
  return jnp.sqrt(jnp.mean(jnp.sum(dev**2, axis=-1), axis=0))


def aggregate(hypotheses: Array, keypoints: Array, visibility: Array, *, method: str = 'mean') -> Array:
  """``'mean'`` or ``'jpma'`` (joint-wise reprojection) aggregation of ``[H, ..., P, 3]``."""
  if method == 'mean':
    return aggregate_mean(hypotheses)
  if method == 'jpma':
    return aggregate_joint_reprojection(hypotheses, keypoints, visibility)
  raise ValueError(f"Unknown aggregation {method!r}; expected 'mean' or 'jpma'.")
