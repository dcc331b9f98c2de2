"""Shared `.npz` reading with errors that name the file at fault."""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np

PathLike = str | os.PathLike


def read_npz(path: PathLike, *, allow_pickle: bool = False) -> dict[str, np.ndarray]:
  """Reads every array of an `.npz` archive into memory.

  Args:
    path: The archive.
    allow_pickle: Whether object arrays (pickled dicts, as in VideoPose3D's files) may load.

  Returns:
    A dict key -> array, in the archive's order.

  Raises:
    FileNotFoundError: If `path` does not exist.
    ValueError: If `path` is not a readable `.npz` archive.
  """
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'no such file: {path}')
  errors = (ValueError, OSError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile)
  try:
    loaded = np.load(path, allow_pickle=allow_pickle)
  except errors as e:
    raise ValueError(f'{path}: not a readable .npz archive ({e})') from e
  if not isinstance(loaded, np.lib.npyio.NpzFile):
    raise ValueError(f'{path}: not an .npz archive (np.load gave a {type(loaded).__name__})')
  with loaded:
    try:
      return {key: loaded[key] for key in loaded.files}
    except errors as e:
      raise ValueError(f'{path}: could not read the archive ({e})') from e


def missing_key_error(path: PathLike, key: str, found) -> KeyError:
  """The KeyError for an archive (or dict) read from `path` that lacks `key`."""
  return KeyError(f'{path}: no key {key!r}; keys found: {sorted(found)}')


# A point this many times the typical spread away from its frame's median point is a gross outlier
# (a corrupt coordinate such as 1e30), not a pose: loaders refuse it.
OUTLIER_FACTOR = 1000.0


def first_non_finite(where: str, points: np.ndarray, what: str, *, point: str = 'point', note: str = '') -> None:
  """Raises if ``points [F, P, D]`` holds NaN or inf, naming ``where``, the count and the first frame and ``point``."""
  bad = ~np.isfinite(points).all(axis=-1)
  if bad.any():
    frame, index = (int(i) for i in np.argwhere(bad)[0])
    raise ValueError(
        f'{where} has {int(bad.sum())} non-finite {what}s (NaN or inf, or beyond float32), the first at '
        f'frame {frame}, {point} {index}{note}'
    )


def check_outliers(where: str, points: np.ndarray, valid: np.ndarray | None = None, what: str = 'point') -> None:
  """Raises on gross outliers, robustly: a valid point farther from its frame's median point than
  ``OUTLIER_FACTOR`` × the typical spread (the median over frames of the median distance to it).

  Args:
    where: names the file and key in the message.
    points: ``[F, P, D]`` coordinates (invalid entries may hold anything).
    valid: ``[F, P]`` bool, the points to check (default: the finite ones).
    what: names a point in the message.

  Raises:
    ValueError: naming ``where``, the frame, the point, its distance and the typical spread.
  """
  points = np.asarray(points, np.float64)
  finite = np.isfinite(points).all(-1)
  valid = finite if valid is None else (np.asarray(valid, bool) & finite)
  if valid.sum() < 2:
    return
  masked = np.where(valid[..., None], points, np.nan)
  with np.errstate(all='ignore'), warnings.catch_warnings():
    warnings.simplefilter('ignore', RuntimeWarning)  # All-NaN frames.
    center = np.nanmedian(masked, axis=1, keepdims=True)  # [F, 1, D]
    dist = np.sqrt(np.sum(np.square(masked - center), -1))  # [F, P], NaN where invalid
    typical = float(np.nanmedian(np.nanmedian(dist, axis=1)))
  if not np.isfinite(typical) or typical <= 0:
    return
  far = valid & (np.nan_to_num(dist) > OUTLIER_FACTOR * typical)
  if far.any():
    frame, point = (int(i) for i in np.argwhere(far)[0])
    missing = ' (mark missing points NaN)' if what.startswith('2D') else ''
    raise ValueError(
        f"{where}: {what} at frame {frame}, point {point} lies {dist[frame, point]:.3g} from its frame's median, "
        f'over {OUTLIER_FACTOR:g}x the typical {typical:.3g}; {int(far.sum())} such point(s): a corrupt '
        f'coordinate?{missing}'
    )
