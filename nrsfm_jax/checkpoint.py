"""Checkpoints (orbax) and flat ``.npz`` parameter export / import.

* :class:`Checkpointer` saves ``{params, opt_state, step}`` with orbax's
  ``StandardSave`` plus JSON metadata (data-order seed and step, 2D scale).
  The data order is a pure function of ``(seed, step)`` (see
  ``data.batch_indices``), so the step *is* the data-order state.
* :func:`export_params` writes a flat ``.npz`` with ``'/'``-joined keys and the
  config as JSON; :func:`load_exported` rebuilds a predictor from it with no
  training code.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from nrsfm_jax import models
from nrsfm_jax.data.windows import center_2d
from nrsfm_jax.models import Student

CONFIG_KEY = '__config__'
META_KEY = '__meta__'


class CheckpointError(RuntimeError):
  """A checkpoint that was asked for by step cannot be restored (the message names its folder)."""


def _reason(e: BaseException) -> str:
  """One short line for why a restore failed: the root cause's type and its message's first line."""
  while e.__cause__ is not None:  # orbax wraps tensorstore's precise error (OUT_OF_RANGE, DATA_LOSS).
    e = e.__cause__
  text = str(e).strip().splitlines()[0] if str(e).strip() else ''
  text = text.split(' See full TensorStore details')[0]
  if len(text) > 200:
    text = text[:197] + '...'
  return f'{type(e).__name__}: {text}' if text else type(e).__name__


def _collect_quietly() -> None:
  """Frees a failed restore's orphaned read coroutines now, without their "Exception ignored" tracebacks.

  Orbax reads arrays concurrently; when one read fails the others' errors are
  never retrieved, and Python would print each one when it is collected.
  """
  hook = sys.unraisablehook
  sys.unraisablehook = lambda unraisable: None
  try:
    gc.collect()
  finally:
    sys.unraisablehook = hook


def _state_tree(state) -> dict[str, Any]:
  return {'params': state.params, 'opt_state': state.opt_state, 'step': state.step}


class Checkpointer:
  """An orbax ``CheckpointManager`` over ``workdir/checkpoints`` (synchronous saves).

  Saves are synchronous because the train step donates its state buffers.
  """

  def __init__(self, directory: str, max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=False, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, meta: dict[str, Any] | None = None) -> None:
    """Saves ``state`` (a TrainState) at ``step`` with JSON ``meta``; overwrites nothing."""
    if step in self.manager.all_steps():
      return
    tree = _state_tree(state)
    if any(isinstance(x, jax.Array) and not x.is_fully_addressable for x in jax.tree.leaves(tree)):
      # Several processes (jax.distributed) hold one replicated state: save it as host arrays, so
      # the checkpoint restores anywhere (one process, other devices) with no sharding given.
      tree = jax.device_get(tree)
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(dict(meta or {}, step=int(step)))
    )
    self.manager.save(step, args=args, force=True)
    self.manager.wait_until_finished()

  def restore(self, state, step: int | None = None, *, log: Callable[[str], None] | None = print):
    """Restores into the structure of ``state``; returns ``(state, meta)`` or ``(state, None)``.

    With ``step=None`` this is the newest checkpoint that restores. A damaged
    one (truncated, overwritten, an empty manifest, bad JSON) is reported in
    one ``log`` line naming its folder and why, moved aside to
    ``<checkpoints>.damaged/<step>`` (never deleted; out of the manager's
    rotation, so the run can save that step again), and the previous one is
    tried. If none restores the run starts afresh. An explicit ``step`` that
    fails raises :class:`CheckpointError`.
    """
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _state_tree(state))
    found = self._restore(target, step, set_aside=True, log=log)
    if found is None:
      return state, None
    tree = found['state']
    state = state.replace(params=tree['params'], opt_state=tree['opt_state'], step=tree['step'])
    return state, dict(found['meta'])

  def restore_tree(self, step: int | None = None, *, log: Callable[[str], None] | None = print):
    """The saved ``{params, opt_state, step}`` as plain arrays (no target structure needed), and meta.

    ``step=None``: the newest checkpoint that restores (damaged ones are
    reported and skipped, and left where they are).
    """
    found = self._restore(None, step, set_aside=False, log=log)
    if found is None:
      raise FileNotFoundError(
          f'No checkpoint in {self.directory} restores.'
          if self.manager.all_steps()
          else f'No checkpoint in {self.directory}.'
      )
    return found['state'], dict(found['meta'])

  def _restore(self, target, step: int | None, *, set_aside: bool, log) -> Any:
    """``{'state', 'meta'}`` of ``step``, or of the newest step that restores (None if none does).

    ``target``: the state's abstract structure, or None for plain arrays.
    """
    log = log or (lambda _: None)

    def restore_step(s):
      args = ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
      return self.manager.restore(s, args=args)

    if step is not None:
      try:
        return restore_step(step)
      except Exception as e:  # orbax / tensorstore raise many types; name the folder and the cause.
        raise CheckpointError(f'checkpoint {self.step_dir(step)} cannot be restored: {_reason(e)}') from e
    steps = sorted(self.manager.all_steps(), reverse=True)
    for s in steps:
      try:
        return restore_step(s)
      except Exception as e:  # As above: any failure to read it means it is damaged.
        reason = _reason(e)
      _collect_quietly()
      moved = f'; moved to {self._set_aside(s)}' if set_aside else ''
      older = [t for t in steps if t < s]
      then = f'trying step {older[0]}' if older else 'no older checkpoint: starting afresh'
      log(f'warning: checkpoint {self.step_dir(s)} cannot be restored ({reason}){moved}; {then}')
    return None

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def _set_aside(self, step: int) -> str:
    """Moves a damaged step folder to ``<directory>.damaged/<step>[-n]`` and refreshes the manager."""
    aside = self.directory + '.damaged'
    os.makedirs(aside, exist_ok=True)
    dest, n = os.path.join(aside, str(step)), 1
    while os.path.exists(dest):
      n += 1
      dest = os.path.join(aside, f'{step}-{n}')
    os.replace(self.step_dir(step), dest)
    self.manager.reload()
    return dest

  def restore_params(
      self, step: int | None = None, *, log: Callable[[str], None] | None = print
  ) -> tuple[Any, dict[str, Any]]:
    """Parameters (and meta) alone, with no optimizer or config needed (``step``, ``log``: :meth:`restore_tree`)."""
    tree, meta = self.restore_tree(step, log=log)
    return tree['params'], meta


# ----------------------------------------------------------------------------
# Flat export.
# ----------------------------------------------------------------------------


def flatten_params(params) -> dict[str, np.ndarray]:
  """Nested params → ``{'a/b/c': array}``."""
  flat = flax.traverse_util.flatten_dict(jax.device_get(params), sep='/')
  return {k: np.asarray(v) for k, v in flat.items()}


def _without_machine_paths(tree):
  """A config dict with every absolute path (a run's pseudo-3D cache, init_from, data file) cut to its
  file name: an export leaves the machine it was made on, and its config is provenance, not inputs."""
  if isinstance(tree, dict):
    return {k: _without_machine_paths(v) for k, v in tree.items()}
  if isinstance(tree, list):
    return [_without_machine_paths(v) for v in tree]
  if isinstance(tree, str) and os.path.isabs(tree):
    return os.path.basename(tree)
  return tree


def export_params(path: str, params, config: ml_collections.ConfigDict, *, scale: float, num_points: int) -> str:
  """Writes ``path`` (.npz): '/'-joined parameter arrays, the config JSON and metadata.

  Absolute paths in the config are cut to file names (the export is meant to travel).

  A ``<path>.json`` sidecar with the same config is written for humans.
  """
  path = str(path)
  if not path.endswith('.npz'):
    path += '.npz'
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  config_json = json.dumps(_without_machine_paths(json.loads(config.to_json_best_effort())), sort_keys=True)
  meta = json.dumps({'scale': float(scale), 'num_points': int(num_points), 'format': 'nrsfm_jax/1'})
  arrays: dict[str, Any] = dict(
      flatten_params(params), **{CONFIG_KEY: np.asarray(config_json), META_KEY: np.asarray(meta)}
  )
  np.savez(path, **arrays)
  with open(path[:-4] + '.json', 'w') as f:
    f.write(json.dumps({'config': json.loads(config_json), 'meta': json.loads(meta)}, indent=2))
  return path


def load_params(path: str, init_params) -> Any:
  """Merges an exported ``.npz`` into freshly initialised params (big_vision style).

  Every initialised leaf must be present with the same shape; extra keys are an error.
  ``init_params`` may be abstract (``jax.eval_shape`` of ``init``): only its
  structure, shapes and dtypes are used.
  """
  with np.load(path, allow_pickle=False) as f:
    stored = {k: f[k] for k in f.files if k not in (CONFIG_KEY, META_KEY)}
  return merge_params(init_params, stored, source=path)[0]


def merge_params(init_params, stored: dict[str, Any], *, source: str, strict: bool = True) -> tuple[Any, list[str]]:
  """``init_params`` with its leaves replaced by ``stored`` ones (``{'a/b/c': array}``, see :func:`flatten_params`).

  Args:
    init_params: the model's (possibly abstract) parameters: structure, shapes, dtypes.
    stored: flat arrays to take.
    source: names the origin in errors.
    strict: every leaf must be stored with its shape and nothing else may be
      (an export); False takes the leaves whose path and shape match and keeps
      the rest (a run that shares part of the model).

  Returns:
    ``(params, the '/'-joined paths taken)``.
  """
  flat = flax.traverse_util.flatten_dict(init_params, sep='/')
  if strict:
    missing = sorted(set(flat) - set(stored))
    extra = sorted(set(stored) - set(flat))
    if missing or extra:
      raise KeyError(f'{source}: parameter keys do not match the model: missing {missing[:5]}, unexpected {extra[:5]}.')
    for k, v in flat.items():
      if np.shape(stored[k]) != v.shape:
        raise ValueError(f'{source}: parameter {k!r} has shape {np.shape(stored[k])}, the model expects {v.shape}.')
  taken = [k for k, v in flat.items() if k in stored and np.shape(stored[k]) == v.shape]
  merged = {k: (jnp.asarray(stored[k], v.dtype) if k in taken else v) for k, v in flat.items()}
  return flax.traverse_util.unflatten_dict(merged, sep='/'), taken


def load_exported_model(path: str) -> tuple[ml_collections.ConfigDict, Any, Any, dict[str, Any]]:
  """Rebuilds any exported model, student or diffusion teacher: ``(config, model, params, meta)``.

  The model is a ``Student`` or, for an export of a teacher run (its config has a ``teacher``
  section), a ``Denoiser``; ``params`` are its variables; ``meta`` holds ``scale`` (the training
  2D scale) and ``num_points``.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f'No exported parameters at {path}.')
  with np.load(path, allow_pickle=False) as f:
    if CONFIG_KEY not in f.files or META_KEY not in f.files:
      raise KeyError(f'{path}: not an nrsfm_jax export (keys {CONFIG_KEY!r}/{META_KEY!r} missing).')
    config = ml_collections.ConfigDict(json.loads(str(f[CONFIG_KEY])))
    meta = json.loads(str(f[META_KEY]))
  p = meta['num_points']
  # Shapes only: an eager init would compile every op of the model (tens of seconds on CPU).
  if 'teacher' in config:
    model = models.from_config('denoiser', config.model, p)
    init = jax.eval_shape(
        model.init,
        jax.random.PRNGKey(0),
        jnp.zeros((1, 4, p, 3)),
        jnp.zeros((1,), jnp.int32),
        jnp.zeros((1, 4, p, 2)),
        jnp.ones((1, 4, p)),
        jnp.ones((1, 4)),
    )
  else:
    model = models.from_config('student', config.model, p)
    init = jax.eval_shape(
        functools.partial(model.init, method=Student.init_all),
        jax.random.PRNGKey(0),
        jnp.zeros((1, 4, p, 2)),
        jnp.ones((1, 4, p)),
        jnp.ones((1, 4)),
    )
  return config, model, load_params(path, init), meta


