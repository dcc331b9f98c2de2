"""Human3.6M in VideoPose3D's preprocessed layout (`data_3d_h36m.npz`, `data_2d_h36m_*.npz`).

The data itself is not shipped; these loaders read the files VideoPose3D's
`prepare_data_h36m.py` writes. 3D: key `positions_3d`, a pickled dict subject -> action ->
float32 `[F, 32, 3]` in metres (world frame). 2D: key `positions_2d`, a pickled dict subject ->
action -> list of one `[F, 17, 2]` pixel array per camera, plus `metadata`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from nrsfm_jax.data._io import PathLike, check_outliers, first_non_finite, missing_key_error, read_npz

# VideoPose3D's `Human36mDataset.remove_joints`: the 15 of 32 joints it drops.
H36M_REMOVED_JOINTS: tuple[int, ...] = (4, 5, 9, 10, 11, 16, 20, 21, 22, 23, 24, 28, 29, 30, 31)
H36M_KEPT_JOINTS: tuple[int, ...] = tuple(i for i in range(32) if i not in H36M_REMOVED_JOINTS)


def _pickled_dict(path: PathLike, key: str) -> dict:
  arrays = read_npz(path, allow_pickle=True)
  if key not in arrays:
    raise missing_key_error(path, key, arrays)
  value = arrays[key]
  value = value.item() if value.dtype == object and value.ndim == 0 else value
  if not isinstance(value, dict):
    raise ValueError(f'{path}: {key!r} is not a pickled dict (got {type(value).__name__})')
  return value


def load_h36m(
    path_3d: PathLike, path_2d: PathLike | None = None, subjects: Iterable[str] | str | None = None
) -> dict[str, dict[str, dict]]:
  """Loads Human3.6M 3D poses and, optionally, per-camera 2D keypoints.

  Args:
    path_3d: VideoPose3D's `data_3d_h36m.npz`. Arrays with 32 joints are reduced to the 17
      kept by VideoPose3D (`H36M_KEPT_JOINTS`, in order); arrays with 17 are kept as they are.
    path_2d: VideoPose3D's `data_2d_h36m_<detector>.npz`, or None.
    subjects: Subjects to keep, e.g. `['S1', 'S5']`; None keeps all (in file order).

  Returns:
    `result[subject][action]` = {'points3d': float32 `[F, 17, 3]` world millimetres,
    'keypoints': float32 `[C, F, 17, 2]` pixels (only with `path_2d`)}. With 2D, 3D and
    every camera are truncated to their common shortest length (VideoPose3D truncates 2D
    that is longer than the 3D).

  Raises:
    FileNotFoundError: A file does not exist.
    KeyError: A file lacks its key, or the 2D file lacks a subject/action of the 3D file.
    ValueError: An unknown subject (the message lists those available), a wrong shape, 0 frames,
      non-finite 3D, infinite 2D (NaN 2D is a missing point) or a gross outlier (over 1000× the
      typical spread from its frame's median); each message names the file, subject/action
      and, for values, the frame and point.
  """
  positions_3d = _pickled_dict(path_3d, 'positions_3d')
  positions_2d = None if path_2d is None else _pickled_dict(path_2d, 'positions_2d')
  if not positions_3d:
    raise ValueError(f"{path_3d}: 'positions_3d' holds no subjects")
  if subjects is None:
    subjects = list(positions_3d)
  else:
    subjects = [str(s) for s in ([subjects] if isinstance(subjects, str) else subjects)]
    unknown = [s for s in subjects if s not in positions_3d]
    if unknown:
      raise ValueError(f'{path_3d}: unknown subject(s) {unknown}; available: {list(positions_3d)}')
  result: dict[str, dict[str, dict]] = {}
  for subject in subjects:
    result[subject] = {}
    if not positions_3d[subject]:
      raise ValueError(f'{path_3d}: subject {subject!r} holds no actions')
    for action, points in positions_3d[subject].items():
      points = np.asarray(points)
      if points.ndim != 3 or points.shape[1:] not in ((32, 3), (17, 3)):
        raise ValueError(
            f'{path_3d}: {subject}/{action} has shape {points.shape}, ' 'expected [F, 32, 3] (or [F, 17, 3])'
        )
      if points.shape[0] == 0:
        raise ValueError(f'{path_3d}: {subject}/{action} has 0 frames, shape {points.shape}')
      if points.shape[1] == 32:
        points = points[:, H36M_KEPT_JOINTS]
      with np.errstate(over='ignore'):  # Beyond float32 becomes inf, refused next.
        points = (np.asarray(points, np.float64) * 1000.0).astype(np.float32)
      first_non_finite(f'{path_3d}: {subject}/{action}', points, '3D point')
      check_outliers(f'{path_3d}: {subject}/{action}', points, what='3D point')
      entry = {'points3d': points}
      if positions_2d is not None:
        if subject not in positions_2d:
          raise KeyError(f'{path_2d}: no subject {subject!r} (found {list(positions_2d)})')
        if action not in positions_2d[subject]:
          raise KeyError(
              f'{path_2d}: no action {action!r} for subject {subject!r} ' f'(found {list(positions_2d[subject])})'
          )
        cameras = [np.asarray(k) for k in positions_2d[subject][action]]
        if not cameras:
          raise ValueError(f'{path_2d}: {subject}/{action} has no cameras')
        for c, k in enumerate(cameras):
          if k.ndim != 3 or k.shape[1:] != (17, 2) or k.shape[0] == 0:
            raise ValueError(
                f'{path_2d}: {subject}/{action} camera {c} has shape {k.shape}, expected [F, 17, 2] with F > 0'
            )
          if np.isinf(k).any():
            raise ValueError(
                f'{path_2d}: {subject}/{action} camera {c} has {int(np.isinf(k).any(-1).sum())} infinite 2D points '
                '(NaN marks a missing point)'
            )
          check_outliers(f'{path_2d}: {subject}/{action} camera {c}', k, what='2D keypoint')
        length = min(len(points), *(len(k) for k in cameras))
        entry['points3d'] = entry['points3d'][:length]
        entry['keypoints'] = np.stack([k[:length] for k in cameras]).astype(np.float32)
      result[subject][action] = entry
  return result


def normalize_screen_coordinates(x: np.ndarray, w: float, h: float) -> np.ndarray:
  """Maps pixels to [-1, 1] along the width, keeping the aspect ratio (VideoPose3D).

  Args:
    x: `[..., 2]` pixel coordinates.
    w: Image width in pixels.
    h: Image height in pixels.

  Returns:
    `[..., 2]`: `x / w * 2 - [1, h / w]`.
  """
  x = np.asarray(x)
  if x.shape[-1] != 2:
    raise ValueError(f'x must be [..., 2], got shape {x.shape}')
  return x / w * 2 - np.array([1.0, h / w], dtype=np.result_type(x.dtype, np.float32))
