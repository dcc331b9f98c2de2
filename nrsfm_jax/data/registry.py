"""Datasets by name: the one place that turns ``config.data`` into windows.

``make_dataset(config.data, split)`` serves training, the teacher, evaluation
and the ablation alike. A new source is one function registered with
:func:`register_dataset`; it receives the data config, the split (``'train'``
or ``'eval'``), the window length, the 2D scale (None: computed from the
windows) and the seed of 2D noise / dropout.

Sources:

* ``cmu17``: the bundled (or ``data.path``) CMU mocap, subjects
  ``data.train_subjects`` / ``data.val_subjects`` seen by the orthographic
  cameras ``data.azimuths`` / ``data.elevation`` (docs/benchmarks.md A);
* ``h36m``: Human3.6M in VideoPose3D's layout. ``data.path`` = the folder
  holding ``data_3d_h36m.npz`` and ``data_2d_h36m_<data.detector>.npz``
  (``'gt'``: ground-truth 2D): the paper's setting, the real four cameras'
  2D (:func:`nrsfm_jax.data.h36m.camera_frame_views`); or ``data.path`` =
  the 3D file alone: seen by the cmu17 orthographic cameras instead.
  Subjects such as ``'S1,S5'``; the cmu17 protocol and metrics apply;
* ``nrsfm``: one nrsfm-mocap sequence (``data.sequence``), transductive: the
  same frames for both splits (docs/benchmarks.md B); ``data.dropout`` (missing
  points) and ``data.noise_extent`` (2D noise as a fraction of the 2D extent);
* ``tracks``: a user's 2D tracks (``data.path``), transductive, no 3D.

Subjects: ``data.train_subjects`` / ``data.val_subjects``; ``''`` (the
default) is the source's standard split, :data:`DEFAULT_SPLITS` (cmu17: the
development split 002,003,005 / 006; h36m: the paper's S1,S5,S6,S7,S8 / S9,S11).

``data.transductive`` (cmu17, h36m; default False): the train split adds the
eval subjects' 2D and drops all 3D, NRSfM's setting (fit the test 2D, never
see its 3D). Off, the eval subjects are never seen at all (docs/benchmarks.md A).
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from nrsfm_jax.data import h36m as h36m_lib
from nrsfm_jax.data import windows
from nrsfm_jax.data.h36m import load_h36m
from nrsfm_jax.data.mocap import observe

SPLITS = ('train', 'eval')


class DataError(ValueError):
  """The configured data cannot be read or is unusable; the message names the file, key or value."""


# name -> (fn(data_config, split, length, scale, seed) -> WindowDataset, scoring protocol or None)
_DATASETS: dict[str, tuple[Callable[..., windows.WindowDataset], str | None]] = {}
# name -> the config.data keys its fn reads (besides COMMON_KEYS); configs.validate refuses the others.
_KEYS: dict[str, tuple[str, ...]] = {}
COMMON_KEYS = ('name', 'window', 'eval_window')


def register_dataset(name: str, protocol: str | None, keys: tuple[str, ...] = ()):
  """Decorator: registers ``fn(data_config, split, *, length, scale, seed) -> WindowDataset`` as ``name``.

  ``keys``: the ``config.data`` keys ``fn`` reads besides :data:`COMMON_KEYS`.
  """

  def wrap(fn):
    _DATASETS[name] = (fn, protocol)
    _KEYS[name] = tuple(keys)
    return fn

  return wrap


def dataset_names() -> tuple[str, ...]:
  return tuple(_DATASETS)


def data_keys(name: str) -> tuple[str, ...]:
  """The ``config.data`` keys source ``name`` reads."""
  _lookup(name)
  return COMMON_KEYS + _KEYS[name]


def parse_names(text: str | Sequence[str]) -> list[str]:
  """``'002, 003'`` or ``['002', '003']`` → ``['002', '003']`` (blanks dropped)."""
  items = text.split(',') if isinstance(text, str) else text
  return [str(s).strip() for s in items if str(s).strip()]


def _lookup(name: str):
  if name not in _DATASETS:
    raise ValueError(f'Unknown config.data.name {name!r}; expected one of {dataset_names()}.')
  return _DATASETS[name]


def protocol_of(data_config) -> str | None:
  """The scoring protocol of ``config.data``: ``'cmu17'``, ``'nrsfm'``, or None (no 3D)."""
  return _lookup(data_config.name)[1]


def window_length(data_config, split: str) -> int:
  """Training windows are ``data.window`` long; eval windows ``data.eval_window`` (0: the same)."""
  if split not in SPLITS:
    raise ValueError(f'Unknown split {split!r}; expected one of {SPLITS}.')
  if split == 'eval':
    return int(data_config.get('eval_window', 0) or data_config.window)
  return int(data_config.window)


def make_dataset(
    data_config, split: str, *, scale: float | None = None, seed: int = 0, length: int | None = None
) -> windows.WindowDataset:
  """The ``split`` windows of ``config.data``.

  Args:
    data_config: ``config.data`` (``name`` picks the source; see the module doc).
    split: ``'train'`` or ``'eval'``.
    scale: the 2D normalisation scale (None: computed from these windows; pass
      the train split's for eval).
    seed: seed of the 2D noise and keypoint dropout (``config.seed``).
    length: window length (default :func:`window_length`).

  Returns:
    A ``WindowDataset``.

  Raises:
    DataError: the source's loader refused the data (its message, naming the file and key).
  """
  fn, _ = _lookup(data_config.name)
  length = window_length(data_config, split) if length is None else int(length)
  try:
    return fn(data_config, split, length=length, scale=scale, seed=seed)
  except (ValueError, KeyError, OSError) as e:  # The loaders' messages name the file, key and value.
    raise DataError(e.args[0] if isinstance(e, KeyError) and e.args else str(e)) from e


def make_datasets(config, scale: float | None = None) -> tuple[windows.WindowDataset, windows.WindowDataset]:
  """``(train, eval)`` from ``config.data``; eval shares the train split's 2D scale."""
  train = make_dataset(config.data, 'train', scale=scale, seed=config.seed)
  return train, make_dataset(config.data, 'eval', scale=train.scale, seed=config.seed)


# A source's standard (train, eval) subjects, used where config.data.train_subjects / val_subjects is ''.
DEFAULT_SPLITS: dict[str, tuple[str, str]] = {'cmu17': ('002,003,005', '006'), 'h36m': h36m_lib.H36M_SPLIT}


def split_subjects(d, split: str, *, transductive: bool = True) -> list[str]:
  """The subjects of ``split`` in ``config.data`` ``d``: its ``train_subjects`` / ``val_subjects``,
  ``''`` meaning the source's :data:`DEFAULT_SPLITS`; with ``data.transductive`` the train split
  also lists the eval subjects (unless ``transductive=False``)."""
  key = 'train_subjects' if split == 'train' else 'val_subjects'
  text = d.get(key, '')
  if not str(text).strip() and d.name in DEFAULT_SPLITS:
    text = DEFAULT_SPLITS[d.name][0 if split == 'train' else 1]
  names = parse_names(text)
  if not names:
    raise ValueError(f'config.data.{key} names no subject.')
  if transductive and split == 'train' and d.get('transductive', False):
    names += [s for s in split_subjects(d, 'eval') if s not in names]
  return names


def _without_eval_3d(d, split: str, dataset: windows.WindowDataset) -> windows.WindowDataset:
  """With ``data.transductive`` the train split also holds the eval subjects' 2D, and no 3D at all.

  NRSfM's setting: the test 2D may be fitted, the test 3D never (so a
  supervised teacher on such a split fails, naming the missing 3D).
  """
  if split == 'train' and d.get('transductive', False):
    return dataclasses.replace(dataset, points3d=None)
  return dataset


# The config.data keys of the mocap sources (subjects seen by orthographic cameras).
_VIEW_KEYS = (
    'path',
    'train_subjects',
    'val_subjects',
    'transductive',
    'azimuths',
    'elevation',
    'elevations',
    'noise_std',
    'dropout',
)


def _camera_kwargs(d, seed: int) -> dict[str, Any]:
  return dict(
      azimuths_deg=tuple(d.azimuths),
      elevation_deg=(d.elevation, *d.get('elevations', ())) if d.get('elevations') else d.elevation,
      noise_std=d.noise_std,
      dropout=d.dropout,
      seed=seed,
  )


@register_dataset('cmu17', 'cmu17', _VIEW_KEYS)
def _cmu17(d, split, *, length, scale, seed):
  dataset = windows.cmu17_dataset(
      split_subjects(d, split), length=length, path=d.path or None, scale=scale, **_camera_kwargs(d, seed)
  )
  return _without_eval_3d(d, split, dataset)


# Human3.6M's world frame has z up; the cameras of docs/benchmarks.md A turn about y up.
_Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]], np.float32)


