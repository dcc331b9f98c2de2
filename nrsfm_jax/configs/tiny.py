"""Tiny config for smoke tests: a few seconds on CPU."""

from nrsfm_jax.configs import default


def get_config(arg=None):
  c = default.get_config(arg)
  c.data.train_subjects = '002'
  c.data.val_subjects = '006_01,006_09'  # two short trials: the e2e tests' evaluations stay cheap
  c.data.window = 32
  c.data.eval_window = 0
  c.data.azimuths = (45.0, 225.0)
  c.model.num_bases = 4
  c.model.lifter_width = 32
  c.model.lifter_blocks = 1
  c.model.canon_width = 32
  c.model.canon_blocks = 1
  c.model.tcn_channels = 16
  c.model.tcn_dilations = (1, 3)
  c.model.mlp_width = 32
  c.loss.terms.canon.n_rot = 2
  c.loss.terms.canon.frames = 8
  c.optim.warmup_steps = 2
  c.train.batch_size = 4
  c.train.num_steps = 6
  c.train.log_every = 2
  c.train.checkpoint_every = 3
  c.train.eval_batch_size = 16
  c.train.eval_every = 0
  c.train.restarts = 1
  c.train.plot = False  # The PNG costs about a second a run; the tests that check it turn it on.
  return c
