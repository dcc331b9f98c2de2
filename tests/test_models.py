"""Tests for nrsfm_jax.models: shapes, receptive field, causality, masking."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nrsfm_jax import geometry
from nrsfm_jax.models import (
    Lifter,
    Student,
    StudentConfig,
    TemporalRefiner,
    causal_shift,
    context_frames,
    receptive_field,
)
from nrsfm_jax.models.tcn import conv_padding

B, T, P = 2, 40, 17


def _inputs(seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 2)
  kp = jax.random.normal(keys[0], (B, T, P, 2))
  vis = (jax.random.uniform(keys[1], (B, T, P)) > 0.1).astype(jnp.float32)
  mask = jnp.ones((B, T))
  return kp, vis, mask


def _small(**kw):
  sizes = dict(lifter_width=32, lifter_blocks=1, canon_width=32, canon_blocks=1, tcn_channels=16, mlp_width=32)
  return StudentConfig(num_points=P, num_bases=4, **{**sizes, **kw})


@pytest.mark.parametrize(
    'kernel,dilations,expected', [(3, (1, 3, 9, 27), 81), (3, (1, 3), 9), (5, (1, 2), 13), (1, (1,), 1)]
)
def test_receptive_field(kernel, dilations, expected):
  assert receptive_field(kernel, dilations) == expected
  assert causal_shift(kernel, dilations, causal=True) == 0
  assert causal_shift(kernel, dilations, causal=False) == (expected - 1) // 2
  assert context_frames(kernel, dilations, causal=True) == (expected - 1, 0)
  for d in dilations:
    left, right = conv_padding(kernel, d, causal=True)
    assert (left, right) == ((kernel - 1) * d, 0)


def _refiner_grad_support(causal, dilations=(1, 3)):
  """Which input frames influence output frame t0 (by gradient)."""
  model = TemporalRefiner(channels=8, dilations=dilations, causal=causal, mlp_width=8)
  kp, vis, mask = _inputs()
  shapes = jax.random.normal(jax.random.PRNGKey(3), (B, T, P, 3))
  params = jax.jit(model.init)(jax.random.PRNGKey(0), shapes, kp, vis, mask)  # (jitted: one compile)
  # Make the zero-initialised output layer non-zero so gradients flow.
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.1 if 'mlp_out' in jax.tree_util.keystr(path) else x, params
  )
  t0 = 20
  grad = jax.jit(jax.grad(lambda s: jnp.sum(model.apply(params, s, kp, vis, mask)[:, t0])))(shapes)
  return np.nonzero(np.abs(np.asarray(grad)).sum(axis=(0, 2, 3)) > 0)[0], t0


def test_causal_refiner_sees_only_the_past_within_receptive_field():
  support, t0 = _refiner_grad_support(causal=True)
  rf = receptive_field(3, (1, 3))
  assert support.max() == t0
  assert support.min() == t0 - (rf - 1)


def test_centred_refiner_sees_both_sides():
  support, t0 = _refiner_grad_support(causal=False)
  rf = receptive_field(3, (1, 3))
  assert support.min() == t0 - (rf - 1) // 2
  assert support.max() == t0 + (rf - 1) // 2


def test_student_shapes_and_identity_refinement_at_init():
  model = Student(_small())
  kp, vis, mask = _inputs()
  params = model.init(jax.random.PRNGKey(0), kp, vis, mask, method=Student.init_all)
  out = model.apply(params, kp, vis, mask)
  chex.assert_shape(out['alpha'], (B, T, 4))
  chex.assert_shape(out['rotation'], (B, T, 3, 3))
  for k in ('shape_init', 'shape', 'points_init', 'points'):
    chex.assert_shape(out[k], (B, T, P, 3))
  # ΔS = 0 at initialisation: the refiner starts as the identity.
  np.testing.assert_allclose(out['shape'], out['shape_init'], atol=1e-6)
  # Camera points are the rotated shape, x/y centred on the visible points.
  centroid = geometry.weighted_centroid(out['points'][..., :2], vis)
  np.testing.assert_allclose(centroid, 0.0, atol=1e-5)
  rotated = geometry.rotate(out['shape'], out['rotation'])
  np.testing.assert_allclose(out['points'][..., 2], rotated[..., 2], atol=1e-5)
  chex.assert_shape(model.apply(params, out['shape'][:, 0], method=Student.canonicalize), (B, P, 3))
  chex.assert_shape(model.apply(params, method=Student.mean_shape), (P, 3))


def test_basis_and_head_init_std_set_the_initial_scales():
  kp, vis, mask = _inputs()
  stds = {}
  for basis, head in ((0.01, 0.01), (0.5, 0.2)):
    model = Student(_small(basis_init_std=basis, head_init_std=head))
    p = model.init(jax.random.PRNGKey(0), kp, vis, mask, method=Student.init_all)['params']
    stds[basis] = [float(np.std(x)) for x in (p['basis']['basis']['kernel'], p['lifter']['alpha']['kernel'])]
  np.testing.assert_allclose(stds[0.01], [0.01, 0.01], rtol=0.5)
  np.testing.assert_allclose(stds[0.5], [0.5, 0.2], rtol=0.5)


@pytest.mark.parametrize('norm', ['layer', 'batch'])
def test_student_bfloat16_keeps_float32_parameters_and_outputs(norm):
  kp, vis, mask = _inputs()
  model = Student(_small(norm=norm))
  params = model.init(jax.random.PRNGKey(0), kp, vis, mask, method=Student.init_all)
  half = Student(_small(norm=norm, dtype='bfloat16'))
  half_params = half.init(jax.random.PRNGKey(0), kp, vis, mask, method=Student.init_all)
  chex.assert_trees_all_equal_shapes_and_dtypes(half_params, params)  # float32 parameters
  # Perturb the zero-initialised refiner so the TCN's path counts too.
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.05 if 'mlp_out' in jax.tree_util.keystr(path) else x, params
  )
  out, out16 = model.apply(params, kp, vis, mask), half.apply(params, kp, vis, mask)
  for k in ('alpha', 'rotation', 'shape', 'points', 'reconstruction'):
    assert out16[k].dtype == jnp.float32, k
    scale = float(jnp.abs(out[k]).max()) + 1e-6
    assert float(jnp.abs(out16[k] - out[k]).max()) < 0.05 * scale, k


def test_padding_does_not_leak_into_real_frames():
  model = Student(_small())
  kp, vis, mask = _inputs()
  mask = mask.at[:, 30:].set(0.0)
  vis = vis * mask[..., None]
  params = model.init(jax.random.PRNGKey(0), kp, vis, mask, method=Student.init_all)
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.1 if 'mlp_out' in jax.tree_util.keystr(path) else x, params
  )
  out = model.apply(params, kp, vis, mask)['points']
  garbage = kp.at[:, 30:].set(50.0)
  out2 = model.apply(params, garbage, vis, mask)['points']
  np.testing.assert_allclose(out[:, :30], out2[:, :30], atol=1e-5)


def test_lifter_invisible_points_are_ignored():
  lifter = Lifter(width=32, num_blocks=1, num_bases=4)
  kp, vis, _ = _inputs()
  params = lifter.init(jax.random.PRNGKey(0), kp, vis)
  a1 = lifter.apply(params, kp, vis)
  a2 = lifter.apply(params, jnp.where(vis[..., None] > 0, kp, 99.0), vis)
  chex.assert_trees_all_close(a1, a2)


def test_refiner_off_is_the_c3dpo_baseline():
  model = Student(_small(use_refiner=False))
  kp, vis, mask = _inputs()
  params = model.init(jax.random.PRNGKey(0), kp, vis, mask, method=Student.init_all)
  assert 'refiner' not in params['params']
  out = model.apply(params, kp, vis, mask)
  np.testing.assert_array_equal(out['shape'], out['shape_init'])
  assert _small().receptive_field == 81 and _small(use_refiner=False).receptive_field == 1


def test_rotation_6d_lifter_starts_at_identity():
  model = Student(_small(rotation='6d'))
  kp, vis, mask = _inputs()
  params = model.init(jax.random.PRNGKey(0), kp, vis, mask, method=Student.init_all)
  rot = model.apply(params, kp, vis, mask)['rotation']
  angle = np.degrees(np.arccos(np.clip((np.trace(rot, axis1=-2, axis2=-1) - 1) / 2, -1, 1)))
  assert angle.max() < 15.0
  with pytest.raises(ValueError, match='rotation parametrisation'):
    Student(_small(rotation='euler')).init(jax.random.PRNGKey(0), kp, vis, mask)


@pytest.mark.parametrize('norm', ['layer', 'batch'])
def test_trunk_init_c3dpo_uses_small_kernels_and_uniform_norm_scales(norm):
  kp, vis, mask = _inputs()
  trunks = {}
  for init in ('flax', 'c3dpo'):
    model = Student(_small(lifter_width=256, canon_width=256, norm=norm, trunk_init=init))
    params = model.init(jax.random.PRNGKey(0), kp, vis, mask, method=Student.init_all)['params']
    trunks[init] = params['lifter']['MLPTrunk_0'], params['canonicalizer']['MLPTrunk_0']
  for lifter_trunk, canon_trunk in [trunks['c3dpo']]:
    for trunk in (lifter_trunk, canon_trunk):
      kernels = [x for path, x in jax.tree_util.tree_leaves_with_path(trunk) if 'kernel' in str(path[-1])]
      scales = [x for path, x in jax.tree_util.tree_leaves_with_path(trunk) if 'scale' in str(path[-1])]
      assert kernels and scales
      assert all(abs(float(jnp.std(k)) - 0.01) < 0.002 for k in kernels if k.size > 1000)
      assert all(float(jnp.min(v)) >= 0.0 and float(jnp.max(v)) < 1.0 and float(jnp.std(v)) > 0.1 for v in scales)
  # flax's default: LeCun-normal kernels (std 1/√fan_in: 1/16 for the 256-wide block input), scales 1.
  block = trunks['flax'][0]['ResidualBottleneck_0']
  assert abs(float(jnp.std(block['Dense_0']['kernel'])) - 1 / 16) < 0.01
  norms = [x for path, x in jax.tree_util.tree_leaves_with_path(block) if 'scale' in str(path[-1])]
  assert all(np.array_equal(v, np.ones_like(v)) for v in norms)
  with pytest.raises(ValueError, match='trunk init'):
    Student(_small(trunk_init='kaiming')).init(jax.random.PRNGKey(0), kp, vis, mask)


def test_procrustes_camera_is_fitted_to_the_lifters_shape():
  model = Student(_small(rotation='procrustes'))
  kp, vis, mask = _inputs()
  params = model.init(jax.random.PRNGKey(0), kp, vis, mask, method=Student.init_all)
  assert 'omega' not in params['params']['lifter'] and 'rot6d' not in params['params']['lifter']
  out = model.apply(params, kp, vis, mask)
  np.testing.assert_allclose(out['rotation'], geometry.orthographic_camera(out['shape_init'], kp, mask=vis), atol=1e-5)
  # z-augmentation changes the lifter's input, not the frame the camera is fitted in.
  z = jnp.full((kp.shape[0],), 0.3)
  aug = model.apply(params, kp, vis, mask, z_aug=z)
  np.testing.assert_allclose(aug['rotation'], geometry.orthographic_camera(aug['shape_init'], kp, mask=vis), atol=1e-5)


@pytest.mark.parametrize('arch', ['frame', 'st'])
def test_denoiser_shapes_root_and_padding(arch):
  from nrsfm_jax.models import Denoiser, DenoiserConfig

  model = Denoiser(DenoiserConfig(num_points=5, width=16, depth=1, num_heads=2, arch=arch))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 6, 5, 3)), jnp.float32)
  kp = jnp.asarray(rng.normal(size=(2, 6, 5, 2)), jnp.float32)
  vis = jnp.ones((2, 6, 5))
  mask = jnp.ones((2, 6)).at[1, 4:].set(0.0)
  t = jnp.array([3, 900])
  params = model.init(jax.random.PRNGKey(0), x, t, kp, vis, mask)
  out = model.apply(params, x, t, kp, vis, mask)
  assert out.shape == (2, 6, 5, 3)
  np.testing.assert_array_equal(out[..., 0, :], 0.0)  # Root-relative.
  # Padded frames of window 1 do not leak into its real frames (temporal attention is masked).
  x2 = x.at[1, 4:].set(50.0)
  kp2 = kp.at[1, 4:].set(-50.0)
  out2 = model.apply(params, x2, t, kp2, vis, mask)
  np.testing.assert_allclose(out2[1, :4], out[1, :4], atol=1e-5)
  # The timestep matters.
  assert not np.allclose(model.apply(params, x, t + 500, kp, vis, mask), out)
  with pytest.raises(ValueError, match='arch'):
    Denoiser(DenoiserConfig(num_points=5, width=16, arch='mlp')).init(jax.random.PRNGKey(0), x, t, kp, vis, mask)


@pytest.mark.parametrize('arch', ['frame', 'st'])
def test_denoiser_fused_attention_and_bfloat16(arch):
  """jax.nn.dot_product_attention is flax's attention (same parameters, same function, padding
  masked), and bf16 compute keeps float32 parameters and output, close to the float32 result."""
  from nrsfm_jax.models import Denoiser, DenoiserConfig

  cfg = dict(num_points=5, width=32, depth=1, num_heads=4, arch=arch)
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 7, 5, 3)), jnp.float32)
  kp = jnp.asarray(rng.normal(size=(2, 7, 5, 2)), jnp.float32)
  vis, mask, t = jnp.ones((2, 7, 5)), jnp.ones((2, 7)).at[0, 5:].set(0.0), jnp.array([10, 700])
  # Jitted: eagerly, every op of the model compiles on its own (slow on CPU).
  fused = Denoiser(DenoiserConfig(**cfg, attention='fused'))
  params = jax.jit(fused.init)(jax.random.PRNGKey(0), x, t, kp, vis, mask)
  out = jax.jit(fused.apply)(params, x, t, kp, vis, mask)
  einsum = jax.jit(Denoiser(DenoiserConfig(**cfg, attention='einsum')).apply)(params, x, t, kp, vis, mask)
  np.testing.assert_allclose(out, einsum, atol=1e-5, rtol=1e-5)
  half = Denoiser(DenoiserConfig(**cfg, dtype='bfloat16'))
  assert jax.tree.structure(
      jax.eval_shape(half.init, jax.random.PRNGKey(0), x, t, kp, vis, mask)
  ) == jax.tree.structure(params)
  out16 = jax.jit(half.apply)(params, x, t, kp, vis, mask)
  assert out16.dtype == jnp.float32 and all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  assert float(jnp.abs(out16 - out).max()) < 0.05 * float(jnp.abs(out).max())
  with pytest.raises(ValueError, match='Unknown attention'):
    Denoiser(DenoiserConfig(**cfg, attention='flash')).init(jax.random.PRNGKey(0), x, t, kp, vis, mask)
  cudnn = Denoiser(DenoiserConfig(**cfg, attention='cudnn', dtype='bfloat16'))
  if jax.default_backend() == 'gpu':  # cuDNN's flash attention: the same function in bf16.
    out_cudnn = cudnn.apply(params, x, t, kp, vis, mask)
    assert float(jnp.abs(out_cudnn - out16).max()) < 0.05 * float(jnp.abs(out).max())
  else:  # Elsewhere a clear error, not a cuDNN traceback.
    with pytest.raises(ValueError, match='needs a CUDA GPU'):
      cudnn.apply(params, x, t, kp, vis, mask)


@pytest.mark.parametrize('attention', ['fused', 'einsum'])
def test_temporal_block_on_untransposed_tokens_is_the_transposed_blocks_function(attention):
  """Block(frames=True) on [B, T, P, C] attends over the frames of each joint: the same parameters
  and function as the block on the tokens transposed to [B * P, T, C] (values and gradients), with
  padded frames masked out."""
  from nrsfm_jax.models.denoiser import Block

  rng = np.random.default_rng(2)
  b, t, p, c = 2, 7, 3, 16
  x = jnp.asarray(rng.normal(size=(b, t, p, c)), jnp.float32)
  key_mask = jnp.ones((b, t), bool).at[1, 5:].set(False)
  strided = Block(num_heads=4, mlp_ratio=2, attention=attention, frames=True)
  plain = Block(num_heads=4, mlp_ratio=2, attention=attention)
  to_seq = lambda x: x.transpose(0, 2, 1, 3).reshape(b * p, t, c)
  seq_mask = jnp.broadcast_to(key_mask[:, None, None, None, :], (b, p, 1, t, t)).reshape(b * p, 1, t, t)
  frame_mask = jnp.broadcast_to(key_mask[:, None, None, :], (b, 1, t, t))
  params = plain.init(jax.random.PRNGKey(0), to_seq(x), seq_mask)

  @jax.jit
  def both(params, x):
    f_strided = lambda params, x: strided.apply(params, x, frame_mask)
    f_plain = lambda params, x: plain.apply(params, to_seq(x), seq_mask).reshape(b, p, t, c).transpose(0, 2, 1, 3)
    loss = lambda f: lambda params, x: jnp.sum(jnp.sin(f(params, x)) * (key_mask[..., None, None]))
    return [(f(params, x), jax.grad(loss(f), argnums=(0, 1))(params, x)) for f in (f_strided, f_plain)]

  (got, g_got), (want, g_want) = both(params, x)
  np.testing.assert_allclose(got, want, atol=1e-5)
  chex.assert_trees_all_close(g_got, g_want, atol=1e-5)
  # The real frames do not see the padded ones.
  x2 = x.at[1, 5:].set(40.0)
  np.testing.assert_allclose(strided.apply(params, x2, frame_mask)[1, :5], got[1, :5], atol=1e-5)


def test_cudnn_temporal_attention_needs_a_gpu_and_names_the_choices():
  from nrsfm_jax.models import Denoiser, DenoiserConfig

  x, kp = jnp.zeros((1, 4, 5, 3)), jnp.zeros((1, 4, 5, 2))
  args = (x, jnp.array([3]), kp, jnp.ones((1, 4, 5)), jnp.ones((1, 4)))
  cfg = DenoiserConfig(
      num_points=5, width=16, depth=1, num_heads=2, arch='st', attention='cudnn_temporal', dtype='bfloat16'
  )
  model = Denoiser(cfg)
  if jax.default_backend() != 'gpu':  # (traced only: the errors come before any computation)
    with pytest.raises(ValueError, match='needs a CUDA GPU'):
      jax.eval_shape(model.init, jax.random.PRNGKey(0), *args)
  with pytest.raises(ValueError, match="'cudnn_temporal'"):
    jax.eval_shape(
        Denoiser(DenoiserConfig(num_points=5, width=16, attention='flash')).init, jax.random.PRNGKey(0), *args
    )


@pytest.mark.parametrize('t,s', [(17, 17), (7, 8), (6, 5), (4, 4)])
def test_pad_to_even_length_leaves_the_real_queries_attention_unchanged(t, s):
  """cuDNN's masked training kernels need even lengths: padding (keys masked out, queries sliced
  off) must not change the attention of the real queries, values or gradients."""
  from nrsfm_jax.models.denoiser import pad_to_even_length

  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(2, t, 2, 8)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(2, s, 2, 8)), jnp.float32) for _ in range(2))
  mask = jnp.asarray(rng.random((2, 1, t, s)) > 0.3).at[..., 0].set(True)  # no row fully masked
  bias = jnp.asarray(rng.normal(size=(1, 2, t, s)), jnp.float32)

  def padded(q, k, v, bias, mask):
    q2, k2, v2, b2, m2, length = pad_to_even_length(q, k, v, bias, mask)
    assert q2.shape[1] % 2 == 0 and k2.shape[1] % 2 == 0 and length == t
    return jax.nn.dot_product_attention(q2, k2, v2, bias=b2, mask=m2)[:, :length]

  plain = lambda q, k, v, bias, mask: jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask)

  @jax.jit  # (one compile per case: eagerly, each of the ops below would compile on its own)
  def values_and_grads(q, k, v, bias, mask):
    return [
        (f(q, k, v, bias, mask), jax.grad(lambda *a: jnp.sum(jnp.sin(f(*a, bias, mask))), argnums=(0, 1, 2))(q, k, v))
        for f in (padded, plain)
    ]

  for b, m in ((None, None), (bias, None), (None, mask), (bias, mask)):
    (got, g_pad), (want, g) = values_and_grads(q, k, v, b, m)
    np.testing.assert_allclose(got, want, atol=1e-5)
    chex.assert_trees_all_close(g_pad, g, atol=1e-5)


def test_z_augmentation_is_undone_on_the_camera():
  # Feeding 2D rotated by θ in-plane with z_aug = -θ gives the lifter exactly the
  # original input, so the outputs are the original ones rotated by R_z(θ).
  kp, vis, mask = _inputs(3)
  model = Student(_small(use_refiner=False))
  params = model.init(jax.random.PRNGKey(0), kp, vis, mask, method=Student.init_all)
  theta = jnp.asarray([0.3, -0.2])
  r = geometry.rotation_z(theta)[:, None]
  kp_rot = jnp.einsum('btpj,btij->btpi', kp, r[..., :2, :2])
  base = model.apply(params, kp, vis, mask)
  aug = model.apply(params, kp_rot, vis, mask, z_aug=-theta)
  chex.assert_trees_all_close(aug['alpha'], base['alpha'], atol=1e-5)
  chex.assert_trees_all_close(aug['points'], geometry.rotate(base['points'], r), atol=1e-5)
  zero = model.apply(params, kp, vis, mask, z_aug=jnp.zeros(B), z_eq=jnp.zeros(B))
  chex.assert_trees_all_close(zero['points'], base['points'], atol=1e-6)


def test_z_equivariance_takes_the_shape_from_the_rotated_input():
  kp, vis, mask = _inputs(4)
  model = Student(_small(use_refiner=False))
  params = model.init(jax.random.PRNGKey(1), kp, vis, mask, method=Student.init_all)
  theta = jnp.asarray([0.5, 1.0])
  kp_rot = jnp.einsum('btpj,btij->btpi', kp, geometry.rotation_z(theta)[:, None, :2, :2])
  eq = model.apply(params, kp, vis, mask, z_eq=theta)
  base, rotated = model.apply(params, kp, vis, mask), model.apply(params, kp_rot, vis, mask)
  chex.assert_trees_all_close(eq['alpha'], rotated['alpha'], atol=1e-5)
  chex.assert_trees_all_close(eq['rotation'], base['rotation'], atol=1e-6)
  assert not np.allclose(eq['alpha'], base['alpha'], atol=1e-4)


def _refined(refine_space):
  """A small student refining in ``refine_space``: (model, inputs, params with a nonzero
  refiner output), after checking that its refiner leaves the shape alone at initialisation."""
  import dataclasses

  model = Student(dataclasses.replace(_small(), refine_space=refine_space))
  kp, vis, mask = _inputs()
  params = model.init(jax.random.PRNGKey(0), kp, vis, mask, method=Student.init_all)
  out = model.apply(params, kp, vis, mask)
  np.testing.assert_allclose(out['shape'], out['shape_init'], atol=1e-6)  # Zero correction at init.
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.1 if 'mlp_out' in jax.tree_util.keystr(path) else x, params
  )
  return model, (kp, vis, mask), params


def test_camera_refinement_adds_a_camera_frame_correction():
  model, (kp, vis, mask), params = _refined('camera')
  out = model.apply(params, kp, vis, mask)
  # R_t S_t = R_t X_t + ΔP_t, with ΔP_t the refiner's output on the camera-frame R_t X_t.
  cam = geometry.rotate(out['shape_init'], out['rotation'])
  delta = model.apply(params, cam, kp, vis, mask, method=lambda m, *a: m.refiner(*a))
  assert float(jnp.max(jnp.abs(delta))) > 1e-3
  np.testing.assert_allclose(geometry.rotate(out['shape'], out['rotation']), cam + delta, atol=1e-5)


def test_coefficient_refinement_stays_in_the_shape_space():
  import dataclasses

  # Any Δα: the refined shape is B(α + Δα), a point of the basis' span.
  model, (kp, vis, mask), params = _refined('coefficients')
  out = model.apply(params, kp, vis, mask)
  assert float(jnp.max(jnp.abs(out['shape'] - out['shape_init']))) > 1e-3
  mean = model.apply(params, method=Student.mean_shape)
  bases = jax.vmap(lambda a: model.apply(params, a, method=lambda m, a: m.basis(a)))(jnp.eye(4)) - mean
  flat = (out['shape'] - mean).reshape(-1, P * 3)
  coeffs, *_ = np.linalg.lstsq(np.asarray(bases.reshape(4, -1)).T, np.asarray(flat).T, rcond=None)
  np.testing.assert_allclose(coeffs.T @ np.asarray(bases.reshape(4, -1)), flat, atol=1e-4)
  with pytest.raises(ValueError, match='refine_space'):
    Student(dataclasses.replace(_small(), refine_space='nope')).init(
        jax.random.PRNGKey(0), kp, vis, mask, method=Student.init_all
    )


def test_frame_scale_makes_the_student_scale_equivariant():
  from nrsfm_jax.models.student import frame_scale

  kp, vis, mask = (x[:, :12] for x in _inputs(5))
  # Padding and all-hidden frames get scale 1; a frame's scale is its visible points' RMS radius.
  vis = vis.at[0, 3].set(0.0)
  s = frame_scale(kp, vis)
  assert float(s[0, 3]) == 1.0
  centred = kp[1, 7] - geometry.weighted_centroid(kp[1, 7], vis[1, 7])
  expected = np.sqrt(np.sum(vis[1, 7] * np.sum(np.square(centred), -1)) / np.sum(vis[1, 7]))
  np.testing.assert_allclose(s[1, 7], expected, rtol=1e-5)
  model = Student(_small(frame_scale=True))
  params = model.init(jax.random.PRNGKey(0), kp, vis, mask, method=Student.init_all)
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.05 if 'mlp_out' in jax.tree_util.keystr(path) else x, params
  )
  # Each frame's 2D scaled by its own factor: the canonical shapes do not move and every
  # camera-frame output scales with its frame (the lifter sees the same normalised input).
  c = jnp.linspace(0.5, 3.0, 12)[None, :, None, None]
  base, scaled = model.apply(params, kp, vis, mask), model.apply(params, c * kp, vis, mask)
  chex.assert_trees_all_close(scaled['shape'], base['shape'], atol=1e-4)
  visible = (jnp.ones((B, 12)).at[0, 3].set(0.0) > 0)[..., None, None]  # (0, 3) has no scale of its own
  for k in ('points', 'reconstruction'):
    np.testing.assert_allclose(
        jnp.where(visible, scaled[k], 0.0), jnp.where(visible, c * base[k], 0.0), rtol=1e-4, atol=1e-4
    )
  np.testing.assert_allclose(base['scale'], s, rtol=1e-6)
  # Without it the scale output is 1 and the model is not scale-equivariant.
  plain = Student(_small()).apply
  out = plain(params, kp, vis, mask)
  np.testing.assert_array_equal(out['scale'], np.ones((B, 12)))
  assert not np.allclose(plain(params, c * kp, vis, mask)['shape'], out['shape'], atol=1e-3)
