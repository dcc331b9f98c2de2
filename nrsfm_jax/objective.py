"""The student's objective: loss composition (eq. 19) and the train step (jit / pmap / shard_map).

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
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from nrsfm_jax import geometry, losses
from nrsfm_jax.models import Student

Array = jax.Array
Batch = dict[str, Array]


class TrainState(train_state.TrainState):
  """``{step, params, opt_state}`` plus the static ``apply_fn`` and ``tx``."""


# ----------------------------------------------------------------------------
# Static loss settings.
# ----------------------------------------------------------------------------


@flax.struct.dataclass(frozen=True)
class TermConfig:
  """One loss term's settings: ``config.loss.terms.<name> = {weight, kind, scale, ...}``.

  ``kind`` and ``scale`` pick the robust penalty of ``losses.penalty``; any
  other key is a term-specific option (``smooth``: ``beta``; ``canon``:
  ``n_rot``, ``on``, ``frames``), read with :meth:`get`.
  """

  name: str = flax.struct.field(pytree_node=False)
  weight: float = flax.struct.field(pytree_node=False, default=0.0)
  kind: str = flax.struct.field(pytree_node=False, default='pseudo_huber')
  scale: float = flax.struct.field(pytree_node=False, default=0.03)
  options: tuple[tuple[str, Any], ...] = flax.struct.field(pytree_node=False, default=())

  def get(self, key: str, default: Any = None) -> Any:
    return dict(self.options).get(key, default)


@flax.struct.dataclass(frozen=True)
class LossConfig:
  """Eq. 19's terms (static, hashable) and C3DPO's input augmentations. See ``configs/default.py``.

  Attributes:
    terms: one :class:`TermConfig` per configured term.
    z_aug_deg: z-augmentation, a random in-plane input rotation up to this
      many degrees (0: off).
    z_equivariance_deg: z-equivariance: the shape also comes from a further
      rotated input (0: off).
  """

  terms: tuple[TermConfig, ...] = flax.struct.field(pytree_node=False, default=())
  z_aug_deg: float = flax.struct.field(pytree_node=False, default=0.0)
  z_equivariance_deg: float = flax.struct.field(pytree_node=False, default=0.0)

  def term(self, name: str) -> TermConfig | None:
    return next((t for t in self.terms if t.name == name), None)

  def weight(self, name: str) -> float:
    t = self.term(name)
    return t.weight if t is not None else 0.0

  def replace_term(self, name: str, **changes) -> LossConfig:
    """A copy with term ``name``'s fields (``weight``, ``kind``, ``scale``) or options changed."""
    fields = {'weight', 'kind', 'scale'}
    t = self.term(name) or TermConfig(name=name)
    options = dict(t.options, **{k: v for k, v in changes.items() if k not in fields})
    t = t.replace(**{k: v for k, v in changes.items() if k in fields}, options=tuple(sorted(options.items())))
    others = tuple(u for u in self.terms if u.name != name)
    return self.replace(terms=others + (t,))


def _frozen(value: Any) -> Any:
  """Lists (as a json-restored config holds them) to hashable tuples, recursively."""
  return tuple(_frozen(v) for v in value) if isinstance(value, (list, tuple)) else value


def loss_config(config: ml_collections.ConfigDict) -> LossConfig:
  """The static loss settings from ``config.loss`` (terms checked against the registry)."""
  section = config.loss
  unknown = sorted(set(section.keys()) - {'terms', 'z_aug_deg', 'z_equivariance_deg'})
  if unknown:
    raise ValueError(
        f'Unknown config.loss keys {unknown}; known: terms, z_aug_deg, z_equivariance_deg '
        f'(term settings live in config.loss.terms.<name>).'
    )
  terms = []
  for name, spec in section.get('terms', {}).items():
    if name not in TERMS:
      raise ValueError(f'Unknown loss term config.loss.terms.{name}; registered terms: {LOSS_TERMS}.')
    spec = dict(spec)
    head = {k: spec.pop(k) for k in ('weight', 'kind', 'scale') if k in spec}
    options = tuple(sorted((k, _frozen(v)) for k, v in spec.items()))
    terms.append(TermConfig(name=name, options=options, **head))
  return LossConfig(
      terms=tuple(terms),
      z_aug_deg=section.get('z_aug_deg', 0.0),
      z_equivariance_deg=section.get('z_equivariance_deg', 0.0),
  )


