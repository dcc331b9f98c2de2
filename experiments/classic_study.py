r"""Which 3D-free criterion chooses the prior-free solver's K? Every candidate K, scored.

  python -m experiments.classic_study [--sequences=drink,dance,pickup,yoga,stretch --bases=2,3,4,5,6,7,8,10]

For each sequence and each K: the prior-free solution (:func:`nrsfm_jax.classic.cameras` with
rank 3K, then :func:`nrsfm_jax.classic.nuclear_norm_shapes`), its 3D-free criteria (the rank
ratio of its shapes, :func:`nrsfm_jax.classic.shape_rank_ratio`, which ``classic.fit`` uses;
the held-out 2D error, :func:`nrsfm_jax.classic.heldout_error`, its rule before; the mean
disagreement with the other K's solutions, :func:`nrsfm_jax.classic.relative_distance`) and,
for judging the criteria only, its e3D and e3D-akhter against the 3D. Prints one line per fit
and writes ``classic_study.json`` and a markdown table into --output_dir.
"""

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from nrsfm_jax import classic, configs, loop, scoring
from nrsfm_jax import data as data_lib

_SEQUENCES = flags.DEFINE_list(
    'sequences', ['drink', 'dance', 'pickup', 'yoga', 'stretch'], 'Bundled names or .npz paths.'
)
_BASES = flags.DEFINE_list('bases', [str(k) for k in classic.SHAPE_BASES], 'Candidate K.')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', 'runs/classic_study', 'Where classic_study.json and .md go.')


def study(sequence: str, bases: list[int], log=print) -> dict[int, dict[str, float]]:
  """``{K: {'shape_rank_ratio', 'heldout_error', 'disagreement', 'e3d', 'e3d_akhter'}}`` for one sequence."""
  config = configs.get('nrsfm', f'{sequence}:lifter')
  _, dataset = data_lib.make_datasets(config)
  tracks = data_lib.reassemble(dataset, dataset.keypoints)
  vis = data_lib.reassemble(dataset, dataset.visibility)
  truth = data_lib.reassemble(dataset, dataset.points3d)
  if len(tracks) != 1:
    raise ValueError(f'{sequence}: expected one view, got {len(tracks)}.')
  ((name, kp),) = tracks.items()
  kp, v = jnp.asarray(kp), jnp.asarray(vis[name])
  rot_key, cv_key = jax.random.split(jax.random.PRNGKey(0))  # classic.fit's keys.
  rows, points = {}, {}
  for k in bases:
    t0 = time.time()
    rotations, centred, t = classic.cameras(kp, v, rot_key, num_bases=k)
    solve = lambda c, m, r=rotations, t=t: classic._reconstruction(classic.nuclear_norm_shapes(c, m, r), r, t)
    rec = solve(centred, v)
    points[k] = np.asarray(rec.points)
    score = scoring.score_sequences({name: points[k] * dataset.scale}, truth)['overall']
    rows[k] = {
        'shape_rank_ratio': float(classic.shape_rank_ratio(rec.shapes)),
        'heldout_error': float(classic.heldout_error(lambda c, m: solve(c, m).points, centred, v, cv_key)),
        'e3d': float(score['e3d']),
        'e3d_akhter': float(score['e3d_akhter']),
    }
    log(f'{sequence} K={k}: ' + ', '.join(f'{a} {b:.4g}' for a, b in rows[k].items()) + f' ({time.time() - t0:.0f} s)')
  for k in bases:
    others = [float(classic.relative_distance(points[k], points[j])) for j in bases if j != k]
    rows[k]['disagreement'] = float(np.mean(others)) if others else 0.0
  return rows


def table(results: dict[str, dict[int, dict[str, float]]]) -> str:
  """Markdown: e3D-akhter per K, and the K each criterion picks (bold: the lowest e3D-akhter)."""
  criteria = ('shape_rank_ratio', 'heldout_error', 'disagreement')
  lines = [
      '| sequence | '
      + ' | '.join(f'K={k}' for k in next(iter(results.values())))
      + ' | '
      + ' | '.join(f'K by {c}' for c in criteria)
      + ' |'
  ]
  lines.append('|' + '---|' * (1 + len(next(iter(results.values()))) + len(criteria)))
  for seq, rows in results.items():
    best = min(rows, key=lambda k: rows[k]['e3d_akhter'])
    cells = [f'**{r["e3d_akhter"]:.4f}**' if k == best else f'{r["e3d_akhter"]:.4f}' for k, r in rows.items()]
    picks = []
    for c in criteria:
      k = min(rows, key=lambda k, c=c: rows[k][c])
      picks.append(f'{k} ({rows[k]["e3d_akhter"]:.4f})')
    lines.append(f'| {seq} | ' + ' | '.join(cells) + ' | ' + ' | '.join(picks) + ' |')
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  bases = [int(k) for k in _BASES.value]
  results = {seq: study(seq, bases) for seq in _SEQUENCES.value}
  os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
  loop.write_json_atomic(
      os.path.join(_OUTPUT_DIR.value, 'classic_study.json'),
      {seq: {str(k): r for k, r in rows.items()} for seq, rows in results.items()},
  )
  text = table(results)
  with open(os.path.join(_OUTPUT_DIR.value, 'classic_study.md'), 'w') as f:
    f.write(text + '\n')
  print(text)


if __name__ == '__main__':
  app.run(main)
