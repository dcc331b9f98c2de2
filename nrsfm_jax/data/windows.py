"""Windows of L frames (stride L), 2D normalisation, window datasets and stateless batching.

Every frame of every (sequence, view) lands in exactly one window; the last window of a
sequence is padded (mask 0), and a sequence shorter than L becomes one padded window, so
nothing is dropped and `reassemble` recovers full sequences for evaluation.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nrsfm_jax.data._io import PathLike
from nrsfm_jax.data.mocap import load_mocap, observe, orthographic_views
from nrsfm_jax.data.nrsfm import load_nrsfm_sequence, nrsfm_sequence_path
from nrsfm_jax.data.tracks import load_tracks


def window_starts(num_frames: int, length: int) -> np.ndarray:
  """First frames of the windows covering `num_frames` frames: 0, L, 2L, ... (stride L).

  Returns:
    int64 `[ceil(num_frames / length)]`.
  """
  if length < 1:
    raise ValueError(f'window length must be >= 1, got {length}')
  if num_frames < 1:
    raise ValueError(f'a sequence needs at least one frame, got {num_frames}')
  return np.arange(0, num_frames, length)


def make_windows(array: np.ndarray, length: int, *, pad_value: float = 0) -> tuple[np.ndarray, np.ndarray]:
  """Cuts a sequence into windows of `length` frames, padding the last one.

  Args:
    array: `[F, ...]`, frames first.
    length: Window length L.
    pad_value: Value of the padded frames.

  Returns:
    (windows `[N, L, ...]` of `array`'s dtype, mask float32 `[N, L]`: 1 on real frames, 0 on
    padding), N = ceil(F / L).
  """
  array = np.asarray(array)
  num_frames = array.shape[0] if array.ndim else 0
  num_windows = len(window_starts(num_frames, length))
  pad = num_windows * length - num_frames
  padded = np.concatenate([array, np.full((pad, *array.shape[1:]), pad_value, array.dtype)])
  mask = (np.arange(num_windows * length) < num_frames).astype(np.float32)
  return (padded.reshape(num_windows, length, *array.shape[1:]), mask.reshape(num_windows, length))


def unwindow(windows: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Inverse of `make_windows`: the real frames of `windows`, concatenated in order.

  Args:
    windows: `[N, L, ...]`.
    mask: `[N, L]`, nonzero on real frames.

  Returns:
    `[F, ...]` with F = the number of nonzero mask entries.
  """
  windows, mask = np.asarray(windows), np.asarray(mask)
  if windows.shape[:2] != mask.shape:
    raise ValueError(f'windows {windows.shape} and mask {mask.shape} disagree on [N, L]')
  return windows.reshape(-1, *windows.shape[2:])[mask.reshape(-1) > 0]


def center_2d(keypoints: np.ndarray, visibility: np.ndarray, xp: Any = np) -> tuple[np.ndarray, np.ndarray]:
  """Centres each frame on the visibility-weighted mean of its points.

  The one definition of the 2D normalisation's centring: datasets use it with
  numpy, the exported predictor (``checkpoint.load_exported``) with
  ``xp=jax.numpy`` inside jit.

  Args:
    keypoints: `[..., P, 2]`.
    visibility: `[..., P]` weights in [0, 1].
    xp: the array namespace, `numpy` (default) or `jax.numpy`.

  Returns:
    (centred `[..., P, 2]` with invisible points set to 0 so that their dummy
    coordinates never reach a model, centroid `[..., 2]`, 0 for frames without a visible
    point). Both float32.
  """
  keypoints = xp.asarray(keypoints, xp.float32)
  visibility = xp.asarray(visibility, xp.float32)
  if keypoints.shape[-1] != 2 or visibility.shape != keypoints.shape[:-1]:
    raise ValueError(
        f'expected keypoints [..., P, 2] and visibility [..., P], got ' f'{keypoints.shape} and {visibility.shape}'
    )
  weight = visibility[..., None]
  total = weight.sum(axis=-2)
  centroid = (keypoints * weight).sum(axis=-2) / xp.maximum(total, 1e-12)
  centroid = xp.where(total > 0, centroid, 0.0).astype(xp.float32)
  centred = xp.where(weight > 0, keypoints - centroid[..., None, :], 0.0)
  return centred.astype(xp.float32), centroid