# ----------------------------------------------------------------------------
# The loss-term registry.
# ----------------------------------------------------------------------------


class Term(NamedTuple):
  """A term's per-element ``values`` and ``weights`` (a masked mean's parts), and BatchNorm statistics if it ran Ψ."""

  values: Array
  weights: Array
  batch_stats: Any = None


@dataclasses.dataclass(frozen=True)
class TermContext:
  """What a term may use besides the model outputs and the batch.

  Attributes:
    apply_fn: ``Student.apply``.
    params: the variables (with the forward pass's ``batch_stats`` under BatchNorm).
    keys: ``[B]`` per-example keys (:func:`sample_keys`).
    axis_name: the data-parallel axis, or None.
  """

  apply_fn: Callable
  params: Any
  keys: Array
  axis_name: str | None


TermFn = Callable[[dict[str, Array], Batch, TermContext, TermConfig], Term]
# name -> (fn(outputs, batch, context, term) -> Term, batch keys it needs); registration order is
# the order of the terms in the total (which keeps the sum's rounding fixed).
TERMS: dict[str, tuple[TermFn, tuple[str, ...]]] = {}
LOSS_TERMS: tuple[str, ...] = ()


def register_term(name: str, needs: tuple[str, ...] = ()):
  """Decorator: registers ``fn(outputs, batch, ctx, term) -> Term`` as loss term ``name``.

  The term runs when ``config.loss.terms.<name>.weight`` is non-zero and the
  batch holds every key in ``needs``.
  """

  def wrap(fn: TermFn) -> TermFn:
    global LOSS_TERMS
    TERMS[name] = (fn, tuple(needs))
    LOSS_TERMS = tuple(TERMS)
    return fn

  return wrap


@register_term('reproj')
def reprojection_term(out, batch, ctx, term):
  """Eq. 15 on the final points ``R_t S_t``."""
  del ctx
  return Term(
      *losses.reprojection_loss(
          out['points'], batch['keypoints'], mask=batch['visibility'], kind=term.kind, scale=term.scale
      )
  )


@register_term('reproj_init')
def initial_reprojection_term(out, batch, ctx, term):
  """Eq. 15 on the lifter's own output ``R_t X_t`` (before the refiner)."""
  del ctx
  return Term(
      *losses.reprojection_loss(
          out['points_init'], batch['keypoints'], mask=batch['visibility'], kind=term.kind, scale=term.scale
      )
  )


@register_term('smooth')
def smoothness_term(out, batch, ctx, term):
  """Eq. 16: ``alpha``-weighted first and ``beta``-weighted second differences of the root-relative ``out[term.on]``.

  ``on``: ``'points'`` (the camera-frame ``R_t S_t``, the paper's) or
  ``'shape'`` (the canonical ``S_t``: the pose's changes only, not the camera's).
  ``components``: ``'xyz'`` (the paper's) or ``'depth'`` (the camera-frame depth only; needs
  ``on='points'``).
  """
  del ctx
  on, components = term.get('on', 'points'), term.get('components', 'xyz')
  if components == 'depth' and on != 'points':
    raise ValueError(
        f"config.loss.terms.smooth: components='depth' smooths the camera-frame depth and needs "
        f"on='points'; got on={on!r}."
    )
  return Term(
      *losses.smoothness_loss(
          geometry.root_relative(out[on]),
          mask=batch['mask'],
          alpha=term.get('alpha', 1.0),
          beta=term.get('beta', 1.0),
          kind=term.kind,
          scale=term.scale,
          components=components,
      )
  )


