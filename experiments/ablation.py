r"""The paper's Table II ablation on both benchmarks, from one command.

  python -m experiments.ablation --workdir=runs/main --benchmarks=cmu17 --rows=lifter,teacher  # README's main job
  python -m experiments.ablation --workdir=runs/ablation
  python -m experiments.ablation --workdir=runs/ablation --benchmarks=nrsfm --sequences=pickup,yoga
  python -m experiments.ablation --workdir=runs/ablation --benchmarks=cmu17 --teacher_mode=self
  python -m experiments.ablation --workdir=runs/loso --benchmarks=cmu17 --cross_subject --nodev_split
  python -m experiments.ablation --workdir=runs/loso --benchmarks=cmu17 --cross_subject --nodev_split --folds=002

Rows: lifter only (C3DPO baseline), + smoothness, + smoothness + TCN,
+ smoothness + TCN + diffusion teacher. cmu17 uses ``configs/default.py:<row>``
and the teacher of ``configs/teacher.py:<teacher_mode>``; nrsfm-mocap uses
``configs/nrsfm.py:<sequence>:<row>`` and a self-mode teacher
(``configs/teacher.py:nrsfm:<sequence>``) trained on the tcn row's
reconstructions. ``--cross_subject`` adds leave-one-subject-out folds on cmu17
(per-fold numbers, the depth-0 reference and the mean; docs/benchmarks.md A). Writes
``results.json``, ``results.md`` (the README tables) and ``cmu17.png`` / ``nrsfm_<sequence>.png``
in --workdir. Rerunning resumes;
finished runs are only re-scored.
"""

import ast
import json
import os
import sys

from absl import app, flags, logging

