"""What data ships with the package: counts for a report, and one picture per dataset."""

from __future__ import annotations

from collections import Counter

from nrsfm_jax.data.mocap import CMU_JOINTS, NRSFM_SEQUENCES, load_mocap, load_mocap_info
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
  frames_per_subject: Counter[str] = Counter()
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
  lines = [
      f"cmu17: {cmu['num_trials']} trials, {cmu['total_frames']} frames, "
      f"fps {cmu['fps']}, {len(cmu['joints'])} joints"
  ]
  for subject in cmu['subjects']:
    lines.append(
        f"  subject {subject}: {cmu['trials_per_subject'][subject]} trials, "
        f"{cmu['frames_per_subject'][subject]} frames"
    )
  lines.append('  descriptions: ' + ', '.join(f'{d} ({n})' for d, n in cmu['descriptions'].items()))
  lines.append('nrsfm-mocap:')
  for name, counts in summary['nrsfm_mocap'].items():
    lines.append(f"  {name}: {counts['frames']} frames, {counts['points']} points")
  return '\n'.join(lines)
