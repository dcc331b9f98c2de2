"""C3DPO-style per-frame lifter, its shape basis, and the MLP trunk it shares with Ψ."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


class ResidualBottleneck(nn.Module):
  """C3DPO's residual bottleneck block with LayerNorm in place of BatchNorm.

  ``y = ReLU(x + LN(W₃ ReLU(LN(W₂ ReLU(LN(W₁ x))))))`` with inner width
  ``width // ratio``. LayerNorm keeps each example independent, so the
  data-parallel step needs no cross-device batch statistics.
  """
  ratio: int = 4

  @nn.compact
  def __call__(self, x: Array) -> Array:
    width = x.shape[-1]
    inner = max(width // self.ratio, 1)
    h = nn.relu(nn.LayerNorm()(nn.Dense(inner)(x)))
    h = nn.relu(nn.LayerNorm()(nn.Dense(inner)(h)))
    h = nn.LayerNorm()(nn.Dense(width)(h))
    return nn.relu(x + h)


class MLPTrunk(nn.Module):
  """``Dense(width) → ReLU → num_blocks × ResidualBottleneck``: ``[..., D] -> [..., width]``."""
  width: int = 256
  num_blocks: int = 3

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = nn.relu(nn.Dense(self.width)(x))
    for _ in range(self.num_blocks):
      x = ResidualBottleneck()(x)
    return x


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
    flat = nn.Dense(3 * self.num_points, name='basis',
                    kernel_init=nn.initializers.normal(self.init_std))(alpha)
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

  @nn.compact
  def __call__(self, keypoints: Array, visibility: Array) -> tuple[Array, Array]:
    """Predicts coefficients and rotation vectors.

    Args:
      keypoints: ``[..., P, 2]`` normalised 2D.
      visibility: ``[..., P]``.

    Returns:
      ``alpha [..., K]`` and the rotation parameters: ``omega [..., 3]`` (rotation
      vectors, ``R = so3_exp(ω)``) or, with ``rotation='6d'``, ``[..., 6]``
      (``R = rotation_6d(·)``, identity at initialisation).
    """
    h = MLPTrunk(self.width, self.num_blocks)(lifter_input(keypoints, visibility))
    # Small heads (C3DPO: std 0.01): shapes start near 0 and rotations near I,
    # so basis and cameras grow together instead of fitting 2D with shape alone.
    init = nn.initializers.normal(self.init_std)
    alpha = nn.Dense(self.num_bases, name='alpha', kernel_init=init)(h)
    if self.rotation == 'so3':
      omega = nn.Dense(3, name='omega', kernel_init=init)(h)
    elif self.rotation == '6d':
      identity = lambda *_: jnp.asarray([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
      omega = nn.Dense(6, name='rot6d', kernel_init=init, bias_init=identity)(h)
    else:
      raise ValueError(f"Unknown rotation parametrisation {self.rotation!r}; expected 'so3' or '6d'.")
    return alpha, omega


class Canonicalizer(nn.Module):
  """Ψ: a rotated canonical shape ``[..., P, 3]`` → coefficients ``α' [..., K]`` (eq. 18)."""
  width: int = 256
  num_blocks: int = 3
  num_bases: int = 10
  init_std: float = 0.01

  @nn.compact
  def __call__(self, shape: Array) -> Array:
    h = MLPTrunk(self.width, self.num_blocks)(shape.reshape(*shape.shape[:-2], -1))
    return nn.Dense(self.num_bases, name='alpha', kernel_init=nn.initializers.normal(self.init_std))(h)
