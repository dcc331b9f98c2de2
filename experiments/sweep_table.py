r"""One table of several cross-subject ablations (variants of a sweep), seeds included.

  python -m experiments.sweep_table --runs=runs/sweep/base,runs/sweep/c3dpo [--row=lifter]

Reads what each variant's folds have written so far (a sweep cut short still gives a table):
``<run>/cmu17_cross_subject/fold_<s>/fold_results.json`` and, for a row trained with
``train.restarts > 1``, that row's ``restarts.json`` (every seed's held-out scores and its
training objective). Per variant: the kept run's MPJPE per fold and its means; the mean over
every seed of every fold (what one seed gives on average); the best seed per fold (chosen
with the 3D: a reference, not a result); and the folds whose kept run beats depth 0.
"""

import json
import os

import numpy as np
from absl import app, flags

_RUNS = flags.DEFINE_list('runs', None, 'Ablation workdirs made with --cross_subject.', required=True)
_ROW = flags.DEFINE_string('row', 'lifter', 'The row to compare.')


def read_variant(run: str, row: str) -> dict[str, dict]:
  """``{fold: {'kept': overall, 'depth0': overall, 'seeds': [overall, ...]}}`` for finished folds."""
  base = os.path.join(run, 'cmu17_cross_subject')
  out = {}
  if not os.path.isdir(base):
    return out
  for d in sorted(os.listdir(base)):
    if not d.startswith('fold_'):
      continue
    fold = d[len('fold_') :]
    path = os.path.join(base, d, 'fold_results.json')
    entry = {}
    if os.path.isfile(path):
      with open(path) as f:
        res = json.load(f)
      if row in res:
        entry['kept'] = res[row]['overall']
      if 'depth0' in res:
        entry['depth0'] = res['depth0']['overall']
    restarts = os.path.join(base, d, row, 'restarts.json')
    if os.path.isfile(restarts):
      with open(restarts) as f:
        entry['seeds'] = [e['eval_overall'] for e in json.load(f)['restarts'] if 'eval_overall' in e]
    if entry:
      out[fold] = entry
  return out


def table(variants: dict[str, dict[str, dict]]) -> str:
  folds = sorted({f for v in variants.values() for f in v})
  head = (
      '| variant | '
      + ' | '.join(f'MPJPE {f}' for f in folds)
      + ' | mean MPJPE (kept) | mean PA-MPJPE | mean Stress | mean over every seed'
      + ' | best seed per fold (3D-chosen) | folds < depth 0 |'
  )
  lines = [head, '|' + '---|' * (len(folds) + 7)]
  depth0 = {}
  for v in variants.values():
    for f, e in v.items():
      if 'depth0' in e:
        depth0[f] = e['depth0']
  if depth0:
    cells = [f'{depth0[f]["mpjpe"]:.1f}' if f in depth0 else '–' for f in folds]
    mean = np.mean([depth0[f]['mpjpe'] for f in depth0])
    pa = np.mean([depth0[f]['pa_mpjpe'] for f in depth0])
    st = np.mean([depth0[f]['stress'] for f in depth0])
    lines.append('| depth 0 (reference) | ' + ' | '.join(cells) + f' | {mean:.1f} | {pa:.1f} | {st:.1f} | – | – | – |')
  for name, v in variants.items():
    kept = {f: e['kept'] for f, e in v.items() if 'kept' in e}
    cells = [f'{kept[f]["mpjpe"]:.1f}' if f in kept else '–' for f in folds]
    done = len(kept)
    suffix = '' if done == len(folds) else f' ({done} of {len(folds)} folds)'
    if kept:
      m = np.mean([k['mpjpe'] for k in kept.values()])
      pa = np.mean([k['pa_mpjpe'] for k in kept.values()])
      st = np.mean([k['stress'] for k in kept.values()])
      stats = f'{m:.1f}{suffix} | {pa:.1f} | {st:.1f}'
    else:
      stats = '– | – | –'
    seeds = [s['mpjpe'] for e in v.values() for s in e.get('seeds', [])]
    every = f'{np.mean(seeds):.1f} ({len(seeds)} runs)' if seeds else '–'
    best = [min(s['mpjpe'] for s in e['seeds']) for e in v.values() if e.get('seeds')]
    best_cell = f'{np.mean(best):.1f}' if best else '–'
    beats = sum(1 for f, k in kept.items() if f in depth0 and k['mpjpe'] < depth0[f]['mpjpe'])
    lines.append(f'| {name} | ' + ' | '.join(cells) + f' | {stats} | {every} | {best_cell} | {beats}/{done} |')
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  variants = {}
  for run in _RUNS.value:
    if not os.path.isdir(run):
      raise app.UsageError(f'{run} is not a directory.')
    variants[os.path.basename(os.path.normpath(run))] = read_variant(run, _ROW.value)
  print(table(variants))


if __name__ == '__main__':
  app.run(main)
