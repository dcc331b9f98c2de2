"""Training: state, loss composition (eq. 19), the train step (jit / pmap / shard_map), loop, eval.

The step is written once, with ``axis_name`` collectives::

    step = functools.partial(train_step, model=model, loss_config=loss_config)
    jax.jit(step, donate_argnums=0)                                    # one device
    jax.pmap(functools.partial(step, axis_name='batch'), 'batch')      # design card
    jax.shard_map(functools.partial(step, axis_name='batch'), mesh=…)  # recommended

Data-parallel exactness: every loss term is a masked mean, so each device
divides its *local* sum by the *global* count (``psum`` of counts) and the
gradients are ``psum``-ed; the result equals the single-device step on the
same global batch. The parameters are cast to device-varying (``lax.pcast``)
before differentiation, so the gradient is the local one under both
``pmap`` and ``shard_map`` (where a replicated parameter's gradient would
otherwise come out already summed and a second reduction would be off by the
device count).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import time
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from nrsfm_jax import data as data_lib
from nrsfm_jax import geometry, losses, metrics
from nrsfm_jax.models import Student, StudentConfig

Array = jax.Array
Batch = dict[str, Array]

LOSS_TERMS = ('reproj', 'reproj_init', 'smooth', 'teacher', 'canon', 'proc')


class TrainState(train_state.TrainState):
  """``{step, params, opt_state}`` plus the static ``apply_fn`` and ``tx``."""


@flax.struct.dataclass(frozen=True)
class LossConfig:
  """Weights and robust penalties of eq. 19 (static). See ``configs/default.py``."""
  reproj_kind: str = flax.struct.field(pytree_node=False, default='pseudo_huber')
  reproj_scale: float = flax.struct.field(pytree_node=False, default=0.03)
  w_reproj_init: float = flax.struct.field(pytree_node=False, default=1.0)
  w_smooth: float = flax.struct.field(pytree_node=False, default=1.0)
  smooth_beta: float = flax.struct.field(pytree_node=False, default=1.0)
  smooth_kind: str = flax.struct.field(pytree_node=False, default='pseudo_huber')
  smooth_scale: float = flax.struct.field(pytree_node=False, default=0.03)
  w_teacher: float = flax.struct.field(pytree_node=False, default=0.0)
  teacher_kind: str = flax.struct.field(pytree_node=False, default='l2')
  teacher_scale: float = flax.struct.field(pytree_node=False, default=0.03)
  w_canon: float = flax.struct.field(pytree_node=False, default=1.0)
  canon_kind: str = flax.struct.field(pytree_node=False, default='pseudo_huber')
  canon_scale: float = flax.struct.field(pytree_node=False, default=0.03)
  n_rot: int = flax.struct.field(pytree_node=False, default=4)
  canon_on: str = flax.struct.field(pytree_node=False, default='shape')
  canon_frames: int = flax.struct.field(pytree_node=False, default=0)
  w_proc: float = flax.struct.field(pytree_node=False, default=0.0)
  z_aug_deg: float = flax.struct.field(pytree_node=False, default=0.0)
  z_equivariance_deg: float = flax.struct.field(pytree_node=False, default=0.0)


def _from_config(cls, config: ml_collections.ConfigDict, **overrides):
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(config.keys()) - names)
  if unknown:
    raise ValueError(f'Unknown {cls.__name__} config keys {unknown}; known keys: {sorted(names)}.')
  values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in config.items()}
  values.update(overrides)
  return cls(**values)


def student_config(config: ml_collections.ConfigDict, num_points: int) -> StudentConfig:
  """The model's frozen hyperparameters from ``config.model``."""
  return _from_config(StudentConfig, config.model, num_points=num_points)


def loss_config(config: ml_collections.ConfigDict) -> LossConfig:
  return _from_config(LossConfig, config.loss)


# ----------------------------------------------------------------------------
# Loss composition.
# ----------------------------------------------------------------------------


def _reduce(values: Array, weights: Array, axis_name: str | None) -> Array:
  """This device's share of a global masked mean: ``Σ_local w·v / Σ_global w``."""
  total = jnp.sum(jnp.where(weights > 0, values * weights, 0.0))
  count = jnp.sum(weights)
  if axis_name is not None:
    count = jax.lax.psum(count, axis_name)
  return total / jnp.maximum(count, 1e-12)


def sample_keys(key: Array, batch_size: int, axis_name: str | None) -> Array:
  """One key per example from its position in the *global* batch.

  Folding in the global position (``axis_index · local_batch + i``) instead of
  only the device index gives each example the same random stream however the
  batch is split, so data-parallel steps match the single-device step.
  """
  offset = jax.lax.axis_index(axis_name) * batch_size if axis_name is not None else 0
  positions = offset + jnp.arange(batch_size)
  return jax.vmap(jax.random.fold_in, (None, 0))(key, positions)


