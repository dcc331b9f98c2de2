r"""Is a cross-subject row's error temporal? Smoothing its output over time, and its depth flips.

  python -m experiments.temporal_study --workdir=runs/tcn_centred [--rows=lifter,tcn] [--sigmas=0,1,2,3,5]

For every fold of a ``--cross_subject`` ablation (``<workdir>/cmu17_cross_subject/fold_<s>``) and
every row given, the row's predictions on its held-out subject are filtered over time with a
Gaussian of ``sigma`` frames (per trial and view, on the raw output: no 3D is read to filter) and
scored (MPJPE, depth-flip best per frame, mm). It also counts, against the truth, the frames
whose better depth sign is the flipped one, how often that choice changes between
consecutive frames, and (with that sign) the fraction of knees and elbows bent the other way
from the truth (``metrics.wrong_hinges``). Per bone it also counts the depth signs (the sign of the
child's depth minus the parent's) that agree with the truth's after that per-frame flip, how often
a bone's agreement changes between consecutive frames, and the MPJPE after a *sign vote*: each
bone's sign replaced by that of its depth difference smoothed over time (the widest ``sigma``),
its extent kept (no 3D read). A per-frame error that a temporal model could remove flickers; one
that persists over many frames does not. Prints one line per fold and row, then the means over folds.

``--targets`` instead studies the self-mode teacher's targets: each row's reconstructions of its
*training* windows, as they are and after :func:`geometry.resolve_flip_by_reference` to the row's
mean shape (what ``teacher.resolve_flips`` does), and counts, against the training 3D, the frames
whose whole-body handedness is the truth's and how often it changes between consecutive frames:

  python -m experiments.temporal_study --workdir=runs/tp --rows=tcn --targets

``--jitter`` asks where a row's frame-to-frame jitter comes from: each row's test-time 3D scored
(MPJPE, PA-MPJPE, Stress, acceleration error) as the model outputs it (``raw``), after the run's
test-time bone projection (``projected``: what the run is scored as), with its depth filtered
over time by a Gaussian of the widest ``sigma`` before the projection (``filtered, projected``)
and after it (``projected, filtered``). x, y stay the observed 2D; no 3D is read to filter:

  python -m experiments.temporal_study --workdir=runs/anchor_c3dpo --rows=windows,smooth,tcn --jitter --sigmas=5
"""

import os

import numpy as np
from absl import app, flags, logging
from scipy.ndimage import gaussian_filter1d

from nrsfm_jax import data as data_lib
from nrsfm_jax import evaluation, loop, metrics, runs, scoring

_WORKDIR = flags.DEFINE_string('workdir', None, 'A --cross_subject ablation directory.', required=True)
_ROWS = flags.DEFINE_list('rows', ['lifter', 'tcn'], 'Rows to study (those present in each fold).')
_SIGMAS = flags.DEFINE_list('sigmas', ['0', '1', '2', '3', '5'], 'Gaussian widths, frames (0: as predicted).')
_JITTER = flags.DEFINE_bool(
    'jitter',
    False,
    'Score each row raw, after its bone projection, and with its depth filtered over time before or '
    'after the projection (the widest --sigmas).',
)
_TARGETS = flags.DEFINE_bool(
    'targets', False, "Study the rows' reconstructions of their training windows as self-mode teacher targets."
)


def _vote_sigma(sigmas) -> float:
  """The sign vote's width: the widest of ``sigmas``, at least one frame."""
  return max(max(sigmas), 1.0)


JITTER_VARIANTS = ('raw', 'projected', 'filtered, projected', 'projected, filtered')
JITTER_METRICS = ('mpjpe', 'pa_mpjpe', 'stress', 'accel_error')


def jitter_row(workdir: str, sigma: float) -> dict[str, dict[str, float]]:
  """``{variant: {metric: value}}`` over :data:`JITTER_VARIANTS` for one fold's row (see ``--jitter``)."""
  config, model, params, meta = runs.load_run(workdir)
  dataset = data_lib.make_dataset(config.data, 'eval', scale=meta['scale'], seed=config.seed)
  raw = scoring.predict(model.apply, params, dataset, batch_size=64, context=scoring.eval_context(config))
  projection = scoring.projection_options(config)
  project = (lambda p: scoring.project_bones(p, dataset, **projection)) if projection else (lambda p: p)

  def depth_filtered(p):
    seqs = data_lib.reassemble(dataset, p)
    seqs = {
        k: np.concatenate([v[..., :2], gaussian_filter1d(v[..., 2:], sigma, axis=0, mode='nearest')], -1)
        for k, v in seqs.items()
    }
    return data_lib.rewindow(dataset, seqs)

  variants = dict(zip(JITTER_VARIANTS, (raw, project(raw), project(depth_filtered(raw)), depth_filtered(project(raw)))))
  return {
      name: {
          k: float(v) for k, v in scoring.score(p * dataset.scale, dataset)['overall'].items() if k in JITTER_METRICS
      }
      for name, p in variants.items()
  }