from nrsfm_jax import ablation, classic, configs, loop, plotting, scoring
from nrsfm_jax import data as data_lib

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', 'runs/ablation', 'Directory of the ablation (one subdirectory per run).')
flags.DEFINE_list('benchmarks', ['cmu17', 'nrsfm'], 'Benchmarks to run: cmu17, nrsfm.')
flags.DEFINE_list(
    'rows',
    list(ablation.ROWS),
    f'Rows to run, of {ablation.ALL_ROWS} (with --teacher_mode=self the teacher row also runs tcn).',
)
flags.DEFINE_bool(
    'stack',
    True,
    'cmu17: every row after the lifter starts from the lifter row and trains 500 more steps on windows at '
    'lr 3e-4 (ablation.STACK_OVERRIDES; chosen on the cross-subject mean; the teacher row 1500 steps with a '
    'centred TCN, ablation.ROW_STACK_OVERRIDES); add the windows row as the control. --nostack trains every '
    'row from scratch.',
)
flags.DEFINE_multi_string(
    'stack_override',
    [],
    'cmu17 with --stack: change the stage-2 settings (ablation.STACK_OVERRIDES), as [row:]section.key=value '
    '(every stacked row, or only that row); repeatable, e.g. --stack_override=teacher:train.num_steps=2000.',
)
flags.DEFINE_float(
    'stack_anchor',
    1.0,
    "cmu17 with --stack: the windows, smooth and tcn rows also fit the lifter row's own reconstructions of "
    'their training windows (the teacher term, at this weight; 0 = off), so stage 2 stays near stage 1 '
    'where the temporal terms do not pull it away. 1.0 chosen on the cross-subject mean (README, '
    '"Anchored stage 2": the windows control 148.2 mm unanchored, 109.3 anchored; the lifter 111.1).',
)
flags.DEFINE_enum(
    'stack_anchor_row',
    'lifter',
    list(ablation.ANCHORS),
    'cmu17 with --stack_anchor > 0: the per-frame row whose reconstructions the stacked rows fit. '
    "c3dpo_lifter (add it to --rows): C3DPO's recipe lifter (1024 x 6; about 20 CPU-minutes per fold), "
    'so the small temporal student learns from the larger per-frame lifter (README, "A temporal student '
    'of C3DPO\'s lifter"); the stacked rows still start from the lifter row. classic_<solver>: that classic '
    "solver's reconstruction of each training sequence where its knees and elbows agree on a body "
    "(nrsfm_jax.teacher.classic_targets), the lifter row's elsewhere; no 3D read.",
)
flags.DEFINE_list('sequences', list(ablation.NRSFM_SEQUENCES), 'nrsfm-mocap sequences (bundled names).')
flags.DEFINE_list(
    'classic',
    list(classic.SOLVERS),
    'nrsfm: classic solvers scored beside the deep rows (nrsfm_jax.classic.fit_many; sizes chosen from '
    'the 2D alone, no 3D read; the solvers share one prior-free fit); --classic= runs none.',
)
flags.DEFINE_enum(
    'teacher_mode',
    'supervised',
    ['supervised', 'self'],
    'cmu17 teacher: 3D of the training ' "subjects (the paper) or the tcn row's reconstructions (no 3D).",
)
flags.DEFINE_bool(
    'cross_subject',
    False,
    'cmu17: also run every row on every leave-one-subject-out fold '
    '(train on the other subjects, test on one) and report per-fold numbers and the mean.',
)
flags.DEFINE_list('subjects', [], 'Subjects for --cross_subject (default: every subject in the data).')
flags.DEFINE_list(
    'folds',
    None,
    '--cross_subject: held-out subjects to run in this process (default: all). Other folds are '
    'collected from their fold_results.json; --folds= (empty) only collects. Lets folds run in '
    'parallel processes (experiments/parallel_folds.sh).',
)
flags.DEFINE_bool('dev_split', True, 'cmu17: run the development split (train 002, 003, 005; test 006).')
flags.DEFINE_multi_string(
    'override',
    [],
    'cmu17: a config override applied to every student row, or with a row prefix to that row alone, as '
    '``[row:]a.b=value`` (value parsed as a Python literal, else kept as a string); repeatable, e.g. '
    '--override=c3dpo_lifter:model.lifter_width=256.',
)
flags.DEFINE_multi_string(
    'teacher_override',
    [],
    'cmu17: a config override of the teacher (configs/teacher.py:<teacher_mode>), as ``a.b=value``; '
    'repeatable, e.g. --teacher_override=train.num_steps=10000.',
)
flags.DEFINE_string('plot_sequence', 'pickup', 'nrsfm sequence drawn in nrsfm_<sequence>.png.')
flags.DEFINE_multi_string(
    'nrsfm_override',
    [],
    'nrsfm: a config override of every sequence fit and classic row, repeatable, e.g. '
    '--nrsfm_override=data.dropout=0.2 (20%% of the points missing) or --nrsfm_override=data.noise_extent=0.01 '
    '(2D noise, 1%% of the 2D extent).',
)
flags.DEFINE_string(
    'classic_anchor',
    '',
    'nrsfm: <solver>:<weight>, e.g. prior_free:1.0: every deep row but the teacher row also fits that classic '
    "solver's solution of the same 2D through the teacher term (no 3D read); '' = off.",
)


def parse_classic_anchor(text: str) -> tuple[str, float] | None:
  """``'prior_free:1.0'`` -> ``('prior_free', 1.0)``; ``''`` -> None."""
  if not text:
    return None
  solver, sep, weight = text.partition(':')
  try:
    value = float(weight) if sep else 1.0
  except ValueError:
    value = float('nan')
  if solver not in classic.SOLVERS or not value > 0:
    raise app.UsageError(
        f'--classic_anchor={text}: expected <solver>:<weight> with a solver of {classic.SOLVERS} and a weight > 0.'
    )
  return solver, value


def _parse_value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def _parse_overrides(overrides, flag: str):
  parsed = []
  for item in overrides:
    if '=' not in item:
      raise app.UsageError(f'--{flag} {item!r}: expected a.b=value')
    key, value = item.split('=', 1)
    parsed.append((key.strip(), _parse_value(value.strip())))
  return parsed


def _apply_overrides(cfg, parsed, flag: str):
  for key, value in parsed:
    *path, leaf = key.split('.')
    parent = cfg
    for part in path:  # A top-level key such as `seed` has no parents.
      if part not in parent:
        raise app.UsageError(f'--{flag} {key}: no config key {part!r}')
      parent = parent[part]
    if leaf not in parent:
      raise app.UsageError(f'--{flag} {key}: no config key {leaf!r}')
    parent[leaf] = value
  return cfg