def canonical_term(apply_fn: Callable, params, shapes: Array, mask: Array, keys: Array,
                   cfg: LossConfig, axis_name: str | None = None) -> tuple[tuple[Array, Array], Any]:
  """Eq. 18 with ``n_rot`` random rotations per frame.

  The ``n_rot`` rotated copies go through Ψ as one batch (the same as a
  ``jax.vmap`` over the rotation axis for LayerNorm; with BatchNorm they share
  one set of batch statistics, as in C3DPO).

  Args:
    apply_fn: the Student's ``apply``.
    params: its variables (with ``batch_stats`` when the model uses BatchNorm).
    shapes: ``[B, T, P, 3]`` canonical shapes ``X``.
    mask: ``[B, T]`` frame mask.
    keys: ``[B]`` per-example keys.
    cfg: loss config (``n_rot``, ``canon_frames``, penalty).
    axis_name: data-parallel axis (BatchNorm statistics), or None.

  Returns:
    ``((values, weights) [n_rot, B, T', P], batch_stats)``; ``batch_stats`` is
    the updated collection with BatchNorm, else None.
  """
  num_frames = shapes.shape[1]
  if cfg.canon_frames and cfg.canon_frames < num_frames:
    frame_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    idx = jax.vmap(lambda k: jax.random.permutation(k, num_frames)[:cfg.canon_frames])(frame_keys)
    shapes = jnp.take_along_axis(shapes, idx[:, :, None, None], axis=1)
    mask = jnp.take_along_axis(mask, idx, axis=1)
  rot_keys = jax.vmap(lambda k: jax.random.fold_in(k, 2))(keys)
  rots = jax.vmap(lambda k: geometry.random_rotation(k, (cfg.n_rot, shapes.shape[1])))(rot_keys)
  rots = jnp.moveaxis(rots, 1, 0)  # [n_rot, B, T', 3, 3]
  rotated = geometry.rotate(shapes[None], rots)
  masks = jnp.broadcast_to(mask, rotated.shape[:-2])
  rec, stats = _apply(apply_fn, params, rotated, method=Student.canonicalize, axis_name=axis_name, mask=masks)
  values = losses.canonical_loss(jnp.broadcast_to(shapes, rotated.shape), rec, mask=masks[..., None],
                                 kind=cfg.canon_kind, scale=cfg.canon_scale)
  return values, stats


def _apply(apply_fn: Callable, variables, *args, axis_name: str | None = None, **kwargs):
  """Training-mode apply: ``(output, updated batch_stats)`` with BatchNorm, ``(output, None)`` without."""
  if 'batch_stats' not in variables:
    return apply_fn(variables, *args, **kwargs), None
  out, updates = apply_fn(variables, *args, train=True, axis_name=axis_name, mutable=['batch_stats'], **kwargs)
  return out, updates['batch_stats']


def inplane_angles(keys: Array, cfg: LossConfig) -> dict[str, Array]:
  """C3DPO's training-time in-plane rotations, one per example: ``{'z_aug': [B], 'z_eq': [B]}``.

  Angles are uniform in ``±z_aug_deg`` and ``±z_equivariance_deg``; a zero
  setting leaves its entry out (see :meth:`Student.__call__`).
  """
  out = {}
  for name, deg, salt in (('z_aug', cfg.z_aug_deg, 3), ('z_eq', cfg.z_equivariance_deg, 4)):
    if deg:
      limit = float(np.deg2rad(deg))
      out[name] = jax.vmap(lambda k, s=salt, a=limit: jax.random.uniform(
          jax.random.fold_in(k, s), (), minval=-a, maxval=a))(keys)
  return out


def compute_loss(params, apply_fn: Callable, batch: Batch, key: Array, cfg: LossConfig,
                 axis_name: str | None = None) -> tuple[Array, dict[str, Array]]:
  """Total loss of eq. 19 and one metric per term (this device's share under ``axis_name``).

  Args:
    params: Student variables.
    apply_fn: ``Student.apply``.
    batch: ``keypoints [B,T,P,2]``, ``visibility [B,T,P]``, ``mask [B,T]`` and
      optionally ``pseudo3d [B,T,P,3]`` (teacher, normalised camera frame).
    key: per-step key.
    cfg: loss config.
    axis_name: data-parallel axis, or None.

  Returns:
    ``(total, (metrics, batch_stats))``; metrics hold every term (unweighted)
    and ``total``; ``batch_stats`` is the BatchNorm running-average collection
    after this batch (None for a LayerNorm model).
  """
  kp, vis, mask = batch['keypoints'], batch['visibility'], batch['mask']
  keys = sample_keys(key, kp.shape[0], axis_name)
  out, stats = _apply(apply_fn, params, kp, vis, mask, axis_name=axis_name, **inplane_angles(keys, cfg))
  if stats is not None:
    params = {**params, 'batch_stats': stats}
  reduce = functools.partial(_reduce, axis_name=axis_name)
  terms = {}
  terms['reproj'] = reduce(*losses.reprojection_loss(out['points'], kp, mask=vis, kind=cfg.reproj_kind,
                                                     scale=cfg.reproj_scale))
  weights = {'reproj': 1.0}
  if cfg.w_reproj_init:
    terms['reproj_init'] = reduce(*losses.reprojection_loss(
        out['points_init'], kp, mask=vis, kind=cfg.reproj_kind, scale=cfg.reproj_scale))
    weights['reproj_init'] = cfg.w_reproj_init
  if cfg.w_smooth:
    terms['smooth'] = reduce(*losses.smoothness_loss(
        geometry.root_relative(out['points']), mask=mask, beta=cfg.smooth_beta, kind=cfg.smooth_kind,
        scale=cfg.smooth_scale))
    weights['smooth'] = cfg.w_smooth
  if cfg.w_teacher and 'pseudo3d' in batch:
    terms['teacher'] = reduce(*losses.teacher_loss(
        out['points'], batch['pseudo3d'], mask=mask[..., None], kind=cfg.teacher_kind,
        scale=cfg.teacher_scale))
    weights['teacher'] = cfg.w_teacher
  if cfg.w_canon:
    # On the final canonical shape S_t (= X_t without the refiner): Ψ must be
    # able to canonicalize what the student outputs, which keeps the TCN's ΔS
    # from trading 3D plausibility for 2D fit.
    canon, canon_stats = canonical_term(apply_fn, params, out[cfg.canon_on], mask, keys, cfg, axis_name)
    stats = canon_stats if canon_stats is not None else stats
    terms['canon'] = reduce(*canon)
    weights['canon'] = cfg.w_canon
  if cfg.w_proc:
    reference = apply_fn(params, method=Student.mean_shape)
    terms['proc'] = reduce(*losses.procrustes_loss(out['shape'], reference, mask=mask[..., None]))
    weights['proc'] = cfg.w_proc
  total = sum(weights[k] * v for k, v in terms.items())
  return total, (dict(terms, total=total), stats)