def study_row(workdir: str, sigmas) -> dict:
  """``{'mpjpe': {sigma: mm}, 'flipped': fraction, 'flip_changes': per 100 frames}`` for one fold's row."""
  config, model, params, meta = runs.load_run(workdir)
  dataset = data_lib.make_dataset(config.data, 'eval', scale=meta['scale'], seed=config.seed)
  pred = (
      scoring.predict(model.apply, params, dataset, batch_size=64, context=scoring.eval_context(config)) * dataset.scale
  )
  seqs, truths = data_lib.reassemble(dataset, pred), data_lib.reassemble(dataset, dataset.points3d)
  errors = {s: [] for s in sigmas}
  voted, signs = [], []
  vote_sigma = _vote_sigma(sigmas)
  flipped = changes = frames = 0
  for key, p in seqs.items():
    g = truths[key]
    for s in sigmas:
      q = gaussian_filter1d(p, s, axis=0, mode='nearest') if s > 0 else p
      errors[s].append(np.asarray(metrics.mpjpe(q, g)))
    voted.append(np.asarray(metrics.mpjpe(evaluation.sign_vote(p, data_lib.CMU_BONES, vote_sigma), g)))
    signs.append((*evaluation.bone_signs(p, g, data_lib.CMU_BONES), len(p)))
    choice = np.asarray(metrics.flip_is_closer(p, g))
    flipped += int(choice.sum())
    changes += int((choice[1:] != choice[:-1]).sum())
    frames += len(choice)
  weights = np.array([n for *_, n in signs], float)
  pairs = np.maximum(weights - 1, 0)
  return {
      'mpjpe': {s: float(np.mean(np.concatenate(v))) for s, v in errors.items()},
      'sign_vote': float(np.mean(np.concatenate(voted))),
      'signs_right': float(np.average([r for r, _, _ in signs], weights=weights)),
      'sign_changes': float(np.average([0.0 if np.isnan(c) else c for _, c, _ in signs], weights=pairs))
      if pairs.sum()
      else float('nan'),
      'flipped': flipped / frames,
      'flip_changes': 100.0 * changes / frames,
      # (one call on all the frames: per sequence, every op would compile for its length)
      'wrong_hinges': float(
          np.mean(
              metrics.wrong_hinges(
                  np.concatenate(list(seqs.values())), np.concatenate([truths[k] for k in seqs]), data_lib.CMU_HINGES
              )
          )
      ),
  }


def main(argv):
  logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  sigmas = [float(s) for s in _SIGMAS.value]
  root = os.path.join(_WORKDIR.value, 'cmu17_cross_subject')
  if not os.path.isdir(root):
    raise app.UsageError(f'{root} does not exist: --workdir must be a --cross_subject ablation directory.')
  folds = sorted(d for d in os.listdir(root) if d.startswith('fold_'))
  if _JITTER.value:
    sigma = _vote_sigma(sigmas)
    print(f'fold      row     | variant (depth filter sigma = {sigma:g}) | MPJPE | PA-MPJPE | Stress | accel')
    jitter: dict[tuple[str, str], list[dict]] = {}
    for fold in folds:
      for row in _ROWS.value:
        path = os.path.join(root, fold, row)
        if not os.path.isdir(path):
          continue
        for name, m in jitter_row(path, sigma).items():
          jitter.setdefault((row, name), []).append(m)
          print(f'{fold:<9} {row:<7} | {name:<19} | ' + ' | '.join(f'{m[k]:.2f}' for k in JITTER_METRICS))
    for (row, name), ms in jitter.items():
      print(
          f'{"mean":<9} {row:<7} | {name:<19} | '
          + ' | '.join(f'{np.mean([m[k] for m in ms]):.2f}' for k in JITTER_METRICS)
      )
    return
  if _TARGETS.value:
    print('fold      row     | truth handedness, as made | changes/100 | resolved to the mean shape | changes/100')
    for fold in folds:
      for row in _ROWS.value:
        path = os.path.join(root, fold, row)
        if os.path.isdir(path):
          t = evaluation.targets_handedness(path)
          cells = [
              f'{v:.3f}' if i % 2 == 0 else ('–' if np.isnan(v) else f'{v:.2f}')
              for i, v in enumerate(t['raw'] + t['resolved'])
          ]
          print(f'{fold:<9} {row:<7} | ' + ' | '.join(cells))
    return
  sigma_list = ', '.join(f'{s:g}' for s in sigmas)
  vote_sigma = f'{_vote_sigma(sigmas):g}'
  print(
      f'fold      row     | MPJPE (mm) at sigma = {sigma_list} | flipped | changes/100 | hinges wrong'
      f' | bone signs right | sign changes/100 | MPJPE, signs voted over sigma = {vote_sigma}'
  )
  table: dict[str, list[dict]] = {}
  for fold in folds:
    for row in _ROWS.value:
      path = os.path.join(root, fold, row)
      if not os.path.isdir(path):
        continue
      r = study_row(path, sigmas)
      table.setdefault(row, []).append(r)
      print(
          f'{fold:<9} {row:<7} | '
          + ', '.join(f'{r["mpjpe"][s]:.1f}' for s in sigmas)
          + f' | {r["flipped"]:.2f} | {r["flip_changes"]:.1f} | {r["wrong_hinges"]:.2f}'
          + f' | {r["signs_right"]:.3f} | {r["sign_changes"]:.2f} | {r["sign_vote"]:.1f}'
      )
  for row, rs in table.items():
    mean = {s: np.mean([r['mpjpe'][s] for r in rs]) for s in sigmas}
    print(
        f'{"mean":<9} {row:<7} | '
        + ', '.join(f'{mean[s]:.1f}' for s in sigmas)
        + f' | {np.mean([r["flipped"] for r in rs]):.2f} | {np.mean([r["flip_changes"] for r in rs]):.1f}'
        + f' | {np.mean([r["wrong_hinges"] for r in rs]):.2f}'
        + f' | {np.mean([r["signs_right"] for r in rs]):.3f} | {np.mean([r["sign_changes"] for r in rs]):.2f}'
        + f' | {np.mean([r["sign_vote"] for r in rs]):.1f}'
    )


if __name__ == '__main__':
  loop.run_cli(main, config_flags=())
