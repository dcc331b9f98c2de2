"""Experiment configs: ``get_config()`` functions returning ``ml_collections.ConfigDict``.

* ``default``: CPU-friendly cmu17 training (minutes on 2 cores).
* ``tiny``: smoke tests (seconds).
* ``paper``: the paper's schedule (243-frame windows, SGD, 120 epochs).
* ``nrsfm``: transductive fit of one nrsfm-mocap sequence (``nrsfm.py:drink``).
* ``c3dpo``: the C3DPO-sized lifter (1024 wide, 6 blocks) for benchmarks.
* ``teacher``: the diffusion teacher (``teacher.py:supervised|self|d3dp|nrsfm:<seq>``).
"""

import dataclasses
import difflib
import importlib
import math

import ml_collections

NAMES = ('default', 'tiny', 'paper', 'nrsfm', 'c3dpo', 'teacher')


def get(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """Loads ``nrsfm_jax.configs.<name>.get_config(arg)``."""
  if name not in NAMES:
    raise ValueError(f'Unknown config {name!r}; expected one of {NAMES}.')
  module = importlib.import_module(f'nrsfm_jax.configs.{name}')
  return module.get_config(arg) if arg is not None else module.get_config()


def to_dataclass(cls, section: ml_collections.ConfigDict, **overrides):
  """``cls(**section, **overrides)`` for a (frozen) dataclass; unknown keys are named with the known ones.

  Lists become tuples (dataclasses used as static jit arguments must hash).
  """
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(section.keys()) - names)
  if unknown:
    raise ValueError(f'Unknown {cls.__name__} config keys {unknown}; known keys: {sorted(names)}.')
  values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in section.items()}
  values.update(overrides)
  return cls(**values)


class ConfigError(ValueError):
  """A config value that cannot work, or a key that does not apply; the message names the key."""


def _at_least(low):
  return (lambda v: v >= low), f'>= {low}'


# config key -> (test, the requirement in words), checked by validate() where the key exists.
_RANGES = {
    'train.batch_size': _at_least(1),
    'train.eval_batch_size': _at_least(1),
    'train.eval_every': _at_least(0),
    'train.num_steps': _at_least(0),
    'train.num_epochs': _at_least(0),
    'train.log_every': _at_least(1),
    'train.checkpoint_every': _at_least(1),
    'train.max_checkpoints': _at_least(1),
    'train.restarts': _at_least(1),
    'train.pseudo3d_sigma': _at_least(0),
    'train.eval_bone_quantile': ((lambda v: 0 < v <= 1), 'in (0, 1]'),
    'train.eval_bone_gain': ((lambda v: 0 < v < math.inf), 'finite and > 0'),
    'loss.terms.bones.length_quantile': ((lambda v: 0 < v <= 1), 'in (0, 1]'),
    'data.window': _at_least(1),
    'data.eval_window': _at_least(0),
    'data.noise_std': _at_least(0),
    'data.noise_extent': _at_least(0),
    'data.dropout': ((lambda v: 0 <= v < 1), 'in [0, 1)'),
    'optim.lr': ((lambda v: 0 < v < math.inf), 'finite and > 0'),
    'optim.warmup_steps': _at_least(0),
    'optim.grad_clip': _at_least(0),
    'optim.weight_decay': _at_least(0),
    'optim.momentum': ((lambda v: 0 <= v < 1), 'in [0, 1)'),
    'diffusion.num_timesteps': _at_least(1),
    'diffusion.num_hypotheses': _at_least(1),
    'diffusion.num_steps': _at_least(1),
    'teacher.novel_views': ((lambda v: 0 <= v <= 1), 'in [0, 1]'),
    'teacher.view_yaw': ((lambda v: 0 <= v <= 180), 'in [0, 180] (degrees)'),
    'teacher.view_pitch': ((lambda v: 0 <= v <= 90), 'in [0, 90] (degrees)'),
}

# train.cpu_dots: XLA CPU's matmul backends for the train step (loop.cpu_compiler_options).
CPU_DOTS = ('ynn', 'eigen')
# train.pseudo3d_projection (a teacher's pseudo-3D or an anchor run's reconstructions) and
# teacher.target_projection (a self-mode teacher's targets): 'eval' puts the targets through the
# test-time treatment of the run they train or come from (scoring.as_evaluated); 'none' leaves them.
PSEUDO3D_PROJECTIONS = ('none', 'eval')
# train.selection: what train.restarts keeps (train.select_restart): the lowest training objective,
# or the fewest knees and elbows bent against the rest of their frame (both on the training 2D).
SELECTIONS = ('objective', 'hinges')
# train.eval_context: how a TCN sees the frames around each eval window (scoring.eval_context).
EVAL_CONTEXTS = ('none', 'receptive_field')
# teacher.hinge_filter (a self-mode teacher's targets): which target joints the denoising loss
# leaves out where a knee or elbow bends against the rest of its frame (teacher.hinge_weights).
HINGE_FILTERS = ('none', 'frames', 'limbs')


