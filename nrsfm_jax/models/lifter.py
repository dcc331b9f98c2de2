"""C3DPO-style per-frame lifter, its shape basis, and the MLP trunk it shares with Ψ."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


TRUNK_INITS = ('flax', 'c3dpo')


def _kernel_init(init: str):
  """The trunk's dense kernels: flax's default (LeCun normal) or C3DPO's (normal, std 0.01)."""
  if init == 'flax':
    return nn.linear.default_kernel_init
  if init == 'c3dpo':
    return nn.initializers.normal(0.01)
  raise ValueError(f'Unknown trunk init {init!r}; expected one of {TRUNK_INITS}.')


def _norm(
    kind: str,
    train: bool,
    axis_name: str | None,
    mask: Array | None,
    dtype: str = 'float32',
    init: str = 'flax',
) -> Callable[[Array], Array]:
  """LayerNorm, or BatchNorm over every leading axis (synced over ``axis_name``); computing in ``dtype``.

  ``init='c3dpo'``: the scales start uniform in [0, 1) (C3DPO's BatchNorm init), not at 1.
  """
  scale_init = nn.initializers.uniform(1.0) if init == 'c3dpo' else nn.initializers.ones
  if kind == 'layer':
    return nn.LayerNorm(dtype=jnp.dtype(dtype), scale_init=scale_init)
  if kind == 'batch':
    bn = nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        axis_name=axis_name,
        dtype=jnp.dtype(dtype),
        scale_init=scale_init,
    )
    return lambda x: bn(x, mask=None if mask is None else jnp.broadcast_to(mask[..., None] > 0, x.shape))
  raise ValueError(f"Unknown norm {kind!r}; expected 'layer' or 'batch'.")


