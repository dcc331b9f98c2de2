"""The teacher's denoiser: a small transformer conditioned on the 2D (D3DP / MixSTE style).

Inputs per joint and frame: the noisy 3D, the observed 2D and the visibility,
plus the diffusion-timestep embedding and a sinusoidal frame-position
embedding. Two token layouts (``DenoiserConfig.arch``):

* ``'st'``: one token per joint per frame (plus a joint embedding); blocks
  alternate attention across the joints of one frame (spatial) and across the
  frames of one joint (temporal), as MixSTE / D3DP;
* ``'frame'``: one token per frame (all joints concatenated), temporal
  attention only; about 7x cheaper per step on a CPU at equal width.

Padded frames are masked out of temporal attention. The output is the clean
root-relative 3D (x0 parametrisation). The module knows nothing about the
noise schedule . Sizes: ``configs/teacher.py`` (CPU default
``'frame'``, width 256, 2 blocks; D3DP's ``'st'``, width 512, depth 8, as ``:d3dp``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from nrsfm_jax import geometry

Array = jax.Array


@flax.struct.dataclass(frozen=True)
class DenoiserConfig:
  """Static hyperparameters of :class:`Denoiser`; the defaults are the CPU teacher of ``configs/teacher.py``.

  Attributes:
    num_points: P.
    width: token width C.
    depth: number of (spatial, temporal) block pairs.
    num_heads: attention heads.
    mlp_ratio: hidden width of each block's MLP, in units of C.
    arch: ``'st'``: per-joint tokens, alternating spatial and temporal attention
      (MixSTE/D3DP); ``'frame'``: one token per frame (all joints concatenated),
      temporal attention only (``depth`` blocks; cheaper on a CPU).
    root: joint whose 3D is 0 in the output (root-relative), or -1 for none.
    attention: ``'fused'``: ``jax.nn.dot_product_attention`` (in jax 0.10 its XLA
      implementation: it does not pick cuDNN by itself); ``'cudnn'``: the same call with
      ``implementation='cudnn'`` (cuDNN's flash attention: a CUDA GPU and ``dtype='bfloat16'``
      only); ``'einsum'``: flax's own ``dot_product_attention``; ``'cudnn_temporal'``: cuDNN's for
      the attention over frames, ``'fused'`` for the spatial attention over joints. The same
      function of the same parameters.
    dtype: compute dtype, ``'float32'`` or ``'bfloat16'`` (mixed precision: parameters, the
      optimiser and the output stay float32; bf16 has float32's exponent range, so no loss
      scaling is needed).
  """

  num_points: int = flax.struct.field(pytree_node=False, default=17)
  width: int = flax.struct.field(pytree_node=False, default=256)
  depth: int = flax.struct.field(pytree_node=False, default=2)
  num_heads: int = flax.struct.field(pytree_node=False, default=8)
  mlp_ratio: int = flax.struct.field(pytree_node=False, default=2)
  arch: str = flax.struct.field(pytree_node=False, default='frame')
  root: int = flax.struct.field(pytree_node=False, default=0)
  attention: str = flax.struct.field(pytree_node=False, default='fused')
  dtype: str = flax.struct.field(pytree_node=False, default='float32')


def sinusoidal_embedding(positions: Array, dim: int, max_period: float = 10000.0) -> Array:
  """Transformer sinusoids: ``[...] -> [..., dim]`` (dim even)."""
  half = dim // 2
  freqs = jnp.exp(-jnp.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = jnp.asarray(positions, jnp.float32)[..., None] * freqs
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], -1)


def fused_attention(query: Array, key: Array, value: Array, bias: Array | None = None, mask: Array | None = None, **_):
  """flax's ``attention_fn`` interface over ``jax.nn.dot_product_attention`` (no dropout).

  ``query`` ``[N, S, heads, head_dim]``, ``mask`` broadcastable to ``[N, heads, S, S]``.
  """
  return jax.nn.dot_product_attention(query, key, value, bias=bias, mask=mask)


def cudnn_attention(query: Array, key: Array, value: Array, bias: Array | None = None, mask: Array | None = None, **_):
  """:func:`fused_attention` on cuDNN's flash-attention kernel (CUDA GPUs, bf16/fp16 inputs)."""
  if jax.default_backend() != 'gpu' or query.dtype not in (jnp.bfloat16, jnp.float16):
    raise ValueError(
        f"attention='cudnn' needs a CUDA GPU and model.dtype='bfloat16'; got backend "
        f"{jax.default_backend()!r} and {query.dtype} inputs (use attention='fused')."
    )
  # cuDNN's training kernels with a mask (lowered to a bias) need even sequence lengths: the spatial
  # attention's 17 joints and the 243-frame windows are odd (an H200 with jax 0.11.2 refused
  # "Unsupported sequence length Q 17, KV 17").
  query, key, value, bias, mask, length = pad_to_even_length(query, key, value, bias, mask)
  # cuDNN also wants a mask or bias of the full [N, heads, T, S]: a [.., 1, S] key mask was refused
  # ("Bias must have same seq length as QKV"), and under jax.vmap (the teacher's predict) its batching
  # rule reshapes the bias to [N * vmapped, heads, T, S] (a [N, 1, T, S] mask failed there; jax 0.11.2,
  # H200).
  full = query.shape[:-3] + (query.shape[-2], query.shape[-3], key.shape[-3])
  mask = None if mask is None else jnp.broadcast_to(mask, full)
  bias = None if bias is None else jnp.broadcast_to(bias, full)
  out = jax.nn.dot_product_attention(query, key, value, bias=bias, mask=mask, implementation='cudnn')
  return out[..., :length, :, :]