def load_exported(path: str) -> tuple[Callable, Any]:
  """Rebuilds a student's predictor from :func:`export_params` output.

  Returns:
    ``(apply_fn, params)`` where the jitted ``apply_fn(params, keypoints, visibility=None)``
    maps raw 2D keypoints ``[..., T, P, 2]`` (data units; NaN = missing) of
    one window of any length ``T`` to camera-frame 3D ``[..., T, P, 3]`` in the
    same units (x/y centred on the visible points per frame; with the default
    ``model.observed_xy`` a visible point's x, y are its observed 2D and only
    its depth comes from the model).

  Raises:
    ValueError: ``path`` is a teacher's export (:func:`load_exported_model` reads those).
  """
  config, model, params, meta = load_exported_model(path)
  if 'teacher' in config:
    raise ValueError(f"{path} is a diffusion teacher's export; load it with load_exported_model.")
  return predictor_fn(model, float(meta['scale'])), params


def export_meta(path: str) -> dict[str, Any]:
  """An export's metadata (``scale``, ``num_points``, ``format``) without loading its parameters."""
  with np.load(path, allow_pickle=False) as f:
    if META_KEY not in f.files:
      raise KeyError(f'{path}: not an nrsfm_jax export (key {META_KEY!r} missing).')
    return json.loads(str(f[META_KEY]))


