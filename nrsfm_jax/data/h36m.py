"""Human3.6M in VideoPose3D's preprocessed layout (`data_3d_h36m.npz`, `data_2d_h36m_*.npz`).

The data itself is not shipped; these loaders read the files VideoPose3D's
`prepare_data_h36m.py` writes. 3D: key `positions_3d`, a pickled dict subject -> action ->
float32 `[F, 32, 3]` in metres (world frame). 2D: key `positions_2d`, a pickled dict subject ->
action -> list of one `[F, 17, 2]` pixel array per camera, plus `metadata`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

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


# ----------------------------------------------------------------------------- real cameras

# VideoPose3D names its 2D files data_2d_h36m_<detector>.npz ('gt': the projected ground truth).
H36M_3D_FILE = 'data_3d_h36m.npz'


def h36m_2d_file(detector: str = 'gt') -> str:
  return f'data_2d_h36m_{detector}.npz'


# The paper's split (docs/paper.md): train on S1, S5, S6, S7, S8; test on S9, S11.
H36M_SPLIT = ('S1,S5,S6,S7,S8', 'S9,S11')


def _normalising_transform(points: np.ndarray) -> np.ndarray:
  """Hartley's similarity: centroid to 0, mean distance sqrt(d); ``[d + 1, d + 1]``."""
  d = points.shape[-1]
  centre = points.mean(0)
  spread = np.sqrt(((points - centre) ** 2).sum(-1)).mean()
  s = np.sqrt(d) / max(spread, 1e-12)
  transform = np.eye(d + 1)
  transform[:d, :d] *= s
  transform[:d, d] = -s * centre
  return transform


def fit_projective_camera(points3d: np.ndarray, keypoints: np.ndarray) -> dict[str, Any]:
  """A pinhole camera from 3D–2D correspondences: normalised DLT, then an RQ split into K [R | t].

  Human3.6M's 2D files carry no extrinsics, so the camera frame in which the 3D is scored is
  recovered from the 2D itself: the ground-truth 2D is an exact projection of the 3D (up to the
  lenses' small distortion), so thousands of correspondences pin the camera down.

  Args:
    points3d: ``[N, 3]`` world points (N >= 6, not all coplanar).
    keypoints: ``[N, 2]`` their pixels.

  Returns:
    ``{'K': [3, 3] intrinsics (K[2, 2] = 1, positive focal lengths), 'R': [3, 3] rotation
    (det +1), 't': [3] translation (world units), 'rms': reprojection RMS in pixels}``; the
    camera frame is ``R @ X + t`` with the subject in front (z > 0).

  Raises:
    ValueError: too few points, a degenerate configuration, or points behind the camera.
  """
  x = np.asarray(points3d, np.float64)
  u = np.asarray(keypoints, np.float64)
  if x.ndim != 2 or x.shape[1] != 3 or u.shape != x.shape[:1] + (2,):
    raise ValueError(f'fit_projective_camera: points3d {x.shape} and keypoints {u.shape}; expected [N, 3], [N, 2]')
  if len(x) < 6:
    raise ValueError(f'fit_projective_camera needs at least 6 correspondences, got {len(x)}')
  t3, t2 = _normalising_transform(x), _normalising_transform(u)
  xn = np.c_[x, np.ones(len(x))] @ t3.T
  un = (np.c_[u, np.ones(len(u))] @ t2.T)[:, :2]
  zero = np.zeros_like(xn)
  rows = np.concatenate(
      [np.c_[xn, zero, -un[:, :1] * xn], np.c_[zero, xn, -un[:, 1:] * xn]]
  )  # [2N, 12]: the DLT equations of p = vec(P) by rows.
  eigvals, eigvecs = np.linalg.eigh(rows.T @ rows)
  if eigvals[1] <= 1e-10 * eigvals[-1]:
    raise ValueError('fit_projective_camera: degenerate correspondences (coplanar or repeated points?)')
  p = np.linalg.inv(t2) @ eigvecs[:, 0].reshape(3, 4) @ t3
  # RQ of M = P[:, :3] via QR of the row-reversed transpose.
  flip = np.eye(3)[::-1]
  q, r = np.linalg.qr((flip @ p[:, :3]).T)
  k, rot = flip @ r.T @ flip, flip @ q.T
  signs = np.diag(np.sign(np.diag(k)))
  k, rot = k @ signs, signs @ rot
  if np.linalg.det(rot) < 0:  # P is known up to sign: take the one with a proper rotation.
    p, rot = -p, -rot
  scale = k[2, 2]
  k = k / scale
  t = np.linalg.solve(k, p[:, 3]) / scale
  cam = x @ rot.T + t
  if np.median(cam[:, 2]) <= 0:
    raise ValueError('fit_projective_camera: the points lie behind the fitted camera')
  proj = cam @ k.T
  rms = float(np.sqrt(np.mean(np.sum((proj[:, :2] / proj[:, 2:] - u) ** 2, -1))))
  return {'K': k, 'R': rot, 't': t, 'rms': rms}