class ResidualBottleneck(nn.Module):
  """C3DPO's residual bottleneck block.

  ``y = ReLU(x + N(W₃ ReLU(N(W₂ ReLU(N(W₁ x))))))`` with inner width
  ``width // ratio`` and ``N`` LayerNorm (default: each example independent)
  or C3DPO's BatchNorm (``norm='batch'``: statistics over the batch, synced
  over ``axis_name`` in the data-parallel step, running averages at test time).
  """

  ratio: int = 4
  norm: str = 'layer'
  dtype: str = 'float32'  # compute dtype; parameters stay float32
  trunk_init: str = 'flax'  # 'flax' (LeCun normal kernels, unit norm scales) or 'c3dpo' (see MLPTrunk)

  @nn.compact
  def __call__(
      self, x: Array, *, train: bool = False, axis_name: str | None = None, mask: Array | None = None
  ) -> Array:
    width = x.shape[-1]
    inner = max(width // self.ratio, 1)
    norm = lambda: _norm(self.norm, train, axis_name, mask, self.dtype, self.trunk_init)
    dense = lambda n: nn.Dense(n, dtype=jnp.dtype(self.dtype), kernel_init=_kernel_init(self.trunk_init))
    h = nn.relu(norm()(dense(inner)(x)))
    h = nn.relu(norm()(dense(inner)(h)))
    h = norm()(dense(width)(h))
    return nn.relu(x + h)


class MLPTrunk(nn.Module):
  """``Dense(width) → N → ReLU → num_blocks × ResidualBottleneck``: ``[..., D] -> [..., width]``.

  With ``norm='layer'`` the first layer has no normalisation (as before BatchNorm
  was an option); with ``'batch'`` it is C3DPO's conv-BN-ReLU.

  ``mask``: optional ``[...]`` weights of the leading axes; BatchNorm's
  statistics use only the examples where it is positive (padding excluded).
  ``dtype``: compute dtype (``'bfloat16'``: mixed precision); the output is float32.
  ``trunk_init``: ``'flax'`` (LeCun-normal kernels, norm scales at 1) or ``'c3dpo'`` (the official
  code's: every kernel normal with std 0.01, norm scales uniform in [0, 1)). Under a following
  normalisation a kernel's scale does not change the output, only how far a step moves it:
  C3DPO's small kernels take relatively larger steps.
  """

  width: int = 256
  num_blocks: int = 3
  norm: str = 'layer'
  dtype: str = 'float32'
  trunk_init: str = 'flax'

  @nn.compact
  def __call__(
      self, x: Array, *, train: bool = False, axis_name: str | None = None, mask: Array | None = None
  ) -> Array:
    x = nn.Dense(self.width, dtype=jnp.dtype(self.dtype), kernel_init=_kernel_init(self.trunk_init))(x)
    if self.norm == 'batch':
      x = _norm(self.norm, train, axis_name, mask, self.dtype, self.trunk_init)(x)
    x = nn.relu(x)
    for _ in range(self.num_blocks):
      x = ResidualBottleneck(norm=self.norm, dtype=self.dtype, trunk_init=self.trunk_init)(
          x, train=train, axis_name=axis_name, mask=mask
      )
    return x.astype(jnp.float32)  # The heads (coefficients, rotations) stay float32.


class ShapeBasis(nn.Module):
  """Linear shape model ``X = mean + Σ_k α_k B_k``: ``[..., K] -> [..., P, 3]``.

  Shared by the lifter and the canonicalizer Ψ (eq. 18 compares shapes built
  from the same basis).
  """

  num_points: int
  num_bases: int = 10
  init_std: float = 0.01

  @nn.compact
  def __call__(self, alpha: Array) -> Array:
    flat = nn.Dense(3 * self.num_points, name='basis', kernel_init=nn.initializers.normal(self.init_std))(alpha)
    return flat.reshape(*alpha.shape[:-1], self.num_points, 3)


def lifter_input(keypoints: Array, visibility: Array) -> Array:
  """C3DPO's per-frame input: ``[kp · vis, vis]`` flattened: ``[..., P, 2], [..., P] -> [..., 3P]``."""
  kp = keypoints * visibility[..., None]
  return jnp.concatenate([kp.reshape(*kp.shape[:-2], -1), visibility], -1)


class Lifter(nn.Module):
  """Per-frame 2D → shape coefficients and camera rotation (C3DPO).

  Attributes:
    width: trunk width (C3DPO Human3.6M: 1024).
    num_blocks: residual bottleneck blocks (C3DPO: 6).
    num_bases: K, shape coefficients per frame (C3DPO: 10).
  """

  width: int = 256
  num_blocks: int = 3
  num_bases: int = 10
  init_std: float = 0.01
  rotation: str = 'so3'
  norm: str = 'layer'
  dtype: str = 'float32'
  trunk_init: str = 'flax'

  @nn.compact
  def __call__(
      self,
      keypoints: Array,
      visibility: Array,
      *,
      train: bool = False,
      axis_name: str | None = None,
      mask: Array | None = None,
  ) -> tuple[Array, Array]:
    """Predicts coefficients and rotation vectors.

    Args:
      keypoints: ``[..., P, 2]`` normalised 2D.
      visibility: ``[..., P]``.
      train, axis_name, mask: BatchNorm's mode, data-parallel axis and
        ``[...]`` frame weights (ignored with LayerNorm).

    Returns:
      ``alpha [..., K]`` and the rotation parameters: ``omega [..., 3]`` (rotation
      vectors, ``R = so3_exp(ω)``) or, with ``rotation='6d'``, ``[..., 6]``
      (``R = rotation_6d(·)``, identity at initialisation), or with ``rotation='procrustes'``
      an empty ``[..., 0]`` (the camera is not predicted; :class:`Student` fits it).
    """
    h = MLPTrunk(self.width, self.num_blocks, self.norm, self.dtype, self.trunk_init)(
        lifter_input(keypoints, visibility), train=train, axis_name=axis_name, mask=mask
    )
    # Small heads (C3DPO: std 0.01): shapes start near 0 and rotations near I,
    # so basis and cameras grow together instead of fitting 2D with shape alone.
    init = nn.initializers.normal(self.init_std)
    alpha = nn.Dense(self.num_bases, name='alpha', kernel_init=init)(h)
    if self.rotation == 'so3':
      omega = nn.Dense(3, name='omega', kernel_init=init)(h)
    elif self.rotation == '6d':
      identity = lambda *_: jnp.asarray([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
      omega = nn.Dense(6, name='rot6d', kernel_init=init, bias_init=identity)(h)
    elif self.rotation == 'procrustes':
      omega = jnp.zeros((*h.shape[:-1], 0), h.dtype)  # No camera head: the Student solves for it.
    else:
      raise ValueError(f"Unknown rotation parametrisation {self.rotation!r}; expected 'so3', '6d' or 'procrustes'.")
    return alpha, omega


class Canonicalizer(nn.Module):
  """Ψ: a rotated canonical shape ``[..., P, 3]`` → coefficients ``α' [..., K]`` (eq. 18)."""

  width: int = 256
  num_blocks: int = 3
  num_bases: int = 10
  init_std: float = 0.01
  norm: str = 'layer'
  dtype: str = 'float32'
  trunk_init: str = 'flax'

  @nn.compact
  def __call__(
      self, shape: Array, *, train: bool = False, axis_name: str | None = None, mask: Array | None = None
  ) -> Array:
    h = MLPTrunk(self.width, self.num_blocks, self.norm, self.dtype, self.trunk_init)(
        shape.reshape(*shape.shape[:-2], -1), train=train, axis_name=axis_name, mask=mask
    )
    return nn.Dense(self.num_bases, name='alpha', kernel_init=nn.initializers.normal(self.init_std))(h)
