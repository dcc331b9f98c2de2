"""Flax modules: they compute outputs; losses live in nrsfm_jax.losses / train."""

from nrsfm_jax.models.denoiser import Denoiser, DenoiserConfig
from nrsfm_jax.models.lifter import Canonicalizer, Lifter, MLPTrunk, ResidualBottleneck, ShapeBasis
from nrsfm_jax.models.student import Student, StudentConfig, center_on_visible
from nrsfm_jax.models.tcn import TemporalRefiner, causal_shift, receptive_field

__all__ = ['Canonicalizer', 'Denoiser', 'DenoiserConfig', 'Lifter', 'MLPTrunk', 'ResidualBottleneck', 'ShapeBasis', 'Student',
           'StudentConfig', 'TemporalRefiner', 'causal_shift', 'center_on_visible',
           'receptive_field']