def camera_frame_views(
    points3d: np.ndarray, keypoints: np.ndarray, *, name: str = '', max_fit_frames: int = 2000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Real cameras' views of one sequence: camera-frame 3D and 2D in millimetres at the root's depth.

  Each camera is fitted to the 2D (:func:`fit_projective_camera`, on up to ``max_fit_frames``
  evenly spaced frames). The 2D, relative to the principal point, is multiplied per frame by
  ``z_root / f``: the weak-perspective scale that C3DPO's preprocessed Human3.6M applies per
  sample, so inputs and errors are in millimetres and no scale is fitted at evaluation. It is
  the one number per frame taken from the 3D file; the relative depth stays unobserved.

  Args:
    points3d: ``[F, P, 3]`` world-frame 3D (mm).
    keypoints: ``[C, F, P, 2]`` pixels per camera; NaN marks a missing point.
    name: the sequence, for error messages.
    max_fit_frames: frames used to fit each camera.

  Returns:
    ``(points_cam [C, F, P, 3] mm, keypoints [C, F, P, 2] mm, visibility [C, F, P])``, in the
    library's camera frame (x right, y up, z towards the camera, as the cmu17 views).

  Raises:
    ValueError: a camera's 2D is not a projection of the 3D (reprojection RMS over 5% of the
      2D's spread), naming the sequence and camera.
  """
  points3d = np.asarray(points3d, np.float64)
  keypoints = np.asarray(keypoints, np.float64)
  num_frames = points3d.shape[0]
  fit_frames = np.unique(np.linspace(0, num_frames - 1, min(num_frames, max_fit_frames)).round().astype(int))
  views, keypoints_mm, visibility = [], [], []
  for c, uv in enumerate(keypoints):
    seen = np.isfinite(uv).all(-1)
    sel = seen[fit_frames]
    try:
      cam = fit_projective_camera(points3d[fit_frames][sel], uv[fit_frames][sel])
    except ValueError as e:
      raise ValueError(f'{name} camera {c}: {e}') from e
    spread = float(np.std(uv[seen], axis=0).mean())
    if cam['rms'] > 0.05 * spread:
      raise ValueError(
          f'{name} camera {c}: its 2D is not a projection of the 3D (reprojection RMS {cam["rms"]:.3g} px '
          f'against a spread of {spread:.3g} px); are the 2D and 3D files of the same recording?'
      )
    k, rot, t = cam['K'], cam['R'], cam['t']
    points_cam = points3d @ rot.T + t  # OpenCV's frame: x right, y down, z away from the camera
    depth = points_cam[:, :1, 2:]  # [F, 1, 1] the root's
    centred = np.where(seen[..., None], uv, 0.0) - k[:2, 2]
    mm = centred * depth / np.array([k[0, 0], k[1, 1]])
    # The library's camera frame (data.orthographic_views, predict): x right, y up, z towards the
    # camera; a proper rotation of OpenCV's (about x by 180 degrees).
    points_cam = points_cam * np.array([1.0, -1.0, -1.0])
    mm = mm * np.array([1.0, -1.0])
    views.append(points_cam)
    keypoints_mm.append(np.where(seen[..., None], mm, 0.0))
    visibility.append(seen)
  return (
      np.stack(views).astype(np.float32),
      np.stack(keypoints_mm).astype(np.float32),
      np.stack(visibility).astype(np.float32),
  )
