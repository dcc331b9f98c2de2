"""Experiment configs: ``get_config()`` functions returning ``ml_collections.ConfigDict``.

* ``default``: CPU-friendly cmu17 training (minutes on 2 cores).
* ``tiny``: smoke tests (seconds).
* ``paper``: the paper's schedule (243-frame windows, SGD, 120 epochs).
* ``nrsfm``: transductive fit of one nrsfm-mocap sequence (``nrsfm.py:drink``).
* ``c3dpo``: the C3DPO-sized lifter (1024 wide, 6 blocks) for benchmarks.
* ``teacher``: the diffusion teacher (``teacher.py:supervised|self|d3dp|nrsfm:<seq>``).
"""

import dataclasses
import importlib

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
