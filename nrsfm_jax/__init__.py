"""nrsfm_jax: non-rigid structure from motion in JAX/Flax.

Layers, each importing only the ones before it:

* pure math (no Flax, IO or config): :mod:`geometry`, :mod:`losses`,
  :mod:`metrics`, :mod:`diffusion`, :mod:`classic` (classic NRSfM solvers);
* data (numpy): :mod:`data` (loaders, windows, the dataset registry
  ``data.make_dataset``, the pseudo-3D sidecar);
* models (Flax): :mod:`models` (``models.from_config``);
* objective: :mod:`objective` (loss-term registry, ``train_step`` for jit /
  pmap / shard_map), :mod:`optim`;
* loop and runs: :mod:`loop` (the loop both trainers share),
  :mod:`checkpoint`, :mod:`runs` (``load_run``);
* trainers and evaluation: :mod:`train` (student), :mod:`teacher`
  (diffusion teacher), :mod:`scoring`, :mod:`evaluation`, :mod:`ablation`,
  :mod:`plotting`; configs in :mod:`configs`.

The package is lazy: ``import nrsfm_jax.geometry`` loads no orbax, and a name
below is imported on first use.
"""

import importlib

__version__ = '0.1.0'

_SUBMODULES = (
    'ablation',
    'checkpoint',
    'classic',
    'configs',
    'data',
    'diffusion',
    'evaluation',
    'geometry',
    'loop',
    'losses',
    'metrics',
    'models',
    'objective',
    'optim',
    'plotting',
    'predict',
    'profiling',
    'runs',
    'scoring',
    'teacher',
    'train',
)
_NAMES = {
    'Checkpointer': 'checkpoint',
    'export_params': 'checkpoint',
    'load_exported': 'checkpoint',
    'evaluate_run': 'evaluation',
    'load_run': 'runs',
    'Student': 'models',
    'StudentConfig': 'models',
    'LossConfig': 'objective',
    'TrainState': 'objective',
    'make_step': 'objective',
    'train_step': 'objective',
    'train_and_evaluate': 'train',
}

__all__ = sorted(_SUBMODULES + tuple(_NAMES))


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f'nrsfm_jax.{name}')
  if name in _NAMES:
    return getattr(importlib.import_module(f'nrsfm_jax.{_NAMES[name]}'), name)
  raise AttributeError(f'module nrsfm_jax has no attribute {name!r}')


def __dir__():
  return __all__