def train_step(state: TrainState, batch: Batch, key: Array, *, loss_config: LossConfig,
               axis_name: str | None = None) -> tuple[TrainState, dict[str, Array]]:
  """One optimisation step; usable under ``jax.jit``, ``jax.pmap`` and ``jax.shard_map``.

  Keys: ``fold_in(key, step)``, then per example by its global batch position
  (see :func:`sample_keys`). A step whose loss or gradients are non-finite is
  not applied (``metrics['finite'] = 0``) so the caller can stop with the
  last good state.

  Args:
    state: the (replicated) train state.
    batch: this device's share of the global batch.
    key: the loop key (same on every device).
    loss_config: static loss settings.
    axis_name: data-parallel axis name, or None on one device.

  Returns:
    ``(new_state, metrics)`` with the loss terms, ``grad_norm`` and ``finite``.
  """
  step_key = jax.random.fold_in(key, state.step)
  params = state.params
  if axis_name is not None:
    params = jax.lax.pcast(params, axis_name, to='varying')
  grad_fn = jax.value_and_grad(compute_loss, has_aux=True)
  (_, (metrics_, stats)), grads = grad_fn(params, state.apply_fn, batch, step_key, loss_config, axis_name)
  if axis_name is not None:
    grads = jax.lax.psum(grads, axis_name)
    metrics_ = jax.lax.psum(metrics_, axis_name)
    if stats is not None:  # Already equal on every device (synced statistics); make them replicated.
      stats = jax.lax.pmean(stats, axis_name)
  new_state = state.apply_gradients(grads=grads)
  if stats is not None:  # Running averages are not trained: overwrite whatever the optimiser did.
    new_state = new_state.replace(params={**new_state.params, 'batch_stats': stats})
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(metrics_['total']) & jnp.isfinite(grad_norm)
  new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
  metrics_ = dict(metrics_, grad_norm=grad_norm, finite=finite.astype(jnp.float32))
  return new_state, metrics_


# ----------------------------------------------------------------------------
# Parallel wrappers.
# ----------------------------------------------------------------------------

AXIS = 'batch'


def make_step(loss_cfg: LossConfig, mode: str = 'none', devices=None):
  """Compiles the train step for one device or data parallelism.

  Args:
    loss_cfg: static loss settings.
    mode: ``'none'`` (jit), ``'pmap'`` or ``'shard_map'``.
    devices: devices for the parallel modes (default: all local devices).

  Returns:
    ``step(state, batch, key) -> (state, metrics)`` taking and returning
    *unreplicated* host-side-style values: the wrapper replicates/shards.
    Its ``.prepare(state)`` / ``.finish(state)`` convert the state to and from
    the wrapper's device layout once, outside the loop.
  """
  if mode == 'none':
    fn = jax.jit(functools.partial(train_step, loss_config=loss_cfg), donate_argnums=0)
    return _Wrapped(fn, lambda s: s, lambda s: s, lambda b: b, 1)
  devices = list(devices or jax.local_devices())
  n = len(devices)
  step = functools.partial(train_step, loss_config=loss_cfg, axis_name=AXIS)
  if mode == 'pmap':
    fn = jax.pmap(step, axis_name=AXIS, in_axes=(0, 0, None), devices=devices, donate_argnums=0)

    def shard(batch):
      return jax.tree.map(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), batch)

    def finish(state):
      return jax.tree.map(lambda x: x[0], state)

    return _Wrapped(lambda s, b, k: _unrep_metrics(fn(s, b, k)),
                    lambda s: jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *jnp.shape(x))), s),
                    finish, shard, n)
  if mode == 'shard_map':
    mesh = Mesh(np.asarray(devices), (AXIS,))
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P(AXIS))
    fn = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P(AXIS), P()), out_specs=(P(), P())),
                 donate_argnums=0)

    def shard(batch):
      return jax.device_put(batch, sharded)

    return _Wrapped(fn, lambda s: jax.device_put(s, replicated), lambda s: s, shard, n,
                    place_key=lambda k: jax.device_put(k, replicated))
  raise ValueError(f"Unknown parallel mode {mode!r}; expected 'none', 'pmap' or 'shard_map'.")


