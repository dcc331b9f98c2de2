"""nrsfm_jax: non-rigid structure from motion in JAX/Flax.

Pure math (no Flax, IO or config): :mod:`geometry`, :mod:`losses`, :mod:`metrics`,
:mod:`diffusion`.
Data (numpy): :mod:`data`. Models (Flax): :mod:`models`. Training and
evaluation: :mod:`train`, :mod:`teacher` (diffusion teacher), :mod:`evaluation`,
:mod:`ablation`, :mod:`checkpoint`; configs in :mod:`configs`.
"""

from nrsfm_jax import ablation, configs, data, diffusion, geometry, losses, metrics, models, teacher
from nrsfm_jax.checkpoint import Checkpointer, export_params, load_exported
from nrsfm_jax.evaluation import evaluate_run, load_run
from nrsfm_jax.models import Student, StudentConfig
from nrsfm_jax.train import LossConfig, TrainState, make_step, train_and_evaluate, train_step

__version__ = '0.1.0'

__all__ = [
    'Checkpointer', 'LossConfig', 'Student', 'StudentConfig', 'TrainState', 'ablation', 'configs',
    'data', 'diffusion', 'evaluate_run', 'export_params', 'geometry', 'load_exported', 'load_run',
    'losses', 'make_step', 'metrics', 'models', 'teacher', 'train_and_evaluate', 'train_step',
]
