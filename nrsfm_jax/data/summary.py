"""What data ships with the package: counts for a report, and one picture per dataset."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from nrsfm_jax.data._io import PathLike
from nrsfm_jax.data.mocap import (CMU_BONES, CMU_JOINTS, NRSFM_SEQUENCES, load_mocap,
                                  load_mocap_info, orthographic_views)
from nrsfm_jax.data.nrsfm import load_nrsfm_sequence


def summarize_bundled() -> dict:
  """Counts of the bundled data.

  Returns:
    {'cmu17': {'subjects', 'num_trials', 'trials_per_subject', 'frames_per_subject',
    'total_frames', 'fps' (sorted distinct values), 'joints', 'descriptions' (trials per
    CMU description category: the text before ' - ')}, 'nrsfm_mocap': {name: {'frames',
    'points'}}}.
  """
  info = load_mocap_info()
  trials = load_mocap()
  subject_of = {k: info['sequences'][k]['subject'] for k in trials}
  trials_per_subject = Counter(subject_of.values())
  frames_per_subject = Counter()
  for key, points in trials.items():
    frames_per_subject[subject_of[key]] += len(points)
  descriptions = Counter(info['sequences'][k]['description'].split(' - ')[0] for k in trials)
  cmu17 = {
      'subjects': sorted(trials_per_subject),
      'num_trials': len(trials),
      'trials_per_subject': dict(sorted(trials_per_subject.items())),
      'frames_per_subject': dict(sorted(frames_per_subject.items())),
      'total_frames': sum(frames_per_subject.values()),
      'fps': sorted({info['sequences'][k]['fps'] for k in trials}),
      'joints': list(CMU_JOINTS),
      'descriptions': dict(descriptions.most_common()),
  }
  nrsfm = {}
  for name in NRSFM_SEQUENCES:
    frames, points, _ = load_nrsfm_sequence(name).shape
    nrsfm[name] = {'frames': frames, 'points': points}
  return {'cmu17': cmu17, 'nrsfm_mocap': nrsfm}


def format_summary(summary: dict) -> str:
  """Human-readable text of `summarize_bundled()`."""
  cmu = summary['cmu17']
  lines = [f"cmu17: {cmu['num_trials']} trials, {cmu['total_frames']} frames, "
           f"fps {cmu['fps']}, {len(cmu['joints'])} joints"]
  for subject in cmu['subjects']:
    lines.append(f"  subject {subject}: {cmu['trials_per_subject'][subject]} trials, "
                 f"{cmu['frames_per_subject'][subject]} frames")
  lines.append('  descriptions: ' + ', '.join(f'{d} ({n})' for d, n in
                                              cmu['descriptions'].items()))
  lines.append('nrsfm-mocap:')
  for name, counts in summary['nrsfm_mocap'].items():
    lines.append(f"  {name}: {counts['frames']} frames, {counts['points']} points")
  return '\n'.join(lines)


def _figure_class():
  try:
    from matplotlib.figure import Figure
  except ImportError as e:
    raise ImportError("plotting needs matplotlib: pip install 'nrsfm_jax[plot]' "
                      '(or pip install matplotlib)') from e
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
  figure_class = _figure_class()
  plot_dir = Path(plot_dir)
  plot_dir.mkdir(parents=True, exist_ok=True)
  trials = load_mocap()
  trial = trial or next(iter(trials))
  if trial not in trials:
    raise KeyError(f'unknown trial {trial!r}; available: {list(trials)}')
  azimuths = (45.0, 135.0, 225.0, 315.0)
  views = orthographic_views(trials[trial], azimuths, 10.0)
  views = views[:, min(frame, views.shape[1] - 1)]
  fig = figure_class(figsize=(12, 4))
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

  fig = figure_class(figsize=(3 * len(NRSFM_SEQUENCES), 4))
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
