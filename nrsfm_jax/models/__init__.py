"""Flax modules: they compute outputs; losses live in nrsfm_jax.losses / objective.

Models are built from config by name (:func:`from_config`); each one's
hyperparameter defaults live in its config dataclass and nowhere else.
"""

from nrsfm_jax import configs as _configs
from nrsfm_jax.models.denoiser import Denoiser, DenoiserConfig
from nrsfm_jax.models.lifter import Canonicalizer, Lifter, MLPTrunk, ResidualBottleneck, ShapeBasis
from nrsfm_jax.models.student import Student, StudentConfig, center_on_visible
from nrsfm_jax.models.tcn import TemporalRefiner, causal_shift, context_frames, receptive_field

MODELS = {'student': (Student, StudentConfig), 'denoiser': (Denoiser, DenoiserConfig)}


# One module instance per (model, hyperparameters): jitted functions keyed on ``model.apply``
# (static arguments) then hit their cache across runs of the same architecture; bound methods
# compare their instance by identity, so equal but distinct modules would each recompile.
_BUILT: dict = {}


def from_config(name: str, model_config, num_points: int):
  """``MODELS[name]`` built from ``config.model`` (missing keys take the dataclass defaults).

  Equal hyperparameters give the same (immutable) module instance.
  """
  if name not in MODELS:
    raise ValueError(f'Unknown model {name!r}; expected one of {tuple(MODELS)}.')
  cls, config_cls = MODELS[name]
  config = _configs.to_dataclass(config_cls, model_config, num_points=num_points)
  key = (name, config)
  if key not in _BUILT:
    _BUILT[key] = cls(config)
  return _BUILT[key]


def defaults(name: str) -> dict:
  """The default hyperparameters of ``MODELS[name]`` (what a config's ``model`` section starts from)."""
  import dataclasses

  _, config_cls = MODELS[name]
  return {f.name: f.default for f in dataclasses.fields(config_cls) if f.name != 'num_points'}


__all__ = [
    'MODELS',
    'from_config',
    'defaults',
    'Canonicalizer',
    'Denoiser',
    'DenoiserConfig',
    'Lifter',
    'MLPTrunk',
    'ResidualBottleneck',
    'ShapeBasis',
    'Student',
    'StudentConfig',
    'TemporalRefiner',
    'causal_shift',
    'center_on_visible',
    'context_frames',
    'receptive_field',
]