# What the teacher term may hold to its targets (TermConfig option `on`).
TEACHER_ON = ('points', 'points_init')


@register_term('teacher', needs=('pseudo3d',))
def teacher_term(out, batch, ctx, term):
  """λ_t: distance to the teacher's pseudo-3D ``batch['pseudo3d']``.

  With ``confidence_scale > 0`` the trainer adds ``batch['pseudo3d_weight']``
  (``[B, T, P]``, :func:`losses.spread_confidence` of the hypotheses' spread)
  and each joint counts by how much the teacher's hypotheses agree on it.

  ``on``: the camera-frame output(s) held to the targets: ``'points'`` (the refined
  ``R_t S_t``, the paper's), ``'points_init'`` (the lifter's own ``R_t X_t``, before the
  TCN: the targets then hold the per-frame lifter and leave the refiner to the other
  terms), or ``'points+points_init'`` (the mean of both).
  """
  del ctx
  on = term.get('on', 'points')
  keys = tuple(on.split('+'))
  if any(k not in TEACHER_ON for k in keys):
    raise ValueError(
        f"config.loss.terms.teacher.on={on!r}: expected {' or '.join(map(repr, TEACHER_ON))}, or both joined by '+'."
    )
  mask = batch['mask'][..., None]
  if 'pseudo3d_weight' in batch:
    mask = mask * batch['pseudo3d_weight']
  parts = [losses.teacher_loss(out[k], batch['pseudo3d'], mask=mask, kind=term.kind, scale=term.scale) for k in keys]
  return Term(sum(v for v, _ in parts) / len(parts), parts[0][1])


@register_term('bones')
def bone_term(out, batch, ctx, term):
  """Skeleton rigidity on ``out[term.on]`` (:func:`losses.bone_loss`; no 3D needed).

  Options: ``bones`` ((parent, child) joint indices), ``pairs`` (bone index pairs
  of equal length, e.g. left and right limbs), ``temporal`` (weight of each
  bone's constancy) and ``over`` (``'window'``: constant over each window, needs
  windows of more than one frame; ``'batch'``: over every frame of the batch),
  ``lengths`` (weight of each bone's distance to its target length, read from
  ``batch['bone_lengths']`` ``[B, E]``, which ``train`` fills with
  ``data.sequence_bone_lengths`` at quantile ``length_quantile``; 0: off).
  """
  points = out[term.get('on', 'shape')]
  absolute = float(term.get('lengths', 0.0))
  if absolute and 'bone_lengths' not in batch:
    raise ValueError(
        "config.loss.terms.bones.lengths > 0 needs batch['bone_lengths'] [B, E] (data.sequence_bone_lengths "
        'of the training windows; train.train fills it).'
    )
  bones, pairs = term.get('bones', ()), term.get('pairs', ())
  num_points = points.shape[-2]
  if not bones or max(max(b) for b in bones) >= num_points:
    raise ValueError(
        f'config.loss.terms.bones.bones must list (parent, child) joint indices below {num_points} '
        f"(the data's point count); got {bones!r}."
    )
  if pairs and max(max(p) for p in pairs) >= len(bones):
    raise ValueError(f'config.loss.terms.bones.pairs must index config.loss.terms.bones.bones; got {pairs!r}.')
  return Term(
      *losses.bone_loss(
          points,
          bones,
          pairs=pairs,
          temporal=term.get('temporal', 1.0),
          lengths=batch['bone_lengths'] if absolute else None,
          absolute=absolute,
          over=term.get('over', 'window'),
          mask=batch['mask'],
          kind=term.kind,
          scale=term.scale,
          axis_name=getattr(ctx, 'axis_name', None),
      )
  )