def pad_to_even_length(query: Array, key: Array, value: Array, bias: Array | None, mask: Array | None):
  """Pads the sequence axes (``-3``) of ``query`` and ``key``/``value`` to even lengths.

  The padded keys are masked out for every query and the padded queries attend to every real key,
  so the attention of the real queries is unchanged; slice the output's axis ``-3`` back to the
  returned length. ``query`` ``[N, T, heads, head_dim]``, ``key``/``value`` ``[N, S, heads,
  head_dim]``, ``bias``/``mask`` broadcastable to ``[N, heads, T, S]``.

  Returns:
    ``(query, key, value, bias, mask, T)`` with even ``T'``, ``S'`` (``mask`` ``[..., T', S']``, never
    None once anything was padded; ``bias`` padded with zeros).
  """
  t, s = query.shape[-3], key.shape[-3]
  pt, ps = t % 2, s % 2
  if not (pt or ps):
    return query, key, value, bias, mask, t

  def pad_seq(x, n):
    return jnp.pad(x, [(0, 0)] * (x.ndim - 3) + [(0, n), (0, 0), (0, 0)])

  def pad_last2(m, value):
    m = jnp.broadcast_to(m, m.shape[:-2] + (t, s))
    return jnp.pad(m, [(0, 0)] * (m.ndim - 2) + [(0, pt), (0, ps)], constant_values=value)

  query, key, value = pad_seq(query, pt), pad_seq(key, ps), pad_seq(value, ps)
  real_key = jnp.arange(s + ps) < s
  mask = real_key if mask is None else pad_last2(jnp.asarray(mask, bool), True) & real_key
  if bias is not None:
    bias = pad_last2(bias, 0)
  return query, key, value, bias, mask, t


ATTENTION_FNS: dict[str, Callable[..., Any]] = {
    'fused': fused_attention,
    'cudnn': cudnn_attention,
    'einsum': nn.dot_product_attention,
}
# cuDNN's flash attention for the temporal blocks (long sequences) and XLA's for the spatial ones
# (17 joints: a flash kernel's tiles would be mostly padding).
MIXED_ATTENTION = {'cudnn_temporal': ('fused', 'cudnn')}
ATTENTIONS = tuple(ATTENTION_FNS) + tuple(MIXED_ATTENTION)


def over_frames(query: Array, key: Array, value: Array, mask: Array | None = None, *, attention_fn: Callable[..., Any]):
  """``attention_fn`` across the frames of each joint, on tokens laid out ``[B, T, P, ...]``.

  ``query`` ``[B, T, P, heads, head_dim]`` (``key``/``value`` ``[B, S, P, ...]``) are read as
  ``[B, T, P * heads, head_dim]``: every (joint, head) pair is one head attending over the frames,
  which is the temporal attention of the ``[B * P, T, C]`` layout without transposing the tokens
  (a free reshape; cuDNN reads the strided layout as it is). ``mask`` broadcastable to
  ``[B, 1, T, S]``.

  Returns:
    ``[B, T, P, heads, head_dim]``.
  """
  b, t, p, h, d = query.shape
  merge = lambda x: x.reshape(x.shape[:2] + (p * h, d))
  out = attention_fn(merge(query), merge(key), merge(value), mask=mask)
  return out.reshape(b, t, p, h, d)


class Block(nn.Module):
  """Pre-LayerNorm transformer block.

  ``frames=False``: attention over the second-to-last axis, ``[N, S, C] -> [N, S, C]``;
  ``frames=True``: over axis 1 of ``[B, T, P, C]`` for each joint (:func:`over_frames`; the same
  parameters and function as ``frames=False`` on the tokens transposed to ``[B * P, T, C]``).
  """

  num_heads: int
  mlp_ratio: int
  attention: str = 'fused'
  dtype: str = 'float32'
  frames: bool = False

  @nn.compact
  def __call__(self, x: Array, mask: Array | None = None) -> Array:
    if self.attention not in ATTENTION_FNS:  # (a block runs one kind; the Denoiser splits the mixed ones)
      raise ValueError(f'Unknown attention {self.attention!r}; expected one of {tuple(ATTENTION_FNS)}.')
    c, dtype = x.shape[-1], jnp.dtype(self.dtype)
    attention_fn = ATTENTION_FNS[self.attention]
    if self.frames:
      attention_fn = functools.partial(over_frames, attention_fn=attention_fn)
    h = nn.LayerNorm(dtype=dtype)(x)
    attend = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads,
        qkv_features=c,
        out_features=c,
        dtype=dtype,
        attention_fn=attention_fn,
    )
    x = x + attend(h, h, mask=mask)
    h = nn.LayerNorm(dtype=dtype)(x)
    h = nn.Dense(self.mlp_ratio * c, dtype=dtype)(h)
    return x + nn.Dense(c, dtype=dtype)(nn.gelu(h))


