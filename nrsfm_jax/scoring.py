"""Prediction and scoring: every window once, docs/benchmarks.md metrics, the depth-0 and C3DPO references."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from nrsfm_jax import configs, geometry, metrics
from nrsfm_jax import data as data_lib

Array = jax.Array


@functools.partial(jax.jit, static_argnames=('apply_fn', 'key'))
def forward(params, keypoints, visibility, mask, *, apply_fn, key):
  """Model output ``key`` of one batch (``apply_fn(params, keypoints, visibility, mask)[key]``), jitted.

  Module-level jit keyed on the (hashable) model: repeated evaluations reuse the compilation.
  """
  return apply_fn(params, keypoints, visibility, mask)[key]


def predict(
    apply_fn: Callable,
    params,
    dataset: data_lib.WindowDataset,
    *,
    batch_size: int = 64,
    key: str = 'reconstruction',
    projection: dict[str, Any] | None = None,
    context: tuple[int, int] = (0, 0),
) -> np.ndarray:
  """Model output ``key`` for every window: ``[N, L, P, 3]`` in normalised units.

  The default, ``'reconstruction'``, is the test-time 3D: camera-frame points
  whose visible x, y are the observed 2D when ``model.observed_xy`` (C3DPO's
  evaluation), the model's own reprojection otherwise.

  ``projection`` (:func:`project_bones`'s keywords, e.g. :func:`projection_options` of a
  run's config; None or ``{}``: off) then bounds every bone's depth extent by its length
  as estimated from its sequence's own 2D: sequence-level post-processing that reads no 3D.

  ``context`` ``(before, after)`` (:func:`eval_context` of a run's config): the model runs on
  every window widened by that many frames of its own sequence on each side
  (:func:`data.with_context`), and only the window's own frames are kept, so a temporal
  refiner sees real frames, not padding, at the window's edges. ``(0, 0)``: the windows alone.
  """
  fn = functools.partial(forward, apply_fn=apply_fn, key=key)
  before, after = context
  # Only the 2D is read: neither the widened copy (rebuilt at every training-time eval) nor the
  # batches carry the 3D.
  inputs = dataclasses.replace(dataset, points3d=None, centroids=None)
  widened = data_lib.with_context(inputs, before, after)
  length = dataset.window_length
  outs = []
  for count, b in padded_batches(widened, batch_size):
    outs.append(np.asarray(fn(params, b['keypoints'], b['visibility'], b['mask']))[:count, before : before + length])
  pred = np.concatenate(outs, 0)
  if projection:
    pred = project_bones(pred, dataset, **projection)
  return pred


def eval_context(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """:func:`predict`'s ``context`` for a run: ``(past, future)`` frames its refiner sees.

  ``train.eval_context='receptive_field'`` with a TCN refiner: the TCN's receptive field
  (causal: ``(R − 1, 0)``; centred: about ``R / 2`` each side; ``models.context_frames``).
  ``'none'`` (what runs made before it existed read), or no refiner: ``(0, 0)``.
  """
  from nrsfm_jax.models import tcn  # pylint: disable=g-import-not-at-top

  mode = config.train.get('eval_context', 'none')
  if mode not in configs.EVAL_CONTEXTS:
    raise ValueError(f'config.train.eval_context must be one of {configs.EVAL_CONTEXTS}, got {mode!r}.')
  m = config.model
  if mode == 'none' or 'tcn_kernel' not in m or not m.get('use_refiner', True):
    return (0, 0)
  return tcn.context_frames(int(m.tcn_kernel), tuple(int(d) for d in m.tcn_dilations), bool(m.tcn_causal))


def observed_xy(pred: np.ndarray, dataset: data_lib.WindowDataset) -> np.ndarray:
  """``pred`` ``[N, L, P, 3]`` (normalised) with the observed 2D as x, y of every visible point.

  What a student's ``'reconstruction'`` output does under ``model.observed_xy`` (C3DPO's
  evaluation), for any other 3D of the same windows: a teacher's samples, cached pseudo-3D.
  """
  seen = dataset.visibility[..., None] > 0
  return np.concatenate([np.where(seen, dataset.keypoints, pred[..., :2]), pred[..., 2:]], -1).astype(pred.dtype)


def project_bones(
    pred: np.ndarray,
    dataset: data_lib.WindowDataset,
    *,
    bones: tuple[tuple[int, int], ...],
    mode: str = 'clip',
    quantile: float = 0.99,
    by: str = 'view',
    gain: float = 1.0,
) -> np.ndarray:
  """:func:`geometry.bone_length_projection` of per-window 3D ``[N, L, P, 3]`` with lengths from ``dataset``'s 2D.

  The lengths are :func:`data.sequence_bone_lengths` of ``dataset`` (``quantile``, ``by``), in
  ``pred``'s units when ``pred`` is normalised (multiply the result by ``dataset.scale`` for data
  units). Any model's test-time 3D can be projected this way (the student's, the teacher's).
  """
  if not bones:
    raise ValueError(f'bone projection {mode!r} needs the skeleton (bones).')
  lengths = data_lib.sequence_bone_lengths(dataset, bones, quantile=quantile, by=by)
  bones = tuple(tuple(int(j) for j in b) for b in bones)
  return np.asarray(_project(pred, lengths[:, None, :], bones=bones, mode=mode, gain=float(gain)))


@functools.partial(jax.jit, static_argnames=('bones', 'mode', 'gain'))
def _project(points, lengths, *, bones, mode, gain):
  return geometry.bone_length_projection(points, bones, lengths, mode=mode, gain=gain)


def projection_options(
    config: ml_collections.ConfigDict, mode: str | None = None, by: str | None = None, gain: float | None = None
) -> dict[str, Any]:
  """:func:`project_bones`'s keywords from a run's config (``train.eval_bone_*``): :func:`predict`'s ``projection``.

  ``mode``, ``by`` and ``gain`` override the config's; ``{}`` when the projection is off.
  """
  mode = mode or config.train.get('eval_bone_projection', 'none')
  if mode not in geometry.BONE_PROJECTIONS:
    raise ValueError(f'bone projection must be one of {geometry.BONE_PROJECTIONS}, got {mode!r}.')
  if mode == 'none':
    return {}
  return dict(
      mode=mode,
      bones=tuple(map(tuple, config.loss.terms.bones.bones)),
      quantile=float(config.train.get('eval_bone_quantile', 0.99)),
      by=by or config.train.get('eval_bone_by', 'view'),
      gain=float(gain or config.train.get('eval_bone_gain', 1.0)),
  )


def as_evaluated(config: ml_collections.ConfigDict, pred: np.ndarray, dataset: data_lib.WindowDataset) -> np.ndarray:
  """Any 3D of ``dataset``'s windows ``[N, L, P, 3]`` (normalised) as a run of ``config`` scores its own.

  The observed x, y of the visible points when ``model.observed_xy`` (:func:`observed_xy`), then
  the test-time bone projection of ``train.eval_bone_*`` (:func:`projection_options`). Reads the
  2D only: a teacher's pseudo-3D treated this way is what its student will be scored as.
  """
  if config.model.get('observed_xy', True):
    pred = observed_xy(pred, dataset)
  projection = projection_options(config)
  if projection:
    pred = project_bones(pred, dataset, **projection)
  return np.asarray(pred, np.float32)


def padded_batches(dataset: data_lib.WindowDataset, batch_size: int):
  """Every window once, in order, as fixed-size batches (one compilation).

  A dataset of fewer than ``batch_size`` windows is one batch of the next power of two instead
  (a 12-frame clip is 1 window: sampling the teacher for it computed 64 before; one compilation
  per size class).

  Yields:
    ``(count, batch)``: ``dataset.take`` of ``batch_size`` indices whose first
    ``count`` are new windows; the last batch repeats its final window as padding.
  """
  n = dataset.num_windows
  batch_size = min(batch_size, 1 << max(n - 1, 0).bit_length())
  for start in range(0, n, batch_size):
    idx = np.arange(start, min(start + batch_size, n))
    yield len(idx), dataset.take(np.concatenate([idx, np.repeat(idx[-1:], batch_size - len(idx))]))


def score(pred: np.ndarray, dataset: data_lib.WindowDataset, *, protocol: str = 'cmu17') -> dict[str, Any]:
  """Metrics on every frame of every sequence in ``dataset`` (each exactly once).

  Args:
    pred: ``[N, L, P, 3]`` per-window predictions in data units.
    dataset: windows with ``points3d`` (camera-frame ground truth, data units).
    protocol: ``'cmu17'`` (MPJPE, PA-MPJPE, Stress, acceleration error, in data
      units, averaged over all frames; per trial too) or ``'nrsfm'`` (e3D and
      e3D-akhter per sequence).

  Returns:
    ``{'overall': {metric: value}, 'per_sequence': {name: {metric: value}}, 'frames': n}``.
  """
  if dataset.points3d is None:
    raise ValueError('Evaluation needs ground-truth 3D; this dataset has none (2D tracks only).')
  preds = data_lib.reassemble(dataset, pred)
  truths = data_lib.reassemble(dataset, dataset.points3d)
  if protocol == 'cmu17':
    # Per-frame metrics on all windows in one compiled call (eager per-sequence
    # calls would recompile for every sequence length).
    flat = lambda x: x.reshape(-1, *x.shape[2:])
    per_frame = jax.device_get(_frame_metrics(flat(pred), flat(dataset.points3d)))
    shaped = {k: v.reshape(pred.shape[:2] + v.shape[1:]) for k, v in per_frame.items()}
    seqs = {k: data_lib.reassemble(dataset, v) for k, v in shaped.items()}
    keys = list(seqs['mpjpe'])
    # Acceleration on the concatenated flip-resolved sequences, keeping only
    # stencils inside one sequence.
    resolved = np.concatenate([seqs['resolved'][k] for k in keys])
    truth = np.concatenate([truths[k] for k in keys])
    seq_id = np.concatenate([np.full(len(truths[k]), i) for i, k in enumerate(keys)])
    accel = np.asarray(metrics.accel_error(resolved, truth, flip=False))
    accel_ok = seq_id[2:] == seq_id[:-2]
    accel_seq = seq_id[2:]
    names = ('mpjpe', 'pa_mpjpe', 'stress')
    overall = {k: float(np.mean(np.concatenate([seqs[k][q] for q in keys]))) for k in names}
    overall['accel_error'] = float(np.mean(accel[accel_ok])) if accel_ok.any() else float('nan')
    per_sequence = {}
    for name in dict.fromkeys(n for n, _ in keys):  # Trial-level: all views together.
      idx = [i for i, q in enumerate(keys) if q[0] == name]
      entry = {k: float(np.mean(np.concatenate([seqs[k][keys[i]] for i in idx]))) for k in names}
      sel = accel_ok & np.isin(accel_seq, idx)
      entry['accel_error'] = float(np.mean(accel[sel])) if sel.any() else float('nan')
      per_sequence[name] = entry
    frames = int(len(truth))
  elif protocol == 'nrsfm':
    return score_sequences(preds, truths)
  else:
    raise ValueError(f"Unknown protocol {protocol!r}; expected 'cmu17' or 'nrsfm'.")
  return {'overall': overall, 'per_sequence': per_sequence, 'frames': frames}


def score_sequences(
    preds: dict[tuple[str, int], np.ndarray], truths: dict[tuple[str, int], np.ndarray]
) -> dict[str, Any]:
  """docs/benchmarks.md B on whole sequences: e3D and e3D-akhter per sequence, and their mean.

  Args:
    preds: ``{(name, view): [F, P, 3]}`` camera-frame 3D in data units (as
      :func:`nrsfm_jax.data.reassemble` gives them).
    truths: the ground truth under the same keys.

  Returns:
    ``{'overall': {metric: mean over sequences}, 'per_sequence': {name[/view]: {metric: value}}, 'frames': n}``.
  """
  per_sequence = {}
  for (name, view), p in preds.items():
    g = truths[(name, view)]
    per_sequence[name if view == 0 else f'{name}/{view}'] = {
        'e3d': float(metrics.e3d(p, g)),
        'e3d_akhter': float(metrics.e3d_akhter(p, g)),
    }
  overall = {k: float(np.mean([v[k] for v in per_sequence.values()])) for k in ('e3d', 'e3d_akhter')}
  return {'overall': overall, 'per_sequence': per_sequence, 'frames': int(sum(len(p) for p in preds.values()))}


@jax.jit
def _frame_metrics(pred: Array, gt: Array) -> dict[str, Array]:
  return {
      'mpjpe': metrics.mpjpe(pred, gt),
      'pa_mpjpe': metrics.pa_mpjpe(pred, gt),
      'stress': metrics.stress(pred, gt),
      'resolved': metrics.flip_resolve(pred, gt),
  }


def format_metrics(result: dict[str, Any], title: str = '') -> str:
  """A console table of :func:`score`'s output."""
  keys = list(result['overall'])
  lines = [title] if title else []
  header = f"{'sequence':<14}" + ''.join(f'{k:>13}' for k in keys)
  lines.append(header)
  fmt = (lambda v: f'{v:13.4f}') if 'e3d' in keys else (lambda v: f'{v:13.2f}')
  for name, vals in result['per_sequence'].items():
    lines.append(f'{name:<14}' + ''.join(fmt(vals[k]) for k in keys))
  lines.append(
      f"{'overall':<14}" + ''.join(fmt(result['overall'][k]) for k in keys) + f"   ({result['frames']} frames)"
  )
  return '\n'.join(lines)


