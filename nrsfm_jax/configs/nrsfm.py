"""Transductive fit of one nrsfm-mocap sequence (BENCHMARKS.md B).

Usage: ``--config=nrsfm_jax/configs/nrsfm.py:drink`` (a bundled name or an .npz
path). The model sees only ``points3d[..., :2]``; the 3D is used for e3D only.
"""

from nrsfm_jax.configs import default


def get_config(arg='drink'):
  c = default.get_config()
  c.data.name = 'nrsfm'
  c.data.sequence = arg or 'drink'
  c.data.window = 81
  c.model.num_bases = 10
  c.train.batch_size = 8
  c.train.num_steps = 2000
  return c
