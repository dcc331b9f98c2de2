r"""One cross-subject ablation row over several runs (seeds, or settings): per run, then the mean.

Each run is a workdir of ``python -m experiments.ablation --cross_subject`` (its
``results.json``), e.g. the same command with ``--override=seed=<s>``::

  for s in 0 1 2; do
    python -m experiments.ablation --workdir=runs/seeds/lifter_s$s --benchmarks=cmu17 --cross_subject \
        --nodev_split --rows=lifter --override=seed=$s
  done
  python -m experiments.seeds --runs=runs/seeds/lifter_s0,runs/seeds/lifter_s1,runs/seeds/lifter_s2

``--select`` adds the run each fold would keep with ``train.restarts``: the lowest training
objective on that fold's training 2D (no 3D read), with its held-out scores.
"""

import json
import os

from absl import app, flags

from nrsfm_jax import ablation

_RUNS = flags.DEFINE_list('runs', None, 'Ablation workdirs, each with results.json.', required=True)
_ROW = flags.DEFINE_string('row', 'lifter', 'The row to compare.')
_LABELS = flags.DEFINE_list('labels', None, 'A label per run (default: the workdir names).')
_SELECT = flags.DEFINE_bool(
    'select',
    False,
    "Also score each fold's runs by their training objective on the training 2D (what "
    'train.restarts keeps the lowest of) and add the line of the per-fold choice.',
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  labels = _LABELS.value or [os.path.basename(os.path.normpath(r)) for r in _RUNS.value]
  if len(labels) != len(_RUNS.value):
    raise app.UsageError(f'--labels has {len(labels)} entries for {len(_RUNS.value)} runs.')
  runs = {}
  for label, run in zip(labels, _RUNS.value):
    path = os.path.join(run, 'results.json')
    if not os.path.isfile(path):
      raise app.UsageError(f'{path} is missing: run the ablation with --cross_subject there first.')
    with open(path) as f:
      runs[label] = json.load(f)
  chosen = None
  if _SELECT.value:
    choice = ablation.selection_choice(dict(zip(labels, _RUNS.value)), _ROW.value)
    chosen = {fold: entry['chosen'] for fold, entry in choice.items()}
  try:
    print(ablation.seeds_table(runs, _ROW.value, chosen=chosen))
  except ValueError as e:
    raise app.UsageError(str(e)) from e


if __name__ == '__main__':
  app.run(main)