def _unrep_metrics(out):
  state, metrics_ = out
  return state, jax.tree.map(lambda x: x[0], metrics_)


@dataclasses.dataclass
class _Wrapped:
  fn: Callable
  prepare: Callable
  finish: Callable
  shard: Callable
  num_devices: int
  place_key: Callable = lambda k: k

  def __call__(self, state, batch, key):
    return self.fn(state, self.shard(batch), self.place_key(key))


def choose_parallel(mode: str, batch_size: int) -> str:
  """``'auto'``: shard_map over all local devices when there are several and the batch divides."""
  n = jax.local_device_count()
  if mode == 'auto':
    return 'shard_map' if n > 1 and batch_size % n == 0 else 'none'
  if mode != 'none' and batch_size % n:
    raise ValueError(f'train.batch_size={batch_size} is not divisible by the {n} local devices.')
  return mode


# ----------------------------------------------------------------------------
# Optimiser.
# ----------------------------------------------------------------------------


def make_optimizer(config: ml_collections.ConfigDict, num_steps: int, steps_per_epoch: int):
  """optax transformation from ``config.optim`` (see configs/default.py)."""
  o = config.optim
  if o.schedule == 'cosine':
    lr = optax.warmup_cosine_decay_schedule(0.0, o.lr, max(o.warmup_steps, 1), max(num_steps, o.warmup_steps + 1),
                                            end_value=o.lr * 0.01)
  elif o.schedule == 'step':
    lr = optax.piecewise_constant_schedule(
        o.lr, {int(e * steps_per_epoch): 0.1 for e in o.decay_epochs})
  elif o.schedule == 'constant':
    lr = optax.constant_schedule(o.lr)
  else:
    raise ValueError(f"Unknown optim.schedule {o.schedule!r}; expected 'cosine', 'step' or 'constant'.")
  parts = []
  if o.grad_clip:
    parts.append(optax.clip_by_global_norm(o.grad_clip))
  if o.name == 'sgd':
    # PyTorch-style coupled weight decay (added to the gradient before momentum), as the paper.
    if o.weight_decay:
      parts.append(optax.add_decayed_weights(o.weight_decay))
    parts.append(optax.sgd(lr, momentum=o.momentum))
  elif o.name == 'adam':
    parts.append(optax.adamw(lr, weight_decay=o.weight_decay) if o.weight_decay else optax.adam(lr))
  else:
    raise ValueError(f"Unknown optim.name {o.name!r}; expected 'adam' or 'sgd'.")
  return optax.chain(*parts)


# ----------------------------------------------------------------------------
# Data, state and evaluation.
# ----------------------------------------------------------------------------


def _subjects(text: str) -> list[str]:
  return [s.strip() for s in str(text).split(',') if s.strip()]


def load_datasets(config: ml_collections.ConfigDict, scale: float | None = None):
  """``(train, eval)`` WindowDatasets from ``config.data``.

  Eval windows have length ``data.eval_window`` (0: same as ``data.window``);
  the convolutional refiner runs on any length, and longer eval windows give
  the causal TCN more past context.

  cmu17: the train and validation subjects (eval shares the train scale).
  nrsfm / tracks: transductive, the same sequence for both.
  """
  d = config.data
  eval_window = d.get('eval_window', 0) or d.window
  if d.name == 'cmu17':
    kwargs = dict(path=d.path or None, azimuths_deg=tuple(d.azimuths), elevation_deg=d.elevation,
                  noise_std=d.noise_std, dropout=d.dropout, seed=config.seed)
    train = data_lib.cmu17_dataset(_subjects(d.train_subjects), length=d.window, scale=scale, **kwargs)
    evaluation = data_lib.cmu17_dataset(_subjects(d.val_subjects), length=eval_window, scale=train.scale,
                                        **kwargs)
    return train, evaluation
  if d.name == 'nrsfm':
    train = data_lib.nrsfm_dataset(d.sequence, length=d.window, scale=scale)
    return train, data_lib.nrsfm_dataset(d.sequence, length=eval_window, scale=train.scale)
  if d.name == 'tracks':
    if not d.path:
      raise ValueError("config.data.name='tracks' needs config.data.path (an .npz with 'keypoints').")
    train = data_lib.tracks_dataset(d.path, length=d.window, scale=scale)
    return train, data_lib.tracks_dataset(d.path, length=eval_window, scale=train.scale)
  raise ValueError(f"Unknown config.data.name {d.name!r}; expected 'cmu17', 'nrsfm' or 'tracks'.")


def create_state(config: ml_collections.ConfigDict, num_points: int, window: int, key: Array,
                 tx: optax.GradientTransformation | None = None) -> tuple[Student, TrainState]:
  """Initialises the Student and its TrainState."""
  model = Student(student_config(config, num_points))
  dummy = (jnp.zeros((1, window, num_points, 2)), jnp.ones((1, window, num_points)), jnp.ones((1, window)))
  # Jitted: an eager init compiles every op separately (~2x slower on CPU).
  params = jax.jit(functools.partial(model.init, method=Student.init_all))(key, *dummy)
  tx = tx if tx is not None else make_optimizer(config, 1, 1)
  return model, TrainState.create(apply_fn=model.apply, params=params, tx=tx)