@register_term('hinges')
def hinge_term(out, batch, ctx, term):
  """Knees and elbows bend one way, on ``out[term.on]`` (:func:`losses.hinge_loss`; no 3D needed).

  Options: ``hinges`` ((a, b, c, l, r) joint indices: limb a → b → c, axis l → r), ``margin``
  and ``flip_invariant`` (each frame pays for its better global depth sign only).
  """
  del ctx
  points = out[term.get('on', 'shape')]
  hinges, num_points = term.get('hinges', ()), points.shape[-2]
  if not hinges or any(len(h) != 5 for h in hinges) or max(max(h) for h in hinges) >= num_points:
    raise ValueError(
        'config.loss.terms.hinges.hinges must list (a, b, c, l, r) joint indices below '
        f"{num_points} (the data's point count); got {hinges!r}."
    )
  return Term(
      *losses.hinge_loss(
          points,
          hinges,
          margin=term.get('margin', 0.05),
          mask=batch['mask'],
          flip_invariant=bool(term.get('flip_invariant', False)),
      )
  )


@register_term('canon')
def canonical_loss_term(out, batch, ctx, term):
  """Eq. 18 on ``out[term.on]``, the final canonical shape S_t by default.

  Ψ must be able to canonicalize what the student outputs, which keeps the
  TCN's ΔS from trading 3D plausibility for 2D fit.
  """
  values, stats = canonical_term(
      ctx.apply_fn, ctx.params, out[term.get('on', 'shape')], batch['mask'], ctx.keys, term, ctx.axis_name
  )
  return Term(*values, batch_stats=stats)


@register_term('proc')
def procrustes_term(out, batch, ctx, term):
  """Eq. 17: each shape against the mean basis shape after Procrustes alignment."""
  reference = ctx.apply_fn(ctx.params, method=Student.mean_shape)
  return Term(*losses.procrustes_loss(out['shape'], reference, mask=batch['mask'][..., None]))


# ----------------------------------------------------------------------------
# Loss composition.
# ----------------------------------------------------------------------------


def sample_keys(key: Array, batch_size: int, axis_name: str | None) -> Array:
  """One key per example from its position in the *global* batch.

  Folding in the global position (``axis_index · local_batch + i``) instead of
  only the device index gives each example the same random stream however the
  batch is split, so data-parallel steps match the single-device step.
  """
  offset = jax.lax.axis_index(axis_name) * batch_size if axis_name is not None else 0
  positions = offset + jnp.arange(batch_size)
  return jax.vmap(jax.random.fold_in, (None, 0))(key, positions)


