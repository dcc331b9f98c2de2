"""Shared `.npz` reading with errors that name the file at fault."""

from __future__ import annotations

import os
import pickle
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
