"""nrsfm_jax: non-rigid structure from motion in JAX/Flax."""

from nrsfm_jax import data, geometry, losses, metrics

__version__ = '0.1.0'
