"""Lifting a user's 2D keypoints to 3D with a trained or the shipped model (``experiments/predict.py``).

A model (:func:`load_predictor`) is either the pretrained student installed with the package
(:data:`PRETRAINED`, made by ``experiments/pretrained.sh``), an exported ``.npz``
(``experiments/export.py``) or a run's workdir. :func:`lift` maps one person's keypoints in
image coordinates (pixels, y down) to root-relative 3D in the same units:

* x, y: the image axes (right, down), in the input's units;
* z: depth, growing away from the camera (OpenCV's camera frame), in the same units. An
  orthographic model knows depth up to that scale, and only relative to the root (the hip).

With a diffusion teacher (the shipped one, :data:`PRETRAINED_TEACHER`, or ``teacher=`` a teacher
run or export), :func:`lift` also samples its H hypotheses per window and returns their per-joint
disagreement as an uncertainty (same units), and their joint-wise reprojection aggregate as a
second 3D estimate.

The model was trained on 2D in its own units (millimetres of the mocap, ``meta['scale']``):
each input is brought to that scale by the ratio of the training 2D scale to the input's own
2D scale (:func:`nrsfm_jax.data.dataset_scale`, the RMS of its centred visible coordinates),
and the output is scaled back.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from nrsfm_jax import checkpoint as ckpt_lib
from nrsfm_jax import geometry
from nrsfm_jax.data.windows import center_2d, dataset_scale
from nrsfm_jax.runs import load_run

_PRETRAINED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'pretrained')
PRETRAINED = os.path.join(_PRETRAINED_DIR, 'cmu17_student.npz')
# The supervised diffusion teacher that taught the shipped student (same data, same 2D scale).
PRETRAINED_TEACHER = os.path.join(_PRETRAINED_DIR, 'cmu17_teacher.npz')


@dataclasses.dataclass(frozen=True)
class Teacher:
  """A diffusion teacher ready to sample (:func:`nrsfm_jax.teacher.predict`).

  Attributes:
    apply_fn, params: the denoiser.
    schedule: its diffusion schedule.
    scale: its training 2D scale (data units per normalised unit).
    window: the window length it was trained on (tracks are cut into windows of this length).
    num_hypotheses, num_steps: H and K DDIM steps, from its config.
    source: where it was loaded from.
  """

  apply_fn: Callable
  params: Any
  schedule: Any
  scale: float
  window: int
  num_hypotheses: int
  num_steps: int
  source: str


@dataclasses.dataclass(frozen=True)
class Predictor:
  """A student ready to lift: ``apply_fn(params, keypoints [T, P, 2] data units, visibility [T, P]) -> [T, P, 3]``,
  and optionally a :class:`Teacher` for per-joint uncertainty."""

  apply_fn: Callable
  params: Any
  scale: float
  num_points: int
  source: str
  teacher: Teacher | None = None


def load_teacher(source: str) -> Teacher:
  """A teacher run's workdir (``experiments/train_teacher.py``) or its export (``experiments/export.py``).

  Raises:
    FileNotFoundError: nothing at ``source``.
    ValueError: ``source`` is a student, not a teacher.
  """
  from nrsfm_jax import diffusion  # pylint: disable=g-import-not-at-top

  if not os.path.exists(source):
    raise FileNotFoundError(f'no teacher at {source}')
  if os.path.isdir(source):
    config, model, params, meta = load_run(source)
  else:
    config, model, params, meta = ckpt_lib.load_exported_model(source)
  if 'teacher' not in config:
    raise ValueError(f'{source} is a student, not a diffusion teacher (experiments/train_teacher.py makes those).')
  return Teacher(
      apply_fn=model.apply,
      params=params,
      schedule=diffusion.make_schedule(config.diffusion.schedule, config.diffusion.num_timesteps),
      scale=float(meta['scale']),
      window=int(config.data.window),
      num_hypotheses=int(config.diffusion.num_hypotheses),
      num_steps=int(config.diffusion.num_steps),
      source=source,
  )


def load_predictor(source: str | None = None, teacher: str | None = 'auto') -> Predictor:
  """The shipped model (``source=None``), an exported ``.npz`` or a student run's workdir.

  Args:
    source: the student; None for the shipped one (:data:`PRETRAINED`).
    teacher: ``'auto'``: the shipped teacher with the shipped student, none otherwise; a teacher
      run or export; None or ``''``: no teacher (no uncertainty, faster).

  Raises:
    FileNotFoundError: nothing at ``source`` (or the package was installed without its model).
    ValueError: ``source`` is a teacher run, or ``teacher`` a student, or they were trained at
      different 2D scales (different data).
  """
  shipped = not source
  source = source or PRETRAINED
  if not os.path.exists(source):
    hint = (
        ' (the pretrained model ships with the package; reinstall it, or pass --workdir)'
        if source == PRETRAINED
        else ''
    )
    raise FileNotFoundError(f'no model at {source}{hint}')
  if os.path.isdir(source):
    config, model, params, meta = load_run(source)
    if 'teacher' in config:
      raise ValueError(f'{source} is a teacher run; predict needs a student run (experiments/train.py).')
    fn = ckpt_lib.predictor_fn(model, float(meta['scale']))
  else:
    fn, params = ckpt_lib.load_exported(source)
    meta = ckpt_lib.export_meta(source)
  if teacher == 'auto':
    teacher = PRETRAINED_TEACHER if shipped and os.path.exists(PRETRAINED_TEACHER) else None
  sampler = load_teacher(teacher) if teacher else None
  if sampler is not None and not np.isclose(sampler.scale, float(meta['scale']), rtol=1e-4):
    raise ValueError(
        f'the teacher {sampler.source} was trained at 2D scale {sampler.scale:.6g}, the student {source} at '
        f'{float(meta["scale"]):.6g}: they were trained on different data'
    )
  return Predictor(fn, params, float(meta['scale']), int(meta['num_points']), source, sampler)


# The eight limbs (upper/lower arms and legs, as joint-name pairs) and their mean 3D length in the
# bundled mocap (mm), the skeleton the shipped model knows: see :func:`limb_lengths_mm`.
LIMBS = (
    ('RHip', 'RKnee'), ('RKnee', 'RFoot'), ('LHip', 'LKnee'), ('LKnee', 'LFoot'),
    ('LShoulder', 'LElbow'), ('LElbow', 'LWrist'), ('RShoulder', 'RElbow'), ('RElbow', 'RWrist'),
)  # fmt: skip


_NUM_JOINTS = 17  # The Human3.6M-order skeleton of nrsfm_jax.data.CMU_JOINTS.


@functools.cache
def limb_lengths_mm() -> np.ndarray:
  """``[8]`` mean 3D length (mm) of each of :data:`LIMBS` over the bundled CMU mocap (one rig)."""
  from nrsfm_jax.data import CMU_JOINTS, load_mocap  # pylint: disable=g-import-not-at-top

  points = np.concatenate(list(load_mocap().values()))
  pairs = [(CMU_JOINTS.index(a), CMU_JOINTS.index(b)) for a, b in LIMBS]
  return np.array([np.linalg.norm(points[:, a] - points[:, b], axis=-1).mean() for a, b in pairs])


def limb_scale(keypoints: np.ndarray, visibility: np.ndarray, *, percentile: float = 98.0) -> float | None:
  """Input units per millimetre of the mocap rig, from how long the limbs get in 2D: ``float | None``.

  An orthographic camera shortens a limb unless it lies parallel to the image, so over a clip a
  limb's longest 2D length (its ``percentile``-th over the frames that see both ends) is close
  to its true length. The ratio to the rig's :func:`limb_lengths_mm` per limb, then the 75th
  percentile over the limbs (one detector glitch or one limb that never straightens does not
  decide it), is the input's scale. The input's 2D RMS, which depends on the poses (arms up or
  down), is off by several per cent, and a lifter that knows the skeleton turns a scale error
  into a depth error (``experiments/scale_study.py`` measures both on held-out views).

  Args:
    keypoints: ``[T, 17, 2]`` in :data:`nrsfm_jax.data.CMU_JOINTS` order.
    visibility: ``[T, 17]``.
    percentile: over frames, per limb.

  Returns:
    The scale, or None when no limb is seen whole in any frame.
  """
  from nrsfm_jax.data import CMU_JOINTS  # pylint: disable=g-import-not-at-top

  ratios = []
  for (a, b), length in zip(LIMBS, limb_lengths_mm()):
    i, j = CMU_JOINTS.index(a), CMU_JOINTS.index(b)
    seen = (visibility[:, i] > 0) & (visibility[:, j] > 0)
    if seen.any():
      ratios.append(
          np.percentile(np.linalg.norm(keypoints[seen, i] - keypoints[seen, j], axis=-1), percentile) / length
      )
  return float(np.percentile(ratios, 75)) if ratios else None


def lift(
    predictor: Predictor, keypoints: np.ndarray, visibility: np.ndarray, *, scale: float | None = None
) -> dict[str, np.ndarray]:
  """One person's 2D track to 3D.

  Args:
    predictor: from :func:`load_predictor`.
    keypoints: ``[T, P, 2]`` image coordinates (x right, y down), any units; missing points
      anything (they are ignored).
    visibility: ``[T, P]``, 0 for a missing point.
    scale: the input's units per model unit (millimetre), if known; default: from the limbs
      (:func:`limb_scale`) for the 17-joint skeleton, else from the 2D RMS against the model's
      training 2D scale.

  Returns:
    ``{'points3d': [T, P, 3]`` root-relative camera-frame 3D in the input's units (x right,
    y down, z away from the camera; NaN on frames with no visible point),
    ``'scale': the factor input units per model unit}``; with the predictor's teacher also
    ``'uncertainty': [T, P]`` (its hypotheses' RMS distance to their mean, per joint, input
    units) and ``'teacher3d': [T, P, 3]`` (their joint-wise reprojection aggregate, as
    ``points3d``).

  Raises:
    ValueError: shapes that do not match the model, or no visible point.
  """
  keypoints = np.asarray(keypoints, np.float32)
  visibility = np.asarray(visibility, np.float32)
  if keypoints.ndim != 3 or keypoints.shape[-1] != 2 or visibility.shape != keypoints.shape[:-1]:
    raise ValueError(f'keypoints {keypoints.shape} and visibility {visibility.shape}: expected [T, P, 2] and [T, P]')
  if keypoints.shape[1] != predictor.num_points:
    raise ValueError(
        f'{keypoints.shape[1]} joints per frame; the model ({predictor.source}) takes {predictor.num_points}'
    )
  keypoints = np.where(visibility[..., None] > 0, np.nan_to_num(keypoints), 0.0)
  ratio = scale
  if ratio is None and keypoints.shape[1] == _NUM_JOINTS:
    ratio = limb_scale(keypoints, visibility)
  if ratio is None:  # Not the 17-joint skeleton, or no limb seen whole: the input's 2D RMS.
    centred, _ = center_2d(keypoints, visibility)
    ratio = dataset_scale(centred, visibility) / predictor.scale  # input units per model unit
  model_kp = (keypoints / ratio * np.array([1.0, -1.0])).astype(np.float32)  # image y down -> model y up
  points = np.asarray(predictor.apply_fn(predictor.params, model_kp, visibility), np.float64)
  # Model frame (x right, y up, z towards the camera) back to the image's, a proper rotation.
  points = points * np.array([1.0, -1.0, -1.0]) * ratio
  points = np.asarray(geometry.root_relative(points), np.float64)
  empty = ~(visibility > 0).any(-1)
  points[empty] = np.nan
  result = {'points3d': points.astype(np.float32), 'scale': np.float32(ratio)}
  if predictor.teacher is not None:
    spread, teacher3d = _sample_teacher(predictor.teacher, model_kp, visibility)
    teacher3d = teacher3d * np.array([1.0, -1.0, -1.0]) * ratio
    spread, teacher3d = spread * ratio, np.asarray(geometry.root_relative(teacher3d), np.float64)
    spread[empty], teacher3d[empty] = np.nan, np.nan
    result.update(uncertainty=spread.astype(np.float32), teacher3d=teacher3d.astype(np.float32))
  return result


def _sample_teacher(teacher: Teacher, keypoints: np.ndarray, visibility: np.ndarray, seed: int = 0):
  """``(spread [T, P], jpma aggregate [T, P, 3])`` in data units, model frame, for one track in data units."""
  from nrsfm_jax import teacher as teacher_lib  # pylint: disable=g-import-not-at-top
  from nrsfm_jax.data.windows import build_dataset, reassemble  # pylint: disable=g-import-not-at-top

  # The teacher's own normalisation (centred per frame, divided by its training scale), cut into
  # windows of its training length; the last one padded and masked.
  dataset = build_dataset({'track': (None, keypoints[None], visibility[None])}, teacher.window, scale=teacher.scale)
  out = teacher_lib.predict(
      teacher.apply_fn,
      teacher.params,
      teacher.schedule,
      dataset,
      num_hypotheses=teacher.num_hypotheses,
      num_steps=teacher.num_steps,
      seed=seed,
      aggregations=('spread', 'jpma'),
  )
  spread = reassemble(dataset, out['spread'])[('track', 0)] * teacher.scale
  points = reassemble(dataset, out['jpma'])[('track', 0)] * teacher.scale
  return np.asarray(spread, np.float64), np.asarray(points, np.float64)


# The bundled trial that experiments/pretrained.sh holds back from the shipped model.
HELD_BACK_TRIAL = '002_04'


def demo_view(
    trial: str = HELD_BACK_TRIAL,
    *,
    azimuth: float = 20.0,
    elevation: float = 15.0,
    pixels_per_mm: float = 0.4,
    centre: tuple[float, float] = (640.0, 360.0),
) -> tuple[np.ndarray, np.ndarray]:
  """A bundled trial as a camera would see it, in pixels: ``(keypoints [F, 17, 2], truth [F, 17, 3])``.

  The default trial is held back from the shipped model and the default camera angle is none of
  its training ones (azimuths every 45° at elevations 0° and 30°). ``keypoints`` are image
  coordinates (y down); ``truth`` is the root-relative 3D in :func:`lift`'s convention and units.
  """
  from nrsfm_jax.data import load_mocap, orthographic_views  # pylint: disable=g-import-not-at-top

  points = load_mocap(subjects=trial)[trial]
  cam = orthographic_views(points, (azimuth,), elevation)[0].astype(np.float64)  # x right, y up, z to the camera
  image = cam * np.array([1.0, -1.0, -1.0]) * pixels_per_mm
  keypoints = image[..., :2] - image[..., :2].mean((0, 1)) + np.asarray(centre)  # The clip centred in the image.
  return keypoints.astype(np.float32), np.asarray(geometry.root_relative(image), np.float32)


def write_outputs(output: str, name: str, lifted: dict[str, np.ndarray], track: Any) -> list[str]:
  """``<output>/<name>_3d.npz`` and ``<name>_3d.csv`` of :func:`lift`'s result for ``track``; their paths.

  The npz holds ``points3d``, ``keypoints``, ``visibility``, ``frames``, ``joints``, ``scale`` and,
  with a teacher, ``uncertainty`` and ``teacher3d``; the CSV ``frame, joint, x, y, z`` and, with a
  teacher, ``uncertainty``.
  """
  import csv  # pylint: disable=g-import-not-at-top

  from nrsfm_jax.data import CMU_JOINTS  # pylint: disable=g-import-not-at-top

  os.makedirs(output, exist_ok=True)
  npz = os.path.join(output, f'{name}_3d.npz')
  extra = {k: lifted[k] for k in ('uncertainty', 'teacher3d') if k in lifted}
  np.savez(
      npz,
      points3d=lifted['points3d'],
      keypoints=track.keypoints,
      visibility=track.visibility,
      frames=track.frames,
      joints=np.asarray(CMU_JOINTS),
      scale=lifted['scale'],
      **extra,
  )
  path_csv = os.path.join(output, f'{name}_3d.csv')
  uncertainty = lifted.get('uncertainty')
  with open(path_csv, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['frame', 'joint', 'x', 'y', 'z'] + (['uncertainty'] if uncertainty is not None else []))
    for i, (frame, pose) in enumerate(zip(track.frames, lifted['points3d'])):
      for j, (joint, p) in enumerate(zip(CMU_JOINTS, pose)):
        row = [frame, joint] + (['', '', ''] if np.isnan(p).any() else [f'{v:.4f}' for v in p])
        if uncertainty is not None:
          row.append('' if np.isnan(uncertainty[i, j]) else f'{uncertainty[i, j]:.4f}')
        writer.writerow(row)
  return [npz, path_csv]


def predict_file(
    source: str | None,
    output: str | None = None,
    *,
    model: str | None = None,
    teacher: str | None = 'auto',
    fmt: str = 'auto',
    person: int = 0,
    min_score: float = 0.3,
    pictures: bool = True,
    gif_frames: int = 120,
    demo: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
  """``experiments/predict.py``: read a keypoint file, lift it, write the 3D and the pictures.

  Args:
    source: a file or OpenPose folder (:func:`nrsfm_jax.data.keypoints.read_keypoints`); None
      with ``demo``.
    output: the output folder (default ``<source without extension>_3d``; with ``demo``,
      ``runs/predict_demo``).
    model: :func:`load_predictor`'s ``source`` (default: the shipped model).
    teacher: :func:`load_predictor`'s ``teacher`` (default: the shipped teacher with the shipped model).
    fmt, person, min_score: as ``read_keypoints``.
    pictures: also write ``<name>.gif`` and ``<name>_sheet.png`` (:mod:`nrsfm_jax.plotting`).
    gif_frames: at most this many frames in the GIF.
    demo: write :data:`HELD_BACK_TRIAL` as :func:`demo_view` sees it, as a COCO-17 JSON in
      ``output``, lift that, and score it against the mocap 3D (``'mpjpe'``, ``'depth0'``, mm).
    log: progress sink.

  Returns:
    ``{'points3d': [F, 17, 3], 'written': [paths]}``, with a teacher ``'uncertainty' [F, 17]``,
    and with ``demo`` the scores in mm: ``'mpjpe'``, ``'depth0'``, with a teacher
    ``'teacher_mpjpe'`` and ``'uncertainty_error_corr'`` (Spearman correlation over joints and
    frames between the uncertainty and the student's error).

  Raises:
    FileNotFoundError, ValueError, KeyError: a missing or malformed input or model (named).
  """
  import scipy.stats  # pylint: disable=g-import-not-at-top  (a jax dependency)

  from nrsfm_jax import metrics, plotting  # pylint: disable=g-import-not-at-top
  from nrsfm_jax.data import keypoints as kp_lib  # pylint: disable=g-import-not-at-top

  if demo == (source is not None):
    raise ValueError('give a keypoint file or folder, or demo=True')
  truth = None
  if demo:
    output = output or os.path.join('runs', 'predict_demo')
    os.makedirs(output, exist_ok=True)
    demo_keypoints, truth = demo_view()
    source = kp_lib.write_coco_json(
        os.path.join(output, f'demo_{HELD_BACK_TRIAL}.json'), kp_lib.h36m_to_coco(demo_keypoints)
    )
    log(f'demo: trial {HELD_BACK_TRIAL} at azimuth 20°, elevation 15°, 0.4 px/mm, written to {source}')
  assert source is not None
  source = source.rstrip('/') or source
  output = output or os.path.splitext(source)[0] + '_3d'
  track = kp_lib.read_keypoints(source, fmt=fmt, person=person, min_score=min_score)
  predictor = load_predictor(model, teacher)
  missing = 1.0 - float(track.visibility.mean())
  log(f'read {source} ({track.source}): {len(track.keypoints)} frames, {100 * missing:.1f}% of keypoints missing')
  log(f'model: {predictor.source}' + (f'; teacher: {predictor.teacher.source}' if predictor.teacher else ''))
  if predictor.teacher is not None:
    log(f'sampling the teacher ({predictor.teacher.num_hypotheses} hypotheses) for the uncertainty ...')
  lifted = lift(predictor, track.keypoints, track.visibility)
  name = os.path.splitext(os.path.basename(source))[0]
  result: dict[str, Any] = {'points3d': lifted['points3d'], 'written': write_outputs(output, name, lifted, track)}
  if 'uncertainty' in lifted:
    result['uncertainty'] = lifted['uncertainty']
  if truth is not None:
    px_per_mm = 0.4  # demo_view's
    result['mpjpe'] = float(np.mean(metrics.mpjpe(lifted['points3d'], truth))) / px_per_mm
    result['depth0'] = float(np.mean(metrics.mpjpe(truth * np.array([1.0, 1.0, 0.0]), truth))) / px_per_mm
    log(f'demo MPJPE {result["mpjpe"]:.1f} mm (depth 0: {result["depth0"]:.1f} mm), root-relative, depth-flip best')
    if 'uncertainty' in lifted:
      result['teacher_mpjpe'] = float(np.mean(metrics.mpjpe(lifted['teacher3d'], truth))) / px_per_mm
      resolved = np.asarray(metrics.flip_resolve(lifted['points3d'], truth))
      error = np.linalg.norm(resolved - truth, axis=-1)[:, 1:]  # The root's error and spread are 0.
      result['uncertainty_error_corr'] = float(
          scipy.stats.spearmanr(lifted['uncertainty'][:, 1:].ravel(), error.ravel(), nan_policy='omit').statistic
      )
      log(
          f'demo: teacher alone (joint-wise aggregate) MPJPE {result["teacher_mpjpe"]:.1f} mm; uncertainty vs '
          f'the student\'s per-joint error: Spearman {result["uncertainty_error_corr"]:.2f}'
      )
  if pictures:
    log('drawing the pictures ...')
    args = (track.keypoints, track.visibility, lifted['points3d'], track.frames)
    result['written'].append(plotting.plot_lift_sheet(os.path.join(output, f'{name}_sheet.png'), *args))
    result['written'].append(plotting.animate_lift(os.path.join(output, f'{name}.gif'), *args, max_frames=gif_frames))
  log('wrote ' + ', '.join(result['written']))
  return result