@functools.partial(jax.jit, static_argnames=('apply_fn', 'key'))
def _forward(params, keypoints, visibility, mask, *, apply_fn, key):
  # Module-level jit keyed on the (hashable) model: repeated evaluations reuse the compilation.
  return apply_fn(params, keypoints, visibility, mask)[key]


def predict(apply_fn: Callable, params, dataset: data_lib.WindowDataset, *, batch_size: int = 64,
            key: str = 'reconstruction') -> np.ndarray:
  """Model output ``key`` for every window: ``[N, L, P, 3]`` in normalised units.

  The default, ``'reconstruction'``, is the test-time 3D: camera-frame points
  whose visible x, y are the observed 2D when ``model.observed_xy`` (C3DPO's
  evaluation), the model's own reprojection otherwise.
  """
  fn = functools.partial(_forward, apply_fn=apply_fn, key=key)
  outs = []
  for count, b in padded_batches(dataset, batch_size):
    outs.append(np.asarray(fn(params, b['keypoints'], b['visibility'], b['mask']))[:count])
  return np.concatenate(outs, 0)


def padded_batches(dataset: data_lib.WindowDataset, batch_size: int):
  """Every window once, in order, as fixed-size batches (one compilation).

  Yields:
    ``(count, batch)``: ``dataset.take`` of ``batch_size`` indices whose first
    ``count`` are new windows; the last batch repeats its final window as padding.
  """
  n = dataset.num_windows
  for start in range(0, n, batch_size):
    idx = np.arange(start, min(start + batch_size, n))
    yield len(idx), dataset.take(np.concatenate([idx, np.repeat(idx[-1:], batch_size - len(idx))]))


def score(pred: np.ndarray, dataset: data_lib.WindowDataset, *, protocol: str = 'cmu17') -> dict[str, Any]:
  """Metrics on every frame of every sequence in ``dataset`` (each exactly once).

  Args:
    pred: ``[N, L, P, 3]`` per-window predictions in data units.
    dataset: windows with ``points3d`` (camera-frame ground truth, data units).
    protocol: ``'cmu17'`` (MPJPE, PA-MPJPE, Stress, acceleration error, in data
      units, averaged over all frames; per trial too) or ``'nrsfm'`` (e3D and
      e3D-akhter per sequence).

  Returns:
    ``{'overall': {metric: value}, 'per_sequence': {name: {metric: value}}, 'frames': n}``.
  """
  if dataset.points3d is None:
    raise ValueError('Evaluation needs ground-truth 3D; this dataset has none (2D tracks only).')
  preds = data_lib.reassemble(dataset, pred)
  truths = data_lib.reassemble(dataset, dataset.points3d)
  if protocol == 'cmu17':
    # Per-frame metrics on all windows in one compiled call (eager per-sequence
    # calls would recompile for every sequence length).
    flat = lambda x: x.reshape(-1, *x.shape[2:])
    per_frame = jax.device_get(_frame_metrics(flat(pred), flat(dataset.points3d)))
    shaped = {k: v.reshape(pred.shape[:2] + v.shape[1:]) for k, v in per_frame.items()}
    seqs = {k: data_lib.reassemble(dataset, v) for k, v in shaped.items()}
    keys = list(seqs['mpjpe'])
    # Acceleration on the concatenated flip-resolved sequences, keeping only
    # stencils inside one sequence.
    resolved = np.concatenate([seqs['resolved'][k] for k in keys])
    truth = np.concatenate([truths[k] for k in keys])
    seq_id = np.concatenate([np.full(len(truths[k]), i) for i, k in enumerate(keys)])
    accel = np.asarray(metrics.accel_error(resolved, truth, flip=False))
    accel_ok = seq_id[2:] == seq_id[:-2]
    accel_seq = seq_id[2:]
    names = ('mpjpe', 'pa_mpjpe', 'stress')
    overall = {k: float(np.mean(np.concatenate([seqs[k][q] for q in keys]))) for k in names}
    overall['accel_error'] = float(np.mean(accel[accel_ok])) if accel_ok.any() else float('nan')
    per_sequence = {}
    for name in dict.fromkeys(n for n, _ in keys):  # Trial-level: all views together.
      idx = [i for i, q in enumerate(keys) if q[0] == name]
      entry = {k: float(np.mean(np.concatenate([seqs[k][keys[i]] for i in idx]))) for k in names}
      sel = accel_ok & np.isin(accel_seq, idx)
      entry['accel_error'] = float(np.mean(accel[sel])) if sel.any() else float('nan')
      per_sequence[name] = entry
    frames = int(len(truth))
  elif protocol == 'nrsfm':
    per_sequence = {}
    for (name, view), p in preds.items():
      g = truths[(name, view)]
      per_sequence[name if view == 0 else f'{name}/{view}'] = {
          'e3d': float(metrics.e3d(p, g)), 'e3d_akhter': float(metrics.e3d_akhter(p, g))}
    overall = {k: float(np.mean([v[k] for v in per_sequence.values()])) for k in ('e3d', 'e3d_akhter')}
    frames = int(sum(len(p) for p in preds.values()))
  else:
    raise ValueError(f"Unknown protocol {protocol!r}; expected 'cmu17' or 'nrsfm'.")
  return {'overall': overall, 'per_sequence': per_sequence, 'frames': frames}


