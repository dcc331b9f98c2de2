r"""Test-time bone projection on trained cross-subject runs: every fold, every restart, every mode.

``train.eval_bone_projection`` (``geometry.bone_length_projection``) post-processes a run's
test-time 3D: each bone's depth extent is bounded by its length as estimated from the test
sequence's own 2D (``data.sequence_bone_lengths``; no 3D is read). This scores every run of
a cross-subject ablation row (and the development split's, ``<workdir>/cmu17/<row>``) with
each setting, without retraining::

  python -m experiments.ablation --workdir=runs/bp --benchmarks=cmu17 --cross_subject --nodev_split --rows=lifter
  python -m experiments.bone_projection_study --workdir=runs/bp

For each fold it evaluates the kept run (``<fold>/<row>``) and, where the row trained
``train.restarts`` > 1, each restart (``<fold>/<row>/restarts/seed_<s>``), writing
``evaluate_bp_<setting>_<by>.json`` into each. Prints (and writes ``--output``, default
``<workdir>/bone_projection.md``) one line per setting for the kept runs and one for the mean
over every restart, with MPJPE per fold and the means of MPJPE, PA-MPJPE, Stress and acceleration error.
"""

import glob
import json
import os

import numpy as np
from absl import app, flags, logging

from nrsfm_jax import checkpoint as ckpt_lib
from nrsfm_jax import data as data_lib
from nrsfm_jax import evaluation, geometry, loop, runs, scoring, teacher

_WORKDIR = flags.DEFINE_string('workdir', None, 'An ablation workdir (cross-subject folds, dev split).', required=True)
_ROW = flags.DEFINE_string('row', 'lifter', 'The row whose runs are scored.')
_SETTINGS = flags.DEFINE_list(
    'settings',
    ['none', 'clip:1', 'clip:2', 'clip:3', 'full'],
    "Bone projections: 'none', 'full', or 'clip:<gain>' (the gain on the depth before clipping).",
)
_BY = flags.DEFINE_enum(
    'by',
    'view',
    list(data_lib.BONE_LENGTH_GROUPS),
    "Bone lengths from each camera's frames ('view') or a sequence's cameras.",
)
_TEACHER = flags.DEFINE_bool(
    'teacher',
    False,
    "Also score each fold's supervised teacher alone (<fold>/teacher_supervised; its H, K and "
    'aggregation of the pseudo-3D) with every setting: the reference the student with the teacher '
    'is held to, post-processed the same way.',
)
_OUTPUT = flags.DEFINE_string('output', None, 'Markdown table (default: <workdir>/bone_projection.md).')

_KEYS = ('mpjpe', 'pa_mpjpe', 'stress', 'accel_error')


def _parse(setting: str) -> tuple[str, float]:
  mode, _, gain = setting.partition(':')
  if mode not in geometry.BONE_PROJECTIONS or (gain and mode != 'clip'):
    raise app.UsageError(f"--settings: {setting!r} is not 'none', 'full' or 'clip:<gain>'.")
  try:
    value = float(gain or 1.0)
  except ValueError as e:
    raise app.UsageError(f'--settings: {setting!r}: the gain must be a number.') from e
  if not value > 0:
    raise app.UsageError(f'--settings: {setting!r}: the gain must be > 0.')
  return mode, value


def _score(run: str, setting: str) -> dict[str, float]:
  mode, gain = _parse(setting)
  path = os.path.join(run, f"evaluate_bp_{setting.replace(':', '')}_{_BY.value}.json")
  if os.path.isfile(path):  # Scored before (a rerun resumes): the checkpoint has not changed since.
    with open(path) as f:
      result = json.load(f)
    if result.get('step') == _latest_step(run):
      return {k: float(result['overall'][k]) for k in _KEYS}
  result = evaluation.evaluate_run(
      run, bone_projection=mode, bone_by=_BY.value, bone_gain=gain, output=path, log=lambda s: None
  )
  return {k: float(result['overall'][k]) for k in _KEYS}


def _teacher_scores(fold_dir: str, bones) -> dict[str, dict[str, float]]:
  """``{setting: overall}`` for ``fold_dir``'s supervised teacher alone, cached in its folder."""
  tdir = os.path.join(fold_dir, 'teacher_supervised')
  path = os.path.join(tdir, f'evaluate_bp_{_BY.value}.json')
  cached = {}
  if os.path.isfile(path):
    with open(path) as f:
      cached = json.load(f)
    if cached.get('step') != _latest_step(tdir):
      cached = {}
  missing = [s for s in _SETTINGS.value + ['own x, y'] if s not in cached.get('scores', {})]
  if missing:
    config, model, params, meta = teacher.load_teacher(tdir)
    dataset, pred = teacher.sample_eval_split(config, model, params, float(meta['scale']), cache_dir=tdir)
    cached = {'step': int(meta['step']), 'scores': cached.get('scores', {})}
    own = scoring.score(pred * dataset.scale, dataset, protocol='cmu17')['overall']
    cached['scores']['own x, y'] = {k: float(own[k]) for k in _KEYS}
    # The student's test-time protocol (model.observed_xy): the observed x, y of every visible point.
    pred = scoring.observed_xy(pred, dataset)
    for setting in [m for m in missing if m != 'own x, y']:
      mode, gain = _parse(setting)
      out = (
          pred
          if mode == 'none'
          else scoring.project_bones(pred, dataset, bones=bones, mode=mode, by=_BY.value, gain=gain)
      )
      overall = scoring.score(out * dataset.scale, dataset, protocol='cmu17')['overall']
      cached['scores'][setting] = {k: float(overall[k]) for k in _KEYS}
    with open(path, 'w') as f:
      json.dump(cached, f, indent=2)
  return cached['scores']


