"""The paper's protocol: 243-frame windows, batch 32, SGD (momentum 0.9, weight decay
5e-4, lr 1e-3, ×0.1 at epochs 60 and 80), 120 epochs, C3DPO-sized lifter.

``paper.py:lifter`` builds on ``c3dpo.py:lifter``, C3DPO's whole recipe (BatchNorm, its trunk
init, z-augmentation and z-equivariance, pseudo-Huber 0.01, one run), as the paper's lifter row
is C3DPO; the other rows take only C3DPO's size, as in ``c3dpo.py``."""

from nrsfm_jax.configs import c3dpo


def get_config(arg=None):
  c = c3dpo.get_config(arg)
  c.data.window = 243
  c.data.eval_window = 243
  c.loss.terms.canon.frames = 0
  c.optim.name = 'sgd'
  c.optim.lr = 1e-3
  c.optim.schedule = 'step'
  c.optim.decay_epochs = (60, 80)
  c.optim.warmup_steps = 0
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4
  c.optim.grad_clip = 0.0
  c.train.batch_size = 32
  c.train.num_epochs = 120
  if c.loss.terms.smooth.weight:  # The paper's λ_s = 1 (default.py uses 0.1, chosen on cmu17).
    c.loss.terms.smooth.weight = 1.0
  return c
