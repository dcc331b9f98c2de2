"""Bundled CMU motion capture (17 Human3.6M-order joints), orthographic cameras, observations.

World frame of the mocap: millimetres, y up. Cameras follow docs/benchmarks.md protocol A exactly:
`R_cam = R_x(elevation) @ R_y(azimuth)`, `X_c = R_cam @ X_world`, 2D observations
`X_c[..., :2]`, hidden depth `X_c[..., 2]`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from nrsfm_jax.data._io import PathLike, check_outliers, first_non_finite, read_npz

ASSETS_DIR: Path = Path(__file__).resolve().parent / 'assets'
CMU_MOCAP_PATH: Path = ASSETS_DIR / 'cmu_mocap_17j.npz'
NRSFM_DIR: Path = ASSETS_DIR / 'nrsfm_mocap'
NRSFM_SEQUENCES: tuple[str, ...] = ('drink', 'pickup', 'yoga', 'stretch', 'dance')

CMU_JOINTS: tuple[str, ...] = tuple(json.loads(CMU_MOCAP_PATH.with_suffix('.json').read_text())['joints'])

_BONE_NAMES = (
    ('Hip', 'RHip'),
    ('RHip', 'RKnee'),
    ('RKnee', 'RFoot'),
    ('Hip', 'LHip'),
    ('LHip', 'LKnee'),
    ('LKnee', 'LFoot'),
    ('Hip', 'Spine'),
    ('Spine', 'Thorax'),
    ('Thorax', 'Neck'),
    ('Neck', 'Head'),
    ('Thorax', 'LShoulder'),
    ('LShoulder', 'LElbow'),
    ('LElbow', 'LWrist'),
    ('Thorax', 'RShoulder'),
    ('RShoulder', 'RElbow'),
    ('RElbow', 'RWrist'),
)
# Skeleton edges as (parent, child) joint indices into CMU_JOINTS (Human3.6M order).
CMU_BONES: tuple[tuple[int, int], ...] = tuple((CMU_JOINTS.index(a), CMU_JOINTS.index(b)) for a, b in _BONE_NAMES)


# Hinge joints of a human skeleton as (a, b, c, l, r) indices into CMU_JOINTS: the limb a -> b -> c
# bends at b about the axis l -> r with a positive sign (losses.hinge_bend): knees flex backwards,
# elbows forwards; a depth-flipped limb has the other sign. On the bundled mocap the knees have the
# sign on 98.5-100% of each subject's frames, the elbows on 76-100% (lowest: 005, dancing, whose
# arms twist at the shoulder).
_HINGE_NAMES = (
    ('RHip', 'RKnee', 'RFoot', 'RHip', 'LHip'),
    ('LHip', 'LKnee', 'LFoot', 'RHip', 'LHip'),
    ('RShoulder', 'RElbow', 'RWrist', 'LShoulder', 'RShoulder'),
    ('LShoulder', 'LElbow', 'LWrist', 'LShoulder', 'RShoulder'),
)
CMU_HINGES: tuple[tuple[int, int, int, int, int], ...] = tuple(
    tuple(CMU_JOINTS.index(n) for n in names) for names in _HINGE_NAMES  # type: ignore[misc]
)

# Bone pairs of equal length on a human skeleton (left and right limbs), as indices into CMU_BONES.
CMU_BONE_PAIRS: tuple[tuple[int, int], ...] = tuple(
    (_BONE_NAMES.index((a, b)), _BONE_NAMES.index((c, d)))
    for (a, b), (c, d) in (
        (('Hip', 'RHip'), ('Hip', 'LHip')),
        (('RHip', 'RKnee'), ('LHip', 'LKnee')),
        (('RKnee', 'RFoot'), ('LKnee', 'LFoot')),
        (('Thorax', 'RShoulder'), ('Thorax', 'LShoulder')),
        (('RShoulder', 'RElbow'), ('LShoulder', 'LElbow')),
        (('RElbow', 'RWrist'), ('LElbow', 'LWrist')),
    )
)


def _mocap_path(path: PathLike | None) -> Path:
  return CMU_MOCAP_PATH if path is None else Path(path)


def load_mocap_info(path: PathLike | None = None) -> dict:
  """Reads the json that describes a mocap file: the json with the same stem beside it.

  Args:
    path: A mocap `.npz`; None for the bundled `cmu_mocap_17j.npz`.

  Returns:
    The parsed json (keys 'joints', 'units', 'up_axis', 'sequences' for the bundled file,
    'sequences' mapping trial key -> {'subject', 'frames', 'fps', 'description'}), or {} if
    there is no such json.
  """
  info_path = _mocap_path(path).with_suffix('.json')
  if not info_path.is_file():
    return {}
  try:
    return json.loads(info_path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f'{info_path}: invalid json ({e})') from e


def _subject_of(key: str, info: dict) -> str:
  return str(info.get('sequences', {}).get(key, {}).get('subject', key.split('_')[0]))


def list_subjects(path: PathLike | None = None) -> list[str]:
  """The sorted subjects of a mocap file (a trial 'SSS_TT' belongs to subject 'SSS')."""
  path = _mocap_path(path)
  if not path.is_file():
    raise FileNotFoundError(f'no such mocap file: {path}')
  info = load_mocap_info(path)
  with np.load(path) as archive:
    return sorted({_subject_of(key, info) for key in archive.files})


def select_trials(path, arrays, info: dict, subjects: Iterable[str] | str) -> list[str]:
  """The trial keys of ``arrays`` that ``subjects`` selects (see :func:`load_mocap`), sorted.

  Raises:
    ValueError: an entry names no subject or trial of the file (the available subjects are
      listed), or nothing is left.
  """
  entries = [str(s) for s in ([subjects] if isinstance(subjects, str) else subjects)]
  subject_of = {key: _subject_of(key, info) for key in arrays}
  available = sorted(set(subject_of.values()))

  def matches(entry: str) -> set[str]:
    found = {k for k in arrays if k == entry or subject_of[k] == entry}
    if not found:
      raise ValueError(f'{path}: unknown subject or trial {entry!r}; available subjects: {available}')
    return found

  keep = set().union(*(matches(e) for e in entries if not e.startswith('-')))
  for entry in (e for e in entries if e.startswith('-')):
    keep -= matches(entry[1:])
  if not keep:
    raise ValueError(f'{path}: {entries} selects no trial')
  return sorted(keep)


def load_mocap(path: PathLike | None = None, subjects: Iterable[str] | str | None = None) -> dict[str, np.ndarray]:
  """Loads 3D mocap trials.

  Args:
    path: An `.npz` with one array per trial; None for the bundled CMU file (46 trials of
      subjects 002, 003, 005, 006; millimetres, y up, 60 fps).
    subjects: Subjects to keep, e.g. `['002', '003']` (a single string is one subject);
      None keeps all. A trial's subject comes from the json beside the file if it names
      one, else from the key's part before '_'. An entry may also be a trial key
      (`'002_04'`: that trial alone), and a leading '-' removes a trial or subject from
      what the others select (`['002', '003', '-002_04']`: hold a trial back).

  Returns:
    A dict trial key (e.g. '002_01') -> float32 `[F, J, 3]`, keys sorted.

  Raises:
    FileNotFoundError: If `path` does not exist.
    ValueError: If the archive is empty, a requested subject is absent (the message lists the
      available ones), or a trial is not `[F, J, 3]` with F, J > 0, holds a non-finite value or
      a gross outlier (over 1000× the typical spread from its frame's median); each message
      names the file and trial.
  """
  path = _mocap_path(path)
  if not path.is_file():
    raise FileNotFoundError(f'no such mocap file: {path}')
  arrays = read_npz(path)
  if not arrays:
    raise ValueError(f'{path}: the archive holds no trials')
  info = load_mocap_info(path)
  if subjects is not None:
    arrays = {k: arrays[k] for k in select_trials(path, arrays, info, subjects)}
  trials = {}
  for key in sorted(arrays):
    points = arrays[key]
    if points.ndim != 3 or points.shape[-1] != 3 or 0 in points.shape:
      raise ValueError(f'{path}: trial {key!r} has shape {points.shape}, expected [F, J, 3] with F, J > 0')
    with np.errstate(over='ignore'):  # Overflow to inf is reported below, naming the point.
      points = points.astype(np.float32, copy=False)
    first_non_finite(
        f'{path}: trial {key!r}', points, '3D point', point='joint', note=': 3D ground truth must be complete'
    )
    check_outliers(f'{path}: trial {key!r}', points, what='3D point')
    trials[key] = points
  return trials


def camera_rotation(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
  """The benchmark camera rotation `R_cam = R_x(elevation) @ R_y(azimuth)`.

  `R_x(a) = [[1, 0, 0], [0, c, -s], [0, s, c]]`, `R_y(a) = [[c, 0, s], [0, 1, 0], [-s, 0, c]]`
  (c = cos a, s = sin a), exactly as docs/benchmarks.md defines it.

  Sign convention: the camera frame is right-handed with image x right and image y up, so the
  camera looks along -z_c (OpenGL) and +z_c points towards it. Its viewing direction in the
  world, `R_cam.T @ [0, 0, -1]`, has y component -sin(elevation): a positive elevation looks
  down on the y-up world, as the benchmark intends (a higher world point gets a larger z_c,
  i.e. is nearer the camera). Reading +z_c as pointing away from the camera would make the
  same matrix look up at a mirrored scene; the benchmark's metrics resolve the depth sign.

  Args:
    azimuth_deg: Rotation about the world's vertical y axis, degrees.
    elevation_deg: Rotation about the camera's x axis, degrees.

  Returns:
    float64 `[3, 3]` rotation.
  """
  a, e = np.deg2rad(azimuth_deg), np.deg2rad(elevation_deg)
  ca, sa, ce, se = np.cos(a), np.sin(a), np.cos(e), np.sin(e)
  r_x = np.array([[1.0, 0.0, 0.0], [0.0, ce, -se], [0.0, se, ce]])
  r_y = np.array([[ca, 0.0, sa], [0.0, 1.0, 0.0], [-sa, 0.0, ca]])
  return r_x @ r_y


def orthographic_views(
    points: np.ndarray, azimuths_deg: Sequence[float] = (45.0, 135.0, 225.0, 315.0), elevation_deg: float = 10.0
) -> np.ndarray:
  """Camera-frame points seen by orthographic cameras around the vertical axis.

  Args:
    points: `[F, J, 3]` world points (y up).
    azimuths_deg: One azimuth per camera, degrees.
    elevation_deg: Elevation shared by all cameras, degrees (see `camera_rotation`).

  Returns:
    float32 `[V, F, J, 3]` camera-frame points `X_c = R_cam @ X_world`; the 2D observations
    are `[..., :2]`, the depth `[..., 2]`.
  """
  points = np.asarray(points)
  if points.ndim != 3 or points.shape[-1] != 3:
    raise ValueError(f'points must be [F, J, 3], got shape {points.shape}')
  rotations = np.stack([camera_rotation(a, elevation_deg) for a in azimuths_deg])
  return np.einsum('vij,fpj->vfpi', rotations, points.astype(np.float64)).astype(np.float32)


def observe(
    points_cam: np.ndarray, *, key_or_seed, noise_std: float = 0.0, dropout: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
  """Orthographic 2D observations with optional Gaussian noise and keypoint dropout.

  Args:
    points_cam: `[..., P, 3]` camera-frame points.
    key_or_seed: Anything `np.random.default_rng` accepts: an int seed, a sequence of
      non-negative ints (e.g. `[seed, trial]`, or a legacy uint32 JAX PRNG key converted
      with `np.asarray`), a `SeedSequence` or a `Generator`. Noise and dropout use
      independent child streams, so the dropout pattern does not depend on `noise_std`.
    noise_std: Standard deviation of the 2D noise, in the units of `points_cam`.
    dropout: Probability that a keypoint is missing (visibility 0, coordinates set to 0).

  Returns:
    (keypoints float32 `[..., P, 2]`, visibility float32 `[..., P]` of 0 or 1).
  """
  points_cam = np.asarray(points_cam)
  if points_cam.ndim < 2 or points_cam.shape[-1] != 3:
    raise ValueError(f'points_cam must be [..., P, 3], got shape {points_cam.shape}')
  if noise_std < 0:
    raise ValueError(f'noise_std must be >= 0, got {noise_std}')
  if not 0.0 <= dropout <= 1.0:
    raise ValueError(f'dropout must be in [0, 1], got {dropout}')
  noise_rng, dropout_rng = np.random.default_rng(key_or_seed).spawn(2)
  keypoints = points_cam[..., :2].astype(np.float64)
  if noise_std > 0:
    keypoints = keypoints + noise_rng.normal(0.0, noise_std, keypoints.shape)
  visibility = np.ones(points_cam.shape[:-1], np.float32)
  if dropout > 0:
    visibility = (dropout_rng.random(visibility.shape) >= dropout).astype(np.float32)
    keypoints = np.where(visibility[..., None] > 0, keypoints, 0.0)
  return keypoints.astype(np.float32), visibility
