"""Optimisers from ``config.optim`` (shared by the student and the teacher trainers)."""

from __future__ import annotations

import jax
import ml_collections
import optax


def make_optimizer(config: ml_collections.ConfigDict, num_steps: int, steps_per_epoch: int):
  """optax transformation from ``config.optim`` (see configs/default.py)."""
  o = config.optim
  if o.schedule == 'cosine':
    lr = optax.warmup_cosine_decay_schedule(
        0.0, o.lr, max(o.warmup_steps, 1), max(num_steps, o.warmup_steps + 1), end_value=o.lr * 0.01
    )
  elif o.schedule == 'step':
    lr = optax.piecewise_constant_schedule(o.lr, {int(e * steps_per_epoch): 0.1 for e in o.decay_epochs})
  elif o.schedule == 'constant':
    lr = optax.constant_schedule(o.lr)
  else:
    raise ValueError(f"Unknown optim.schedule {o.schedule!r}; expected 'cosine', 'step' or 'constant'.")
  parts = []
  if o.grad_clip:
    parts.append(optax.clip_by_global_norm(o.grad_clip))
  if o.name == 'sgd':
    # PyTorch-style coupled weight decay (added to the gradient before momentum), as the paper.
    if o.weight_decay:
      parts.append(optax.add_decayed_weights(o.weight_decay))
    parts.append(optax.sgd(lr, momentum=o.momentum))
  elif o.name == 'adam':
    parts.append(optax.adamw(lr, weight_decay=o.weight_decay) if o.weight_decay else optax.adam(lr))
  else:
    raise ValueError(f"Unknown optim.name {o.name!r}; expected 'adam' or 'sgd'.")
  tx = optax.chain(*parts)
  freeze = tuple(o.get('freeze', ()))
  if freeze:
    # Frozen modules (top-level names under each collection, e.g. 'lifter') get no update; the
    # rest see the chain above, gradient clipping included, as if the frozen ones were absent.
    def labels(params):
      return jax.tree_util.tree_map_with_path(
          lambda path, _: 'frozen' if len(path) > 1 and getattr(path[1], 'key', None) in freeze else 'train', params
      )

    tx = optax.multi_transform({'train': tx, 'frozen': optax.set_to_zero()}, labels)
  return tx
