"""The paper's Table II ablation on both benchmarks (docs/benchmarks.md A and B), as library functions.

Rows: ``lifter`` (C3DPO baseline), ``smooth`` (+ smoothness), ``tcn``
(+ smoothness + TCN) and ``teacher`` (+ smoothness + TCN + diffusion teacher); on request
``windows`` (a control) and ``c3dpo_lifter`` (C3DPO's whole recipe at its size,
``configs/c3dpo.py:lifter``), which can anchor the stacked rows (``anchor_row``).

* cmu17: every row trains on the development split's training subjects and is
  scored on the validation subject; the teacher row first trains the teacher
  (``supervised`` on the training subjects' 3D by default, or ``self`` on the
  ``tcn`` row's reconstructions) and caches its pseudo-3D.
* nrsfm-mocap: per sequence, transductive; the teacher row's teacher is
  trained in self mode on the ``tcn`` row's reconstructions of that sequence
  (the sequence's 3D is never used for fitting, docs/benchmarks.md B).

Every run lives in its own workdir under the ablation's, and rerunning resumes
(finished rows are only re-scored). ``experiments/ablation.py`` is the command.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from nrsfm_jax import classic, configs, geometry, loop, metrics, scoring, teacher
from nrsfm_jax import data as data_lib
from nrsfm_jax import runs as runs_lib
from nrsfm_jax import train as train_lib

ROWS = ('lifter', 'smooth', 'tcn', 'teacher')
# Rows that may be asked for; 'windows' (the lifter trained on windows, no smoothness) is the
# control that separates a temporal term's effect from more training on windows under `stack`;
# 'c3dpo_lifter' is C3DPO's own recipe at its size (configs/c3dpo.py:lifter, whatever the student
# config file), a per-frame lifter like 'lifter' that the stacked rows can be anchored to.
ALL_ROWS = ('lifter', 'c3dpo_lifter', 'windows', 'smooth', 'tcn', 'teacher')
# Rows trained from scratch on single frames (never stacked on the lifter row).
PER_FRAME_ROWS = ('lifter', 'c3dpo_lifter')
# Reference rows scored on the same frames: predicting depth 0; the teacher alone, as it samples
# and as the student is scored (teacher.score_as_student).
REFERENCE_ROWS = ('depth0', 'teacher_alone', 'teacher_as_student')
TITLES = {
    'lifter': 'lifter only (C3DPO baseline)',
    'c3dpo_lifter': "C3DPO's recipe lifter (1024 × 6, BatchNorm, SGD; configs/c3dpo.py:lifter)",
    'windows': 'lifter + window training (no smoothness)',
    'smooth': '+ smoothness',
    'tcn': '+ smoothness + TCN',
    'teacher': '+ smoothness + TCN + teacher',
}
# Dai et al.'s published prior-free BMM e3D-akhter (docs/benchmarks.md B) and EM-PND's: its
# authors' code run noise-free and scored as metrics.e3d_akhter scores (MATLAB's std, ddof = 1;
# docs/benchmarks.md B). Before session 30 this held 0.0048 / 0.0195 / 0.0171 / 0.0224 / 0.1595,
# which are not docs/benchmarks.md's ddof = 1 numbers.
BMM = {'drink': 0.0266, 'pickup': 0.1731, 'yoga': 0.1150, 'stretch': 0.1034, 'dance': 0.1864}
PND = {'drink': 0.0047, 'pickup': 0.0193, 'yoga': 0.0169, 'stretch': 0.0221, 'dance': 0.1584}
NRSFM_SEQUENCES = tuple(BMM)

ConfigFn = Callable[[str], ml_collections.ConfigDict]


def row_config(name: str, row: str) -> ml_collections.ConfigDict:
  """The config of ``row`` from the config file ``name``: ``configs.get(name, row)``, except that
  ``c3dpo_lifter`` is always ``configs.get('c3dpo', 'lifter')``."""
  return configs.get('c3dpo', 'lifter') if row == 'c3dpo_lifter' else configs.get(name, row)


def row_title(row: str, cfg: ml_collections.ConfigDict | None = None) -> str:
  """``TITLES[row]``, except that the ``c3dpo_lifter`` row's title names the trunk size ``cfg`` trains
  (``--override=c3dpo_lifter:model.lifter_width=…`` changes it)."""
  if row == 'c3dpo_lifter' and cfg is not None:
    m = cfg.model
    return f"C3DPO's recipe lifter ({m.lifter_width} × {m.lifter_blocks}, BatchNorm, SGD; configs/c3dpo.py:lifter)"
  return TITLES[row]


def _check_rows(rows, self_teacher: bool = True):
  bad = [r for r in rows if r not in ALL_ROWS]
  if bad:
    raise ValueError(f'Unknown ablation rows {bad}; expected a subset of {ALL_ROWS}.')
  # A self-mode teacher learns from the tcn row's reconstructions, so that row comes with it.
  return [r for r in ALL_ROWS if r in rows or (r == 'tcn' and 'teacher' in rows and self_teacher)]


# Stage 2 of a stacked ablation (`stack=True`): every row after the lifter starts from the
# lifter row's parameters and trains this much more on windows.
STACK_OVERRIDES = {'train.num_steps': 500, 'optim.lr': 3e-4, 'optim.warmup_steps': 20}
# ... and per row, on top of those. The student with the teacher: a centred (offline) TCN and 1500
# steps, chosen on the cmu17 cross-subject mean with the same lifters and supervised teachers
# (README, "The student against its teacher, scored alike"): MPJPE 53.7 -> 52.1 mm, PA-MPJPE 49.0 ->
# 47.6, Stress 25.6 -> 24.9, accel 4.98 -> 4.80 against the paper's causal TCN at 500 steps, and
# better than the teacher alone scored alike (52.3 / 47.7) on the mean; 1000 steps: 52.9, 2000
# steps: 52.1 (accel 5.13) for 1.3 minutes more of the main job. The test-time bone projection
# already makes every row offline (sequence-level lengths).
ROW_STACK_OVERRIDES: dict[str, dict[str, Any]] = {'teacher': {'model.tcn_causal': False, 'train.num_steps': 1500}}


# Stacked rows that `anchor` keeps near the lifter row (the teacher row has its teacher instead).
ANCHORED_ROWS = ('windows', 'smooth', 'tcn')
# What they may be anchored to: a per-frame row's reconstructions, or a classic solver's
# reconstruction of each training sequence where it looks like a body, the lifter row's elsewhere
# (:func:`classic_anchor`).
ANCHORS = PER_FRAME_ROWS + tuple(f'classic_{s}' for s in classic.SOLVERS)
# Where a cross-subject run keeps the classic solutions its folds share (beside the fold dirs).
CLASSIC_CACHE = 'classic_cache'


def classic_anchor(
    cfg: ml_collections.ConfigDict, workdir: str, solver: str, log: Callable[[str], None] = print
) -> str:
  """The anchor file of a stacked row fitting a classic solver: ``<workdir>/anchor_classic_<solver>.npz``.

  Every training sequence and view is solved by ``classic.fit(solver)`` from its 2D
  (:func:`teacher.classic_targets`); where the solution's knees and elbows agree on the body's
  depth sign (:data:`teacher.CLASSIC_AGREEMENT`) its windows fit it, elsewhere the lifter row's
  own reconstructions (``<workdir>/lifter``), as ``stack_anchor`` does. No 3D is read. Made once per
  workdir (reused while it matches the training windows); the solutions are cached in
  ``<workdir>/../classic_cache/<solver>``, shared by the folds of a cross-subject run. Beside it,
  ``anchor_classic_<solver>.json`` lists every sequence's hinge agreement and whether it passed.
  """
  path = os.path.abspath(os.path.join(workdir, f'anchor_classic_{solver}.npz'))
  train_ds = data_lib.make_dataset(cfg.data, 'train', seed=cfg.seed)
  if os.path.exists(path):
    try:
      data_lib.load_pseudo3d(path, train_ds)
      log(f'anchor: {path} (made before)')
      return path
    except ValueError as e:
      log(f'anchor: {e}; making it again')
  cache = os.path.join(os.path.dirname(os.path.abspath(workdir)), CLASSIC_CACHE, solver)
  hinges = cfg.loss.terms.hinges.hinges
  targets, passed, info = teacher.classic_targets(train_ds, solver, hinges, cache_dir=cache, log=log)
  lifter = teacher.reconstruction_targets(os.path.join(workdir, 'lifter'), train_ds, resolve_flips=False, log=log)
  os.makedirs(workdir, exist_ok=True)
  data_lib.save_pseudo3d(path, np.where(passed[:, None, None, None], targets, lifter), train_ds)
  loop.write_json_atomic(path[: -len('.npz')] + '.json', info)
  return path


def stacked(
    cfg: ml_collections.ConfigDict, lifter_dir: str, overrides: dict[str, Any] | None = None
) -> ml_collections.ConfigDict:
  """``cfg`` as stage 2 of a stacked ablation: initialised from ``lifter_dir``, :data:`STACK_OVERRIDES` applied.

  ``overrides`` (``{'section.key': value}``) change or add to :data:`STACK_OVERRIDES`.
  """
  cfg = ml_collections.ConfigDict(cfg.to_dict())
  cfg.train.init_from = lifter_dir
  for key, value in dict(STACK_OVERRIDES, **(overrides or {})).items():
    *path, name = key.split('.')
    node = cfg
    for part in path:  # 'optim.lr', or deeper: 'loss.terms.smooth.weight'.
      node = node[part]
    node[name] = value
  return cfg


def _stack_overrides_for(stack: bool | dict[str, Any], row: str) -> dict[str, Any]:
  """The stage-2 overrides of ``row``: :data:`ROW_STACK_OVERRIDES`, then ``stack``'s keys
  ``section.key`` (every row) and ``<row>:section.key``."""
  out = dict(ROW_STACK_OVERRIDES.get(row, {}))
  if not isinstance(stack, dict):
    return out
  for key, value in stack.items():
    target, _, name = key.rpartition(':')
    if target and target not in ALL_ROWS:
      raise ValueError(f'stack override {key!r}: unknown row {target!r}; expected one of {ALL_ROWS}.')
    if not target or target == row:
      out[name] = value
  return out


def _check_same_pseudo3d(row_dir: str, path: str) -> None:
  """Refuses to resume a teacher row whose student was trained on other pseudo-3D."""
  config_path = os.path.join(row_dir, 'config.json')
  if not os.path.exists(config_path):
    return
  with open(config_path) as f:
    saved = json.load(f).get('train', {}).get('pseudo3d', '')
  if not saved or saved == path:
    return
  if os.path.exists(saved):
    with np.load(saved) as a, np.load(path) as b:
      if np.array_equal(a['pseudo3d'], b['pseudo3d']):
        return  # Same labels under another cache key.
  raise ValueError(
      f'{row_dir} holds a student trained on the pseudo-3D {saved}, not on {path} (another '
      'teacher or teacher mode): use another --workdir.'
  )


def _run_rows(
    student_config: ConfigFn,
    teacher_config: Callable[[], ml_collections.ConfigDict],
    workdir: str,
    rows,
    log: Callable[[str], None],
    stack: bool | dict[str, Any] = False,
    anchor: float = 0.0,
    anchor_row: str = 'lifter',
) -> dict[str, Any]:
  results = {}
  rows = _check_rows(rows, 'teacher' in rows and teacher_config().teacher.mode == 'self')
  if stack and 'lifter' not in rows:
    raise ValueError('stack=True builds every row on the lifter row: include lifter in the rows.')
  if anchor_row not in ANCHORS:
    raise ValueError(f'anchor_row={anchor_row!r}: the stacked rows are anchored to one of {ANCHORS}.')
  per_frame = anchor_row in PER_FRAME_ROWS
  if stack and anchor and per_frame and anchor_row not in rows and any(r in ANCHORED_ROWS for r in rows):
    raise ValueError(f'the stacked rows are anchored to the {anchor_row} row: include {anchor_row} in the rows.')
  classic_files: dict[str, str] = {}  # One classic anchor file per data setting, not per row.
  for row in rows:
    cfg = student_config(row)
    if stack and row not in PER_FRAME_ROWS:
      cfg = stacked(cfg, os.path.join(workdir, 'lifter'), _stack_overrides_for(stack, row))
      if anchor and row in ANCHORED_ROWS:
        if per_frame:
          cfg.train.pseudo3d = os.path.abspath(os.path.join(workdir, anchor_row))
        else:
          key = json.dumps(cfg.data.to_dict(), sort_keys=True, default=str)
          if key not in classic_files:
            classic_files[key] = classic_anchor(cfg, workdir, anchor_row[len('classic_') :], log)
          cfg.train.pseudo3d = classic_files[key]
        cfg.loss.terms.teacher.weight = anchor
    row_dir = os.path.join(workdir, row)
    t0 = time.time()
    if row == 'teacher':
      tcfg = teacher_config()
      tcfg.data = ml_collections.ConfigDict(cfg.data.to_dict())
      if tcfg.teacher.mode == 'self':
        tcfg.teacher.student_workdir = os.path.join(workdir, 'tcn')
      log(f'== {os.path.basename(workdir)}: teacher ({tcfg.teacher.mode}) ==')
      out = teacher.train_teacher(tcfg, os.path.join(workdir, f'teacher_{tcfg.teacher.mode}'), log=log)
      cfg.train.pseudo3d = out['pseudo3d']
      results['teacher_eval'] = out['eval']
      d = tcfg.diffusion
      alone = out['eval'].get(f'H{d.num_hypotheses}_K{d.num_steps}', {}).get(d.aggregation)
      if alone is not None:  # The teacher's own score at the settings that made the pseudo-3D.
        results['teacher_alone'] = {'overall': alone}
      _check_same_pseudo3d(row_dir, out['pseudo3d'])
    title = row_title(row, cfg)
    log(f'== {os.path.basename(workdir)}: {row} ({title}) ==')
    result = train_lib.train_and_evaluate(cfg, row_dir, log=log)
    results[row] = dict(result, seconds_this_call=round(time.time() - t0, 1))
    if title != TITLES[row]:
      results[row]['title'] = title
    if row == 'teacher':  # The fair reference: the teacher alone with the student's test-time treatment.
      fair = teacher.score_as_student(os.path.join(workdir, f'teacher_{tcfg.teacher.mode}'), cfg, log=log)
      if fair is not None:
        results['teacher_as_student'] = {'overall': fair}
  if any('depth0' in results[r] for r in rows):
    # Every row is scored on the same frames: its evaluation already holds the depth-0 reference.
    results['depth0'] = next(results[r]['depth0'] for r in rows if 'depth0' in results[r])
  return results


def run_cmu17(
    workdir: str,
    rows=ROWS,
    *,
    teacher_mode: str = 'supervised',
    student_config: ConfigFn | None = None,
    teacher_config: Callable[[], ml_collections.ConfigDict] | None = None,
    log: Callable[[str], None] = print,
    stack: bool | dict[str, Any] = False,
    anchor: float = 0.0,
    anchor_row: str = 'lifter',
) -> dict[str, Any]:
  """Trains and scores the rows on the cmu17 development split; ``{row: score()}``.

  ``stack``: every row after the lifter starts from the lifter row (:func:`stacked`, with
  :data:`ROW_STACK_OVERRIDES`); a dict also changes :data:`STACK_OVERRIDES`, for every row
  (``{'train.num_steps': 2000}``) or for one (``{'teacher:train.num_steps': 2000}``).
  ``anchor > 0`` (with ``stack``): the :data:`ANCHORED_ROWS` also fit the lifter row's own
  reconstructions of their training windows through the teacher term, at this weight
  (``train.pseudo3d`` = the lifter's workdir), so the second stage cannot drift from the first
  where the temporal terms do not ask it to. ``anchor_row='c3dpo_lifter'``: they fit that row's
  reconstructions instead (C3DPO's recipe lifter; they still start from the lifter row), so the
  small temporal student learns from the larger per-frame lifter.
  ``anchor_row='classic_<solver>'``: they fit a classic solver's reconstruction of each
  training sequence where its knees and elbows agree on a body, the lifter row's elsewhere
  (:func:`classic_anchor`).
  """
  student_config = student_config or (lambda row: row_config('default', row))
  teacher_config = teacher_config or (lambda: configs.get('teacher', teacher_mode))
  return _run_rows(
      student_config, teacher_config, workdir, rows, log, stack=stack, anchor=anchor, anchor_row=anchor_row
  )


def cross_subject_folds(subjects) -> list[tuple[str, list[str]]]:
  """Leave-one-subject-out folds: ``[(held_out, training_subjects), ...]`` in ``subjects``' order."""
  subjects = [str(s) for s in subjects]
  if len(subjects) < 2 or len(set(subjects)) != len(subjects):
    raise ValueError(f'cross-subject folds need at least two distinct subjects, got {subjects}')
  return [(s, [t for t in subjects if t != s]) for s in subjects]


def run_cmu17_cross_subject(
    workdir: str,
    rows=ROWS,
    subjects=None,
    *,
    teacher_mode: str = 'supervised',
    student_config: ConfigFn | None = None,
    teacher_config: Callable[[], ml_collections.ConfigDict] | None = None,
    log: Callable[[str], None] = print,
    stack: bool | dict[str, Any] = False,
    folds: list[str] | None = None,
    anchor: float = 0.0,
    anchor_row: str = 'lifter',
) -> dict[str, Any]:
  """Every row on every leave-one-subject-out fold of cmu17 (docs/benchmarks.md A, "cross-subject mean").

  Fold ``s`` trains on the other subjects and tests on every frame of ``s``;
  it lives in ``<workdir>/fold_<s>/<row>`` and resumes like :func:`run_cmu17`.
  Each fold's scores are also written to ``fold_<s>/fold_results.json``, so
  folds can run as separate processes or machines (``folds``) and be
  collected afterwards.

  Args:
    workdir: the ablation's cmu17 cross-subject directory.
    rows: rows to run.
    subjects: the subjects to fold over (default: every subject in the data).
    teacher_mode, student_config, teacher_config, log, stack, anchor, anchor_row: as :func:`run_cmu17`.
    folds: held-out subjects to run now (default: all). The other folds are
      read from their ``fold_results.json`` where one exists (not retrained or
      re-scored), and left out otherwise; ``[]`` only collects.

  Returns:
    ``{'folds': {s: {row: score(), 'depth0': score(), 'teacher_alone': ...}},
    'mean': {row: {metric: mean over folds}}}``; the mean is the unweighted mean
    of the folds' overall metrics (each subject counts once, however many
    frames it has). ``teacher_alone`` is the teacher's own score at the
    settings that made the student's pseudo-3D (H, K, aggregation);
    ``teacher_as_student`` the same samples scored as the student is
    (:func:`teacher.score_as_student`).
  """
  student_config = student_config or (lambda row: row_config('default', row))
  teacher_config = teacher_config or (lambda: configs.get('teacher', teacher_mode))
  if subjects is None:
    base = student_config(ROWS[0]).data
    subjects = data_lib.list_subjects(base.path or None)
  all_folds = cross_subject_folds(subjects)
  if folds is not None:
    unknown = sorted(set(map(str, folds)) - {s for s, _ in all_folds})
    if unknown:
      raise ValueError(f'folds {unknown} are not among the subjects {[s for s, _ in all_folds]}.')
  results = {}
  for held_out, train_subjects in all_folds:
    fold_dir = os.path.join(workdir, f'fold_{held_out}')
    saved = os.path.join(fold_dir, 'fold_results.json')
    if folds is not None and held_out not in map(str, folds):
      if os.path.exists(saved):
        with open(saved) as f:
          results[held_out] = json.load(f)
        log(f'=== cross-subject fold {held_out}: collected from {saved} ===')
      continue

    def fold_config(row, held_out=held_out, train_subjects=train_subjects):
      cfg = student_config(row)
      cfg.data.train_subjects = ','.join(train_subjects)
      cfg.data.val_subjects = held_out
      return cfg

    log(f'=== cross-subject fold: test {held_out}, train {",".join(train_subjects)} ===')
    result = _run_rows(
        fold_config, teacher_config, fold_dir, rows, log, stack=stack, anchor=anchor, anchor_row=anchor_row
    )
    loop.write_json_atomic(saved, result)
    results[held_out] = result
  return {'folds': results, 'mean': fold_means(results)}


def fold_means(folds: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
  """``{row: {metric: mean over the folds that have the row}}`` of the folds' overall scores."""
  means = {}
  for row in ALL_ROWS + REFERENCE_ROWS:
    scores = [f[row]['overall'] for f in folds.values() if row in f]
    if scores:
      means[row] = {k: float(np.mean([o[k] for o in scores])) for k in scores[0]}
      means[row]['folds'] = len(scores)
  return means


def cross_subject_table(results: dict[str, Any]) -> str:
  """Markdown: per-fold MPJPE of every row and the depth-0 reference, then the fold means of all metrics."""
  folds = results['folds']
  names = list(folds)
  head = (
      '| row | '
      + ' | '.join(f'MPJPE {s} (mm)' for s in names)
      + ' | mean MPJPE | mean PA-MPJPE | mean Stress | mean accel (mm/frame²) |'
  )
  lines = [head, '|---' * (len(names) + 5) + '|']
  titles = dict(TITLES, **REFERENCE_TITLES)
  for row in ('depth0',) + ALL_ROWS + REFERENCE_ROWS[1:]:
    if row not in results['mean']:
      continue
    cells = [f'{folds[s][row]["overall"]["mpjpe"]:.1f}' if row in folds[s] else '–' for s in names]
    m = results['mean'][row]
    title = next((folds[s][row]['title'] for s in names if 'title' in folds[s].get(row, {})), titles[row])
    lines.append(
        f'| {title} | ' + ' | '.join(cells) + f' | {m["mpjpe"]:.1f} | {m["pa_mpjpe"]:.1f} | '
        f'{m["stress"]:.1f} | {m["accel_error"]:.2f} |'
    )
  return '\n'.join(lines)


def selection_choice(
    run_dirs: dict[str, str], row: str = 'lifter', log: Callable[[str], None] = print
) -> dict[str, dict[str, Any]]:
  """Per cross-subject fold, the run (seed) whose ``row`` has the lowest training objective.

  The 3D-free choice that ``train.restarts`` makes, applied after the fact to
  separate ablation workdirs: each fold's ``row`` run is scored by
  :func:`nrsfm_jax.train.selection_objective` on that fold's training 2D.

  Args:
    run_dirs: ``{label: workdir of a --cross_subject ablation}`` (the same folds in each).
    row: the row whose runs are compared.
    log: progress sink.

  Returns:
    ``{fold: {'chosen': label, 'objective': {label: total}}}``.
  """
  out: dict[str, dict[str, Any]] = {}
  datasets: dict[str, Any] = {}
  for label, workdir in run_dirs.items():
    base = os.path.join(workdir, 'cmu17_cross_subject')
    folds = sorted(d[len('fold_') :] for d in os.listdir(base) if d.startswith('fold_')) if os.path.isdir(base) else []
    if not folds:
      raise ValueError(f'{base} holds no fold_<subject> directories: not a --cross_subject ablation workdir.')
    for fold in folds:
      config, model, params, _ = runs_lib.load_run(os.path.join(base, f'fold_{fold}', row))
      key = json.dumps(config.data.to_dict(), sort_keys=True)
      if key not in datasets:
        datasets[key] = data_lib.make_datasets(config)[0]
      total = train_lib.selection_objective(config, model.apply, params, datasets[key])['total']
      log(f'{label} fold {fold}: training objective {total:.5g}')
      out.setdefault(fold, {'objective': {}})['objective'][label] = total
  for entry in out.values():
    entry['chosen'] = min(entry['objective'], key=entry['objective'].get)
  return out


def seeds_table(runs: dict[str, dict[str, Any]], row: str = 'lifter', chosen: dict[str, str] | None = None) -> str:
  """Markdown: one cross-subject row over several runs (seeds), then their mean and spread.

  Args:
    runs: ``{label: results.json of a --cross_subject ablation}`` (the same folds in each).
    row: the ablation row to compare.
    chosen: ``{fold: label}``, one run per fold (e.g. :func:`selection_choice`'s): adds a
      line with the chosen run's scores on each fold, labelled by the choice.

  Returns:
    A table with the depth-0 reference, one line per run (per-fold MPJPE, mean MPJPE,
    PA-MPJPE, Stress, the folds beating depth 0), then the per-fold mean over runs, and
    the mean ± standard deviation (ddof 1) of the runs' means; then the chosen line.
  """
  if not runs:
    raise ValueError('seeds_table needs at least one run.')
  first = next(iter(runs.values()))['cmu17_cross_subject']
  names = list(first['folds'])
  lines = [
      '| run | '
      + ' | '.join(f'MPJPE {s} (mm)' for s in names)
      + ' | mean MPJPE | mean PA-MPJPE | mean Stress | folds < depth 0 |',
      '|---' * (len(names) + 5) + '|',
  ]
  depth0 = [first['folds'][s]['depth0']['overall']['mpjpe'] for s in names]
  lines.append(
      '| depth 0 (reference) | '
      + ' | '.join(f'{v:.1f}' for v in depth0)
      + f' | {np.mean(depth0):.1f} | {first["mean"]["depth0"]["pa_mpjpe"]:.1f} | '
      + f'{first["mean"]["depth0"]["stress"]:.1f} | – |'
  )
  per_fold, means = [], {'mpjpe': [], 'pa_mpjpe': [], 'stress': []}
  for label, results in runs.items():
    cs = results.get('cmu17_cross_subject') or {}
    if list(cs.get('folds', {})) != names or any(row not in cs['folds'][s] for s in names):
      raise ValueError(f'run {label!r} lacks row {row!r} on the folds {names}.')
    scores = [cs['folds'][s][row]['overall']['mpjpe'] for s in names]
    per_fold.append(scores)
    for k in means:
      means[k].append(cs['mean'][row][k])
    wins = sum(v < d for v, d in zip(scores, depth0))
    lines.append(
        f'| {label} | '
        + ' | '.join(f'{v:.1f}' for v in scores)
        + f' | {means["mpjpe"][-1]:.1f} | {means["pa_mpjpe"][-1]:.1f} | {means["stress"][-1]:.1f} | '
        + f'{wins}/{len(names)} |'
    )
  avg = np.mean(per_fold, 0)
  spread = {k: (np.std(v, ddof=1) if len(v) > 1 else 0.0) for k, v in means.items()}
  wins = sum(v < d for scores in per_fold for v, d in zip(scores, depth0))
  lines.append(
      f'| **mean over {len(runs)} runs** | '
      + ' | '.join(f'{v:.1f}' for v in avg)
      + ' | '
      + ' | '.join(f'**{np.mean(means[k]):.1f}** ± {spread[k]:.1f}' for k in ('mpjpe', 'pa_mpjpe', 'stress'))
      + f' | {wins}/{len(names) * len(runs)} |'
  )
  if chosen is not None:
    missing = [s for s in names if chosen.get(s) not in runs]
    if missing:
      raise ValueError(f'chosen has no run among {list(runs)} for folds {missing}.')
    picked = [runs[chosen[s]]['cmu17_cross_subject']['folds'][s][row]['overall'] for s in names]
    scores = [o['mpjpe'] for o in picked]
    wins = sum(v < d for v, d in zip(scores, depth0))
    lines.append(
        '| **lowest training objective ('
        + ', '.join(f'{s}: {chosen[s]}' for s in names)
        + ')** | '
        + ' | '.join(f'{v:.1f}' for v in scores)
        + ' | '
        + ' | '.join(f'**{np.mean([o[k] for o in picked]):.1f}**' for k in ('mpjpe', 'pa_mpjpe', 'stress'))
        + f' | {wins}/{len(names)} |'
    )
  return '\n'.join(lines)


def sequence_dir(workdir: str, sequence: str) -> str:
  """``<workdir>/<name>``: a bundled name as it is, a ``.npz`` path by its file stem (never the path itself)."""
  name = os.path.splitext(os.path.basename(os.path.normpath(sequence)))[0] or sequence
  return os.path.join(workdir, name)


def run_nrsfm(
    workdir: str,
    sequences=NRSFM_SEQUENCES,
    rows=ROWS,
    *,
    student_config: Callable | None = None,
    teacher_config: Callable | None = None,
    log: Callable[[str], None] = print,
    classic_anchor: tuple[str, float] | None = None,
) -> dict[str, Any]:
  """Transductive fits of every row on every sequence; ``{sequence: {row: score()}}``.

  ``classic_anchor=(solver, weight)``: every row but ``teacher`` also fits that classic
  solver's solution of the same 2D (:func:`run_classic`, run first where missing; no 3D read)
  through the teacher term at ``weight``, so the deep fit starts from, and stays near, the
  classic one. The ``teacher`` row keeps its own diffusion teacher's pseudo-3D.
  """
  out = {}
  for seq in sequences:
    base = (
        (lambda row, s=seq: student_config(s, row))
        if student_config
        else (lambda row, s=seq: configs.get('nrsfm', f'{s}:{row}'))
    )
    s_cfg = base
    if classic_anchor is not None:
      solver, weight = classic_anchor
      if solver not in classic.SOLVERS:
        raise ValueError(f'classic_anchor: unknown solver {solver!r}; expected one of {classic.SOLVERS}.')
      if weight <= 0:
        raise ValueError(f'classic_anchor: the weight must be > 0, got {weight}.')
      # The classic fit sees the rows' data (the lifter row's: every row shares it).
      run_classic(workdir, [seq], [solver], config_fn=lambda _, b=base: b('lifter'), log=log)
      target = os.path.abspath(os.path.join(sequence_dir(workdir, seq), f'classic_{solver}', CLASSIC_PSEUDO3D))

      def s_cfg(row, b=base, target=target, weight=weight):
        cfg = b(row)
        if row != 'teacher':
          cfg.train.pseudo3d = target
          cfg.loss.terms.teacher.weight = float(weight)
        return cfg

    t_cfg = (
        (lambda s=seq: teacher_config(s)) if teacher_config else (lambda s=seq: configs.get('teacher', f'nrsfm:{s}'))
    )
    out[seq] = _run_rows(s_cfg, t_cfg, sequence_dir(workdir, seq), rows, log)
  return out


# A classic row's solution cut into the student's training windows (data.save_pseudo3d format).
CLASSIC_PSEUDO3D = 'pseudo3d.npz'

CLASSIC_TITLES = {
    'classic_prior_free': 'classic: prior-free low rank (Dai et al. style)',
    'classic_trajectory': 'classic: DCT trajectories (Akhter et al. style)',
    'classic_procrustean': 'classic: Procrustean normal distribution (EM-PND style)',
}


def _whole_sequences(config: ml_collections.ConfigDict):
  """``((train, eval) datasets, tracks, visibility, points3d)``: each eval view reassembled whole."""
  datasets = data_lib.make_datasets(config)
  dataset = datasets[1]
  views = (dataset.keypoints, dataset.visibility, dataset.points3d)
  return (datasets, *(data_lib.reassemble(dataset, v) for v in views))


def run_classic(
    workdir: str,
    sequences=NRSFM_SEQUENCES,
    solvers=classic.SOLVERS,
    *,
    config_fn: Callable[[str], ml_collections.ConfigDict] | None = None,
    log: Callable[[str], None] = print,
    **fit_kwargs,
) -> dict[str, dict[str, Any]]:
  """The classic solvers (:func:`nrsfm_jax.classic.fit`) on every sequence; ``{sequence: {classic_<solver>: score}}``.

  Each sequence's 2D is the nrsfm config's (``config_fn(sequence)``, default
  ``configs/nrsfm.py:<sequence>``: its noise and dropout settings apply; hidden
  points are missing data). The solvers' sizes are chosen from the 2D alone
  (:func:`nrsfm_jax.classic.fit_many`, which fits the shared prior-free stage once for every
  solver asked for); the 3D is read only to score. Each result is written to
  ``<workdir>/<sequence>/classic_<solver>/eval.json`` (with the choice, the seconds and the
  data settings) and reread on a rerun with the same data settings, and the solution, cut
  into the student's training windows, to ``pseudo3d.npz`` beside it (targets for
  :func:`run_nrsfm`'s ``classic_anchor``). ``fit_kwargs`` go to :func:`nrsfm_jax.classic.fit_many`
  (e.g. the candidate sizes).
  """
  config_fn = config_fn or (lambda seq: configs.get('nrsfm', seq))
  out: dict[str, dict[str, Any]] = {}
  for seq in sequences:
    config = config_fn(seq)
    data_config = json.loads(json.dumps(config.data.to_dict(), default=list))
    out[seq] = {}
    missing = []
    for solver in solvers:
      row = f'classic_{solver}'
      row_dir = os.path.join(sequence_dir(workdir, seq), row)
      path = os.path.join(row_dir, 'eval.json')
      if os.path.exists(path) and os.path.exists(os.path.join(row_dir, CLASSIC_PSEUDO3D)):
        with open(path) as f:
          saved = json.load(f)
        if saved.get('data') == data_config:
          out[seq][row] = saved
          log(f'{seq}: {row} read from {path}')
          continue
        log(f'{seq}: {row} in {path} was fitted to other data settings: fitting again')
      missing.append(solver)
    if not missing:
      continue
    datasets, tracks, vis, truth = _whole_sequences(config)
    dataset = datasets[1]
    # Every solver starts from the prior-free solution: fit its candidates once for all of them.
    log(f'{seq}: fitting {", ".join(missing)} on {len(tracks)} track set(s)')
    fits = {name_view: classic.fit_many(missing, kp, vis[name_view], **fit_kwargs) for name_view, kp in tracks.items()}
    for solver in missing:
      row = f'classic_{solver}'
      row_dir = os.path.join(sequence_dir(workdir, seq), row)
      normalised = {nv: np.asarray(fits[nv][solver][0].points) for nv in fits}
      preds = {nv: p * dataset.scale for nv, p in normalised.items()}
      info = {str(nv): fits[nv][solver][1] for nv in fits}
      scores = scoring.score_sequences(preds, truth)
      result = {
          'overall': scores['overall'],
          'per_sequence': scores['per_sequence'],
          'choice': info,
          # The shared prior-free stage counts in every solver's time: what fitting it alone costs.
          'seconds': round(sum(float(i['seconds']) for i in info.values()), 1),
          'data': data_config,
      }
      os.makedirs(row_dir, exist_ok=True)
      # The solution cut into the student's training windows: targets for its teacher term
      # (run_nrsfm's classic_anchor).
      data_lib.save_pseudo3d(
          os.path.join(row_dir, CLASSIC_PSEUDO3D), data_lib.rewindow(datasets[0], normalised), datasets[0]
      )
      loop.write_json_atomic(os.path.join(row_dir, 'eval.json'), result)
      log(
          f'{seq}: {row} e3D {result["overall"]["e3d"]:.4f}, e3D-akhter {result["overall"]["e3d_akhter"]:.4f} '
          f'({result["seconds"]:.0f} s alone; {info})'
      )
      out[seq][row] = result
  return out


# ----------------------------------------------------------------------------
# Tables.
# ----------------------------------------------------------------------------


REFERENCE_TITLES = {
    'depth0': 'depth 0 (reference)',
    'teacher_alone': 'teacher alone (its pseudo-3D setting; its own x, y)',
    'teacher_as_student': "teacher alone, scored as the student (observed x, y, the student's bone projection)",
    'c3dpo': 'official C3DPO, 25 CPU-minutes (reference)',
}


def cmu17_table(results: dict[str, Any], c3dpo: bool = False) -> str:
  """Markdown: MPJPE, PA-MPJPE, Stress, acceleration error, MPJPE change vs the lifter row (− = better).

  Also the references where ``results`` has them (depth 0; the teacher on its own) and, with
  ``c3dpo`` (the development split), official C3DPO's scores on the same frames.
  """
  base = results.get('lifter', {}).get('overall', {}).get('mpjpe')
  lines = [
      '| row | MPJPE (mm) | PA-MPJPE (mm) | Stress (mm) | accel (mm/frame²) | MPJPE vs lifter only (− = better) |',
      '|---|---|---|---|---|---|',
  ]
  extra = {'c3dpo': {'overall': scoring.C3DPO_REFERENCE}} if c3dpo else {}
  titles = dict(TITLES, **REFERENCE_TITLES)
  for row in ('depth0',) + ALL_ROWS + REFERENCE_ROWS[1:] + ('c3dpo',):
    if row not in results and row not in extra:
      continue
    o = (results.get(row) or extra[row])['overall']
    title = (results.get(row) or {}).get('title', titles[row])
    change = f'{100 * (o["mpjpe"] - base) / base:+.1f}%' if base and row in ALL_ROWS else '–'
    lines.append(
        f'| {title} | {o["mpjpe"]:.1f} | {o["pa_mpjpe"]:.1f} | {o["stress"]:.1f} | '
        f'{o["accel_error"]:.2f} | {change} |'
    )
  return '\n'.join(lines)


def teacher_table(teacher_eval: dict[str, Any], metric: str = 'mpjpe') -> str:
  """Markdown: the teacher's own ``metric`` for each (H, K) and aggregation."""
  if not teacher_eval:
    return ''
  aggs = list(next(iter(teacher_eval.values())))
  lines = ['| H × K | ' + ' | '.join(aggs) + ' |', '|---|' + '---|' * len(aggs)]
  for hk, entry in teacher_eval.items():
    h, k = hk[1:].split('_K')
    lines.append(f'| {h} × {k} | ' + ' | '.join(f'{entry[a][metric]:.4g}' for a in aggs) + ' |')
  return '\n'.join(lines)


def nrsfm_table(results: dict[str, Any]) -> str:
  """Markdown: e3D / e3D-akhter per sequence and row, next to BMM and EM-PND's e3D-akhter.

  An e3D-akhter in bold beats BMM's; one marked ‡ also beats EM-PND's. Where classic rows are
  present, a second table gives their fit times (``eval.json``'s ``seconds``: the whole
  ``classic.fit`` of that solver on the sequence, candidate sizes and compilation included).
  """
  titles = dict(TITLES, **CLASSIC_TITLES)
  rows = [r for r in titles if any(r in v for v in results.values())]
  lines = [
      '| sequence (e3D / e3D-akhter, fractions) | ' + ' | '.join(titles[r] for r in rows) + ' | BMM | EM-PND |',
      '|---|' + '---|' * (len(rows) + 2),
  ]
  for seq, res in results.items():
    cells = []
    for r in rows:
      if r in res:
        s = next(iter(res[r]['per_sequence'].values()))
        best = s['e3d_akhter'] < BMM.get(seq, -1)
        mark = ' ‡' if s['e3d_akhter'] < PND.get(seq, -1) else ''
        cells.append(f'{s["e3d"]:.4f} / {"**" if best else ""}{s["e3d_akhter"]:.4f}{"**" if best else ""}{mark}')
      else:
        cells.append('')
    lines.append(
        f'| {seq} | ' + ' | '.join(cells) + f' | {BMM.get(seq, float("nan")):.4f} | '
        f'{PND.get(seq, float("nan")):.4f} |'
    )
  timed = [r for r in rows if r in CLASSIC_TITLES]
  if timed:
    lines += [
        '',
        '| sequence (fit seconds, this machine) | ' + ' | '.join(titles[r] for r in timed) + ' |',
        '|---|' + '---|' * len(timed),
    ]
    for seq, res in results.items():
      cells = [f'{res[r]["seconds"]:.0f}' if r in res and 'seconds' in res[r] else '' for r in timed]
      lines.append(f'| {seq} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def depth_diagnostics(row_dir: str, config: ml_collections.ConfigDict) -> dict[str, float]:
  """How a row's reconstructions err: depth spread vs the truth's, the 2D fit, limbs bent wrong.

  Per frame, after centring both on their mean point: the std of the predicted
  depths over the points divided by the truth's (1 = right relief; > 1 depth
  inflated, < 1 flattened; median over frames), and the mean x, y distance to
  the truth (= the observed 2D fit) divided by the truth's mean point radius. On
  the 17-joint human skeleton also ``wrong_hinges``: the fraction of knees and elbows
  (``data.CMU_HINGES``) that bend the other way from the truth (:func:`metrics.wrong_hinges`).
  """
  _, eval_ds = data_lib.make_datasets(config)
  truths = data_lib.reassemble(eval_ds, eval_ds.points3d)
  preds = scoring.read_predictions(os.path.join(row_dir, 'eval_predictions.npz'))
  human = config.data.name in ('cmu17', 'h36m') and eval_ds.num_points == len(data_lib.CMU_JOINTS)
  ratios, fits = [], []
  for key, g in truths.items():
    g = g - g.mean(1, keepdims=True)
    p = preds[key] - preds[key].mean(1, keepdims=True)
    ratios.append(p[..., 2].std(1) / np.maximum(g[..., 2].std(1), 1e-9))
    fits.append(np.linalg.norm(p[..., :2] - g[..., :2], axis=-1).mean(1) / np.linalg.norm(g, axis=-1).mean(1))
  out = {
      'depth_spread_ratio': float(np.median(np.concatenate(ratios))),
      'relative_2d_error': float(np.mean(np.concatenate(fits))),
      'nonrigidity_ratio': shape_variation(row_dir, eval_ds),
  }
  if human:  # (one call on all the frames: per sequence, every op would compile for its length)
    keys = list(truths)
    wrong = metrics.wrong_hinges(
        np.concatenate([preds[k] for k in keys]), np.concatenate([truths[k] for k in keys]), data_lib.CMU_HINGES
    )
    out['wrong_hinges'] = float(np.mean(wrong))
  return out


def shape_variation(row_dir: str, eval_ds: data_lib.WindowDataset, max_frames: int = 4096) -> float:
  """The row's canonical shapes' deformation over the eval frames, over the truth's.

  :func:`metrics.nonrigidity` of the model's canonical ``shape`` outputs (its refined
  ``S_t``) on up to ``max_frames`` evenly spaced real eval frames, divided by the
  same measure of the true 3D of those frames. 1: the model deforms as much as
  the body does; near 0: it has collapsed to one rigid shape and only its camera
  follows the 2D.
  """
  config, model, params, _ = runs_lib.load_run(row_dir)
  context = scoring.eval_context(config)
  shapes = scoring.predict(model.apply, params, eval_ds, key='shape', context=context) * eval_ds.scale
  if getattr(model.config, 'frame_scale', False):  # per-frame units (model.frame_scale) -> the data's
    shapes = shapes * scoring.predict(model.apply, params, eval_ds, key='scale', context=context)[..., None, None]
  real = eval_ds.mask > 0
  frames = np.flatnonzero(real.reshape(-1))
  frames = frames[np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).astype(int)]
  flat = lambda a: a.reshape(-1, *a.shape[2:])[frames]
  pred = float(metrics.nonrigidity(flat(shapes)))
  truth = float(metrics.nonrigidity(flat(eval_ds.points3d)))
  return pred / max(truth, 1e-9)


def diagnostics_table(diagnostics: dict[str, dict[str, dict[str, float]]]) -> str:
  """Markdown of ``{benchmark/sequence: {row: depth_diagnostics()}}``."""
  lines = [
      '| data | row | depth spread / truth (median) | 2D error / mean radius | knees and elbows bent wrong '
      '| shape deformation / truth |',
      '|---|---|---|---|---|---|',
  ]
  for name, rows in diagnostics.items():
    for row, d in rows.items():
      hinges = f'{100 * d["wrong_hinges"]:.1f}%' if 'wrong_hinges' in d else '–'
      rigid = f'{d["nonrigidity_ratio"]:.3f}' if 'nonrigidity_ratio' in d else '–'
      lines.append(
          f'| {name} | {TITLES[row]} | {d["depth_spread_ratio"]:.2f} | {d["relative_2d_error"]:.3f} | {hinges} '
          f'| {rigid} |'
      )
  return '\n'.join(lines)


# ----------------------------------------------------------------------------
# Plots.
# ----------------------------------------------------------------------------


# ----------------------------------------------------------------------------
# Everything.
# ----------------------------------------------------------------------------


def write_results(
    workdir: str,
    cmu17: dict[str, Any] | None,
    nrsfm: dict[str, Any] | None,
    commands: list[str],
    diagnostics: dict[str, Any] | None = None,
    cross_subject: dict[str, Any] | None = None,
    c3dpo: bool = True,
    split: str = 'train 002, 003, 005; test 006',
) -> tuple[str, str]:
  """``results.json`` (raw scores) and ``results.md`` (the README tables) in ``workdir``.

  ``commands``: the invocations that produced the results (in order);
  ``cross_subject``: :func:`run_cmu17_cross_subject`'s result, if run;
  ``c3dpo``: the cmu17 rows are on the development split (show official C3DPO's scores);
  ``split``: the cmu17 rows' subjects, for the heading.
  """
  os.makedirs(workdir, exist_ok=True)
  payload = {
      'commands': commands,
      'cmu17': cmu17,
      'cmu17_cross_subject': cross_subject,
      'nrsfm': nrsfm,
      'bmm_e3d_akhter': BMM,
      'em_pnd_e3d_akhter': PND,
      'diagnostics': diagnostics,
      'jax_backend': jax.default_backend(),
  }
  json_path = os.path.join(workdir, 'results.json')
  with open(json_path, 'w') as f:
    json.dump(payload, f, indent=2)
  parts = ['Produced by: ' + '; '.join(f'`{c}`' for c in commands), '']
  if cmu17:
    parts += [
        f'### cmu17 {"development split " if c3dpo else ""}({split})',
        '',
        'MPJPE, PA-MPJPE and Stress in mm; acceleration error in mm/frame²; the last column is the '
        "relative change of MPJPE from the lifter-only row's (negative: better).",
        '',
        cmu17_table(cmu17, c3dpo=c3dpo),
        '',
    ]
    if cmu17.get('teacher_eval'):
      parts += [
          'The teacher on its own (MPJPE, mm, on the test subjects; mean / joint-wise reprojection aggregation):',
          '',
          teacher_table(cmu17['teacher_eval']),
          '',
      ]
  if cross_subject:
    parts += [
        '### cmu17 cross-subject (leave one subject out; train on the others, test on it)',
        '',
        'MPJPE per held-out subject, then the unweighted mean over folds of each metric (mm; '
        'acceleration error in mm/frame²). Defaults are chosen on these means.',
        '',
        cross_subject_table(cross_subject),
        '',
    ]
  if nrsfm:
    parts += ['### nrsfm-mocap (transductive; e3D / e3D-akhter, bold where it beats BMM)', '', nrsfm_table(nrsfm), '']
  if diagnostics and any(diagnostics.values()):  # (classic rows alone have none)
    parts += ['### Diagnostics: depth relief and 2D fit of each row', '', diagnostics_table(diagnostics), '']
  md_path = os.path.join(workdir, 'results.md')
  with open(md_path, 'w') as f:
    f.write('\n'.join(parts))
  return json_path, md_path


# ----------------------------------------------------------------------------
# The classic solver's K: every candidate with its 3D-free criteria (experiments/classic_study.py).
# ----------------------------------------------------------------------------


def classic_study(sequence: str, bases: list[int], log: Callable[[str], None] = print) -> dict[int, dict[str, float]]:
  """``{K: {'shape_rank_ratio', 'heldout_error', 'disagreement', 'e3d', 'e3d_akhter'}}`` for one sequence."""
  (_, dataset), tracks, vis, truth = _whole_sequences(configs.get('nrsfm', f'{sequence}:lifter'))
  if len(tracks) != 1:
    raise ValueError(f'{sequence}: expected one view, got {len(tracks)}.')
  ((name, kp),) = tracks.items()
  kp, v = jnp.asarray(kp), jnp.asarray(vis[name])
  rot_key, cv_key = jax.random.split(jax.random.PRNGKey(0))  # classic.fit's keys.
  rows, points = {}, {}
  for k in bases:
    t0 = time.time()
    centred, solve = classic.prior_free_candidate(kp, v, rot_key, k)
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


def truth_rotations(points: np.ndarray, num_iters: int = 5) -> np.ndarray:
  """Cameras from the 3D itself (a reference only): ``R_f`` with ``X_f ≈ M R_fᵀ``, ``M`` the mean shape.

  Generalised Procrustes analysis of the ``[F, P, 3]`` camera-frame points
  (:func:`geometry.procrustes_to_mean`, ``num_iters`` rounds). Returns ``[F, 3, 3]`` rotations
  (``det = +1``), the cameras a classic solver would recover if it read the 3D.
  """
  to_mean = geometry.procrustes_to_mean(jnp.asarray(points, jnp.float32), iterations=num_iters)
  return np.asarray(jnp.swapaxes(to_mean, -1, -2))  # X_f ≈ M R_fᵀ  ⇔  X_f R_f ≈ M


def rotation_study(
    sequence: str, num_bases: int | None, num_starts: int, log: Callable[[str], None] = print
) -> dict[str, object]:
  """How much of the prior-free solver's error is in its cameras (one sequence, one ``K``).

  Fits :func:`classic.nuclear_norm_shapes` on: the cameras :func:`classic.fit` uses
  (``'chosen'``: the best of 8 corrective-matrix starts by orthonormality residual);
  each of ``num_starts`` single starts (``'starts'``: residual, shape rank ratio, scores); and
  the true 3D's own cameras (``'truth_rotations'``, :func:`truth_rotations`; reads the 3D, a
  reference only). Scores are e3D and e3D-akhter against the 3D. ``num_bases=None``: the ``K``
  that :func:`classic.fit` chooses from the 2D.
  """
  (_, dataset), tracks, vis, truth = _whole_sequences(configs.get('nrsfm', f'{sequence}:lifter'))
  if len(tracks) != 1:
    raise ValueError(f'{sequence}: expected one view, got {len(tracks)}.')
  ((name, kp),) = tracks.items()
  kp, v = jnp.asarray(kp), jnp.asarray(vis[name])
  rot_key = jax.random.split(jax.random.PRNGKey(0))[0]  # classic.fit's key.
  if num_bases is None:
    num_bases = int(classic.fit('prior_free', kp, v)[1]['num_bases'])

  def row(rotations, centred, t, **extra) -> dict[str, float]:
    shapes = classic.nuclear_norm_shapes(centred, v, rotations)
    points = np.asarray(classic.reconstruction(shapes, rotations, t).points)
    score = scoring.score_sequences({name: points * dataset.scale}, truth)['overall']
    return {
        **extra,
        'shape_rank_ratio': float(classic.shape_rank_ratio(shapes)),
        'e3d': float(score['e3d']),
        'e3d_akhter': float(score['e3d_akhter']),
    }

  rotations, centred, t = classic.cameras(kp, v, rot_key, num_bases=num_bases)
  out: dict[str, object] = {'num_bases': num_bases, 'chosen': row(rotations, centred, t)}
  log(f'{sequence} K={num_bases} chosen: {out["chosen"]}')
  complete, _ = classic.complete_low_rank(kp, v, rank=3 * num_bases, num_iters=1000)  # as classic.cameras
  starts = []
  for i in range(num_starts):
    t0 = time.time()
    r, residual = classic.recover_rotations(complete, jax.random.fold_in(rot_key, i), num_bases=num_bases, num_starts=1)
    starts.append(row(r, centred, t, residual=float(residual)))
    log(f'{sequence} K={num_bases} start {i}: {starts[-1]} ({time.time() - t0:.0f} s)')
  out['starts'] = starts
  truth_points = np.asarray(truth[name], np.float64) / dataset.scale
  out['truth_rotations'] = row(jnp.asarray(truth_rotations(truth_points)), centred, t)
  log(f'{sequence} K={num_bases} truth rotations: {out["truth_rotations"]}')
  return out


def rotation_study_table(results: dict[str, dict[str, object]]) -> str:
  """Markdown: e3D-akhter (and shape rank ratio) of each camera choice, per sequence."""
  header = [
      'sequence (K)',
      'chosen (8 starts, lowest residual: the solver)',
      'of N single starts: lowest residual',
      'lowest shape rank ratio',
      'lowest e3D-akhter (3D-chosen)',
      'median',
      "the 3D's own cameras (reads the 3D)",
  ]
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  cell = lambda r: f'{r["e3d_akhter"]:.4f} ({r["shape_rank_ratio"]:.4f})'
  for seq, res in results.items():
    starts = res['starts']
    pick = lambda key: cell(min(starts, key=lambda r: r[key]))
    median = float(np.median([r['e3d_akhter'] for r in starts]))
    lines.append(
        f'| {seq} ({res["num_bases"]}) | {cell(res["chosen"])} | {pick("residual")} | {pick("shape_rank_ratio")} | '
        f'{pick("e3d_akhter")} | {median:.4f} | {cell(res["truth_rotations"])} |'
    )
  return '\n'.join(lines)


def classic_study_table(results: dict[str, dict[int, dict[str, float]]]) -> str:
  """Markdown: e3D-akhter per K, and the K each criterion picks (bold: the lowest e3D-akhter)."""
  criteria = ('shape_rank_ratio', 'heldout_error', 'disagreement')
  header = ['sequence', *(f'K={k}' for k in next(iter(results.values()))), *(f'K by {c}' for c in criteria)]
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for seq, rows in results.items():
    best = min(rows, key=lambda k: rows[k]['e3d_akhter'])
    cells = [f'**{r["e3d_akhter"]:.4f}**' if k == best else f'{r["e3d_akhter"]:.4f}' for k, r in rows.items()]
    picks = []
    for c in criteria:
      k = min(rows, key=lambda k, c=c: rows[k][c])
      picks.append(f'{k} ({rows[k]["e3d_akhter"]:.4f})')
    lines.append(f'| {seq} | ' + ' | '.join(cells) + ' | ' + ' | '.join(picks) + ' |')
  return '\n'.join(lines)
