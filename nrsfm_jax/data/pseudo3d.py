"""The teacher's pseudo-3D sidecar: per-window camera-frame 3D with the provenance of the windows it was made for."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from nrsfm_jax.data.windows import WindowDataset

PSEUDO3D_KEYS = ('pseudo3d', 'scale', 'names', 'sequence_ids', 'view_ids', 'starts')


def save_pseudo3d(path: str, pseudo3d: np.ndarray, dataset: WindowDataset, spread: np.ndarray | None = None) -> None:
  """Writes teacher pseudo-3D for ``dataset``'s windows with the provenance :func:`load_pseudo3d` checks.

  Args:
    path: output ``.npz``.
    pseudo3d: ``[N, L, P, 3]`` camera-frame 3D in *normalised* units (data
      units / ``dataset.scale``), in ``dataset``'s window order.
    dataset: the training windows it was computed for.
    spread: optional ``[N, L, P]`` per-joint disagreement of the teacher's
      hypotheses (same units), for a confidence-weighted teacher term.
  """
  arrays: dict[str, Any] = dict(
      pseudo3d=np.asarray(pseudo3d, np.float32),
      scale=np.float64(dataset.scale),
      names=np.asarray(dataset.names),
      sequence_ids=dataset.sequence_ids,
      view_ids=dataset.view_ids,
      starts=dataset.starts,
  )
  if spread is not None:
    arrays['spread'] = np.asarray(spread, np.float32)
    if arrays['spread'].shape != arrays['pseudo3d'].shape[:-1]:
      raise ValueError(
          f"spread has shape {arrays['spread'].shape}; pseudo3d {arrays['pseudo3d'].shape} needs "
          f"{arrays['pseudo3d'].shape[:-1]}."
      )
  np.savez(path, **arrays)


def load_pseudo3d(path: str, dataset: WindowDataset, *, spread: bool = False):
  """Cached teacher pseudo-3D for ``dataset``'s windows: ``[N, L, P, 3]`` normalised units.

  With ``spread=True``, returns ``(pseudo3d, spread [N, L, P])``; a file
  without the hypotheses' spread (made before it was stored) is an error.

  The file (see :func:`save_pseudo3d`) must have been made for exactly these
  windows (same sequences, views, starts and 2D scale); anything else would
  silently supervise frames with another frame's 3D.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f'train.pseudo3d: no file at {path}.')
  with np.load(path) as f:
    missing = [k for k in PSEUDO3D_KEYS if k not in f.files]
    if missing:
      raise KeyError(f'{path}: keys {missing} missing (found {f.files}); write it with data.save_pseudo3d.')
    arr = f['pseudo3d'].astype(np.float32)
    if not np.isclose(float(f['scale']), dataset.scale, rtol=1e-6):
      raise ValueError(f"{path}: made for 2D scale {float(f['scale']):.6g}, the training data has {dataset.scale:.6g}.")
    for key in ('sequence_ids', 'view_ids', 'starts'):
      if f[key].shape != getattr(dataset, key).shape or not np.array_equal(f[key], getattr(dataset, key)):
        raise ValueError(f'{path}: {key} differ from the training windows: made for other data or windows.')
    if tuple(str(n) for n in f['names']) != tuple(dataset.names):
      raise ValueError(f'{path}: sequence names differ from the training data.')
    if spread:
      if 'spread' not in f.files:
        raise KeyError(
            f"{path}: no 'spread' (the teacher's per-joint hypothesis spread), which "
            'loss.terms.teacher.confidence_scale needs: regenerate it with teacher.generate_pseudo3d.'
        )
      sp = f['spread'].astype(np.float32)
  expected = dataset.keypoints.shape[:-1] + (3,)
  if arr.shape != expected:
    raise ValueError(f'{path}: pseudo3d has shape {arr.shape}, the training windows need {expected}.')
  if spread:
    if sp.shape != expected[:-1]:
      raise ValueError(f'{path}: spread has shape {sp.shape}, the training windows need {expected[:-1]}.')
    return arr, sp
  return arr