def dataset_scale(centred_keypoints: np.ndarray, visibility: np.ndarray) -> float:
  """One dataset-level scale: the RMS of the centred visible coordinates, per coordinate.

  `sqrt(sum(v * (x**2 + y**2)) / (2 * sum(v)))` over all points with visibility v, i.e. the
  root mean square of the x and y entries of the visible points (not of the point radii).

  Args:
    centred_keypoints: `[..., P, 2]`, e.g. from `center_2d`.
    visibility: `[..., P]`.

  Returns:
    The scale, in the keypoints' units.
  """
  keypoints = np.asarray(centred_keypoints, np.float64)
  visibility = np.asarray(visibility, np.float64)
  total = visibility.sum()
  if total <= 0:
    raise ValueError('no visible keypoint to compute a scale from')
  scale = float(np.sqrt((visibility * (keypoints**2).sum(-1)).sum() / (2 * total)))
  if not np.isfinite(scale) or scale <= 0:
    raise ValueError(f'degenerate keypoint scale {scale} (all visible points coincide?)')
  return scale


@dataclasses.dataclass(frozen=True, eq=False)
class WindowDataset:
  """Windows of normalised 2D keypoints (and optional 3D truth) from several sequences/views.

  Attributes:
    keypoints: float32 `[N, L, P, 2]`, centred per frame and divided by `scale`; 0 where
      invisible or padded.
    visibility: float32 `[N, L, P]`, 0 on missing points and on padded frames.
    mask: float32 `[N, L]`, 1 on real frames, 0 on padding.
    points3d: float32 `[N, L, P, 3]` camera-frame 3D in the data's original units (not
      centred, not scaled), 0 on padding; or None.
    scale: The dataset-level 2D scale (original units); pass it to `build_dataset` for
      validation data and store it with the checkpoint.
    sequence_ids: int32 `[N]`, index into `names`.
    view_ids: int32 `[N]`, the camera index within the sequence.
    starts: int32 `[N]`, first frame of each window in its sequence.
    names: One name per sequence, e.g. '002_01' or 'drink'.
    centroids: float32 `[N, L, 2]` per-frame 2D centroids in original units (add back after
      multiplying by `scale` to return to the input's coordinates), or None.
  """

  keypoints: np.ndarray
  visibility: np.ndarray
  mask: np.ndarray
  points3d: np.ndarray | None
  scale: float
  sequence_ids: np.ndarray
  view_ids: np.ndarray
  starts: np.ndarray
  names: tuple[str, ...]
  centroids: np.ndarray | None = None

  def __post_init__(self):
    n, length, p = self.keypoints.shape[:3]
    expected = {
        'keypoints': (n, length, p, 2),
        'visibility': (n, length, p),
        'mask': (n, length),
        'points3d': (n, length, p, 3),
        'sequence_ids': (n,),
        'view_ids': (n,),
        'starts': (n,),
        'centroids': (n, length, 2),
    }
    for field, shape in expected.items():
      value = getattr(self, field)
      if value is not None and value.shape != shape:
        raise ValueError(f'WindowDataset.{field} has shape {value.shape}, expected {shape}')

  @property
  def num_windows(self) -> int:
    return self.keypoints.shape[0]

  @property
  def window_length(self) -> int:
    return self.keypoints.shape[1]

  @property
  def num_points(self) -> int:
    return self.keypoints.shape[2]

  def take(self, indices: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
    """A batch of windows.

    Args:
      indices: `[B]` window indices.

    Returns:
      {'keypoints' `[B, L, P, 2]`, 'visibility' `[B, L, P]`, 'mask' `[B, L]`,
      'points3d' `[B, L, P, 3]` (only if the dataset has 3D), 'index' int32 `[B]`}.
    """
    indices = np.asarray(indices, np.int32)
    batch = {'keypoints': self.keypoints[indices], 'visibility': self.visibility[indices], 'mask': self.mask[indices]}
    if self.points3d is not None:
      batch['points3d'] = self.points3d[indices]
    batch['index'] = indices
    return batch


def build_dataset(
    sequences: Mapping[str, tuple[np.ndarray | None, np.ndarray, np.ndarray]], length: int, scale: float | None = None
) -> WindowDataset:
  """Windows every (sequence, view) separately and normalises the 2D.

  Args:
    sequences: name -> (points_cam `[V, F, P, 3]` or None, keypoints `[V, F, P, 2]`,
      visibility `[V, F, P]`). F and V may differ between sequences, P may not; either all
      sequences have 3D or none has.
    length: Window length L.
    scale: The 2D scale; None computes it from these sequences (`dataset_scale` of the
      centred keypoints). Pass the training set's scale for validation and test sets.

  Returns:
    A `WindowDataset`, windows ordered by sequence (in `sequences` order), view, start.
  """
  if not sequences:
    raise ValueError('build_dataset needs at least one sequence')
  if len({points is None for points, _, _ in sequences.values()}) > 1:
    raise ValueError('either every sequence has points_cam or none has')
  parts: dict[str, list[np.ndarray]] = {
      k: [] for k in ('keypoints', 'visibility', 'mask', 'points3d', 'centroids', 'sequence_ids', 'view_ids', 'starts')
  }
  num_points = None
  for seq_id, (name, (points, keypoints, visibility)) in enumerate(sequences.items()):
    keypoints = np.asarray(keypoints, np.float32)
    visibility = np.asarray(visibility, np.float32)
    if keypoints.ndim != 4 or keypoints.shape[-1] != 2:
      raise ValueError(f'sequence {name!r}: keypoints has shape {keypoints.shape}, ' 'expected [V, F, P, 2]')
    if visibility.shape != keypoints.shape[:-1]:
      raise ValueError(
          f'sequence {name!r}: visibility has shape {visibility.shape}, ' f'expected {keypoints.shape[:-1]}'
      )
    if points is not None and np.shape(points) != keypoints.shape[:-1] + (3,):
      raise ValueError(
          f'sequence {name!r}: points_cam has shape {np.shape(points)}, ' f'expected {keypoints.shape[:-1] + (3,)}'
      )
    if num_points is not None and keypoints.shape[2] != num_points:
      raise ValueError(f'sequence {name!r} has {keypoints.shape[2]} points, the previous ' f'ones {num_points}')
    num_points = keypoints.shape[2]
    centred, centroid = center_2d(keypoints, visibility)
    for view in range(keypoints.shape[0]):
      windows, mask = make_windows(centred[view], length)
      parts['keypoints'].append(windows)
      parts['mask'].append(mask)
      parts['visibility'].append(make_windows(visibility[view], length)[0])
      parts['centroids'].append(make_windows(centroid[view], length)[0])
      if points is not None:
        parts['points3d'].append(make_windows(np.asarray(points[view], np.float32), length)[0])
      n = len(mask)
      parts['sequence_ids'].append(np.full(n, seq_id, np.int32))
      parts['view_ids'].append(np.full(n, view, np.int32))
      parts['starts'].append(window_starts(keypoints.shape[1], length).astype(np.int32))
  arrays: dict[str, Any] = {k: np.concatenate(v) if v else None for k, v in parts.items()}
  if scale is None:
    scale = dataset_scale(arrays['keypoints'], arrays['visibility'])
  elif not (np.isfinite(scale) and scale > 0):
    raise ValueError(f'scale must be positive and finite, got {scale}')
  arrays['keypoints'] = (arrays['keypoints'] / np.float32(scale)).astype(np.float32)
  return WindowDataset(scale=float(scale), names=tuple(sequences), **arrays)


def cmu17_dataset(
    subjects: Sequence[str] | str | None,
    *,
    length: int = 243,
    path: PathLike | None = None,
    azimuths_deg: Sequence[float] = (45.0, 135.0, 225.0, 315.0),
    elevation_deg: float | Sequence[float] = 10.0,
    noise_std: float = 0.0,
    dropout: float = 0.0,
    seed: int = 0,
    scale: float | None = None,
) -> WindowDataset:
  """The "cmu17" benchmark data: mocap trials seen by orthographic cameras, windowed.

  Args:
    subjects: Subjects to load (None: all in the file); trial keys and '-' hold-backs as in
      `load_mocap` (`'002,003,-002_04'`).
    length: Window length L.
    path: Mocap `.npz`; None for the bundled file.
    azimuths_deg: One camera per azimuth (view id = index here).
    elevation_deg: Camera elevation (see `camera_rotation` for its sign), or several: one ring
      of `azimuths_deg` cameras per elevation.
    noise_std: 2D Gaussian noise, mm.
    dropout: Keypoint dropout probability.
    seed: Noise/dropout seed; each trial draws from `[seed, crc32(trial key)]`, so a trial's
      observations do not depend on which other subjects are loaded.
    scale: 2D scale (None: computed from these trials).

  Returns:
    A `WindowDataset` with names = trial keys and 3D in camera-frame mm.
  """
  return views_dataset(
      load_mocap(path, subjects),
      length=length,
      azimuths_deg=azimuths_deg,
      elevation_deg=elevation_deg,
      noise_std=noise_std,
      dropout=dropout,
      seed=seed,
      scale=scale,
  )


def views_dataset(
    trials: Mapping[str, np.ndarray],
    *,
    length: int = 243,
    azimuths_deg: Sequence[float] = (45.0, 135.0, 225.0, 315.0),
    elevation_deg: float | Sequence[float] = 10.0,
    noise_std: float = 0.0,
    dropout: float = 0.0,
    seed: int = 0,
    scale: float | None = None,
) -> WindowDataset:
  """World-frame trials ``{name: [F, J, 3]}`` (y up) seen by orthographic cameras, windowed.

  The arguments are :func:`cmu17_dataset`'s; the trials may come from any source.
  ``elevation_deg`` may be a sequence: one ring of ``azimuths_deg`` cameras per elevation.
  """
  elevations = tuple(elevation_deg) if isinstance(elevation_deg, Sequence) else (float(elevation_deg),)
  sequences = {}
  for key, points in trials.items():
    # View id: elevation ring e, azimuth a -> e * len(azimuths) + a.
    views = np.concatenate([orthographic_views(points, azimuths_deg, e) for e in elevations])
    keypoints, visibility = observe(
        views, key_or_seed=[seed, zlib.crc32(key.encode())], noise_std=noise_std, dropout=dropout
    )
    sequences[key] = (views, keypoints, visibility)
  return build_dataset(sequences, length, scale)


def extent_2d(points: np.ndarray) -> float:
  """The 2D extent of a sequence, ``max(x range, y range)`` over all frames and points of ``[..., 2+]``."""
  xy = np.asarray(points)[..., :2].reshape(-1, 2)
  return float(np.max(xy.max(0) - xy.min(0)))


def nrsfm_dataset(
    name_or_path: PathLike,
    *,
    length: int = 243,
    scale: float | None = None,
    noise_extent: float = 0.0,
    dropout: float = 0.0,
    seed: int = 0,
) -> WindowDataset:
  """One NRSfM benchmark sequence as one view: 2D = `points3d[..., :2]`, 3D kept for evaluation.

  Args:
    name_or_path: A bundled name or an `.npz` path (see `load_nrsfm_sequence`).
    length: Window length L.
    scale: 2D scale (None: computed from this sequence).
    noise_extent: Gaussian 2D noise, its standard deviation as a fraction of the sequence's 2D
      extent (:func:`extent_2d`; the classic literature's "1% noise" is 0.01).
    dropout: Fraction of points missing (visibility 0), independently per frame and point.
    seed: Noise/dropout seed, with the sequence's name: ``[seed, crc32(name)]``.

  Returns:
    A `WindowDataset` with one name: the lower-case bundled name or the file's stem; its 3D
    is the clean truth.
  """
  points = load_nrsfm_sequence(name_or_path)[None].astype(np.float32)
  name = nrsfm_sequence_path(name_or_path).stem
  if noise_extent < 0:
    raise ValueError(f'noise_extent must be >= 0, got {noise_extent}')
  keypoints, visibility = observe(
      points,
      key_or_seed=[seed, zlib.crc32(name.encode())],
      noise_std=noise_extent * extent_2d(points),
      dropout=dropout,
  )
  return build_dataset({name: (points, keypoints, visibility)}, length, scale)


def tracks_dataset(path: PathLike, *, length: int = 243, scale: float | None = None) -> WindowDataset:
  """A user's 2D tracks (see `load_tracks`) as one view without 3D; name = the file's stem."""
  keypoints, visibility = load_tracks(path)
  return build_dataset({Path(path).stem: (None, keypoints[None], visibility[None])}, length, scale)


# How data.sequence_bone_lengths groups frames: per camera of a sequence, or per sequence.
BONE_LENGTH_GROUPS = ('view', 'sequence')


def sequence_bone_lengths(
    dataset: WindowDataset, bones: Sequence[tuple[int, int]], *, quantile: float = 0.99, by: str = 'view'
) -> np.ndarray:
  """Each bone's length estimated from its sequence's 2D alone: ``[N, E]`` float32, one row per window.

  Under an orthographic camera of fixed scale a bone's image is at most as long as the
  bone, and as long when the bone lies parallel to the image plane; over a sequence's
  frames (one person) a high quantile of the image lengths therefore estimates the 3D
  length without any 3D. On the bundled cmu17 mocap the 0.99 quantile over one camera's
  frames is 4% short on average on subject 006 (2% on 002/003/005; bones rarely side-on
  to that camera, such as the hips' for a person facing it, down to 0.55 of the truth),
  and 1.5% short when a trial's four cameras are pooled (``by='sequence'``).

  Args:
    dataset: windows of normalised 2D.
    bones: ``E`` (parent, child) joint indices.
    quantile: in (0, 1]: the quantile of the visible image lengths taken (1: the longest).
    by: ``'view'``: one estimate per (sequence, camera), from that camera's frames alone
      (what a single camera gives); ``'sequence'``: one per sequence, pooling its cameras.

  Returns:
    ``[N, E]`` lengths in the dataset's normalised 2D units, indexed like the windows. A
    bone never seen with both ends visible in its group gets the median of that bone's
    estimates over the other groups (0 if it is never seen at all).

  Raises:
    ValueError: on an empty bone list, joints outside the dataset's points, a quantile
      outside (0, 1] or an unknown ``by``.
  """
  if by not in BONE_LENGTH_GROUPS:
    raise ValueError(f"sequence_bone_lengths: by must be 'view' or 'sequence', got {by!r}.")
  idx = np.asarray(bones, np.int64).reshape(-1, 2)
  if not len(idx):
    raise ValueError('sequence_bone_lengths needs at least one (parent, child) bone.')
  if idx.min() < 0 or idx.max() >= dataset.num_points:
    raise ValueError(
        f'sequence_bone_lengths: bones {list(map(tuple, idx.tolist()))} index joints outside '
        f'0..{dataset.num_points - 1}.'
    )
  if not 0.0 < quantile <= 1.0:
    raise ValueError(f'sequence_bone_lengths: quantile must be in (0, 1], got {quantile}.')
  vec = dataset.keypoints[..., idx[:, 1], :] - dataset.keypoints[..., idx[:, 0], :]  # [N, L, E, 2]
  length = np.linalg.norm(vec.astype(np.float64), axis=-1)
  seen = (dataset.visibility[..., idx[:, 0]] > 0) & (dataset.visibility[..., idx[:, 1]] > 0)
  seen &= dataset.mask[..., None] > 0
  keys = (
      dataset.sequence_ids
      if by == 'sequence'
      else dataset.sequence_ids * (int(dataset.view_ids.max()) + 1) + dataset.view_ids
  )
  groups, group_of = np.unique(keys, return_inverse=True)
  estimate = np.full((len(groups), len(idx)), np.nan)
  for g in range(len(groups)):
    rows = group_of == g
    l, v = length[rows], seen[rows]
    for e in range(len(idx)):
      if v[..., e].any():
        estimate[g, e] = np.quantile(l[..., e][v[..., e]], quantile)
  known = np.isfinite(estimate)
  fallback = np.array([np.median(estimate[known[:, e], e]) if known[:, e].any() else 0.0 for e in range(len(idx))])
  estimate = np.where(known, estimate, fallback)
  return estimate[group_of].astype(np.float32)


def reassemble(dataset: WindowDataset, per_window: np.ndarray) -> dict[tuple[str, int], np.ndarray]:
  """Puts per-window values back into full sequences, every real frame exactly once.

  Args:
    dataset: The dataset the windows came from.
    per_window: `[N, L, ...]` values aligned with `dataset`'s windows (e.g. predictions).

  Returns:
    (name, view_id) -> `[F, ...]` in frame order.
  """
  per_window = np.asarray(per_window)
  if per_window.shape[:2] != dataset.mask.shape:
    raise ValueError(
        f'per_window has shape {per_window.shape}, expected ' f'[{dataset.num_windows}, {dataset.window_length}, ...]'
    )
  groups: dict[tuple[int, int], list[int]] = {}
  for i, (seq, view) in enumerate(zip(dataset.sequence_ids, dataset.view_ids)):
    groups.setdefault((int(seq), int(view)), []).append(i)
  result = {}
  for (seq, view), indices in groups.items():
    indices = sorted(indices, key=lambda i: dataset.starts[i])
    result[(dataset.names[seq], view)] = unwindow(per_window[indices], dataset.mask[indices])
  return result


def with_context(dataset: WindowDataset, before: int, after: int = 0) -> WindowDataset:
  """``dataset``'s windows widened by ``before`` frames in front and ``after`` behind, from their own sequence.

  The extra frames are the neighbouring frames of the same sequence and view (the previous and
  next windows' 2D), so a temporal model sees real context at every window's edges instead of
  zero padding; beyond the sequence's ends they stay padding (mask 0), as in ``dataset``. Predict
  on the result, then keep frames ``[before : before + L]`` of every window: they line up with
  ``dataset``'s windows frame for frame.

  Args:
    dataset: windows of length L.
    before, after: context frames (≥ 0).

  Returns:
    A ``WindowDataset`` of ``[N, before + L + after, ...]`` windows, in ``dataset``'s order, with
    its ``scale``, ids and names; ``starts`` are ``dataset.starts − before`` (negative at a
    sequence's start).
  """
  before, after = int(before), int(after)
  if before < 0 or after < 0:
    raise ValueError(f'context frames must be >= 0, got before={before}, after={after}')
  if before == 0 and after == 0:
    return dataset
  fields = ['keypoints', 'visibility', 'mask'] + [
      f for f in ('points3d', 'centroids') if getattr(dataset, f) is not None
  ]
  full = {f: reassemble(dataset, getattr(dataset, f)) for f in fields}
  n, length = dataset.mask.shape
  total = before + length + after
  out: dict[str, Any] = {
      f: np.zeros((n, total, *getattr(dataset, f).shape[2:]), getattr(dataset, f).dtype) for f in fields
  }
  for i, (seq, view, start) in enumerate(zip(dataset.sequence_ids, dataset.view_ids, dataset.starts)):
    key = (dataset.names[seq], int(view))
    frames = len(full['mask'][key])
    first = int(start) - before
    lo, hi = max(first, 0), min(first + total, frames)
    for f in fields:
      out[f][i, lo - first : hi - first] = full[f][key][lo:hi]
  out['starts'] = (dataset.starts - before).astype(np.int32)
  return dataclasses.replace(dataset, **out)


def rewindow(dataset: WindowDataset, sequences: dict[tuple[str, int], np.ndarray]) -> np.ndarray:
  """The inverse of :func:`reassemble`: full sequences cut into ``dataset``'s windows.

  Args:
    dataset: the windows to fill (any window length and stride).
    sequences: ``(name, view_id) -> [F, ...]`` for every sequence and view of ``dataset``.

  Returns:
    ``[N, L, ...]`` in ``dataset``'s window order, 0 on padded frames.
  """
  first = next(iter(sequences.values()), None)
  if first is None:
    raise ValueError('rewindow: no sequences given.')
  n, length = dataset.mask.shape
  out = np.zeros((n, length, *np.shape(first)[1:]), np.asarray(first).dtype)
  for i, (seq, view, start) in enumerate(zip(dataset.sequence_ids, dataset.view_ids, dataset.starts)):
    key = (dataset.names[seq], int(view))
    if key not in sequences:
      raise KeyError(f'rewindow: no sequence for {key}; got {sorted(sequences)[:5]}...')
    real = int(dataset.mask[i].sum())
    values = np.asarray(sequences[key])[int(start) : int(start) + real]
    if len(values) != real:
      raise ValueError(f'rewindow: {key} has {len(sequences[key])} frames; window {i} needs {int(start) + real}.')
    out[i, :real] = values
  return out


def steps_per_epoch(num_windows: int, batch_size: int, *, drop_remainder: bool = True) -> int:
  """Batches per epoch: `max(1, num_windows // batch_size)` (ceil if not `drop_remainder`)."""
  if num_windows < 1 or batch_size < 1:
    raise ValueError(f'need num_windows >= 1 and batch_size >= 1, got {num_windows}, ' f'{batch_size}')
  if drop_remainder:
    return max(1, num_windows // batch_size)
  return -(-num_windows // batch_size)


def batch_indices(
    num_windows: int, batch_size: int, *, seed: int, step: int, drop_remainder: bool = True
) -> np.ndarray:
  """The window indices of batch `step`: a stateless, deterministic data order.

  Epoch `e = step // steps_per_epoch` shuffles with
  `np.random.default_rng([seed, e]).permutation(num_windows)` and step takes the
  `(step % steps_per_epoch)`-th slice of it. Nothing depends on earlier steps, so a resumed run
  reproduces the data order from `(seed, step)` alone: no iterator state to checkpoint. With
  `drop_remainder` the `num_windows % batch_size` windows left at the end of each epoch's
  permutation are skipped in that epoch (different ones each epoch); without it the last batch
  of an epoch is short. If `num_windows < batch_size` the permutation is cycled so the batch
  is full (some windows appear twice).

  Returns:
    int32 `[batch_size]` (shorter only for the last batch of an epoch when not
    `drop_remainder`).
  """
  if step < 0:
    raise ValueError(f'step must be >= 0, got {step}')
  per_epoch = steps_per_epoch(num_windows, batch_size, drop_remainder=drop_remainder)
  epoch, index = divmod(step, per_epoch)
  order = np.random.default_rng([seed, epoch]).permutation(num_windows)
  if num_windows < batch_size:
    return np.resize(order, batch_size).astype(np.int32)
  return order[index * batch_size : (index + 1) * batch_size].astype(np.int32)


def batch_iterator(
    dataset: WindowDataset, batch_size: int, *, seed: int, start_step: int = 0
) -> Iterator[dict[str, np.ndarray]]:
  """Endless batches `dataset.take(batch_indices(..., step=s))` for s = start_step, ...

  Resuming at `start_step = k` yields exactly what an uninterrupted iterator yields from its
  k-th batch on.
  """
  step = start_step
  while True:
    yield dataset.take(batch_indices(dataset.num_windows, batch_size, seed=seed, step=step))
    step += 1
