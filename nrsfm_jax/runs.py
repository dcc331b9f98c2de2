"""One way to reload a run (student or teacher) from its workdir."""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections

from nrsfm_jax import checkpoint as ckpt_lib
from nrsfm_jax import models


def model_name(config: ml_collections.ConfigDict) -> str:
  """``'denoiser'`` for a teacher run (its config has a ``teacher`` section), else ``'student'``."""
  return 'denoiser' if 'teacher' in config else 'student'


def load_run(workdir: str, step: int | None = None
             ) -> tuple[ml_collections.ConfigDict, Any, Any, dict[str, Any]]:
  """Reloads a trained run, student or teacher, from its workdir.

  Args:
    workdir: a directory written by ``train.train_and_evaluate`` or
      ``teacher.train_teacher`` (``config.json`` and ``checkpoints/``).
    step: checkpoint step to restore (default: the latest).

  Returns:
    ``(config, model, params, meta)``: the saved config, the model built from
    it (``Student`` or ``Denoiser``, see :func:`model_name`), its restored
    variables (``{'params': ...}``) and the checkpoint metadata (``seed``,
    ``scale``, ``num_points``, ``step``, ...).

  Raises:
    FileNotFoundError: no workdir, no ``config.json`` or no checkpoint (the path is named).
    ValueError: ``step`` is not one of the saved steps (the saved ones are listed).
    KeyError: the checkpoint metadata lacks ``scale`` or ``num_points``.
  """
  workdir = os.path.abspath(workdir)
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f'No run directory at {workdir}.')
  config_path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f'{config_path} is missing: {workdir} is not a workdir written by '
                            'experiments/train.py or experiments/train_teacher.py.')
  with open(config_path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  # Checkpointer creates its directory: check first so a typo does not leave an empty one behind.
  if not os.path.isdir(ckpt_dir):
    raise FileNotFoundError(f'No checkpoints directory at {ckpt_dir}.')
  ckpt = ckpt_lib.Checkpointer(ckpt_dir)
  steps = sorted(ckpt.manager.all_steps())
  if not steps:
    raise FileNotFoundError(f'No checkpoint in {ckpt_dir}.')
  if step is not None and step not in steps:
    raise ValueError(f'No checkpoint for step {step} in {ckpt_dir}; saved steps: {steps}.')
  params, meta = ckpt.restore_params(step)
  for k in ('scale', 'num_points'):
    if k not in meta:
      raise KeyError(f'{ckpt_dir}: checkpoint metadata lacks {k!r} (found {sorted(meta)}).')
  model = models.from_config(model_name(config), config.model, int(meta['num_points']))
  return config, model, params, meta