def h36m_dataset(
    path,
    subjects: Sequence[str] | str | None,
    *,
    length: int = 243,
    scale: float | None = None,
    detector: str = 'gt',
    **camera_kwargs,
) -> windows.WindowDataset:
  """Human3.6M in VideoPose3D's layout, windowed; trials are named ``'<subject>/<action>'``.

  ``path`` a folder: its ``data_3d_h36m.npz`` and ``data_2d_h36m_<detector>.npz``, the real
  cameras' 2D (view id = the 2D file's camera index), with camera-frame 3D and 2D in
  millimetres at the root's depth (:func:`nrsfm_jax.data.h36m.camera_frame_views`);
  ``camera_kwargs`` ``noise_std`` (mm), ``dropout`` and ``seed`` apply, the azimuths and
  elevations do not. ``path`` the 3D file: its 3D (world z-up turned to y-up) seen by the
  orthographic cameras of ``camera_kwargs`` (``azimuths_deg``, ``elevation_deg``,
  ``noise_std``, ``dropout``, ``seed``, as :func:`windows.cmu17_dataset`).
  """
  if os.path.isdir(path):
    return _h36m_real_cameras(path, subjects, length=length, scale=scale, detector=detector, **camera_kwargs)
  trials = {
      f'{s}/{a}': entry['points3d'] @ _Z_UP_TO_Y_UP.T
      for s, actions in load_h36m(path, subjects=subjects).items()
      for a, entry in actions.items()
  }
  return windows.views_dataset(trials, length=length, scale=scale, **camera_kwargs)