class Denoiser(nn.Module):
  """``(x_t, t, keypoints, visibility, mask) -> x0_hat`` (see module docstring)."""

  config: DenoiserConfig

  @nn.compact
  def __call__(self, x_t: Array, t: Array, keypoints: Array, visibility: Array, mask: Array) -> Array:
    """Predicts the clean root-relative 3D.

    Args:
      x_t: ``[B, T, P, 3]`` noisy root-relative camera-frame 3D (normalised units).
      t: int ``[B]`` diffusion timesteps.
      keypoints: ``[B, T, P, 2]`` normalised, centred 2D.
      visibility: ``[B, T, P]``.
      mask: ``[B, T]`` 1 on real frames.

    Returns:
      ``[B, T, P, 3]`` x0 estimate (root joint at the origin).
    """
    c = self.config
    dtype = jnp.dtype(c.dtype)
    b, length, p, _ = x_t.shape
    if c.attention not in ATTENTIONS:
      raise ValueError(f'Unknown attention {c.attention!r}; expected one of {ATTENTIONS}.')
    # The attention over joints (spatial) and over frames (temporal).
    spatial, temporal = MIXED_ATTENTION.get(c.attention, (c.attention, c.attention))
    # cuDNN's masked kernels need even lengths: an odd window gets one masked frame here, once,
    # rather than a pad and a slice around every temporal block (6-8 ms of D3DP's 85-94 ms bf16 step
    # on an H200). Masked out of attention, the extra frame changes no real frame's output.
    extra = int(temporal == 'cudnn' and length % 2)
    if extra:
      pad = lambda a: jnp.pad(a, [(0, 0), (0, 1)] + [(0, 0)] * (a.ndim - 2))
      x_t, keypoints, visibility, mask = pad(x_t), pad(keypoints), pad(visibility), pad(mask)
      length += 1
    vis = visibility[..., None]
    tokens = jnp.concatenate([x_t, keypoints * vis, vis], -1)
    temb = sinusoidal_embedding(t, c.width)
    temb = nn.Dense(c.width)(nn.gelu(nn.Dense(c.width)(temb)))
    key_mask = mask > 0
    if c.arch == 'frame':
      x = nn.Dense(c.width, name='embed', dtype=dtype)(tokens.reshape(b, length, p * 6))
      x = x + sinusoidal_embedding(jnp.arange(length), c.width)[None] + temb[:, None, :]
      frame_mask = jnp.broadcast_to(key_mask[:, None, None, :], (b, 1, length, length))
      for i in range(c.depth):
        x = Block(c.num_heads, c.mlp_ratio, temporal, c.dtype, name=f'temporal_{i}')(x, frame_mask)
      x = x.astype(jnp.float32)  # The head and the output in float32 (mixed precision).
      out = nn.Dense(p * 3, name='head')(nn.LayerNorm()(x)).reshape(b, length, p, 3)[:, : length - extra]
      return geometry.root_relative(out, c.root if c.root >= 0 else None)
    if c.arch != 'st':
      raise ValueError(f"Unknown denoiser arch {c.arch!r}; expected 'st' or 'frame'.")
    x = nn.Dense(c.width, name='embed', dtype=dtype)(tokens)
    x = x + self.param('joint_embedding', nn.initializers.normal(0.02), (p, c.width))
    x = x + sinusoidal_embedding(jnp.arange(length), c.width)[:, None, :]
    x = x + temb[:, None, None, :]
    # Temporal attention: frame s may attend to frame s' only if s' is real. The tokens stay
    # [B, T, P, C] throughout: the spatial blocks see [B * T, P, C] and the temporal ones attend over
    # axis 1 per joint (Block(frames=True)), so no block transposes its input and output.
    temporal_mask = jnp.broadcast_to(key_mask[:, None, None, :], (b, 1, length, length))
    for i in range(c.depth):
      x = Block(c.num_heads, c.mlp_ratio, spatial, c.dtype, name=f'spatial_{i}')(x.reshape(b * length, p, c.width))
      x = x.reshape(b, length, p, c.width)
      x = Block(c.num_heads, c.mlp_ratio, temporal, c.dtype, frames=True, name=f'temporal_{i}')(x, temporal_mask)
    x = nn.LayerNorm()(x.astype(jnp.float32))
    out = nn.Dense(3, name='head')(x)[:, : length - extra]
    return geometry.root_relative(out, c.root if c.root >= 0 else None)
