"""Trained runs after training: reload, evaluate on any split or file, export, study Ψ.

A workdir written by ``train.train_and_evaluate`` holds everything needed::

    config, model, params, meta = load_run('runs/cmu17')
    evaluate_run('runs/cmu17')                          # the run's own eval split
    evaluate_run('runs/cmu17', subjects='005,006')      # other cmu17 subjects
    evaluate_run('runs/drink', sequence='drink')        # nrsfm protocol (bundled or .npz)
    evaluate_run('runs/cmu17', tracks='clip.npz')       # 2D only: predictions, no metrics

Every input is normalised with the run's *training* 2D scale (``meta['scale']``,
stored with the checkpoint), never with a scale recomputed from the new data:
the network has only seen inputs in its training units, and recomputing the
scale would silently rescale a test set of smaller or larger subjects.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from scipy.ndimage import gaussian_filter1d

from nrsfm_jax import checkpoint as ckpt_lib
from nrsfm_jax import data as data_lib
from nrsfm_jax import geometry, losses, metrics, models, plotting, scoring
from nrsfm_jax.models import Student
from nrsfm_jax.runs import load_run, model_name

Array = jax.Array


# ----------------------------------------------------------------------------
# Loading a run.
# ----------------------------------------------------------------------------


# ----------------------------------------------------------------------------
# Evaluation on any split or file.
# ----------------------------------------------------------------------------


def _stem(path: str) -> str:
  return os.path.splitext(os.path.basename(str(path)))[0]


def build_eval_dataset(
    config: ml_collections.ConfigDict,
    meta: dict[str, Any],
    *,
    data: data_lib.WindowDataset | None = None,
    sequence: str | None = None,
    subjects: str | Sequence[str] | None = None,
    tracks: str | None = None,
    protocol: str | None = None,
) -> tuple[data_lib.WindowDataset, str, str]:
  """The windows to evaluate a run on, normalised with the run's training scale.

  At most one of ``data``, ``sequence``, ``subjects`` and ``tracks`` may be
  given; with none, the run's own eval split (``config.data``) is rebuilt.

  Args:
    config: the run's config.
    meta: its checkpoint metadata (``scale``, ``num_points``).
    data: a ready ``WindowDataset``, built with ``scale=meta['scale']``.
    sequence: a bundled nrsfm-mocap name (``'drink'``) or an ``.npz`` with
      ``points3d`` ``[F, P, 3]``: nrsfm protocol.
    subjects: cmu17 subjects (``'006,007'`` or a list) from the run's mocap
      file (``config.data.path`` for cmu17 runs, else the bundled one), seen by
      the run's cameras: cmu17 protocol.
    tracks: an ``.npz`` of 2D tracks (``data.save_tracks``): no 3D, no metrics.
    protocol: ``'cmu17'`` or ``'nrsfm'``; overrides the default for ``data``
      and the run's own split.

  Returns:
    ``(dataset, protocol, name)``; ``name`` labels output files
    (e.g. ``'cmu17_006'``, ``'nrsfm_drink'``, ``'tracks_clip'``).

  Raises:
    ValueError: several sources given, ``data`` built with another scale, or
      the data has a different number of points than the model (both named).
  """
  given = [k for k, v in dict(data=data, sequence=sequence, subjects=subjects, tracks=tracks).items() if v is not None]
  if len(given) > 1:
    raise ValueError(f'Give at most one of data / sequence / subjects / tracks, got {given}.')
  scale = float(meta['scale'])
  d = config.data
  # Same windows as the run's own evaluation.
  window = data_lib.window_length(d, 'eval')
  if data is not None:
    if not np.isclose(data.scale, scale, rtol=1e-6):
      raise ValueError(
          f'data was normalised with scale {data.scale:.6g} but the run was trained with '
          f"{scale:.6g}: build it with scale=meta['scale']."
      )
    dataset, what = data, 'data'
    protocol = protocol or data_lib.protocol_of(d) or 'cmu17'
    name = 'data'
  elif sequence is not None:
    dataset = data_lib.nrsfm_dataset(sequence, length=window, scale=scale)
    what, protocol = f'nrsfm sequence {str(sequence)!r}', protocol or 'nrsfm'
    name = f'nrsfm_{dataset.names[0]}'
  elif subjects is not None:
    wanted = data_lib.parse_names(subjects)
    if not wanted:
      raise ValueError(f'subjects={subjects!r} names no subject.')
    # The run's cameras and noise on these subjects; config.data.path is a mocap file only for
    # cmu17 runs (a tracks run keeps its tracks there: then the bundled mocap).
    cmu = ml_collections.ConfigDict(d.to_dict())
    cmu.name, cmu.val_subjects = 'cmu17', ','.join(wanted)
    cmu.path = d.path if d.name == 'cmu17' else ''
    dataset = data_lib.make_dataset(cmu, 'eval', scale=scale, seed=config.seed, length=window)
    what, protocol = f'cmu17 subjects {",".join(wanted)}', protocol or 'cmu17'
    name = 'cmu17_' + '_'.join(wanted)
  elif tracks is not None:
    dataset = data_lib.tracks_dataset(tracks, length=window, scale=scale)
    what, protocol, name = f'tracks {tracks}', None, f'tracks_{_stem(tracks)}'
  else:
    # The train split is rebuilt too (cheap, numpy only) so the eval split is
    # exactly the one train_and_evaluate scored.
    dataset = data_lib.make_dataset(d, 'eval', scale=scale, seed=config.seed)
    what = f"the run's eval split ({d.name})"
    protocol = protocol or data_lib.protocol_of(d)
    if d.name == 'cmu17':
      name = 'cmu17_' + '_'.join(data_lib.split_subjects(d, 'eval'))
    else:
      name = f'{d.name}_{dataset.names[0]}'
  expected = int(meta['num_points'])
  if dataset.num_points != expected:
    raise ValueError(
        f'{what} has {dataset.num_points} points per frame but the model was trained on '
        f"{expected} points: the Student's input and output size is fixed by its "
        f'training data, so evaluate on {expected}-point data or train a run on this one.'
    )
  return dataset, protocol, name


def evaluate_run(
    workdir: str,
    *,
    data: data_lib.WindowDataset | None = None,
    sequence: str | None = None,
    subjects: str | Sequence[str] | None = None,
    tracks: str | None = None,
    step: int | None = None,
    output: str | None = None,
    protocol: str | None = None,
    bone_projection: str | None = None,
    bone_by: str | None = None,
    bone_gain: float | None = None,
    eval_context: str | None = None,
    without_refiner: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
  """Evaluates a trained run on its own eval split or on other data.

  Inputs are normalised with the run's training scale ``meta['scale']`` (see
  the module doc); predictions are multiplied back into data units. Writes the
  report ``output`` (JSON) and the predictions beside it
  (``<output stem>_predictions.npz``, keys ``'<sequence>/view<v>'`` → camera-frame
  3D ``[F, P, 3]`` in data units, x/y centred on the visible points per frame).

  Args:
    workdir: the run (see :func:`load_run`).
    data: a ``WindowDataset`` built with ``scale=meta['scale']``.
    sequence: nrsfm-mocap name or ``.npz`` path (nrsfm protocol: e3D).
    subjects: cmu17 subjects, e.g. ``'006,007'`` (cmu17 protocol: MPJPE, ...).
    tracks: 2D tracks ``.npz`` (predictions only).
    step: checkpoint step (default: latest).
    output: JSON report path (default ``workdir/evaluate_<name>.json``).
    protocol: override the scoring protocol (``'cmu17'`` / ``'nrsfm'``).
    bone_projection: ``'none'``, ``'clip'`` or ``'full'`` instead of the run's
      ``train.eval_bone_projection`` (:func:`scoring.predict`); None keeps the run's.
    bone_by: ``'view'`` or ``'sequence'`` instead of the run's ``train.eval_bone_by``.
    bone_gain: ``'clip'``'s gain instead of the run's ``train.eval_bone_gain``.
    eval_context: ``'receptive_field'`` or ``'none'`` instead of the run's
      ``train.eval_context`` (:func:`scoring.eval_context`).
    without_refiner: score a TCN run's per-frame lifter alone (its ``points_init``, the TCN
      refiner skipped: what the refiner adds is the difference); the default output becomes
      ``evaluate_<name>_without_refiner.json``.
    log: where the console table goes.

  Returns:
    ``scoring.score``'s ``{'overall', 'per_sequence', 'frames'}`` (no ``overall`` /
    ``per_sequence`` for tracks) plus ``workdir``, ``step``, ``data``,
    ``protocol``, ``scale``, ``output`` and ``predictions`` (paths).
  """
  config, model, params, meta = load_run(workdir, step)
  if without_refiner and (model_name(config) != 'student' or not config.model.get('use_refiner', True)):
    raise ValueError(f'without_refiner: {workdir} has no TCN refiner to skip (model.use_refiner is off).')
  # load_run reads config.json afresh on every call: this config is ours to change.
  if eval_context is not None:
    config.train.eval_context = eval_context
  if without_refiner:
    config.model.use_refiner = False  # The same lifter weights; the refiner's are left unread.
    model = models.from_config('student', config.model, int(meta['num_points']))
  dataset, protocol, name = build_eval_dataset(
      config, meta, data=data, sequence=sequence, subjects=subjects, tracks=tracks, protocol=protocol
  )
  suffix = '_without_refiner' if without_refiner else ''
  output = output or os.path.join(workdir, f'evaluate_{name}{suffix}.json')
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  pred_path = os.path.splitext(output)[0] + '_predictions.npz'
  projection = scoring.projection_options(config, bone_projection, bone_by, bone_gain)
  scored, frames = scoring.predict_and_score(
      model.apply,
      params,
      dataset,
      batch_size=config.train.eval_batch_size,
      protocol=protocol,
      predictions_path=pred_path,
      projection=projection,
      context=scoring.eval_context(config),
  )
  info = {
      'workdir': os.path.abspath(workdir),
      'step': int(meta['step']),
      'data': name,
      'protocol': protocol,
      'scale': float(meta['scale']),
      'bone_projection': projection.get('mode', 'none'),
      'bone_by': projection.get('by'),
      'bone_gain': projection.get('gain'),
      'eval_context': list(scoring.eval_context(config)),
      'without_refiner': without_refiner,
      'output': os.path.abspath(output),
      'predictions': os.path.abspath(pred_path),
  }
  if scored is None:
    result = dict(frames=frames, **info)
    log(f'{name}: no ground-truth 3D; {result["frames"]} frames reconstructed into {pred_path}')
  else:
    result = dict(scored, **info)
    log(scoring.format_metrics(result, title=f'{name} ({protocol}), step {meta["step"]} of {workdir}:'))
  with open(output, 'w') as f:
    json.dump(result, f, indent=2)
  log(f'wrote {output}')
  return result


# ----------------------------------------------------------------------------
# Export.
# ----------------------------------------------------------------------------


def export_run(
    workdir: str, output: str | None = None, *, step: int | None = None, log: Callable[[str], None] = print
) -> str:
  """Exports a run's parameters as a flat ``.npz`` (``checkpoint.export_params``).

  Args:
    workdir: the run (see :func:`load_run`).
    output: destination (default ``workdir/export/params.npz``).
    step: checkpoint step (default: latest).
    log: where the summary goes.

  Returns:
    The path written; ``checkpoint.load_exported(path)`` rebuilds a student's predictor,
    ``checkpoint.load_exported_model(path)`` any model (a teacher's too).
  """
  config, _, params, meta = load_run(workdir, step)
  output = output or os.path.join(workdir, 'export', 'params.npz')
  path = ckpt_lib.export_params(output, params, config, scale=meta['scale'], num_points=meta['num_points'])
  num_params = sum(int(np.size(x)) for x in jax.tree.leaves(params))
  log(f'exported step {meta["step"]} of {workdir} to {path}')
  log(f'{num_params:,} parameters; {meta["num_points"]} points; 2D scale {meta["scale"]:.6g}')
  if 'teacher' in config:
    log(
        'load it with:\n'
        '  from nrsfm_jax.predict import load_predictor\n'
        f'  predictor = load_predictor(<a student>, teacher={path!r})  # lift() adds per-joint uncertainty\n'
        '  # or the bare denoiser: nrsfm_jax.checkpoint.load_exported_model(path)'
    )
    return path
  log(
      'load it with:\n'
      '  from nrsfm_jax.checkpoint import load_exported\n'
      f'  apply_fn, params = load_exported({path!r})\n'
      '  points3d = apply_fn(params, keypoints)  # [T, P, 2] raw 2D (NaN = missing) -> [T, P, 3]'
  )
  return path


# ----------------------------------------------------------------------------
# Canonicalization study: how well does Ψ undo a rotation of a given size?
# ----------------------------------------------------------------------------


def rotation_angle(rotations: Array) -> Array:
  """Rotation angles in degrees, ``[..., 3, 3] -> [...]`` (:func:`geometry.rotation_angle`)."""
  return jnp.degrees(geometry.rotation_angle(rotations))


def canonical_errors(apply_fn: Callable, params, shapes: Array, rotations: Array) -> Array:
  """``mean_k ‖X_k − Ψ(R X)_k‖`` for every (rotation, shape) pair, ``jax.vmap``-ed over rotations.

  Args:
    apply_fn: ``Student.apply``.
    params: its variables.
    shapes: ``[N, P, 3]`` canonical shapes ``X`` (normalised units).
    rotations: ``[R, 3, 3]``.

  Returns:
    ``[R, N]`` mean joint distances (normalised units).
  """

  def one_rotation(rotation):
    rec = apply_fn(params, geometry.rotate(shapes, rotation), method=Student.canonicalize)
    return losses.masked_mean(*losses.canonical_loss(shapes, rec, kind='l2'), axis=-1)

  return jax.vmap(one_rotation)(rotations)


def canonical_study(
    apply_fn: Callable, params, shapes: Array, *, key: Array, num_rotations: int = 256, num_bins: int = 12
) -> dict[str, np.ndarray]:
  """Eq. 18's consistency ``‖X − Ψ(R X)‖`` as a function of the rotation angle.

  Draws ``num_rotations`` Haar-uniform rotations (``geometry.random_rotation``),
  applies each to every shape and evaluates all pairs in one jitted
  ``jax.vmap`` over the rotations, then bins by angle over ``[0°, 180°]``.
  Haar rotations concentrate at large angles (density ∝ 1 − cos θ): expect
  few or no rotations below ~30°; empty bins have NaN mean and std.

  Args:
    apply_fn: ``Student.apply``.
    params: its variables.
    shapes: ``[N, P, 3]`` canonical shapes (the model's ``shape_init`` on real frames).
    key: PRNG key for the rotations.
    num_rotations: R.
    num_bins: angle bins of ``180 / num_bins`` degrees.

  Returns:
    numpy arrays: ``bin_edges [B+1]`` (degrees), ``bin_centers [B]``, per-bin
    ``mean``, ``std`` and ``count [B]`` over all (rotation, shape) pairs in the
    bin (counts sum to ``R·N``), ``rotations [R, 3, 3]``, ``angles [R]``
    (degrees), ``values [R, N]`` and ``per_rotation [R]`` (mean over shapes),
    all errors in normalised units (multiply by ``meta['scale']`` for data units).
  """
  shapes = jnp.asarray(shapes, jnp.float32)
  if shapes.ndim != 3 or shapes.shape[-1] != 3 or not shapes.shape[0]:
    raise ValueError(f'shapes must be [N, P, 3] with N > 0, got {shapes.shape}.')
  if num_rotations < 1 or num_bins < 1:
    raise ValueError(f'need num_rotations >= 1 and num_bins >= 1, got {num_rotations}, {num_bins}.')
  rotations = geometry.random_rotation(key, (num_rotations,))
  errors_fn = jax.jit(lambda p, s, r: canonical_errors(apply_fn, p, s, r))
  values = np.asarray(errors_fn(params, shapes, rotations), np.float64)
  angles = np.asarray(rotation_angle(rotations), np.float64)
  edges = np.linspace(0.0, 180.0, num_bins + 1)
  bins = np.clip(np.searchsorted(edges, angles, side='right') - 1, 0, num_bins - 1)
  mean, std, count = np.full(num_bins, np.nan), np.full(num_bins, np.nan), np.zeros(num_bins, np.int64)
  for b in range(num_bins):
    v = values[bins == b].ravel()
    count[b] = v.size
    if v.size:
      mean[b], std[b] = v.mean(), v.std()
  return {
      'bin_edges': edges,
      'bin_centers': 0.5 * (edges[:-1] + edges[1:]),
      'mean': mean,
      'std': std,
      'count': count,
      'rotations': np.asarray(rotations),
      'angles': angles,
      'values': values,
      'per_rotation': values.mean(1),
  }


def canonical_shapes(
    apply_fn: Callable,
    params,
    dataset: data_lib.WindowDataset,
    *,
    num_frames: int = 512,
    seed: int = 0,
    batch_size: int = 64,
) -> np.ndarray:
  """The model's canonical shapes ``X`` (``shape_init``) on real frames sampled from ``dataset``.

  Only as many randomly chosen windows as needed to hold ``num_frames`` real
  frames are run through the model; padded frames are dropped.

  Returns:
    ``[min(num_frames, real frames), P, 3]`` in normalised units.
  """
  rng = np.random.default_rng(seed)
  order = rng.permutation(dataset.num_windows)
  needed = int(np.searchsorted(np.cumsum(dataset.mask.sum(1)[order]), num_frames)) + 1
  idx = np.sort(order[:needed])
  subset = dataclasses.replace(
      dataset,
      **{
          f: getattr(dataset, f)[idx]
          for f in ('keypoints', 'visibility', 'mask', 'points3d', 'sequence_ids', 'view_ids', 'starts', 'centroids')
          if getattr(dataset, f) is not None
      },
  )
  shapes = scoring.predict(apply_fn, params, subset, batch_size=batch_size, key='shape_init')
  real = shapes[subset.mask > 0]
  if len(real) > num_frames:
    real = real[np.sort(rng.choice(len(real), num_frames, replace=False))]
  return real


def format_canonical_study(study: dict[str, np.ndarray], *, scale: float = 1.0) -> str:
  """A console table of :func:`canonical_study` (errors times ``scale``)."""
  lines = [f"{'angle (deg)':>12}{'count':>9}{'mean':>12}{'std':>12}"]
  for lo, hi, n, m, s in zip(
      study['bin_edges'][:-1], study['bin_edges'][1:], study['count'], study['mean'], study['std']
  ):
    lines.append(f'{lo:5.0f} - {hi:4.0f}{n:9d}{m * scale:12.3f}{s * scale:12.3f}')
  values = study['values']
  lines.append(f"{'all':>12}{values.size:9d}{values.mean() * scale:12.3f}{values.std() * scale:12.3f}")
  return '\n'.join(lines)


def run_canonical_study(
    workdir: str,
    *,
    num_rotations: int = 256,
    num_frames: int = 512,
    num_bins: int = 12,
    seed: int = 0,
    step: int | None = None,
    output_dir: str | None = None,
    plot: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
  """:func:`canonical_study` of a trained run on shapes from its eval windows; CSV, PNG and table.

  Writes ``canonical_study.csv`` (per angle bin: ``angle_lo``, ``angle_hi``,
  ``count``, ``mean``, ``std`` in data units, i.e. times ``meta['scale']``,
  plus the normalised ``mean_normalised`` / ``std_normalised``) and
  ``canonical_study.png`` into ``output_dir`` (default: the workdir).

  Returns:
    :func:`canonical_study`'s dict plus ``scale``, ``num_shapes``, ``csv`` and ``png`` (paths).
  """
  config, model, params, meta = load_run(workdir, step)
  dataset, _, name = build_eval_dataset(config, meta)
  shapes = canonical_shapes(
      model.apply, params, dataset, num_frames=num_frames, seed=seed, batch_size=config.train.eval_batch_size
  )
  study = canonical_study(
      model.apply, params, shapes, key=jax.random.PRNGKey(seed), num_rotations=num_rotations, num_bins=num_bins
  )
  scale = float(meta['scale'])
  output_dir = output_dir or workdir
  os.makedirs(output_dir, exist_ok=True)
  csv_path = os.path.join(output_dir, 'canonical_study.csv')
  with open(csv_path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['angle_lo', 'angle_hi', 'count', 'mean', 'std', 'mean_normalised', 'std_normalised'])
    for lo, hi, n, m, s in zip(
        study['bin_edges'][:-1], study['bin_edges'][1:], study['count'], study['mean'], study['std']
    ):
      writer.writerow([f'{lo:g}', f'{hi:g}', int(n), f'{m * scale:.6g}', f'{s * scale:.6g}', f'{m:.6g}', f'{s:.6g}'])
  header = (
      f'canonical study of {workdir} (step {meta["step"]}): ‖X − Ψ(R X)‖ mean joint distance, '
      f'data units (2D scale {scale:.4g}); {len(shapes)} shapes from {name} × {num_rotations} rotations'
  )
  log(header)
  log(format_canonical_study(study, scale=scale))
  log(f'wrote {csv_path}')
  png_path = None
  if plot:
    png_path = plotting.plot_canonical_study(
        study,
        os.path.join(output_dir, 'canonical_study.png'),
        scale=scale,
        title=f'{os.path.basename(os.path.abspath(workdir))}, step {meta["step"]}: {len(shapes)} shapes '
        f'({name}) × {num_rotations} Haar rotations',
    )
    log(f'wrote {png_path}')
  return dict(study, scale=scale, num_shapes=len(shapes), csv=csv_path, png=png_path)


__all__ = [
    'build_eval_dataset',
    'canonical_errors',
    'canonical_shapes',
    'canonical_study',
    'evaluate_run',
    'export_run',
    'format_canonical_study',
    'load_run',
    'rotation_angle',
    'run_canonical_study',
]


# ----------------------------------------------------------------------------
# Temporal diagnostics (experiments/temporal_study.py): depth signs against the truth.
# ----------------------------------------------------------------------------


def handedness(points: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
  """(share of frames whose handedness is the truth's, its changes per 100 consecutive frames) of windows."""
  same = ~np.asarray(metrics.flip_is_closer(points, truth))
  present = mask > 0
  pairs = present[:, 1:] & present[:, :-1]
  changes = 100.0 * float((same[:, 1:] != same[:, :-1])[pairs].mean()) if pairs.any() else float('nan')
  return float(same[present].mean()), changes  # (no changes to count in one-frame windows)


def bone_depths(points: np.ndarray, bones) -> np.ndarray:
  """``[..., E]``: each bone's depth difference, child minus parent, of ``points [..., P, 3]``."""
  parents, children = np.array([a for a, _ in bones]), np.array([b for _, b in bones])
  return points[..., children, 2] - points[..., parents, 2]


def bone_signs(points: np.ndarray, truth: np.ndarray, bones) -> tuple[float, float]:
  """(share of bone depth signs that agree with the truth's, agreement changes per 100 frames per bone).

  ``points``, ``truth``: ``[T, P, 3]``, one trial and view in time order. Each frame is first given
  the whole-body depth flip that agrees with the truth on more of the bones' depth differences
  (MPJPE's per-frame flip does the same, by distance); a bone whose true depth difference is 0
  counts as agreeing.
  """
  dz, gz = bone_depths(points, bones), bone_depths(truth, bones)
  flip = np.where((dz * gz).sum(-1, keepdims=True) < 0, -1.0, 1.0)
  agree = (dz * flip * gz) >= 0
  changes = 100.0 * float((agree[1:] != agree[:-1]).mean()) if len(agree) > 1 else float('nan')
  return float(agree.mean()), changes


def with_bone_depths(points: np.ndarray, bones, depths: np.ndarray) -> np.ndarray:
  """``points [..., P, 3]`` rebuilt from the root with each bone's depth difference ``depths [..., E]``.

  x, y and the root's depth are kept; ``bones`` root-first (a parent is the root or an earlier
  bone's child), as ``data.CMU_BONES``.
  """
  out = np.array(points, np.float64)
  for e, (a, b) in enumerate(bones):
    out[..., b, 2] = out[..., a, 2] + depths[..., e]
  return out


def sign_vote(points: np.ndarray, bones, sigma: float) -> np.ndarray:
  """``points [T, P, 3]`` with each bone's depth sign voted over time; x, y and extents kept.

  Consecutive frames are first brought to one whole-body handedness (each frame takes the depth
  flip that is closer to the frame before, as aligned), so a mirrored frame does not vote against
  its neighbours. Each bone's depth difference is smoothed over time (Gaussian, ``sigma`` frames),
  and the bone keeps its own extent with the smoothed sign; the skeleton is rebuilt from the root
  (``bones`` root-first, as ``data.CMU_BONES``). No 3D is read.
  """
  aligned = np.array(points, np.float64)
  mirror = np.array([1.0, 1.0, -1.0])
  for t in range(1, len(aligned)):
    centred, prev = aligned[t] - aligned[t].mean(0), aligned[t - 1] - aligned[t - 1].mean(0)
    if np.linalg.norm(centred * mirror - prev, axis=-1).mean() < np.linalg.norm(centred - prev, axis=-1).mean():
      aligned[t, :, 2] = 2 * aligned[t, :, 2].mean() - aligned[t, :, 2]
  dz = bone_depths(aligned, bones)
  voted = np.where(gaussian_filter1d(dz, sigma, axis=0, mode='nearest') < 0, -1.0, 1.0) * np.abs(dz)
  return with_bone_depths(aligned, bones, voted)


def targets_handedness(workdir: str) -> dict:
  """``{'raw': (right, changes), 'resolved': (right, changes)}``: :func:`handedness` of a run's
  reconstructions of its training windows, as they are and after
  :func:`geometry.resolve_flip_by_reference` to its mean shape (what ``teacher.resolve_flips`` does)."""
  config, model, params, meta = load_run(workdir)
  dataset = data_lib.make_dataset(config.data, 'train', scale=meta['scale'], seed=config.seed)
  points = scoring.predict(model.apply, params, dataset, batch_size=64, context=scoring.eval_context(config))
  reference = model.apply(params, method=Student.mean_shape)
  resolved = np.asarray(geometry.resolve_flip_by_reference(points, reference, mask=dataset.visibility))
  truth = dataset.points3d / dataset.scale
  return {
      'raw': handedness(points, truth, dataset.mask),
      'resolved': handedness(resolved, truth, dataset.mask),
  }
