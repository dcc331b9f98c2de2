"""The classic NRSfM motion-capture benchmark sequences (Akhter et al.), `points3d` npz files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nrsfm_jax.data._io import PathLike, check_outliers, first_non_finite, missing_key_error, read_npz
from nrsfm_jax.data.mocap import NRSFM_DIR, NRSFM_SEQUENCES


def nrsfm_sequence_path(name_or_path: PathLike) -> Path:
  """Resolves a bundled sequence name (case-insensitive) or returns the given path.

  A string with no suffix and no directory part that is not an existing file is read as a
  bundled name; anything else is a path.
  """
  path = Path(name_or_path)
  is_name = isinstance(name_or_path, str) and not path.suffix and len(path.parts) == 1 and not path.is_file()
  if is_name:
    name = str(name_or_path).lower()
    if name not in NRSFM_SEQUENCES:
      raise ValueError(
          f'unknown NRSfM sequence {name_or_path!r}; bundled: '
          f'{list(NRSFM_SEQUENCES)} (or pass the path of a .npz file)'
      )
    return NRSFM_DIR / f'{name}.npz'
  return path


def load_nrsfm_sequence(name_or_path: PathLike) -> np.ndarray:
  """Loads one NRSfM sequence.

  Args:
    name_or_path: A bundled name ('drink', 'pickup', 'yoga', 'stretch', 'dance'; any case) or
      the path of an `.npz` with key `points3d` of shape (F, P, 3) in the benchmark's camera
      frame (2D input `[..., :2]`, hidden depth `[..., 2]`, the benchmark's own units).

  Returns:
    float64 `[F, P, 3]`.

  Raises:
    ValueError: Unknown bundled name, not an npz, wrong shape, empty, non-finite values or a
      gross outlier (the message names the frame and point).
    FileNotFoundError: If the file does not exist.
    KeyError: If the file has no `points3d` (the message lists the keys found).
  """
  path = nrsfm_sequence_path(name_or_path)
  arrays = read_npz(path)
  if 'points3d' not in arrays:
    raise missing_key_error(path, 'points3d', arrays)
  points = arrays['points3d']
  if points.ndim != 3 or points.shape[-1] != 3:
    raise ValueError(f"{path}: 'points3d' has shape {points.shape}, expected (F, P, 3)")
  if points.shape[0] == 0 or points.shape[1] == 0:
    raise ValueError(f"{path}: 'points3d' is empty, shape {points.shape}")
  if not np.issubdtype(points.dtype, np.number):
    raise ValueError(f"{path}: 'points3d' has non-numeric dtype {points.dtype}")
  points = points.astype(np.float64)
  first_non_finite(f"{path}: 'points3d'", points, '3D point')
  check_outliers(f"{path}: 'points3d'", points, what='3D point')
  return points
