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
import json
import os
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
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(_state_tree(state)), meta=ocp.args.JsonSave(dict(meta or {}, step=int(step)))
    )
    self.manager.save(step, args=args, force=True)
    self.manager.wait_until_finished()

  def restore(self, state, step: int | None = None):
    """Restores into the structure of ``state``; returns ``(state, meta)`` or ``(state, None)``."""
    step = self.latest_step() if step is None else step
    if step is None:
      return state, None
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _state_tree(state))
    restored = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
    )
    tree = restored['state']
    state = state.replace(params=tree['params'], opt_state=tree['opt_state'], step=tree['step'])
    return state, dict(restored['meta'])

  def restore_tree(self, step: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The saved ``{params, opt_state, step}`` as plain arrays (no target structure needed), and meta."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'No checkpoint in {self.directory}.')
    restored = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore())
    )
    return restored['state'], dict(restored['meta'])

  def restore_params(self, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Parameters (and meta) alone, with no optimizer or config needed."""
    tree, meta = self.restore_tree(step)
    return tree['params'], meta


# ----------------------------------------------------------------------------
# Flat export.
# ----------------------------------------------------------------------------


def flatten_params(params) -> dict[str, np.ndarray]:
  """Nested params → ``{'a/b/c': array}``."""
  flat = flax.traverse_util.flatten_dict(jax.device_get(params), sep='/')
  return {k: np.asarray(v) for k, v in flat.items()}


def export_params(path: str, params, config: ml_collections.ConfigDict, *, scale: float, num_points: int) -> str:
  """Writes ``path`` (.npz): '/'-joined parameter arrays, the config JSON and metadata.

  A ``<path>.json`` sidecar with the same config is written for humans.
  """
  path = str(path)
  if not path.endswith('.npz'):
    path += '.npz'
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  config_json = config.to_json_best_effort(sort_keys=True)
  meta = json.dumps({'scale': float(scale), 'num_points': int(num_points), 'format': 'nrsfm_jax/1'})
  arrays = flatten_params(params)
  np.savez(path, **arrays, **{CONFIG_KEY: np.asarray(config_json), META_KEY: np.asarray(meta)})
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


def load_exported(path: str) -> tuple[Callable, Any]:
  """Rebuilds a predictor from :func:`export_params` output.

  Returns:
    ``(apply_fn, params)`` where the jitted ``apply_fn(params, keypoints, visibility=None)``
    maps raw 2D keypoints ``[..., T, P, 2]`` (data units; NaN = missing) of
    one window of any length ``T`` to camera-frame 3D ``[..., T, P, 3]`` in the
    same units (x/y centred on the visible points per frame; with the default
    ``model.observed_xy`` a visible point's x, y are its observed 2D and only
    its depth comes from the model).
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f'No exported parameters at {path}.')
  with np.load(path, allow_pickle=False) as f:
    if CONFIG_KEY not in f.files or META_KEY not in f.files:
      raise KeyError(f'{path}: not an nrsfm_jax export (keys {CONFIG_KEY!r}/{META_KEY!r} missing).')
    config = ml_collections.ConfigDict(json.loads(str(f[CONFIG_KEY])))
    meta = json.loads(str(f[META_KEY]))
  model = models.from_config('student', config.model, meta['num_points'])
  p = meta['num_points']
  # Shapes only: an eager init would compile every op of the model (tens of seconds on CPU).
  init = jax.eval_shape(
      functools.partial(model.init, method=Student.init_all),
      jax.random.PRNGKey(0),
      jnp.zeros((1, 4, p, 2)),
      jnp.ones((1, 4, p)),
      jnp.ones((1, 4)),
  )
  params = load_params(path, init)
  scale = float(meta['scale'])

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

  return jax.jit(apply_fn), params


__all__ = ['Checkpointer', 'export_params', 'flatten_params', 'load_exported', 'load_params', 'merge_params']
