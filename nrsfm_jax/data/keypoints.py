"""A user's 2D keypoints from common detector formats, mapped to the model's 17 joints (numpy only).

Formats (:func:`read_keypoints` picks one from the path):

* ``.npz``: ours (:func:`nrsfm_jax.data.load_tracks`): ``keypoints [F, 17, 2]`` already in
  :data:`~nrsfm_jax.data.CMU_JOINTS` order, optional ``visibility [F, 17]``.
* ``.json``: COCO-17 keypoint results as common 2D detectors write them (mmpose, detectron2,
  the COCO results format): a list of person entries, each with ``keypoints`` (17 × [x, y,
  score], flat or nested) and a frame given by ``image_id`` (or ``frame`` / ``frame_id`` /
  ``frame_index``); a dict with an ``annotations`` list (COCO ground-truth layout) works too.
  Frames are ordered by that id; a frame with no entry is a frame with every joint missing.
* a folder of OpenPose ``*_keypoints.json`` files (one per frame, sorted by name), BODY_25 or
  COCO-18 ``pose_keypoints_2d``.
* ``.csv`` with a header naming ``frame, joint, x, y`` and optionally ``score``: one row per
  frame and joint; joints named as in :data:`COCO_JOINTS` or :data:`~nrsfm_jax.data.CMU_JOINTS`
  (or an index into the latter). A (frame, joint) with no row is missing.

Joint mapping to the model's Human3.6M-17 order (:func:`coco_to_h36m`). COCO has 12 of the 17
joints (hips, knees, ankles = feet, shoulders, elbows, wrists); the other five are derived by a
fixed formula from the *face centre* ``f`` (mean of the visible nose, eyes and ears), the
shoulder midpoint ``s`` and the hip midpoint ``h``, with ratios measured on the bundled CMU
rig, the skeleton the shipped model was trained on::

    Hip    = h                      Thorax = s + 0.25 (f - s)
    Spine  = h + 0.25 (s - h)       Neck   = s + 0.60 (f - s)
    Head   = f

A derived joint is missing when one of its sources is; its score is the smallest of theirs.
Points whose detector score is below ``min_score`` become missing (visibility 0).
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import json
import os
from typing import Any

import numpy as np

from nrsfm_jax.data._io import PathLike
from nrsfm_jax.data.mocap import CMU_JOINTS
from nrsfm_jax.data.tracks import load_tracks

COCO_JOINTS: tuple[str, ...] = (
    'nose', 'left_eye', 'right_eye', 'left_ear', 'right_ear',
    'left_shoulder', 'right_shoulder', 'left_elbow', 'right_elbow', 'left_wrist', 'right_wrist',
    'left_hip', 'right_hip', 'left_knee', 'right_knee', 'left_ankle', 'right_ankle',
)  # fmt: skip
# OpenPose BODY_25 index of each COCO-17 joint (BODY_25 adds neck 1, mid-hip 8 and the feet).
BODY25_TO_COCO: tuple[int, ...] = (0, 16, 15, 18, 17, 5, 2, 6, 3, 7, 4, 12, 9, 13, 10, 14, 11)
# OpenPose COCO-18 (BODY_18) index of each COCO-17 joint (COCO-18 adds the neck at 1).
BODY18_TO_COCO: tuple[int, ...] = (0, 15, 14, 17, 16, 5, 2, 6, 3, 7, 4, 11, 8, 12, 9, 13, 10)
# Model joint -> COCO joint for the 12 joints COCO has (the others are derived).
_DIRECT = {
    'RHip': 'right_hip', 'RKnee': 'right_knee', 'RFoot': 'right_ankle',
    'LHip': 'left_hip', 'LKnee': 'left_knee', 'LFoot': 'left_ankle',
    'LShoulder': 'left_shoulder', 'LElbow': 'left_elbow', 'LWrist': 'left_wrist',
    'RShoulder': 'right_shoulder', 'RElbow': 'right_elbow', 'RWrist': 'right_wrist',
}  # fmt: skip
# Derived joints: (start, end, t) gives start + t (end - start) of the midpoints/face centre.
_DERIVED = {
    'Hip': ('hips', 'hips', 0.0),
    'Spine': ('hips', 'shoulders', 0.25),
    'Thorax': ('shoulders', 'face', 0.25),
    'Neck': ('shoulders', 'face', 0.60),
    'Head': ('face', 'face', 0.0),
}
_FACE = tuple(COCO_JOINTS.index(n) for n in ('nose', 'left_eye', 'right_eye', 'left_ear', 'right_ear'))
FORMATS = ('npz', 'coco', 'openpose', 'csv')


@dataclasses.dataclass(frozen=True)
class Keypoints2D:
  """2D keypoints in the model's joint order.

  Attributes:
    keypoints: ``[F, 17, 2]`` float32 in the input's units and image convention (missing: 0).
    visibility: ``[F, 17]`` float32 in [0, 1]; 0 marks a missing point.
    frames: ``[F]`` the frame ids of the input (image ids, file indices, CSV frames).
    source: ``'npz'``, ``'coco'``, ``'openpose'`` or ``'csv'``.
    path: the file or folder read.
  """

  keypoints: np.ndarray
  visibility: np.ndarray
  frames: np.ndarray
  source: str
  path: str


def coco_to_h36m(keypoints: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """COCO-17 2D keypoints to the model's 17 joints (formulas in the module docstring).

  Args:
    keypoints: ``[..., 17, 2]`` in COCO order.
    scores: ``[..., 17]`` confidences (0 = missing; the caller thresholds).

  Returns:
    ``(keypoints [..., 17, 2], scores [..., 17])`` in :data:`~nrsfm_jax.data.CMU_JOINTS` order;
    a derived joint's score is the smallest of its sources' (0 where a source is missing).
  """
  kp = np.asarray(keypoints, np.float64)
  sc = np.asarray(scores, np.float64)
  if kp.shape[-2:] != (17, 2) or sc.shape != kp.shape[:-1]:
    raise ValueError(f'coco_to_h36m: keypoints {kp.shape} and scores {sc.shape}; expected [..., 17, 2] and [..., 17]')
  idx = {n: i for i, n in enumerate(COCO_JOINTS)}

  def pair(a, b):
    ia, ib = idx[a], idx[b]
    return (kp[..., ia, :] + kp[..., ib, :]) / 2, np.minimum(sc[..., ia], sc[..., ib])

  face_w = (sc[..., _FACE] > 0).astype(np.float64)
  count = face_w.sum(-1)
  face = np.einsum('...j,...jd->...d', face_w, kp[..., _FACE, :]) / np.maximum(count, 1)[..., None]
  face_score = np.where(count > 0, np.max(np.where(face_w > 0, sc[..., _FACE], 0.0), -1), 0.0)
  anchors = {'hips': pair('left_hip', 'right_hip'), 'shoulders': pair('left_shoulder', 'right_shoulder')}
  anchors['face'] = (face, face_score)
  out_kp = np.zeros(kp.shape[:-2] + (len(CMU_JOINTS), 2))
  out_sc = np.zeros(sc.shape[:-1] + (len(CMU_JOINTS),))
  for j, name in enumerate(CMU_JOINTS):
    if name in _DIRECT:
      out_kp[..., j, :], out_sc[..., j] = kp[..., idx[_DIRECT[name]], :], sc[..., idx[_DIRECT[name]]]
    else:
      (a, sa), (b, sb) = anchors[_DERIVED[name][0]], anchors[_DERIVED[name][1]]
      out_kp[..., j, :] = a + _DERIVED[name][2] * (b - a)
      out_sc[..., j] = np.minimum(sa, sb)
  out_kp = np.where(out_sc[..., None] > 0, out_kp, 0.0)
  return out_kp.astype(np.float32), out_sc.astype(np.float32)


def h36m_to_coco(keypoints: np.ndarray) -> np.ndarray:
  """The model's 17 joints as COCO-17 (the 12 shared joints; every face point at the Head joint).

  A stand-in for a detector's output, for demos and tests: :func:`coco_to_h36m` maps it back to
  the same 12 joints and the same Head, Hip and shoulder midpoint.

  Args:
    keypoints: ``[..., 17, 2]`` in :data:`~nrsfm_jax.data.CMU_JOINTS` order.

  Returns:
    ``[..., 17, 2]`` in :data:`COCO_JOINTS` order.
  """
  keypoints = np.asarray(keypoints)
  coco = np.zeros_like(keypoints)
  for joint, name in _DIRECT.items():
    coco[..., COCO_JOINTS.index(name), :] = keypoints[..., CMU_JOINTS.index(joint), :]
  coco[..., list(_FACE), :] = keypoints[..., None, CMU_JOINTS.index('Head'), :]
  return coco


def write_coco_json(path: PathLike, keypoints: np.ndarray, scores: np.ndarray | None = None) -> str:
  """Writes COCO-17 keypoints ``[F, 17, 2]`` (scores ``[F, 17]``, default 1) as detector results, one per frame."""
  keypoints = np.asarray(keypoints, np.float64)
  scores = np.ones(keypoints.shape[:2]) if scores is None else np.asarray(scores, np.float64)
  entries = [
      {'image_id': f, 'category_id': 1, 'keypoints': np.concatenate([kp, sc[:, None]], -1).round(3).ravel().tolist()}
      for f, (kp, sc) in enumerate(zip(keypoints, scores))
  ]
  with open(path, 'w') as f:
    json.dump(entries, f)
  return str(path)


def _triples(where: str, flat: Any, count: int) -> np.ndarray:
  """``[count, 3]`` (x, y, score) from a flat or nested keypoint list."""
  try:
    arr = np.asarray(flat, np.float64)
  except (TypeError, ValueError) as e:
    raise ValueError(f'{where}: keypoints are not numbers ({e})') from e
  if arr.size != 3 * count:
    raise ValueError(f'{where}: {arr.size} keypoint values, expected {count} joints × (x, y, score) = {3 * count}')
  return arr.reshape(count, 3)


def _read_json(path: str) -> Any:
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}: not valid JSON ({e})') from e


_FRAME_KEYS = ('image_id', 'frame', 'frame_id', 'frame_index')


def read_coco_json(path: PathLike, *, person: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """COCO-17 detections of one person per frame: ``(keypoints [F, 17, 2], scores [F, 17], frame ids [F])``.

  ``person``: which entry of each frame, in the file's order (frames with fewer entries are
  missing). Frame ids are sorted numerically when they are all integers, else as strings.
  """
  path = str(path)
  entries = _read_json(path)
  if isinstance(entries, dict):
    if 'annotations' not in entries:
      raise ValueError(f"{path}: a dict without 'annotations'; expected a list of person entries (COCO results)")
    entries = entries['annotations']
  if not isinstance(entries, list) or not entries:
    raise ValueError(f'{path}: expected a non-empty list of person entries with keypoints and image_id')
  by_frame: dict[Any, list[np.ndarray]] = {}
  for i, entry in enumerate(entries):
    where = f'{path}: entry {i}'
    if not isinstance(entry, dict) or 'keypoints' not in entry:
      raise ValueError(f"{where} has no 'keypoints' (expected 17 × [x, y, score])")
    frame = next((entry[k] for k in _FRAME_KEYS if k in entry), None)
    if frame is None:
      raise ValueError(f'{where} has none of {list(_FRAME_KEYS)} to say which frame it is')
    by_frame.setdefault(frame, []).append(_triples(where, entry['keypoints'], 17))
  ids = list(by_frame)
  numeric = all(isinstance(f, (int, float)) and not isinstance(f, bool) for f in ids)
  ids = sorted(ids) if numeric else sorted(ids, key=str)
  triples = np.zeros((len(ids), 17, 3))
  for f, frame in enumerate(ids):
    people = by_frame[frame]
    if person < len(people):
      triples[f] = people[person]
  if person > 0 and not any(person < len(by_frame[f]) for f in ids):
    raise ValueError(f'{path}: no frame has a person {person} (at most {max(map(len, by_frame.values()))} per frame)')
  return triples[..., :2], triples[..., 2], np.asarray(ids)


def read_openpose_dir(path: PathLike, *, person: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """OpenPose per-frame JSON files (BODY_25 or COCO-18) as COCO-17: ``(keypoints, scores, frame indices)``."""
  path = str(path)
  files = sorted(glob.glob(os.path.join(path, '*_keypoints.json'))) or sorted(glob.glob(os.path.join(path, '*.json')))
  if not files:
    raise ValueError(f'{path}: no OpenPose *_keypoints.json files in this folder')
  triples = np.zeros((len(files), 17, 3))
  for f, name in enumerate(files):
    doc = _read_json(name)
    if not isinstance(doc, dict) or 'people' not in doc:
      raise ValueError(f"{name}: no 'people' list; expected OpenPose's per-frame JSON")
    people = doc['people']
    if person >= len(people):
      continue
    flat = people[person].get('pose_keypoints_2d')
    if flat is None:
      raise ValueError(f"{name}: person {person} has no 'pose_keypoints_2d'")
    n = len(flat) // 3
    if n not in (25, 18) or len(flat) % 3:
      raise ValueError(f"{name}: 'pose_keypoints_2d' has {len(flat)} values; expected BODY_25 (75) or COCO-18 (54)")
    arr = _triples(name, flat, n)
    triples[f] = arr[list(BODY25_TO_COCO if n == 25 else BODY18_TO_COCO)]
  return triples[..., :2], triples[..., 2], np.arange(len(files))


def read_csv(path: PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
  """A long CSV: ``(keypoints [F, J, 2], scores [F, J], frame ids [F], 'coco' | 'h36m')``."""
  path = str(path)
  with open(path, newline='') as handle:
    reader = csv.DictReader(handle)
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    missing = [c for c in ('frame', 'joint', 'x', 'y') if c not in header]
    if missing:
      raise ValueError(f'{path}: the header {reader.fieldnames} lacks {missing}; expected frame, joint, x, y[, score]')
    rows = [{k.strip().lower(): v for k, v in row.items() if k is not None} for row in reader]
  if not rows:
    raise ValueError(f'{path}: no data rows')
  joints = {r['joint'].strip() for r in rows}
  lower_coco = {n.lower(): i for i, n in enumerate(COCO_JOINTS)}
  lower_h36m = {n.lower(): i for i, n in enumerate(CMU_JOINTS)}
  if all(j.lower() in lower_coco for j in joints):
    names, skeleton = lower_coco, 'coco'
  elif all(j.lower() in lower_h36m or (j.isdigit() and int(j) < len(CMU_JOINTS)) for j in joints):
    names, skeleton = dict(lower_h36m, **{str(i): i for i in range(len(CMU_JOINTS))}), 'h36m'
  else:
    raise ValueError(
        f'{path}: joints {sorted(joints)[:5]}... are neither all COCO-17 names {COCO_JOINTS[:3]}... nor all '
        f'model joints {CMU_JOINTS[:3]}... (or indices 0-16 into them)'
    )
  try:
    frames = sorted({int(r['frame']) for r in rows})
  except ValueError as e:
    raise ValueError(f'{path}: the frame column must hold integers ({e})') from e
  row_of = {f: i for i, f in enumerate(frames)}
  kp = np.zeros((len(frames), 17, 2))
  sc = np.zeros((len(frames), 17))
  for line, r in enumerate(rows, start=2):
    try:
      x, y = float(r['x']), float(r['y'])
      score = float(r['score']) if r.get('score', '') not in ('', None) else 1.0
    except ValueError as e:
      raise ValueError(f'{path}, line {line}: x, y and score must be numbers ({e})') from e
    row, j = row_of[int(r['frame'])], names[r['joint'].strip().lower()]
    if np.isfinite(x) and np.isfinite(y):
      kp[row, j], sc[row, j] = (x, y), score
  return kp, sc, np.asarray(frames), skeleton


def detect_format(path: PathLike) -> str:
  """``'npz'``, ``'coco'`` (``.json``), ``'openpose'`` (a folder) or ``'csv'`` from the path."""
  path = str(path)
  if os.path.isdir(path):
    return 'openpose'
  ext = os.path.splitext(path)[1].lower()
  formats = {'.npz': 'npz', '.json': 'coco', '.csv': 'csv'}
  if ext not in formats:
    raise ValueError(f'{path}: cannot tell the format from the name; expected .npz, .json, .csv or a folder')
  return formats[ext]


def read_keypoints(path: PathLike, *, fmt: str = 'auto', person: int = 0, min_score: float = 0.3) -> Keypoints2D:
  """Reads one person's 2D keypoints in the model's 17-joint order.

  Args:
    path: a file or (OpenPose) folder; see the module docstring for the formats.
    fmt: one of :data:`FORMATS`, or ``'auto'`` (:func:`detect_format`).
    person: which person of each frame (detector formats).
    min_score: detector scores below this become missing points (not for ``.npz``).

  Raises:
    FileNotFoundError: no such file or folder.
    ValueError: a malformed file (the message names it and what was expected), or no point
      at all scores at least ``min_score``.
  """
  path = str(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f'no such file or folder: {path}')
  fmt = detect_format(path) if fmt == 'auto' else fmt
  if fmt not in FORMATS:
    raise ValueError(f'unknown keypoint format {fmt!r}; expected one of {FORMATS} or auto')
  if person < 0:
    raise ValueError(f'person must be >= 0, got {person}')
  if fmt == 'npz':
    keypoints, visibility = load_tracks(path)
    if keypoints.shape[1] != len(CMU_JOINTS):
      raise ValueError(f"{path}: 'keypoints' has {keypoints.shape[1]} joints; the model takes {len(CMU_JOINTS)}")
    return Keypoints2D(keypoints, visibility, np.arange(len(keypoints)), fmt, path)
  if fmt == 'coco':
    kp, sc, frames = read_coco_json(path, person=person)
    skeleton = 'coco'
  elif fmt == 'openpose':
    kp, sc, frames = read_openpose_dir(path, person=person)
    skeleton = 'coco'
  else:
    kp, sc, frames, skeleton = read_csv(path)
  sc = np.where(np.isfinite(kp).all(-1) & (sc >= min_score), sc, 0.0)
  if skeleton == 'coco':
    kp, sc = coco_to_h36m(kp, sc)
  visibility = (sc > 0).astype(np.float32)
  if not visibility.any():
    raise ValueError(f'{path}: no keypoint has a score of at least min_score={min_score}')
  keypoints = np.where(visibility[..., None] > 0, kp, 0.0).astype(np.float32)
  return Keypoints2D(keypoints, visibility, frames, fmt, path)
