"""Figures (matplotlib, optional: ``pip install 'nrsfm_jax[plot]'``): bundled data, Ψ's study, ablation rows."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import ml_collections
import numpy as np

from nrsfm_jax import data as data_lib
from nrsfm_jax import metrics, scoring
from nrsfm_jax.data._io import PathLike
from nrsfm_jax.data.mocap import CMU_BONES, CMU_JOINTS, NRSFM_SEQUENCES, load_mocap, orthographic_views
from nrsfm_jax.data.nrsfm import load_nrsfm_sequence


def figure():
  """matplotlib's ``Figure`` class (no pyplot, no display needed), or a clear ImportError."""
  try:
    from matplotlib.figure import Figure
  except ImportError as e:
    raise ImportError("plotting needs matplotlib: pip install 'nrsfm_jax[plot]' (or pip install matplotlib)") from e
  return Figure


def plot_bundled(plot_dir: PathLike, *, trial: str | None = None, frame: int = 0) -> list[Path]:
  """Draws one frame of each bundled dataset, one PNG per dataset.

  `cmu17.png`: one mocap frame in the four benchmark cameras, bones drawn (blue left, red
  right). `nrsfm_mocap.png`: one frame of each NRSfM sequence's 2D input.

  Args:
    plot_dir: Output folder, created if needed.
    trial: CMU trial key to draw; None for the first one.
    frame: Frame index to draw (clipped to each sequence's length).

  Returns:
    The paths written.
  """
  plot_dir = Path(plot_dir)
  plot_dir.mkdir(parents=True, exist_ok=True)
  trials = load_mocap()
  trial = trial or next(iter(trials))
  if trial not in trials:
    raise KeyError(f'unknown trial {trial!r}; available: {list(trials)}')
  azimuths = (45.0, 135.0, 225.0, 315.0)
  views = orthographic_views(trials[trial], azimuths, 10.0)
  views = views[:, min(frame, views.shape[1] - 1)]
  fig = figure()(figsize=(12, 4))
  for v, points in enumerate(views):
    ax = fig.add_subplot(1, len(views), v + 1)
    for a, b in CMU_BONES:
      color = {'L': 'tab:blue', 'R': 'tab:red'}.get(CMU_JOINTS[b][0], 'k')
      ax.plot(points[[a, b], 0], points[[a, b], 1], color=color, lw=2)
    ax.scatter(points[:, 0], points[:, 1], s=10, c='k', zorder=3)
    ax.set_aspect('equal')
    ax.set_title(f'azimuth {azimuths[v]:g}°')
    ax.set_xlabel('x_c (mm)')
  fig.suptitle(f'cmu17 trial {trial}, frame {frame}, elevation 10° (blue: left, red: right)')
  paths = [plot_dir / 'cmu17.png']
  fig.savefig(paths[0], dpi=80, bbox_inches='tight')

  fig = figure()(figsize=(3 * len(NRSFM_SEQUENCES), 4))
  for i, name in enumerate(NRSFM_SEQUENCES):
    points = load_nrsfm_sequence(name)
    points = points[min(frame, len(points) - 1)]
    ax = fig.add_subplot(1, len(NRSFM_SEQUENCES), i + 1)
    ax.scatter(points[:, 0], points[:, 1], s=8, c=np.arange(len(points)), cmap='viridis')
    ax.set_aspect('equal')
    ax.set_title(f'{name}: {len(points)} points')
  fig.suptitle(f'nrsfm-mocap 2D input (points3d[..., :2]), frame {frame}')
  paths.append(plot_dir / 'nrsfm_mocap.png')
  fig.savefig(paths[1], dpi=80, bbox_inches='tight')
  return paths