def _split_row(key: str, flag: str) -> tuple[str, str]:
  """``'[row:]section.key'`` -> ``(row or '', 'section.key')``; a row not in ``ALL_ROWS`` is named."""
  row, _, name = key.rpartition(':')
  if (row and row not in ablation.ALL_ROWS) or not name:
    raise app.UsageError(
        f'--{flag} {key}: expected [row:]section.key=value (or a top-level key: seed=1), row of {ablation.ALL_ROWS}'
    )
  return row, name


def student_config_fn(overrides):
  """``row -> ablation.row_config('default', row)`` with ``[row:]a.b=value`` overrides applied: unprefixed
  to every row, prefixed to that row alone, in the order given (errors name the key or row)."""
  parsed = []
  for key, value in _parse_overrides(overrides, 'override'):
    parsed.append((*_split_row(key, 'override'), value))

  def make(row):
    mine = [(name, value) for r, name, value in parsed if r in ('', row)]
    return _apply_overrides(ablation.row_config('default', row), mine, 'override')

  return make


def teacher_config_fn(overrides, mode: str):
  """``() -> configs.get('teacher', mode)`` with ``a.b=value`` overrides applied."""
  parsed = _parse_overrides(overrides, 'teacher_override')
  return lambda: _apply_overrides(configs.get('teacher', mode), parsed, 'teacher_override')


def nrsfm_config_fn(overrides):
  """``(sequence, row) -> configs.get('nrsfm', f'{sequence}:{row}')`` with ``a.b=value`` overrides
  (``row=None``: the sequence's default config)."""
  parsed = _parse_overrides(overrides, 'nrsfm_override')
  return lambda seq, row=None: _apply_overrides(
      configs.get('nrsfm', f'{seq}:{row}' if row else seq), parsed, 'nrsfm_override'
  )