def canonical_term(
    apply_fn: Callable, params, shapes: Array, mask: Array, keys: Array, term: TermConfig, axis_name: str | None = None
) -> tuple[tuple[Array, Array], Any]:
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
    term: the ``canon`` term (options ``n_rot`` (4), ``frames`` (0: all
      frames, else that many random frames per window), penalty).
    axis_name: data-parallel axis (BatchNorm statistics), or None.

  Returns:
    ``((values, weights) [n_rot, B, T', P], batch_stats)``; ``batch_stats`` is
    the updated collection with BatchNorm, else None.
  """
  num_frames = shapes.shape[1]
  n_rot, frames = int(term.get('n_rot', 4)), int(term.get('frames', 0))
  if frames and frames < num_frames:
    frame_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    idx = jax.vmap(lambda k: jax.random.permutation(k, num_frames)[:frames])(frame_keys)
    shapes = jnp.take_along_axis(shapes, idx[:, :, None, None], axis=1)
    mask = jnp.take_along_axis(mask, idx, axis=1)
  rot_keys = jax.vmap(lambda k: jax.random.fold_in(k, 2))(keys)
  rots = jax.vmap(lambda k: geometry.random_rotation(k, (n_rot, shapes.shape[1])))(rot_keys)
  rots = jnp.moveaxis(rots, 1, 0)  # [n_rot, B, T', 3, 3]
  rotated = geometry.rotate(shapes[None], rots)
  masks = jnp.broadcast_to(mask, rotated.shape[:-2])
  rec, stats = _apply(apply_fn, params, rotated, method=Student.canonicalize, axis_name=axis_name, mask=masks)
  values = losses.canonical_loss(
      jnp.broadcast_to(shapes, rotated.shape), rec, mask=masks[..., None], kind=term.kind, scale=term.scale
  )
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
      out[name] = jax.vmap(
          lambda k, s=salt, a=limit: jax.random.uniform(jax.random.fold_in(k, s), (), minval=-a, maxval=a)
      )(keys)
  return out


def compute_loss(
    params, apply_fn: Callable, batch: Batch, key: Array, cfg: LossConfig, axis_name: str | None = None
) -> tuple[Array, tuple[dict[str, Array], Any]]:
  """Total loss of eq. 19 and one metric per term (this device's share under ``axis_name``).

  Runs every registered term whose weight is non-zero and whose batch keys
  are present, in registration order; the total is ``Σ weight · term``.

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
  ctx = TermContext(apply_fn=apply_fn, params=params, keys=keys, axis_name=axis_name)
  terms, weights = {}, {}
  for name, (fn, needs) in TERMS.items():
    term = cfg.term(name)
    if term is None or not term.weight or any(k not in batch for k in needs):
      continue
    result = fn(out, batch, ctx, term)
    if result.batch_stats is not None:
      stats = result.batch_stats
    terms[name] = losses.masked_mean(result.values, result.weights, axis_name=axis_name)
    weights[name] = term.weight
  total = sum(weights[k] * v for k, v in terms.items())
  return total, (dict(terms, total=total), stats)


def train_step(
    state: TrainState, batch: Batch, key: Array, *, loss_config: LossConfig, axis_name: str | None = None
) -> tuple[TrainState, dict[str, Array]]:
  """One optimisation step; usable under ``jax.jit``, ``jax.pmap`` and ``jax.shard_map``.

  Keys: ``fold_in(key, step)``, then per example by its global batch position
  (see :func:`sample_keys`). A step whose loss, gradients or updated state are
  non-finite is not applied (``metrics['finite'] = 0``), so the caller can stop
  with the state unchanged.

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
  new_state, grad_norm, finite = accept_if_finite(new_state, state, metrics_['total'], grads)
  metrics_ = dict(metrics_, grad_norm=grad_norm, finite=finite.astype(jnp.float32))
  return new_state, metrics_


def accept_if_finite(new_state, state, loss: Array, grads) -> tuple[Any, Array, Array]:
  """``(state to keep, gradient norm, finite)``: ``new_state`` only if the step was finite throughout.

  Finite means the loss, the gradients and the *updated* parameters. Otherwise
  ``state`` is kept unchanged, so a diverging update never reaches a checkpoint.
  """
  grad_norm = optax.tree.norm(grads)
  # One reduction: the norm of the updated parameters is finite iff every entry is (and not
  # beyond ~1e19, which only a diverged run reaches). The optimiser's moments are finite when
  # the gradients are.
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(optax.tree.norm(new_state.params))
  kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
  return kept, grad_norm, finite


# ----------------------------------------------------------------------------
# Parallel wrappers.
# ----------------------------------------------------------------------------

AXIS = 'batch'


def make_step(loss_cfg: LossConfig, mode: str = 'none', devices=None, compiler_options: dict | None = None):
  """Compiles the train step for one device or data parallelism.

  Args:
    loss_cfg: static loss settings.
    mode: ``'none'`` (jit), ``'pmap'`` or ``'shard_map'``.
    devices: devices for the parallel modes (default: all local devices; after
      ``jax.distributed.initialize``, pass ``jax.devices()``: the global mesh, each process
      feeding its share of the batch, see ``loop.window_batches``).
    compiler_options: XLA options of the jitted step (``'none'`` and ``'shard_map'``; pmap takes
      none), e.g. ``loop.cpu_compiler_options('eigen')``.

  Returns:
    ``step(state, batch, key) -> (state, metrics)`` taking and returning
    *unreplicated* host-side-style values: the wrapper replicates/shards.
    Its ``.prepare(state)`` / ``.finish(state)`` convert the state to and from
    the wrapper's device layout once, outside the loop.
  """
  if mode == 'none':
    fn = jax.jit(
        functools.partial(train_step, loss_config=loss_cfg), donate_argnums=0, compiler_options=compiler_options
    )
    return _Wrapped(fn, lambda s: s, lambda s: s, lambda b: b, 1)
  devices = list(devices or jax.local_devices())
  n = len(devices)
  step = functools.partial(train_step, loss_config=loss_cfg, axis_name=AXIS)
  if mode == 'pmap':
    fn = jax.pmap(step, axis_name=AXIS, in_axes=(0, 0, None), devices=devices, donate_argnums=0)

    def shard(batch):
      return jax.tree.map(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), batch)

    return _Wrapped(
        lambda s, b, k: _unrep_metrics(fn(s, b, k)),
        functools.partial(_replicate, n=n),
        _device0_copy,
        shard,
        n,
    )
  if mode == 'shard_map':
    mesh = Mesh(np.asarray(devices), (AXIS,))
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P(AXIS))
    fn = jax.jit(
        jax.shard_map(step, mesh=mesh, in_specs=(P(), P(AXIS), P()), out_specs=(P(), P())),
        donate_argnums=0,
        compiler_options=compiler_options,
    )
    multi_process = any(d.process_index != jax.process_index() for d in devices)

    def shard(batch):
      if multi_process:  # The batch is this process's share; the global array spans every process.
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharded, np.asarray(x)), batch)
      return jax.device_put(batch, sharded)

    return _Wrapped(
        fn,
        lambda s: jax.device_put(s, replicated),
        lambda s: s,
        shard,
        n,
        place_key=lambda k: jax.device_put(k, replicated),
    )
  raise ValueError(f"Unknown parallel mode {mode!r}; expected 'none', 'pmap' or 'shard_map'.")


@functools.partial(jax.jit, static_argnames='n')
def _replicate(tree, n: int):
  """Each leaf stacked ``n`` times on a new leading axis (pmap's per-device layout), one program."""
  return jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *jnp.shape(x))), tree)


@jax.jit
def _first_of_axis(tree):
  return jax.tree.map(lambda x: x[0], tree)


def _device0_copy(tree):
  """Device 0's copy of each leaf of a pmapped (replicated) tree, without the device axis.

  One compiled program for the whole tree: indexing ``x[0]`` eagerly compiles once per leaf
  shape (~2 s for the student's ~170 leaves) and dispatches once per leaf at every step.
  """
  return _first_of_axis(jax.tree.map(lambda x: x.addressable_shards[0].data, tree))


def _unrep_metrics(out):
  state, metrics_ = out
  return state, _device0_copy(metrics_)


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
  """``'auto'``: shard_map over all local devices when there are several and the batch divides.

  Several processes (``jax.distributed``): always shard_map over the global devices.
  """
  if jax.process_count() > 1:
    if mode not in ('auto', 'shard_map'):
      raise ValueError(f"train.parallel={mode!r} with several processes; use 'shard_map' (or 'auto').")
    if batch_size % jax.device_count():
      raise ValueError(f'train.batch_size={batch_size} is not divisible by the {jax.device_count()} global devices.')
    return 'shard_map'
  n = jax.local_device_count()
  if mode == 'auto':
    return 'shard_map' if n > 1 and batch_size % n == 0 else 'none'
  if mode != 'none' and batch_size % n:
    raise ValueError(f'train.batch_size={batch_size} is not divisible by the {n} local devices.')
  return mode