def _latest_step(run: str) -> int | None:
  return ckpt_lib.Checkpointer(os.path.join(run, 'checkpoints')).latest_step()


def main(argv):
  logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  folds = sorted(glob.glob(os.path.join(_WORKDIR.value, 'cmu17_cross_subject', 'fold_*', _ROW.value)))
  folds = [f for f in folds if os.path.isdir(os.path.join(f, 'checkpoints'))]
  names = [os.path.basename(os.path.dirname(f)).removeprefix('fold_') for f in folds]
  dev = os.path.join(_WORKDIR.value, 'cmu17', _ROW.value)  # The development split (README's first command).
  if os.path.isdir(os.path.join(dev, 'checkpoints')):
    folds.append(dev)
    names.append('dev ' + runs.load_run(dev)[0].data.val_subjects)
  if not folds:
    raise app.UsageError(
        f'no trained {_ROW.value!r} run under {_WORKDIR.value}/cmu17_cross_subject/fold_*/ or '
        f'{_WORKDIR.value}/cmu17/: run the ablation there first.'
    )
  kept: dict[str, dict[str, list]] = {m: {} for m in _SETTINGS.value}
  every: dict[str, dict[str, list]] = {m: {} for m in _SETTINGS.value}
  for setting in _SETTINGS.value:
    _parse(setting)
  for name, fold in zip(names, folds):
    restarts = sorted(glob.glob(os.path.join(fold, 'restarts', 'seed_*')))
    chosen = None  # The restart the fold kept (its checkpoints were copied into the fold's run).
    if restarts and os.path.isfile(os.path.join(fold, 'restarts.json')):
      with open(os.path.join(fold, 'restarts.json')) as f:
        chosen = os.path.join(fold, 'restarts', f'seed_{json.load(f)["chosen_seed"]}')
    for mode in _SETTINGS.value:
      scores = {r: _score(r, mode) for r in restarts}
      every[mode][name] = list(scores.values()) or [_score(fold, mode)]
      if not restarts:  # One run: the fold's own.
        kept[mode][name] = every[mode][name]
      elif chosen in scores:
        kept[mode][name] = [scores[chosen]]
      else:
        kept[mode][name] = [_score(fold, mode)]
      print(
          f'fold {name}, {mode}: kept {kept[mode][name][0]["mpjpe"]:.1f} mm; every restart '
          + ', '.join(f'{s["mpjpe"]:.1f}' for s in every[mode][name]),
          flush=True,
      )
  lines = [
      '| bone projection | runs | '
      + ' | '.join(f'MPJPE {n} (mm)' for n in names)
      + ' | mean MPJPE | mean PA-MPJPE | mean Stress | mean accel |',
      '|---' * (len(names) + 6) + '|',
  ]
  tables = [('kept run', kept), ('every restart (mean)', every)]
  own: dict[str, list] = {}
  if _TEACHER.value:
    alone: dict[str, dict[str, list]] = {m: {} for m in _SETTINGS.value}
    for name, fold in zip(names, folds):
      bones = tuple(map(tuple, runs.load_run(fold)[0].loss.terms.bones.bones))
      scores = _teacher_scores(os.path.dirname(fold), bones)
      for mode in _SETTINGS.value:
        alone[mode][name] = [scores[mode]]
      own[name] = [scores['own x, y']]
      print(
          f'fold {name}, teacher alone: own x, y {scores["own x, y"]["mpjpe"]:.1f}; observed x, y: '
          + ', '.join(f'{m} {scores[m]["mpjpe"]:.1f}' for m in _SETTINGS.value),
          flush=True,
      )
    tables.append(('teacher alone, observed x, y', alone))
  for label, table in tables:
    for mode in _SETTINGS.value:
      per_fold = {n: {k: float(np.mean([s[k] for s in table[mode][n]])) for k in _KEYS} for n in names}
      means = {k: float(np.mean([per_fold[n][k] for n in names])) for k in _KEYS}
      count = sum(len(table[mode][n]) for n in names)
      lines.append(
          f'| {mode} | {label}, {count} | '
          + ' | '.join(f'{per_fold[n]["mpjpe"]:.1f}' for n in names)
          + f' | {means["mpjpe"]:.1f} | {means["pa_mpjpe"]:.1f} | {means["stress"]:.1f} | {means["accel_error"]:.2f} |'
      )
  if own:  # The teacher's own x, y: the ablation's 'teacher alone' row.
    means = {k: float(np.mean([own[n][0][k] for n in names])) for k in _KEYS}
    lines.append(
        f"| none | teacher alone, its own x, y (the ablation's row), {len(names)} | "
        + ' | '.join(f'{own[n][0]["mpjpe"]:.1f}' for n in names)
        + f' | {means["mpjpe"]:.1f} | {means["pa_mpjpe"]:.1f} | {means["stress"]:.1f} | {means["accel_error"]:.2f} |'
    )
  text = '\n'.join(lines)
  print(text)
  output = _OUTPUT.value or os.path.join(_WORKDIR.value, 'bone_projection.md')
  with open(output, 'w') as f:
    f.write(text + '\n')
  print(f'wrote {output}')


if __name__ == '__main__':
  loop.run_cli(main, config_flags=())