def main(argv):
  logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  bad = set(FLAGS.benchmarks) - {'cmu17', 'nrsfm'}
  if bad:
    raise app.UsageError(f'Unknown benchmarks {sorted(bad)}; expected cmu17 and/or nrsfm.')
  if 'nrsfm' in FLAGS.benchmarks and 'c3dpo_lifter' in FLAGS.rows:
    raise app.UsageError('--rows: c3dpo_lifter is a cmu17 row; run it with --benchmarks=cmu17.')
  workdir = FLAGS.workdir
  results_path = os.path.join(workdir, 'results.json')
  previous = {}
  if os.path.exists(results_path):
    with open(results_path) as f:
      previous = json.load(f)
  cmu17 = previous.get('cmu17')
  nrsfm = previous.get('nrsfm') or {}
  diagnostics = previous.get('diagnostics') or {}
  cross = previous.get('cmu17_cross_subject')
  student_config = student_config_fn(FLAGS.override)
  teacher_config = teacher_config_fn(FLAGS.teacher_override, FLAGS.teacher_mode)
  teacher_config()  # Unknown keys fail now, not after the student rows.
  stack = FLAGS.stack
  if FLAGS.stack_anchor and not stack and FLAGS['stack_anchor'].present:
    raise app.UsageError('--stack_anchor keeps stacked rows near the lifter row: drop --nostack.')
  if FLAGS.stack_anchor < 0:
    raise app.UsageError(f'--stack_anchor must be >= 0, got {FLAGS.stack_anchor}.')
  dev = scoring.is_dev_split(student_config('lifter').data)
  if FLAGS.stack_override:
    if not stack:
      raise app.UsageError('--stack_override changes stacked rows: drop --nostack.')
    stack = dict(_parse_overrides(FLAGS.stack_override, 'stack_override'))
    for key in stack:
      _, name = _split_row(key, 'stack_override')
      _apply_overrides(student_config('tcn'), [(name, stack[key])], 'stack_override')
  if 'cmu17' in FLAGS.benchmarks and FLAGS.cross_subject:
    cross = ablation.run_cmu17_cross_subject(
        os.path.join(workdir, 'cmu17_cross_subject'),
        FLAGS.rows,
        FLAGS.subjects or None,
        teacher_mode=FLAGS.teacher_mode,
        student_config=student_config,
        teacher_config=teacher_config,
        stack=stack,
        folds=FLAGS.folds,
        anchor=FLAGS.stack_anchor if stack else 0.0,
        anchor_row=FLAGS.stack_anchor_row,
    )
    print(ablation.cross_subject_table(cross))
  if 'cmu17' in FLAGS.benchmarks and FLAGS.dev_split:
    cdir = os.path.join(workdir, 'cmu17')
    cmu17 = ablation.run_cmu17(
        cdir,
        FLAGS.rows,
        teacher_mode=FLAGS.teacher_mode,
        student_config=student_config,
        teacher_config=teacher_config,
        stack=stack,
        anchor=FLAGS.stack_anchor if stack else 0.0,
        anchor_row=FLAGS.stack_anchor_row,
    )
    print(ablation.cmu17_table(cmu17, c3dpo=dev))
    diagnostics['cmu17'] = {
        r: ablation.depth_diagnostics(os.path.join(cdir, r), student_config(r)) for r in ablation.ALL_ROWS if r in cmu17
    }
    plotting.plot_rows(
        cdir, student_config('tcn'), FLAGS.rows, os.path.join(workdir, 'cmu17.png'), titles=ablation.TITLES
    )
  if 'nrsfm' in FLAGS.benchmarks:
    ndir = os.path.join(workdir, 'nrsfm')
    bad = sorted(set(FLAGS.classic) - set(classic.SOLVERS))
    if bad:
      raise app.UsageError(f'--classic: unknown solvers {bad}; expected some of {classic.SOLVERS}.')
    nrsfm_config = nrsfm_config_fn(FLAGS.nrsfm_override)
    nrsfm_config(FLAGS.sequences[0], 'lifter')  # Unknown keys fail now.
    fresh = ablation.run_nrsfm(
        ndir,
        FLAGS.sequences,
        FLAGS.rows,
        student_config=nrsfm_config,
        classic_anchor=parse_classic_anchor(FLAGS.classic_anchor),
    )
    if FLAGS.classic:
      for seq, res in ablation.run_classic(ndir, FLAGS.sequences, FLAGS.classic, config_fn=nrsfm_config).items():
        fresh[seq].update(res)
    for seq, res in fresh.items():
      nrsfm.setdefault(seq, {}).update(res)
    print(ablation.nrsfm_table(nrsfm))
    for seq in FLAGS.sequences:
      diagnostics[f'nrsfm/{seq}'] = {
          r: ablation.depth_diagnostics(os.path.join(ablation.sequence_dir(ndir, seq), r), nrsfm_config(seq, r))
          for r in ablation.ROWS
          if r in nrsfm[seq]
      }
    if FLAGS.rows and FLAGS.plot_sequence in FLAGS.sequences:
      seq = FLAGS.plot_sequence
      plotting.plot_rows(
          ablation.sequence_dir(ndir, seq),
          nrsfm_config(seq),
          FLAGS.rows,
          os.path.join(workdir, f'nrsfm_{seq}.png'),
          titles=ablation.TITLES,
          protocol='nrsfm',
      )
  command = 'python -m experiments.ablation ' + ' '.join(sys.argv[1:])
  commands = [c for c in previous.get('commands', []) if c != command] + [command]
  print(ablation.diagnostics_table(diagnostics))
  data = student_config('lifter').data
  json_path, md_path = ablation.write_results(
      workdir,
      cmu17,
      nrsfm or None,
      commands,
      diagnostics,
      cross,
      c3dpo=dev,
      split='train {}; test {}'.format(
          *(','.join(data_lib.split_subjects(data, s, transductive=False)) for s in ('train', 'eval'))
      ),
  )
  print(f'wrote {json_path}, {md_path} and the plots in {workdir}')


if __name__ == '__main__':
  loop.run_cli(main, config_flags=())