def predict_and_score(
    apply_fn: Callable,
    params,
    dataset: data_lib.WindowDataset,
    *,
    batch_size: int,
    protocol: str | None,
    predictions_path: str,
    projection: dict[str, Any] | None = None,
    context: tuple[int, int] = (0, 0),
) -> tuple[dict[str, Any] | None, int]:
  """Predicts every window, writes per-sequence 3D (data units) and scores it if 3D exists.

  ``projection``, ``context``: :func:`predict`'s (:func:`projection_options`, :func:`eval_context`).

  ``predictions_path`` gets keys ``'<sequence>/view<v>'`` → ``[F, P, 3]``.

  Returns:
    ``(score(...) or None without ground truth / protocol, number of frames)``.
  """
  pred = predict(apply_fn, params, dataset, batch_size=batch_size, projection=projection, context=context)
  pred = pred * dataset.scale
  seqs = data_lib.reassemble(dataset, pred)
  np.savez(predictions_path, **{f'{name}/view{view}': v for (name, view), v in seqs.items()})
  frames = int(sum(len(v) for v in seqs.values()))
  if dataset.points3d is None or protocol is None:
    return None, frames
  return score(pred, dataset, protocol=protocol), frames


def read_predictions(path: str) -> dict[tuple[str, int], np.ndarray]:
  """The predictions :func:`predict_and_score` wrote: ``{(sequence, view): [F, P, 3]}`` (data units)."""
  with np.load(path) as f:
    out = {}
    for k in f.files:
      name, view = k.rsplit('/view', 1)
      out[(name, int(view))] = f[k]
  return out


