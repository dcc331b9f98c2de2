"""The student network: per-frame lifter + temporal refiner + canonicalizer Ψ."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from nrsfm_jax import geometry
from nrsfm_jax.models.lifter import Canonicalizer, Lifter, ShapeBasis
from nrsfm_jax.models.tcn import TemporalRefiner, receptive_field

Array = jax.Array

# StudentConfig.refine_space: where the TCN's correction is added (see StudentConfig).
REFINE_SPACES = ('points', 'coefficients', 'camera')


@flax.struct.dataclass(frozen=True)
class StudentConfig:
  """Hyperparameters of :class:`Student` (static; built from the experiment config).

  Attributes:
    num_points: P, keypoints per frame.
    num_bases: K, shape-basis size (C3DPO: 10).
    rotation: camera parametrisation, ``'so3'`` (C3DPO's rotation vector),
      ``'6d'`` (continuous 6D, Zhou et al.) or ``'procrustes'``: no camera head; each
      frame's rotation is the one that best projects the lifter's shape ``X_t`` onto the
      frame's visible 2D (:func:`geometry.orthographic_camera`, differentiable), so the lifter
      predicts only the shape and never has to regress a rotation. ``'so3'`` is the default:
      on the cmu17 cross-subject lifter row the solved cameras scored 105.6 mm against 99.8
      (README, "Cameras solved, not regressed").
    lifter_width / lifter_blocks: lifter MLP trunk (C3DPO Human3.6M: 1024 / 6).
    canon_width / canon_blocks: Ψ's trunk.
    use_refiner: run the TCN (eqs. 8–11); off gives the C3DPO baseline.
    tcn_channels, tcn_kernel, tcn_dilations, tcn_causal, tcn_use_2d, mlp_width:
      the refiner (paper: 4 layers of 128 channels, causal). ``tcn_use_2d``
      also feeds it the 2D and visibility (the paper's eq. 8 reads only
      ``X_{1:T}``); on by default: without it the cross-subject TCN row
      ties + smoothness (109.1 mm against 109.2) but the teacher row on 006
      loses 3.6 mm (55.6 against 52.0; README, "Anchored stage 2").
    refine_space: where the refiner acts: ``'points'`` (the paper's eq. 10,
      a free per-point ``ΔS``), ``'coefficients'`` (a ``Δα`` added to the
      lifter's shape coefficients, ``S_t = B(α_t + Δα_t)``, so the refined
      shape stays in the learned low-rank shape space) or ``'camera'`` (the TCN
      reads the per-frame 3D in the camera frame, ``R_t X_t``, and adds a
      camera-frame ``ΔP_t``: ``R_t S_t = R_t X_t + ΔP_t``, i.e.
      ``S_t = X_t + R_tᵀ ΔP_t``; the depth that is scored, with the per-frame
      camera's jitter in it, is then what the TCN sees and edits).
    basis_init_std / head_init_std: the std of the shape basis' initial columns, and of the
      lifter's and Ψ's output heads (coefficients, rotation) at initialisation (C3DPO: 0.01 both).
    norm: the lifter's and Ψ's normalisation, ``'layer'`` or C3DPO's
      ``'batch'`` (batch statistics in training, synced over the data-parallel
      axis; running averages in the ``batch_stats`` collection at test time).
      Padded frames are left out of the statistics; flax averages the devices'
      statistics with equal weight, so a data-parallel step equals the
      single-device one when every device holds as many real frames (always
      so for frame batches, ``data.window = 1``).
    trunk_init: the lifter's and Ψ's trunk initialisation, ``'flax'`` (LeCun-normal kernels,
      norm scales 1) or ``'c3dpo'`` (the official C3DPO code's: kernels normal with std 0.01,
      norm scales uniform in [0, 1); :class:`MLPTrunk`). C3DPO's own recipe
      (``configs/c3dpo.py:lifter``) needs ``'c3dpo'`` to follow the official learning curve
      (006: 77.5 mm against 108.0 with flax's). ``'flax'`` stays the default: on the cmu17
      cross-subject lifter row ``'c3dpo'`` kept runs at 98.4 mm against 99.8 but PA-MPJPE 82.7
      against 77.2, and 111.6 against 106.1 over every seed (README, "Cameras solved, not
      regressed; C3DPO's init on the default lifter").
    dtype: compute dtype of the lifter's and Ψ's trunks and of the TCN, ``'float32'`` or
      ``'bfloat16'`` (mixed precision: parameters, optimiser state, the heads, the geometry
      and the losses stay float32; bf16 keeps float32's exponent range, so no loss scaling).
    frame_scale: C3DPO's Human3.6M input normalisation (Kudo et al.'s, which C3DPO's data
      files use): each frame's 2D is divided by its own scale ``s_t`` (the RMS distance of its
      visible points to their centroid, :func:`frame_scale`) before the lifter and the
      refiner see it, the canonical shapes ``shape_init`` / ``shape`` (and so Ψ, eq. 18 and
      the bones term on them) live in those per-frame units, and the camera-frame outputs are
      ``s_t R_t S_t``, in the data's units again. The scale is read from the 2D alone; the
      network then never has to model how large a body looks, only its shape. False: one
      dataset-wide scale (the data's own normalisation) for every frame.
    observed_xy: the ``reconstruction`` output keeps the observed x, y of every
      visible point and takes only the depth from the model (C3DPO's
      ``replace_keypoints_with_input``; orthographic 2D *is* the camera-frame
      x, y up to translation). False: the model's own reprojection.
  """

  num_points: int = flax.struct.field(pytree_node=False, default=17)
  num_bases: int = flax.struct.field(pytree_node=False, default=10)
  rotation: str = flax.struct.field(pytree_node=False, default='so3')
  lifter_width: int = flax.struct.field(pytree_node=False, default=256)
  lifter_blocks: int = flax.struct.field(pytree_node=False, default=3)
  canon_width: int = flax.struct.field(pytree_node=False, default=256)
  canon_blocks: int = flax.struct.field(pytree_node=False, default=3)
  use_refiner: bool = flax.struct.field(pytree_node=False, default=True)
  refine_space: str = flax.struct.field(pytree_node=False, default='points')
  tcn_channels: int = flax.struct.field(pytree_node=False, default=128)
  tcn_kernel: int = flax.struct.field(pytree_node=False, default=3)
  tcn_dilations: tuple[int, ...] = flax.struct.field(pytree_node=False, default=(1, 3, 9, 27))
  tcn_causal: bool = flax.struct.field(pytree_node=False, default=True)
  tcn_use_2d: bool = flax.struct.field(pytree_node=False, default=True)
  mlp_width: int = flax.struct.field(pytree_node=False, default=256)
  norm: str = flax.struct.field(pytree_node=False, default='layer')
  basis_init_std: float = flax.struct.field(pytree_node=False, default=0.01)
  head_init_std: float = flax.struct.field(pytree_node=False, default=0.01)
  frame_scale: bool = flax.struct.field(pytree_node=False, default=False)
  observed_xy: bool = flax.struct.field(pytree_node=False, default=True)
  dtype: str = flax.struct.field(pytree_node=False, default='float32')
  trunk_init: str = flax.struct.field(pytree_node=False, default='flax')

  @property
  def receptive_field(self) -> int:
    return receptive_field(self.tcn_kernel, self.tcn_dilations) if self.use_refiner else 1


def center_on_visible(points: Array, visibility: Array) -> Array:
  """Translates x, y so the visible points' image centroid is 0 (orthographic camera translation).

  The 2D input is centred the same way, so this is the closed-form camera
  translation. ``[..., P, 3], [..., P] -> [..., P, 3]``.
  """
  centroid_xy = geometry.weighted_centroid(points[..., :2], visibility)
  return points - jnp.concatenate([centroid_xy, jnp.zeros_like(centroid_xy[..., :1])], -1)


def frame_scale(keypoints: Array, visibility: Array, eps: float = 1e-3) -> Array:
  """Each frame's 2D scale: the RMS distance of its visible points to their centroid.

  ``[..., P, 2], [..., P] -> [...]``; frames with fewer than two distinct visible points
  (padding, a lone point) get 1, so dividing by it is always safe. ``eps`` is the smallest
  scale kept (in the keypoints' units).
  """
  centred = keypoints - geometry.weighted_centroid(keypoints, visibility)
  w = (visibility > 0).astype(keypoints.dtype)
  count = jnp.sum(w, -1)
  rms = jnp.sqrt(jnp.sum(w * jnp.sum(centred**2, -1), -1) / jnp.maximum(count, 1.0))
  return jnp.where((count >= 2) & (rms > eps), rms, 1.0)


def _rotate_2d(keypoints: Array, rotation: Array) -> Array:
  """Rotates 2D points by the in-plane block of ``rotation``: ``[..., P, 2] x [..., 3, 3] -> [..., P, 2]``."""
  return jnp.einsum('...pj,...ij->...pi', keypoints, rotation[..., :2, :2])


class Student(nn.Module):
  """Lifter → shape basis → (TCN refiner) → camera-frame 3D, plus Ψ for eq. 18."""

  config: StudentConfig

  def setup(self):
    c = self.config
    # What the lifter's and Ψ's trunks and heads share.
    shared: dict[str, Any] = dict(init_std=c.head_init_std, norm=c.norm, dtype=c.dtype, trunk_init=c.trunk_init)
    self.lifter = Lifter(c.lifter_width, c.lifter_blocks, c.num_bases, rotation=c.rotation, **shared)
    self.basis = ShapeBasis(c.num_points, c.num_bases, init_std=c.basis_init_std)
    self.canonicalizer = Canonicalizer(c.canon_width, c.canon_blocks, c.num_bases, **shared)
    if c.refine_space not in REFINE_SPACES:
      raise ValueError(f'model.refine_space={c.refine_space!r}; expected one of {REFINE_SPACES}.')
    if c.use_refiner:
      self.refiner = TemporalRefiner(
          c.tcn_channels,
          c.tcn_kernel,
          tuple(c.tcn_dilations),
          c.tcn_causal,
          c.mlp_width,
          c.tcn_use_2d,
          out_features=c.num_bases if c.refine_space == 'coefficients' else None,
          dtype=c.dtype,
      )

  def __call__(
      self,
      keypoints: Array,
      visibility: Array,
      mask: Array,
      *,
      z_aug: Array | None = None,
      z_eq: Array | None = None,
      train: bool = False,
      axis_name: str | None = None,
  ) -> dict[str, Array]:
    """Reconstructs a batch of windows.

    Args:
      keypoints: ``[B, T, P, 2]`` normalised, centred 2D.
      visibility: ``[B, T, P]`` (0 on missing points and padded frames).
      mask: ``[B, T]`` 1 on real frames.
      z_aug: optional ``[B]`` in-plane angles (radians; training only, C3DPO's
        z-augmentation): the lifter sees the 2D rotated by ``R_z(z_aug)`` and
        the predicted camera is rotated back, ``R_t ← R_z(z_aug)ᵀ R_t``, so the
        outputs stay in the input's camera frame.
      z_eq: optional ``[B]`` in-plane angles (C3DPO's z-equivariance): the shape
        coefficients come from a second lifter pass on the input rotated
        further by ``R_z(z_eq)``, the camera from the first pass. The shape
        must then be the same for every in-plane rotation of the 2D, which an
        in-plane rotation of the camera cannot fake.
      train: BatchNorm uses batch statistics and updates its running averages
        (apply with ``mutable=['batch_stats']``); no effect with LayerNorm.
      axis_name: the data-parallel axis BatchNorm syncs its statistics over.

    Returns:
      A dict with ``alpha [B,T,K]``, ``rotation [B,T,3,3]``, ``shape_init [B,T,P,3]``
      (lifter's canonical ``X_t``), ``shape [B,T,P,3]`` (refined canonical
      ``S_t``; both in per-frame units with ``frame_scale``), ``scale [B,T]`` (the
      per-frame 2D scale ``s_t``; 1 without ``frame_scale``), ``points_init`` and
      ``points [B,T,P,3]`` (camera frame ``s_t R_t X_t`` and ``s_t R_t S_t``, x/y centred on
      the visible points) and
      ``reconstruction [B,T,P,3]``, the test-time output: ``points`` with the
      observed 2D as x, y of the visible points (see ``observed_xy``).
    """
    c = self.config
    scale = frame_scale(keypoints, visibility) if c.frame_scale else jnp.ones(keypoints.shape[:-2], keypoints.dtype)
    keypoints_in = keypoints / scale[..., None, None]  # the lifter's and refiner's units
    lifter_in = keypoints_in
    if z_aug is not None:
      r_aug = geometry.rotation_z(z_aug)[:, None]  # [B, 1, 3, 3]
      lifter_in = _rotate_2d(keypoints_in, r_aug)
    alpha, omega = self.lifter(lifter_in, visibility, train=train, axis_name=axis_name, mask=mask)
    if z_eq is not None:
      alpha, _ = self.lifter(
          _rotate_2d(lifter_in, geometry.rotation_z(z_eq)[:, None]),
          visibility,
          train=train,
          axis_name=axis_name,
          mask=mask,
      )
    shape_init = self.basis(alpha)
    if c.rotation == 'procrustes':  # Fitted to the input's own 2D: no z_aug rotation to undo.
      rotation = geometry.orthographic_camera(shape_init, keypoints_in, mask=visibility)
    else:
      rotation = geometry.so3_exp(omega) if c.rotation == 'so3' else geometry.rotation_6d(omega)
      if z_aug is not None:
        rotation = jnp.swapaxes(r_aug, -1, -2) @ rotation
    if self.config.use_refiner and self.config.refine_space == 'coefficients':
      shape = self.basis(alpha + self.refiner(shape_init, keypoints_in, visibility, mask))
    elif self.config.use_refiner and self.config.refine_space == 'camera':
      delta = self.refiner(geometry.rotate(shape_init, rotation), keypoints_in, visibility, mask)
      shape = shape_init + geometry.rotate(delta, jnp.swapaxes(rotation, -1, -2))
    elif self.config.use_refiner:
      shape = shape_init + self.refiner(shape_init, keypoints_in, visibility, mask)
    else:
      shape = shape_init
    to_data = scale[..., None, None]  # per-frame units -> the data's (1 without frame_scale)
    points_init = center_on_visible(to_data * geometry.rotate(shape_init, rotation), visibility)
    points = center_on_visible(to_data * geometry.rotate(shape, rotation), visibility)
    if self.config.observed_xy:
      xy = jnp.where(visibility[..., None] > 0, keypoints, points[..., :2])
      reconstruction = jnp.concatenate([xy, points[..., 2:]], -1)
    else:
      reconstruction = points
    return dict(
        alpha=alpha,
        rotation=rotation,
        shape_init=shape_init,
        shape=shape,
        scale=scale,
        points_init=points_init,
        points=points,
        reconstruction=reconstruction,
    )

  def canonicalize(
      self, rotated_shape: Array, *, train: bool = False, axis_name: str | None = None, mask: Array | None = None
  ) -> Array:
    """Ψ then the shared basis: ``[..., P, 3] -> [..., P, 3]`` (eq. 18's ``Ψ(R X)``).

    ``train``, ``axis_name``, ``mask`` (``[...]``): as in :meth:`__call__`, for BatchNorm.
    """
    return self.basis(self.canonicalizer(rotated_shape, train=train, axis_name=axis_name, mask=mask))

  def init_all(self, keypoints: Array, visibility: Array, mask: Array) -> dict[str, Array]:
    """Runs every submodule once (use as ``init``'s method so Ψ gets parameters too)."""
    out = self(keypoints, visibility, mask)
    self.canonicalize(out['shape_init'])
    return out

  def mean_shape(self) -> Array:
    """The basis' mean shape (``α = 0``), the Procrustes reference ``S̄``: ``[P, 3]``."""
    return self.basis(jnp.zeros((self.config.num_bases,)))