@jax.jit
def _frame_metrics(pred: Array, gt: Array) -> dict[str, Array]:
  return {'mpjpe': metrics.mpjpe(pred, gt), 'pa_mpjpe': metrics.pa_mpjpe(pred, gt),
          'stress': metrics.stress(pred, gt), 'resolved': metrics.flip_resolve(pred, gt)}


def format_metrics(result: dict[str, Any], title: str = '') -> str:
  """A console table of :func:`score`'s output."""
  keys = list(result['overall'])
  lines = [title] if title else []
  header = f"{'sequence':<14}" + ''.join(f'{k:>13}' for k in keys)
  lines.append(header)
  fmt = (lambda v: f'{v:13.4f}') if 'e3d' in keys else (lambda v: f'{v:13.2f}')
  for name, vals in result['per_sequence'].items():
    lines.append(f'{name:<14}' + ''.join(fmt(vals[k]) for k in keys))
  lines.append(f"{'overall':<14}" + ''.join(fmt(result['overall'][k]) for k in keys)
               + f"   ({result['frames']} frames)")
  return '\n'.join(lines)


class MetricWriter:
  """Appends metrics as JSON lines to ``workdir/metrics.jsonl`` (clu-style, no TF needed)."""

  def __init__(self, workdir: str, filename: str = 'metrics.jsonl'):
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, filename)

  def write(self, step: int, values: dict[str, Any]):
    with open(self.path, 'a') as f:
      f.write(json.dumps({'step': int(step), **{k: float(v) for k, v in values.items()}}) + '\n')


class NonFiniteLossError(FloatingPointError):
  """Raised when a step's loss or gradient is not finite (the last good state is saved)."""


# ----------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------


def _format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


def _check_config(workdir: str, config: ml_collections.ConfigDict, log: Callable) -> None:
  """Saves ``config.json``; on resume, reports keys that differ from the saved run."""
  path = os.path.join(workdir, 'config.json')
  text = config.to_json_best_effort(indent=2, sort_keys=True)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    new = json.loads(text)
    flat_old = _flatten(old)
    flat_new = _flatten(new)
    diff = sorted(k for k in set(flat_old) | set(flat_new) if flat_old.get(k) != flat_new.get(k))
    if diff:
      log(f'note: config differs from the saved run in {workdir} at: ' + ', '.join(diff))
  with open(path, 'w') as f:
    f.write(text)


def _flatten(tree, prefix=''):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


PSEUDO3D_KEYS = ('pseudo3d', 'scale', 'names', 'sequence_ids', 'view_ids', 'starts')


def save_pseudo3d(path: str, pseudo3d: np.ndarray, dataset: data_lib.WindowDataset) -> None:
  """Writes teacher pseudo-3D for ``dataset``'s windows with the provenance :func:`load_pseudo3d` checks.

  Args:
    path: output ``.npz``.
    pseudo3d: ``[N, L, P, 3]`` camera-frame 3D in *normalised* units (data
      units / ``dataset.scale``), in ``dataset``'s window order.
    dataset: the training windows it was computed for.
  """
  np.savez(path, pseudo3d=np.asarray(pseudo3d, np.float32), scale=np.float64(dataset.scale),
           names=np.asarray(dataset.names), sequence_ids=dataset.sequence_ids,
           view_ids=dataset.view_ids, starts=dataset.starts)