def predictor_fn(model, scale: float) -> Callable:
  """The jitted ``apply_fn(params, keypoints, visibility=None, frame_mask=None)`` of :func:`load_exported`.

  For any student ``model`` trained at 2D ``scale``: raw data-unit keypoints in, data-unit 3D out.
  """

  def apply_fn(params, keypoints, visibility=None, frame_mask=None):
    keypoints = jnp.asarray(keypoints, jnp.float32)
    if visibility is None:
      visibility = jnp.all(jnp.isfinite(keypoints), -1).astype(jnp.float32)
    keypoints = jnp.where(visibility[..., None] > 0, jnp.nan_to_num(keypoints), 0.0)
    squeeze = keypoints.ndim == 3
    if squeeze:
      keypoints, visibility = keypoints[None], visibility[None]
    # Every frame is real unless told otherwise, as in data.WindowDataset (a
    # frame with no visible point is still a frame of the sequence).
    mask = jnp.ones(keypoints.shape[:-2]) if frame_mask is None else jnp.asarray(frame_mask, jnp.float32)
    mask = mask.reshape(keypoints.shape[:-2])
    # The datasets' normalisation: data.center_2d's centring, then the training scale.
    kp = center_2d(keypoints, visibility, xp=jnp)[0] / scale
    out = model.apply(params, kp, visibility * mask[..., None], mask)['reconstruction'] * scale
    return out[0] if squeeze else out

  return jax.jit(apply_fn)


__all__ = [
    'CheckpointError',
    'Checkpointer',
    'export_params',
    'flatten_params',
    'load_exported',
    'load_exported_model',
    'export_meta',
    'load_params',
    'merge_params',
    'predictor_fn',
]