def hinge_indices(hinges, num_points: int, *, key: str, user: str, fix: str) -> tuple[tuple[int, ...], ...]:
  """``hinges`` as ``(a, b, c, l, r)`` int tuples; a config error unless they index ``num_points`` points.

  For the message: ``key`` names the config entry that holds them, ``user`` the setting that
  needs them, ``fix`` the setting that does without them.
  """
  hinges = tuple(tuple(int(i) for i in h) for h in hinges)
  if not hinges or max(max(h) for h in hinges) >= num_points:
    raise ConfigError(
        f"config.{user} needs config.{key}, (a, b, c, l, r) joint indices below the data's "
        f"{num_points} points (a human skeleton's); got {hinges!r}. Set config.{fix}."
    )
  return hinges


def _choices() -> dict[str, tuple[str, ...]]:
  """Keys that take one of a few strings, from the modules that own them (imported on use:
  ``nrsfm_jax.configs`` itself loads no jax)."""
  from nrsfm_jax import geometry, losses  # pylint: disable=g-import-not-at-top
  from nrsfm_jax.data import windows  # pylint: disable=g-import-not-at-top
  from nrsfm_jax.models import student  # pylint: disable=g-import-not-at-top

  return {
      'train.cpu_dots': CPU_DOTS,
      'train.selection': SELECTIONS,
      'train.eval_bone_projection': geometry.BONE_PROJECTIONS,
      'train.eval_context': EVAL_CONTEXTS,
      'model.refine_space': student.REFINE_SPACES,
      'loss.terms.smooth.components': losses.SMOOTH_COMPONENTS,
      'train.eval_bone_by': windows.BONE_LENGTH_GROUPS,
      'train.pseudo3d_projection': PSEUDO3D_PROJECTIONS,
      'teacher.target_projection': PSEUDO3D_PROJECTIONS,
      'teacher.hinge_filter': HINGE_FILTERS,
      'train.pseudo3d_hinge_filter': HINGE_FILTERS,
  }


def _lookup_key(config, dotted: str):
  node = config
  for part in dotted.split('.'):
    if not hasattr(node, 'keys') or part not in node:
      return None
    node = node[part]
  return node


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks a student or teacher config before it runs; each problem is one line naming its key.

  Ranges (``train.batch_size >= 1``, ``data.dropout`` in [0, 1), ``optim.lr > 0``, loss
  weights ``>= 0``, ...) and the data source's name. Keys that the chosen source does not
  read are :func:`check_applies`'s (the command line knows which keys a user set).

  Raises:
    ConfigError: the first problem found.
  """
  for key, (ok, words) in _RANGES.items():
    value = _lookup_key(config, key)
    if value is None or isinstance(value, str):
      continue
    if isinstance(value, (list, tuple)) or not ok(value):
      raise ConfigError(f'config.{key} must be {words}; got {value!r}.')
  for key, choices in _choices().items():
    value = _lookup_key(config, key)
    if value is not None and value not in choices:
      raise ConfigError(f'config.{key} must be one of {choices}; got {value!r}.')
  terms = _lookup_key(config, 'loss.terms') or {}
  for name, spec in terms.items():
    weight, scale = spec.get('weight', 0.0), spec.get('scale', 1.0)
    if not 0 <= weight < math.inf:
      raise ConfigError(f'config.loss.terms.{name}.weight must be finite and >= 0; got {weight!r}.')
    if not 0 < scale < math.inf:
      raise ConfigError(f'config.loss.terms.{name}.scale must be finite and > 0; got {scale!r}.')
  if 'data' in config:
    _data_keys(config.data.get('name', ''))


def _data_keys(name) -> tuple[str, ...]:
  from nrsfm_jax.data import registry  # pylint: disable=g-import-not-at-top  (data imports the models' configs)

  if name not in registry.dataset_names():
    close = difflib.get_close_matches(str(name), registry.dataset_names(), n=1)
    hint = f' (did you mean {close[0]!r}?)' if close else ''
    raise ConfigError(
        f'config.data.name={name!r} is not a data source{hint}; expected one of {registry.dataset_names()}.'
    )
  return registry.data_keys(name)


def check_applies(config: ml_collections.ConfigDict, keys) -> None:
  """Refuses ``config.data`` keys that were set (``keys``, dotted, e.g. from the command line) but
  that the chosen data source does not read, such as ``data.sequence`` with cmu17.

  Raises:
    ConfigError: naming the key, the source, and the sources that do read it.
  """
  from nrsfm_jax.data import registry  # pylint: disable=g-import-not-at-top

  if 'data' not in config:
    return
  name = config.data.get('name', '')
  reads = _data_keys(name)
  for key in keys:
    section, *rest = key.split('.')
    leaf = rest[0] if rest else ''
    if section != 'data' or not leaf or leaf in reads:
      continue
    users = [n for n in registry.dataset_names() if leaf in registry.data_keys(n)]
    raise ConfigError(
        f'config.data.{leaf}={config.data.get(leaf)!r} does not apply to config.data.name={name!r} (it is '
        f'read by: {", ".join(users) or "no source"}).'
    )
