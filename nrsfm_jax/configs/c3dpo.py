"""C3DPO's Human3.6M lifter size (1024 wide, 6 residual bottleneck blocks, K = 10)."""

from nrsfm_jax.configs import default


def get_config(arg=None):
  c = default.get_config(arg)
  c.model.lifter_width = 1024
  c.model.lifter_blocks = 6
  c.model.canon_width = 1024
  c.model.canon_blocks = 6
  return c
