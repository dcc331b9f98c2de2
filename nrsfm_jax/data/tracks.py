"""A user's own 2D keypoint tracks: `.npz` with `keypoints` (F, P, 2) and optional `visibility`."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from nrsfm_jax.data._io import PathLike, check_outliers, missing_key_error, read_npz


def _check_tracks(where: str, keypoints: np.ndarray, visibility: np.ndarray | None) -> None:
  if keypoints.ndim != 3 or keypoints.shape[-1] != 2:
    raise ValueError(f"{where}: 'keypoints' has shape {keypoints.shape}, expected (F, P, 2)")
  if keypoints.shape[0] == 0 or keypoints.shape[1] == 0:
    raise ValueError(f"{where}: 'keypoints' is empty, shape {keypoints.shape}")
  if visibility is not None and visibility.shape != keypoints.shape[:2]:
    raise ValueError(
        f"{where}: 'visibility' has shape {visibility.shape}, expected "
        f"{keypoints.shape[:2]} to match 'keypoints' {keypoints.shape}"
    )


def load_tracks(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
  """Loads 2D tracks.

  NaN coordinates mark missing points: such a point gets visibility 0 and coordinates 0, and a
  warning counts the NaN coordinates.

  Args:
    path: An `.npz` with `keypoints` (F, P, 2) in any units (e.g. pixels) and optionally
      `visibility` (F, P) in [0, 1] (all ones if absent).

  Returns:
    (keypoints float32 `[F, P, 2]`, visibility float32 `[F, P]`).

  Raises:
    FileNotFoundError: If the file does not exist.
    ValueError: Not an npz, wrong shapes, empty, infinite coordinates, visibility outside
      [0, 1], no usable point at all, or a gross outlier (a visible point over
      1000× the typical spread from its frame's median; the message names the frame and point).
    KeyError: No `keypoints` key (the message lists the keys found).
  """
  arrays = read_npz(path)
  if 'keypoints' not in arrays:
    raise missing_key_error(path, 'keypoints', arrays)
  with np.errstate(over='ignore'):  # Beyond float32 becomes inf, refused below.
    keypoints = arrays['keypoints'].astype(np.float32)
  visibility = arrays.get('visibility')
  _check_tracks(str(path), keypoints, visibility)
  if visibility is None:
    visibility = np.ones(keypoints.shape[:2], np.float32)
  visibility = visibility.astype(np.float32)
  if not (np.isfinite(visibility).all() and (visibility >= 0).all() and (visibility <= 1).all()):
    raise ValueError(f"{path}: 'visibility' must be finite and in [0, 1]")
  if np.isinf(keypoints).any():
    raise ValueError(
        f"{path}: 'keypoints' has {int(np.isinf(keypoints).sum())} infinite "
        'coordinates (use NaN to mark missing points)'
    )
  nan = np.isnan(keypoints)
  if nan.any():
    warnings.warn(f'{path}: {int(nan.sum())} NaN keypoint coordinates treated as missing', stacklevel=2)
    missing = np.asarray(nan.any(axis=-1))
    visibility = np.where(missing, 0.0, visibility).astype(np.float32)
    keypoints = np.where(missing[..., None], 0.0, keypoints).astype(np.float32)
  if not (visibility > 0).any():
    raise ValueError(f'{path}: every keypoint is missing; the file is entirely unusable')
  check_outliers(f"{path}: 'keypoints'", keypoints, visibility > 0, what='2D keypoint')
  return keypoints, visibility


def save_tracks(path: PathLike, keypoints: np.ndarray, visibility: np.ndarray | None = None) -> Path:
  """Writes tracks that `load_tracks` reads back.

  Args:
    path: Destination; numpy appends '.npz' if the name lacks it.
    keypoints: `[F, P, 2]`; NaN marks a missing point.
    visibility: `[F, P]` in [0, 1], or None (not stored; loads as all ones).

  Returns:
    The path written.
  """
  keypoints = np.asarray(keypoints, np.float32)
  visibility = None if visibility is None else np.asarray(visibility, np.float32)
  _check_tracks(str(path), keypoints, visibility)
  path = Path(path)
  path = path if path.suffix == '.npz' else path.with_name(path.name + '.npz')
  arrays: dict[str, Any] = {'keypoints': keypoints}
  if visibility is not None:
    arrays['visibility'] = visibility
  np.savez_compressed(path, **arrays)
  return path