def plot_canonical_study(
    study: dict[str, np.ndarray], path: str, *, scale: float = 1.0, units: str = 'data units', title: str = ''
) -> str:
  """Mean ± std of ``‖X − Ψ(R X)‖`` per angle bin over the per-rotation values; rotations per bin below."""
  fig = figure()(figsize=(7, 5.5))
  ax, ax_n = fig.subplots(2, 1, sharex=True, gridspec_kw={'height_ratios': [3, 1]})
  ax.scatter(study['angles'], study['per_rotation'] * scale, s=6, c='0.7', label='one rotation (mean over shapes)')
  ok = study['count'] > 0
  ax.errorbar(
      study['bin_centers'][ok],
      study['mean'][ok] * scale,
      yerr=study['std'][ok] * scale,
      fmt='o-',
      color='tab:blue',
      capsize=3,
      label='bin mean ± std (all pairs)',
  )
  ax.set_ylim(bottom=0)
  ax.set_ylabel(f'‖X − Ψ(R X)‖, mean joint\ndistance ({units})')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc='lower right')
  ax.set_title(title or 'canonicalization consistency vs rotation angle', fontsize=9)
  edges = study['bin_edges']
  rotations_per_bin = study['count'] // max(study['values'].shape[1], 1)
  ax_n.bar(edges[:-1], rotations_per_bin, width=np.diff(edges), align='edge', color='0.6', edgecolor='white')
  ax_n.set_ylabel('rotations')
  ax_n.set_xlabel('rotation angle of R (degrees)')
  ax_n.set_xlim(0, 180)
  ax_n.set_xticks(edges[:: max(1, len(edges) // 7)])
  ax_n.grid(alpha=0.3)
  fig.savefig(path, dpi=100, bbox_inches='tight')
  return path


def plot_rows(
    workdir: str,
    config: ml_collections.ConfigDict,
    rows,
    path: str,
    *,
    titles: dict[str, str],
    sequence: str | None = None,
    view: int = 0,
    num_frames: int = 4,
    protocol: str = 'cmu17',
) -> str:
  """Side views (depth z vs height y) of a few frames, truth vs every row, and the per-frame error.

  Args:
    workdir: the benchmark's ablation directory (one subdirectory per row).
    config: a row's config (its data gives the evaluation windows).
    rows: the rows to draw.
    titles: a title per row.
    path: the PNG to write.
    sequence: the trial/sequence to draw (default: the longest).
    view: its camera.
    num_frames: frames drawn, evenly spaced.
    protocol: ``'cmu17'`` (per-frame MPJPE, skeleton) or ``'nrsfm'`` (per-frame e3D, points).

  Returns:
    ``path``.
  """
  eval_ds = data_lib.make_dataset(
      config.data, 'eval', seed=config.seed, scale=data_lib.make_dataset(config.data, 'train', seed=config.seed).scale
  )
  truths = data_lib.reassemble(eval_ds, eval_ds.points3d)
  rows = [r for r in rows if os.path.exists(os.path.join(workdir, r, 'eval_predictions.npz'))]
  preds = {r: scoring.read_predictions(os.path.join(workdir, r, 'eval_predictions.npz')) for r in rows}
  if sequence is None:
    sequence = max((k for k in truths if k[1] == view), key=lambda k: len(truths[k]))[0]
  gt = truths[(sequence, view)]
  frames = np.linspace(0, len(gt) - 1, num_frames + 2).astype(int)[1:-1]
  fig = figure()(figsize=(2.6 * (len(rows) + 1), 2.6 * num_frames + 3.0))
  grid = fig.add_gridspec(num_frames + 1, len(rows) + 1, height_ratios=[1] * num_frames + [1.1])
  bones = data_lib.CMU_BONES if protocol == 'cmu17' else ()
  errors = {}
  for c, r in enumerate(['truth'] + rows):
    if r == 'truth':
      seq = (
          np.asarray(metrics.flip_resolve(gt, gt), np.float32)
          if protocol == 'cmu17'
          else gt - gt.mean(1, keepdims=True)
      )
    else:
      p = preds[r][(sequence, view)]
      if protocol == 'cmu17':
        seq = np.asarray(metrics.flip_resolve(p, gt))
        errors[r] = np.asarray(metrics.mpjpe(p, gt))
      else:
        pc, g = p - p.mean(1, keepdims=True), gt - gt.mean(1, keepdims=True)
        flipped = pc * np.array([1, 1, -1])
        err = lambda q: np.linalg.norm(q - g, axis=(1, 2)) / np.linalg.norm(g, axis=(1, 2))
        use = err(flipped) < err(pc)
        seq = np.where(use[:, None, None], flipped, pc)
        errors[r] = np.minimum(err(pc), err(flipped))
    ref = gt - gt[:, :1] if protocol == 'cmu17' else gt - gt.mean(1, keepdims=True)
    for i, f in enumerate(frames):
      ax = fig.add_subplot(grid[i, c])
      if r != 'truth':
        ax.scatter(ref[f, :, 2], ref[f, :, 1], s=4, c='0.7')
        for a, b in bones:
          ax.plot(ref[f, [a, b], 2], ref[f, [a, b], 1], c='0.7', lw=1)
      ax.scatter(seq[f, :, 2], seq[f, :, 1], s=5, c='k' if r == 'truth' else 'C3')
      for a, b in bones:
        ax.plot(seq[f, [a, b], 2], seq[f, [a, b], 1], c='k' if r == 'truth' else 'C3', lw=1.2)
      ax.set_aspect('equal')
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        ax.set_title('truth' if r == 'truth' else titles[r].replace(' + ', '\n+ ', 1), fontsize=8)
      if c == 0:
        ax.set_ylabel(f'frame {f}', fontsize=8)
  ax = fig.add_subplot(grid[num_frames, :])
  for r, e in errors.items():
    ax.plot(e, label=f'{titles[r]} (mean {e.mean():.3g})', lw=1)
  ax.set_xlabel('frame')
  ax.set_ylabel('MPJPE (mm)' if protocol == 'cmu17' else 'e3D')
  ax.legend(fontsize=7)
  ax.set_title(f'{sequence}, camera {view}: side view (depth → right, height ↑; grey = truth)', fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  return path


# Views of a lifted skeleton (image convention: x right, y down, z away from the camera):
# (title, elevation, azimuth) of matplotlib's 3D axes, whose vertical axis shows -y (up).
LIFT_VIEWS = (('3D, from the front-left', 10.0, -60.0), ('3D, from the side', 10.0, 0.0))


def _bone_color(b: int) -> str:
  return {'L': 'tab:blue', 'R': 'tab:red'}.get(CMU_JOINTS[b][0], 'k')


def _lift_limits(keypoints, visibility, points3d):
  vis = visibility > 0
  xy = keypoints[vis]
  lo2, hi2 = xy.min(0), xy.max(0)
  half2 = 0.55 * float(np.max(hi2 - lo2)) + 1e-6
  good = np.isfinite(points3d).all(-1)
  p = points3d[good]
  half3 = 0.55 * float(np.max(p.max(0) - p.min(0))) + 1e-6 if len(p) else 1.0
  return ((lo2 + hi2) / 2, half2), half3


def _draw_lift_frame(ax2d, axes3d, keypoints, visibility, points3d, limits, label):
  (c2, h2), h3 = limits
  ax2d.cla()
  vis = visibility > 0
  for a, b in CMU_BONES:
    if vis[a] and vis[b]:
      ax2d.plot(keypoints[[a, b], 0], keypoints[[a, b], 1], color=_bone_color(b), lw=2)
  ax2d.scatter(keypoints[vis, 0], keypoints[vis, 1], s=8, c='k', zorder=3)
  ax2d.set_xlim(c2[0] - h2, c2[0] + h2)
  ax2d.set_ylim(c2[1] + h2, c2[1] - h2)  # Image y grows downwards.
  ax2d.set_aspect('equal')
  ax2d.set_title(f'2D input, {label}', fontsize=9)
  for ax, (title, elev, azim) in zip(axes3d, LIFT_VIEWS):
    ax.cla()
    if np.isfinite(points3d).all():
      x, depth, up = points3d[:, 0], points3d[:, 2], -points3d[:, 1]
      for a, b in CMU_BONES:
        ax.plot(x[[a, b]], depth[[a, b]], up[[a, b]], color=_bone_color(b), lw=2)
      ax.scatter(x, depth, up, s=6, c='k')
    ax.set_xlim(-h3, h3)
    ax.set_ylim(-h3, h3)
    ax.set_zlim(-h3, h3)
    ax.set_box_aspect((1, 1, 1))
    ax.view_init(elev=elev, azim=azim)
    ax.set_xlabel('x')
    ax.set_ylabel('depth')
    ax.set_zlabel('up')
    ax.tick_params(labelsize=6)
    ax.set_title(title, fontsize=9)


def plot_lift_sheet(
    path: PathLike, keypoints: np.ndarray, visibility: np.ndarray, points3d: np.ndarray, frames=None, num: int = 4
) -> str:
  """A PNG contact sheet: ``num`` evenly spaced frames, the 2D input beside the 3D from two views.

  Args:
    path: the PNG to write.
    keypoints: ``[F, 17, 2]`` image coordinates (y down); visibility ``[F, 17]``.
    points3d: ``[F, 17, 3]`` from :func:`nrsfm_jax.predict.lift` (NaN frames are left empty).
    frames: ``[F]`` frame ids for the titles (default ``0..F-1``).
    num: rows of the sheet.

  Returns:
    ``str(path)``.
  """
  frames = np.arange(len(keypoints)) if frames is None else np.asarray(frames)
  picks = np.unique(np.linspace(0, len(keypoints) - 1, num).round().astype(int))
  limits = _lift_limits(keypoints, visibility, points3d)
  fig = figure()(figsize=(10.5, 3.4 * len(picks)))
  for r, f in enumerate(picks):
    ax2d = fig.add_subplot(len(picks), 3, 3 * r + 1)
    axes3d = [fig.add_subplot(len(picks), 3, 3 * r + 2 + i, projection='3d') for i in range(2)]
    _draw_lift_frame(ax2d, axes3d, keypoints[f], visibility[f], points3d[f], limits, f'frame {frames[f]}')
  fig.suptitle('blue: left, red: right', fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  return str(path)


def animate_lift(
    path: PathLike,
    keypoints: np.ndarray,
    visibility: np.ndarray,
    points3d: np.ndarray,
    frames=None,
    *,
    fps: float = 15.0,
    max_frames: int = 120,
) -> str:
  """An animated GIF (matplotlib's Pillow writer, no ffmpeg) of the 2D input beside the 3D from two views.

  Long inputs are subsampled evenly to at most ``max_frames`` frames. Arguments as
  :func:`plot_lift_sheet`.
  """
  try:
    from matplotlib.animation import FuncAnimation, PillowWriter
  except ImportError as e:
    raise ImportError("animations need matplotlib: pip install 'nrsfm_jax[plot]'") from e
  frames = np.arange(len(keypoints)) if frames is None else np.asarray(frames)
  picks = np.unique(np.linspace(0, len(keypoints) - 1, min(max_frames, len(keypoints))).round().astype(int))
  limits = _lift_limits(keypoints, visibility, points3d)
  fig = figure()(figsize=(10.5, 3.6))
  ax2d = fig.add_subplot(1, 3, 1)
  axes3d = [fig.add_subplot(1, 3, 2 + i, projection='3d') for i in range(2)]

  def draw(i):
    f = picks[i]
    _draw_lift_frame(ax2d, axes3d, keypoints[f], visibility[f], points3d[f], limits, f'frame {frames[f]}')
    return []

  FuncAnimation(fig, draw, frames=len(picks)).save(str(path), writer=PillowWriter(fps=fps), dpi=70)
  return str(path)


def read_metrics(workdir: PathLike, filename: str = 'metrics.jsonl') -> list[dict[str, float]]:
  """The JSON lines of a run's ``metrics.jsonl`` (``loop.MetricWriter``); ``[]`` if there is none.

  A run that was resumed may have logged a step twice: each line is kept, in order.
  """
  path = Path(workdir) / filename
  if not path.is_file():
    return []
  lines = []
  with open(path) as f:
    for number, line in enumerate(f, 1):
      if line.strip():
        try:
          lines.append(json.loads(line))
        except json.JSONDecodeError as e:  # A line cut by a crash mid-write: skip it, say where.
          warnings.warn(f'{path}:{number}: not JSON ({e.msg}); skipped', stacklevel=2)
  return lines


def plot_training(workdir: PathLike, path: PathLike | None = None, *, title: str = '') -> Path | None:
  """A run's loss curves and evaluation scores over steps: ``<workdir>/training.png``.

  Left: every logged loss term (and ``total``) against the step, log scale. Right: the
  ``eval/<metric>`` entries (:func:`nrsfm_jax.loop.run_loop`'s ``evaluate``, and the final
  evaluation) in data units, with the depth-0 reference of ``eval.json`` as a dotted line.

  Returns:
    The PNG's path, or None when ``metrics.jsonl`` holds nothing to draw.
  """
  lines = read_metrics(workdir)
  if not lines:
    return None
  path = Path(path) if path is not None else Path(workdir) / 'training.png'

  def series(key):
    pts = sorted({int(m['step']): float(m[key]) for m in lines if key in m}.items())
    return np.array([p[0] for p in pts]), np.array([p[1] for p in pts])

  keys = list(dict.fromkeys(k for m in lines for k in m if k != 'step'))
  losses = [k for k in keys if not k.startswith('eval/') and k != 'grad_norm']
  evals = [k for k in keys if k.startswith('eval/')]
  fig = figure()(figsize=(11, 4), constrained_layout=True)
  ax_loss, ax_eval = fig.subplots(1, 2)
  for k in losses:
    steps, values = series(k)
    positive = values > 0
    if positive.any():
      ax_loss.plot(
          steps[positive],
          values[positive],
          label=k,
          lw=2.0 if k == 'total' else 1.2,
          color='k' if k == 'total' else None,
      )
  ax_loss.set_yscale('log')
  ax_loss.set_xlabel('step')
  ax_loss.set_ylabel('loss (normalised units)')
  ax_loss.set_title('training loss terms')
  ax_loss.grid(alpha=0.3)
  if losses:
    ax_loss.legend(fontsize=7, ncol=2)
  if evals:
    depth0 = {}
    eval_json = Path(workdir) / 'eval.json'
    if eval_json.is_file():
      with open(eval_json) as f:
        depth0 = json.load(f).get('depth0', {}).get('overall', {})
    # Acceleration error (per frame²) is ~100× smaller than the position errors: its own axis.
    ax_accel = ax_eval.twinx() if any('accel' in k for k in evals) else None
    handles = []
    for i, k in enumerate(evals):
      steps, values = series(k)
      name = k.removeprefix('eval/')
      ax = ax_accel if ax_accel is not None and 'accel' in k else ax_eval
      (line,) = ax.plot(steps, values, marker='o', color=f'C{i}', ls='--' if ax is ax_accel else '-', label=name)
      handles.append(line)
      if name in depth0:
        ax.axhline(depth0[name], color=line.get_color(), ls=':', lw=1)
    ax_eval.set_xlim(ax_loss.get_xlim())  # The same steps as the loss curves (one final score shows where).
    ax_eval.set_xlabel('step')
    ax_eval.set_ylabel('position error (data units; mm for cmu17, h36m)')
    if ax_accel is not None:
      ax_accel.set_ylabel('acceleration error (data units / frame², dashed)')
    ax_eval.set_title('eval split' + (' (dotted: depth 0)' if depth0 else ''))
    ax_eval.grid(alpha=0.3)
    ax_eval.legend(handles=handles, fontsize=7)
  else:
    ax_eval.axis('off')
    ax_eval.text(0.5, 0.5, 'no evaluation scores\n(no 3D in the eval split, or train.eval_every = 0)', ha='center')
  if title:
    fig.suptitle(title)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  return path


def try_plot_training(workdir: str, log=print) -> str | None:
  """:func:`plot_training`, for the trainers: a missing matplotlib or a failed plot is one log
  line, never a failed run. Returns the PNG's path or None."""
  try:
    path = plot_training(workdir, title=os.path.basename(os.path.normpath(workdir)))
  except ImportError as e:
    log(f'no training.png: {e}')
    return None
  except Exception as e:  # pylint: disable=broad-except  (a picture must not fail a finished run)
    log(f'no training.png: {type(e).__name__}: {e}')
    return None
  if path is not None:
    log(f'loss curves and eval scores: {path}')
  return None if path is None else str(path)