def _h36m_real_cameras(
    folder, subjects, *, length: int, scale: float | None, detector: str, noise_std=0.0, dropout=0.0, seed=0, **_
) -> windows.WindowDataset:
  path_3d = os.path.join(folder, h36m_lib.H36M_3D_FILE)
  path_2d = os.path.join(folder, h36m_lib.h36m_2d_file(detector))
  for path in (path_3d, path_2d):
    if not os.path.isfile(path):
      raise FileNotFoundError(
          f"{path}: no such file; config.data.path={str(folder)!r} must hold VideoPose3D's "
          f'{h36m_lib.H36M_3D_FILE} and {h36m_lib.h36m_2d_file(detector)} (config.data.detector={detector!r})'
      )
  sequences = {}
  for s, actions in load_h36m(path_3d, path_2d, subjects=subjects).items():
    for a, entry in actions.items():
      key = f'{s}/{a}'
      points, keypoints, visibility = h36m_lib.camera_frame_views(
          entry['points3d'], entry['keypoints'], name=f'{path_2d}: {key}'
      )
      if noise_std > 0 or dropout > 0:
        flat = np.concatenate([keypoints, np.zeros_like(keypoints[..., :1])], -1)
        keypoints, kept = observe(
            flat, key_or_seed=[seed, zlib.crc32(key.encode())], noise_std=noise_std, dropout=dropout
        )
        visibility = visibility * kept
        keypoints = np.where(visibility[..., None] > 0, keypoints, 0.0)
      sequences[key] = (points, keypoints, visibility)
  return windows.build_dataset(sequences, length, scale)


@register_dataset('h36m', 'cmu17', _VIEW_KEYS + ('detector',))
def _h36m(d, split, *, length, scale, seed):
  if not d.path:
    raise ValueError(
        "config.data.name='h36m' needs config.data.path: the folder holding VideoPose3D's data_3d_h36m.npz and "
        'data_2d_h36m_gt.npz (or the 3D file alone, seen by orthographic cameras).'
    )
  dataset = h36m_dataset(
      d.path,
      split_subjects(d, split),
      length=length,
      scale=scale,
      detector=d.get('detector', 'gt'),
      **_camera_kwargs(d, seed),
  )
  return _without_eval_3d(d, split, dataset)


@register_dataset('nrsfm', 'nrsfm', ('sequence', 'noise_extent', 'dropout'))
def _nrsfm(d, split, *, length, scale, seed):
  del split  # Transductive: both splits are the sequence itself (the same noise and missing points).
  return windows.nrsfm_dataset(
      d.sequence,
      length=length,
      scale=scale,
      noise_extent=d.get('noise_extent', 0.0),
      dropout=d.get('dropout', 0.0),
      seed=seed,
  )


@register_dataset('tracks', None, ('path',))
def _tracks(d, split, *, length, scale, seed):
  del split, seed
  if not d.path:
    raise ValueError("config.data.name='tracks' needs config.data.path (an .npz with 'keypoints').")
  return windows.tracks_dataset(d.path, length=length, scale=scale)