def evaluate_and_save(
    config: ml_collections.ConfigDict,
    workdir: str,
    apply_fn: Callable,
    params,
    dataset: data_lib.WindowDataset,
    *,
    log: Callable = print,
    tag: str = 'eval',
) -> dict[str, Any]:
  """Scores the model with :func:`score` (if 3D exists), prints the table, writes ``<tag>.json`` and predictions.

  For cmu17 the result also holds ``'depth0'``: :func:`depth_zero_score` on
  the same frames, printed beside the run's.
  """
  protocol = data_lib.protocol_of(config.data)
  pred_path = os.path.join(workdir, f'{tag}_predictions.npz')
  result, _ = predict_and_score(
      apply_fn,
      params,
      dataset,
      batch_size=config.train.eval_batch_size,
      protocol=protocol,
      predictions_path=pred_path,
      projection=projection_options(config),
      context=eval_context(config),
  )
  if result is None:
    log(f'no ground-truth 3D: reconstructions written to {pred_path}')
    return {}
  if protocol == 'cmu17':
    # The depth-0 reference on the same frames, kept with the score (the
    # cross-subject ablation reads it from there instead of recomputing it).
    result['depth0'] = depth_zero_score(dataset)
  with open(os.path.join(workdir, f'{tag}.json'), 'w') as f:
    json.dump(result, f, indent=2)
  log(format_metrics(result, title=f'{tag} ({protocol}) on {len(result["per_sequence"])} sequences:'))
  if protocol == 'cmu17':
    log(format_references(result, result['depth0'], config))
  return result


