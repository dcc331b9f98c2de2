"""Dilated temporal convolutional refiner (eqs. 6–11)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def receptive_field(kernel_size: int, dilations: Sequence[int]) -> int:
  """Frames that influence one output: ``1 + Σ_l (k − 1) d_l``."""
  return 1 + sum((kernel_size - 1) * d for d in dilations)


def causal_shift(kernel_size: int, dilations: Sequence[int], causal: bool) -> int:
  """Future frames one output sees: 0 when causal, about half the receptive field when centred
  (:func:`context_frames`' second entry: the blocks' right-hand padding)."""
  return context_frames(kernel_size, dilations, causal)[1]


def context_frames(kernel_size: int, dilations: Sequence[int], causal: bool) -> tuple[int, int]:
  """(past, future) frames one output sees: ``(receptive field − 1, 0)`` causal, about half each centred."""
  pads = [conv_padding(kernel_size, d, causal) for d in dilations]
  return sum(p[0] for p in pads), sum(p[1] for p in pads)


def conv_padding(kernel_size: int, dilation: int, causal: bool) -> tuple[int, int]:
  """Left/right zero padding keeping length T: all on the left when causal."""
  total = (kernel_size - 1) * dilation
  return (total, 0) if causal else (total // 2, total - total // 2)


class TemporalBlock(nn.Module):
  """``H(X) = ReLU(X + f(W ∗ X))`` with a dilated conv ``W`` and ``f = Dense ∘ ReLU ∘ LN``."""

  kernel_size: int
  dilation: int
  causal: bool = True
  dtype: str = 'float32'

  @nn.compact
  def __call__(self, x: Array, mask: Array) -> Array:
    channels, dtype = x.shape[-1], jnp.dtype(self.dtype)
    pad = conv_padding(self.kernel_size, self.dilation, self.causal)
    h = nn.Conv(
        channels, (self.kernel_size,), kernel_dilation=(self.dilation,), padding=(pad,), name='conv', dtype=dtype
    )(x)
    h = nn.Dense(channels, name='proj', dtype=dtype)(nn.relu(nn.LayerNorm(dtype=dtype)(h)))
    return nn.relu(x + h) * mask[..., None]


class TemporalRefiner(nn.Module):
  """TCN refinement of per-frame shapes: ``S_t = X_t + MLP(W_X X_t + W_F F_t + b)``.

  Attributes:
    channels: TCN width D (paper: 128).
    kernel_size: temporal kernel (3).
    dilations: one per residual block (default 1, 3, 9, 27: receptive field 81).
    causal: only past frames (paper) or a centred window.
    mlp_width: hidden width of the ΔS MLP.
    use_2d: feed the 2D keypoints and visibility to the TCN beside X_t.
    out_features: None: the output is ``ΔS [B, T, P, 3]``; an int F: a
      per-frame ``[B, T, F]`` (e.g. shape-coefficient refinements ``Δα``).
    dtype: the TCN's compute dtype (``'bfloat16'``: mixed precision); the fusion MLP and the
      output stay float32.
  """

  channels: int = 128
  kernel_size: int = 3
  dilations: tuple[int, ...] = (1, 3, 9, 27)
  causal: bool = True
  mlp_width: int = 256
  use_2d: bool = True
  out_features: int | None = None
  dtype: str = 'float32'

  @nn.compact
  def __call__(self, shapes: Array, keypoints: Array, visibility: Array, mask: Array) -> Array:
    """Refines a window of canonical shapes.

    Args:
      shapes: ``[B, T, P, 3]`` per-frame canonical shapes ``X_t``.
      keypoints: ``[B, T, P, 2]`` normalised 2D.
      visibility: ``[B, T, P]``.
      mask: ``[B, T]`` 1 on real frames, 0 on padding.

    Returns:
      ``ΔS [B, T, P, 3]``, zero on padded frames; ``ΔS = 0`` at initialisation.
    """
    flat_x = shapes.reshape(*shapes.shape[:-2], -1)
    feats = [flat_x]
    if self.use_2d:
      feats += [(keypoints * visibility[..., None]).reshape(*keypoints.shape[:-2], -1), visibility]
    h = jnp.concatenate(feats, -1) * mask[..., None]
    h = nn.relu(nn.Dense(self.channels, name='embed', dtype=jnp.dtype(self.dtype))(h)) * mask[..., None]
    for i, d in enumerate(self.dilations):
      h = TemporalBlock(self.kernel_size, d, self.causal, self.dtype, name=f'block{i}')(h, mask)
    h = h.astype(jnp.float32)
    # Eq. 9: linear fusion of the frame's own shape and its temporal features.
    fused = nn.Dense(self.mlp_width, name='fuse_x')(flat_x) + nn.Dense(self.mlp_width, use_bias=False, name='fuse_f')(h)
    delta = nn.Dense(self.mlp_width, name='mlp_hidden')(nn.relu(fused))
    size = flat_x.shape[-1] if self.out_features is None else self.out_features
    delta = nn.Dense(size, name='mlp_out', kernel_init=nn.initializers.zeros)(nn.relu(delta))
    if self.out_features is not None:
      return delta * mask[..., None]
    return delta.reshape(shapes.shape) * mask[..., None, None]
