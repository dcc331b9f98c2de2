"""Flax modules: they compute outputs; losses live in nrsfm_jax.losses / objective.

Models are built from config by name (:func:`from_config`); each one's
hyperparameter defaults live in its config dataclass and nowhere else.
"""

from nrsfm_jax import configs as _configs
from nrsfm_jax.models.denoiser import Denoiser, DenoiserConfig
from nrsfm_jax.models.lifter import Canonicalizer, Lifter, MLPTrunk, ResidualBottleneck, ShapeBasis
from nrsfm_jax.models.student import Student, StudentConfig, center_on_visible
from nrsfm_jax.models.tcn import TemporalRefiner, causal_shift, receptive_field

MODELS = {'student': (Student, StudentConfig), 'denoiser': (Denoiser, DenoiserConfig)}


def from_config(name: str, model_config, num_points: int):
  """``MODELS[name]`` built from ``config.model`` (missing keys take the dataclass defaults)."""
  if name not in MODELS:
    raise ValueError(f'Unknown model {name!r}; expected one of {tuple(MODELS)}.')
  cls, config_cls = MODELS[name]
  return cls(_configs.to_dataclass(config_cls, model_config, num_points=num_points))


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
    'receptive_field',
]