# docs/benchmarks.md A: the official C3DPO code, 25 minutes on a 2-core CPU, train 002/003/005, test 006.
C3DPO_REFERENCE = {'mpjpe': 78.9, 'pa_mpjpe': 60.9, 'stress': 31.6, 'accel_error': 5.6}
DEV_SPLIT = data_lib.DEFAULT_SPLITS['cmu17']


def is_dev_split(data_config: ml_collections.ConfigDict) -> bool:
  """Whether ``config.data`` is the cmu17 development split (where official C3DPO's scores apply)."""
  d = data_config
  if d.name != 'cmu17':
    return False
  names = tuple(','.join(data_lib.split_subjects(d, s, transductive=False)) for s in ('train', 'eval'))
  return names == DEV_SPLIT


def depth_zero_score(dataset: data_lib.WindowDataset) -> dict[str, Any]:
  """The depth-0 reference on ``dataset`` (docs/benchmarks.md A): the truth's x, y with every depth 0.

  A lifter that does not beat it has learned no usable depth.
  """
  pred = np.array(dataset.points3d, copy=True)
  pred[..., 2] = 0.0
  return score(pred, dataset, protocol='cmu17')


def format_references(
    result: dict[str, Any], depth0: dict[str, Any], config: ml_collections.ConfigDict | None = None
) -> str:
  """A console table: this run's overall cmu17 metrics beside depth 0 (and official C3DPO on the dev split)."""
  keys = ('mpjpe', 'pa_mpjpe', 'stress', 'accel_error')
  rows = [('this run', result['overall']), ('depth 0', depth0['overall'])]
  if config is not None and is_dev_split(config.data):
    rows.append(('official C3DPO', C3DPO_REFERENCE))
  lines = ['references on the same frames:', f"{'':<16}" + ''.join(f'{k:>13}' for k in keys)]
  lines += [f'{name:<16}' + ''.join(f'{vals[k]:13.2f}' for k in keys) for name, vals in rows]
  verdict = 'beats' if result['overall']['mpjpe'] < depth0['overall']['mpjpe'] else 'does NOT beat'
  lines.append(f'MPJPE {verdict} depth 0.')
  return '\n'.join(lines)