def load_pseudo3d(path: str, dataset: data_lib.WindowDataset) -> np.ndarray:
  """Cached teacher pseudo-3D for ``dataset``'s windows: ``[N, L, P, 3]`` normalised units.

  The file (see :func:`save_pseudo3d`) must have been made for exactly these
  windows (same sequences, views, starts and 2D scale); anything else would
  silently supervise frames with another frame's 3D.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f'train.pseudo3d: no file at {path}.')
  with np.load(path) as f:
    missing = [k for k in PSEUDO3D_KEYS if k not in f.files]
    if missing:
      raise KeyError(f'{path}: keys {missing} missing (found {f.files}); write it with train.save_pseudo3d.')
    arr = f['pseudo3d'].astype(np.float32)
    if not np.isclose(float(f['scale']), dataset.scale, rtol=1e-6):
      raise ValueError(f"{path}: made for 2D scale {float(f['scale']):.6g}, the training data has {dataset.scale:.6g}.")
    for key in ('sequence_ids', 'view_ids', 'starts'):
      if f[key].shape != getattr(dataset, key).shape or not np.array_equal(f[key], getattr(dataset, key)):
        raise ValueError(f'{path}: {key} differ from the training windows: made for other data or windows.')
    if tuple(str(n) for n in f['names']) != tuple(dataset.names):
      raise ValueError(f'{path}: sequence names differ from the training data.')
  expected = dataset.keypoints.shape[:-1] + (3,)
  if arr.shape != expected:
    raise ValueError(f'{path}: pseudo3d has shape {arr.shape}, the training windows need {expected}.')
  return arr


def _save(ckpt, state, meta) -> int:
  """Saves ``state`` under its own step counter (not the loop's, which may lag by one)."""
  step = int(jax.device_get(state.step))
  ckpt.save(step, state, meta)
  return step


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       log: Callable[[str], None] = print, evaluate: bool = True) -> dict[str, Any]:
  """Trains the student from ``config`` in ``workdir`` (resuming if it holds a checkpoint), then evaluates.

  Writes ``config.json``, ``metrics.jsonl`` (loss terms every ``log_every``
  steps), orbax checkpoints under ``checkpoints/``, ``eval.json`` and
  ``eval_predictions.npz`` (per-sequence camera-frame 3D in data units).

  Returns:
    :func:`score`'s result on the eval split (``{}`` for 2D-only data, or
    with ``evaluate=False``, which stops after training).
  """
  from nrsfm_jax import checkpoint as ckpt_lib

  os.makedirs(workdir, exist_ok=True)
  _check_config(workdir, config, log)
  t_start = time.time()
  train_ds, eval_ds = load_datasets(config)
  batch_size = config.train.batch_size
  spe = data_lib.steps_per_epoch(train_ds.num_windows, batch_size)
  num_steps = config.train.num_epochs * spe if config.train.num_epochs else config.train.num_steps
  log(f'data: {config.data.name}: {train_ds.num_windows} train windows of {train_ds.window_length} '
      f'frames ({len(train_ds.names)} sequences), {eval_ds.num_windows} eval windows; '
      f'2D scale {train_ds.scale:.4g}; {spe} steps/epoch, {num_steps} steps')

  tx = make_optimizer(config, num_steps, spe)
  init_key, loop_key = jax.random.split(jax.random.PRNGKey(config.seed))
  model, state = create_state(config, train_ds.num_points, train_ds.window_length, init_key, tx)
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), config.train.max_checkpoints)
  state, meta = ckpt.restore(state)
  start = int(state.step)
  new_meta = {'seed': int(config.seed), 'scale': float(train_ds.scale), 'num_points': int(train_ds.num_points)}
  if meta is not None:
    if int(meta.get('seed', new_meta['seed'])) != new_meta['seed'] or not np.isclose(
        float(meta.get('scale', new_meta['scale'])), new_meta['scale'], rtol=1e-6):
      raise ValueError(f'{ckpt.directory} holds a run with seed {meta.get("seed")} and 2D scale '
                       f'{meta.get("scale")}, but this config gives seed {new_meta["seed"]} and scale '
                       f'{new_meta["scale"]:.6g}: use another --workdir for different data.')
    log(f'resuming from the checkpoint at step {start} in {ckpt.directory}')
  meta = new_meta

  pseudo = load_pseudo3d(config.train.pseudo3d, train_ds) if config.train.pseudo3d else None
  lcfg = loss_config(config)
  if lcfg.w_teacher and pseudo is None:
    log('note: loss.w_teacher > 0 but train.pseudo3d is empty: the teacher term is off.')
  mode = choose_parallel(config.train.parallel, batch_size)
  step_fn = make_step(lcfg, mode)
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  log(f'model: {n_params:,} parameters, receptive field {model.config.receptive_field} frames; '
      f'parallel={mode} on {step_fn.num_devices} {jax.default_backend()} device(s)')

  writer = MetricWriter(workdir)
  dstate = step_fn.prepare(state)
  step = start
  t_loop, steps_timed = time.time(), 0
  try:
    while step < num_steps:
      idx = data_lib.batch_indices(train_ds.num_windows, batch_size, seed=config.seed, step=step)
      full = train_ds.take(idx)
      batch = {k: full[k] for k in ('keypoints', 'visibility', 'mask')}
      if pseudo is not None:
        batch['pseudo3d'] = pseudo[idx]
      dstate, m = step_fn(dstate, batch, loop_key)
      if not bool(m['finite']):
        _save(ckpt, step_fn.finish(dstate), meta)
        m = jax.device_get(m)
        bad = [k for k in LOSS_TERMS + ('total', 'grad_norm') if k in m and not np.isfinite(m[k])]
        raise NonFiniteLossError(
            f'non-finite {"/".join(bad) or "gradient"} at step {step}; the last good state '
            f'(step {step}) is saved in {ckpt.directory}. Metrics: {dict((k, float(v)) for k, v in m.items())}')
      step += 1
      if step == start + 1:
        log(f'first step (compilation included) took {time.time() - t_loop:.1f} s')
        t_loop = time.time()
      else:
        steps_timed += 1
      if (config.train.log_every and step % config.train.log_every == 0) or step == num_steps:
        m = jax.device_get(m)
        elapsed = time.time() - t_loop
        rate = steps_timed / max(elapsed, 1e-9)
        writer.write(step, {k: v for k, v in m.items() if k != 'finite'})
        terms = ' '.join(f'{k}={float(m[k]):.4g}' for k in LOSS_TERMS + ('total',) if k in m)
        log(f'step {step}/{num_steps} | {rate:.2f} steps/s, {rate * batch_size * train_ds.window_length:,.0f} '
            f'frames/s | ETA {_format_duration((num_steps - step) / max(rate, 1e-9))} | {terms}')
        t_loop, steps_timed = time.time(), 0
      if config.train.checkpoint_every and step % config.train.checkpoint_every == 0:
        _save(ckpt, step_fn.finish(dstate), meta)
  except KeyboardInterrupt:
    try:
      saved = _save(ckpt, step_fn.finish(dstate), meta)
      log(f'interrupted: saved step {saved}; rerun the same command to resume')
    except RuntimeError:  # Interrupted inside the step call: its input buffers were donated.
      log(f'interrupted mid-step: resume from the last checkpoint (step {ckpt.latest_step()})')
    raise
  state = step_fn.finish(dstate)
  _save(ckpt, state, meta)
  log(f'training done in {_format_duration(time.time() - t_start)}')
  if not evaluate:
    return {}
  return evaluate_and_save(config, workdir, model.apply, state.params, eval_ds, log=log)


def predict_and_score(apply_fn: Callable, params, dataset: data_lib.WindowDataset, *, batch_size: int,
                      protocol: str | None, predictions_path: str) -> tuple[dict[str, Any] | None, int]:
  """Predicts every window, writes per-sequence 3D (data units) and scores it if 3D exists.

  ``predictions_path`` gets keys ``'<sequence>/view<v>'`` → ``[F, P, 3]``.

  Returns:
    ``(score(...) or None without ground truth / protocol, number of frames)``.
  """
  pred = predict(apply_fn, params, dataset, batch_size=batch_size) * dataset.scale
  seqs = data_lib.reassemble(dataset, pred)
  np.savez(predictions_path, **{f'{name}/view{view}': v for (name, view), v in seqs.items()})
  frames = int(sum(len(v) for v in seqs.values()))
  if dataset.points3d is None or protocol is None:
    return None, frames
  return score(pred, dataset, protocol=protocol), frames


def evaluate_and_save(config: ml_collections.ConfigDict, workdir: str, apply_fn: Callable, params,
                      dataset: data_lib.WindowDataset, *, log: Callable = print,
                      tag: str = 'eval') -> dict[str, Any]:
  """Scores the model with :func:`score` (if 3D exists), prints the table, writes ``<tag>.json`` and predictions.

  For cmu17 the result also holds ``'depth0'``: :func:`depth_zero_score` on
  the same frames, printed beside the run's.
  """
  protocol = 'nrsfm' if config.data.name == 'nrsfm' else 'cmu17'
  pred_path = os.path.join(workdir, f'{tag}_predictions.npz')
  result, _ = predict_and_score(apply_fn, params, dataset, batch_size=config.train.eval_batch_size,
                                protocol=protocol, predictions_path=pred_path)
  if result is None:
    log(f'no ground-truth 3D: reconstructions written to {pred_path}')
    return {}
  if protocol == 'cmu17':
    # The depth-0 reference on the same frames, kept with the score (the
    # cross-subject ablation reads it from there instead of recomputing it).
    result['depth0'] = depth_zero_score(dataset)
  with open(os.path.join(workdir, f'{tag}.json'), 'w') as f:
    json.dump(result, f, indent=2)
  log(format_metrics(result, title=f'{tag} ({protocol}) on {len(result["per_sequence"])} sequences:'))
  if protocol == 'cmu17':
    log(format_references(result, result['depth0'], config))
  return result


# BENCHMARKS.md A: the official C3DPO code, 25 minutes on a 2-core CPU, train 002/003/005, test 006.
C3DPO_REFERENCE = {'mpjpe': 78.9, 'pa_mpjpe': 60.9, 'stress': 31.6, 'accel_error': 5.6}
DEV_SPLIT = ('002,003,005', '006')


def depth_zero_score(dataset: data_lib.WindowDataset) -> dict[str, Any]:
  """The depth-0 reference on ``dataset`` (BENCHMARKS.md A): the truth's x, y with every depth 0.

  A lifter that does not beat it has learned no usable depth.
  """
  pred = np.array(dataset.points3d, copy=True)
  pred[..., 2] = 0.0
  return score(pred, dataset, protocol='cmu17')


def format_references(result: dict[str, Any], depth0: dict[str, Any],
                      config: ml_collections.ConfigDict | None = None) -> str:
  """A console table: this run's overall cmu17 metrics beside depth 0 (and official C3DPO on the dev split)."""
  keys = ('mpjpe', 'pa_mpjpe', 'stress', 'accel_error')
  rows = [('this run', result['overall']), ('depth 0', depth0['overall'])]
  d = config.data if config is not None else None
  if d is not None and d.name == 'cmu17' and (
      ','.join(_subjects(d.train_subjects)), ','.join(_subjects(d.val_subjects))) == DEV_SPLIT:
    rows.append(('official C3DPO', C3DPO_REFERENCE))
  lines = ['references on the same frames:', f"{'':<16}" + ''.join(f'{k:>13}' for k in keys)]
  lines += [f'{name:<16}' + ''.join(f'{vals[k]:13.2f}' for k in keys) for name, vals in rows]
  verdict = 'beats' if result['overall']['mpjpe'] < depth0['overall']['mpjpe'] else 'does NOT beat'
  lines.append(f'MPJPE {verdict} depth 0.')
  return '\n'.join(lines)
