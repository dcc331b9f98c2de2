"""The student's trainer: ``train_and_evaluate(config, workdir)``.

Everything it shares lives in public modules: the objective and the step in
:mod:`nrsfm_jax.objective`, the optimiser in :mod:`nrsfm_jax.optim`, the loop
in :mod:`nrsfm_jax.loop`, data in :func:`nrsfm_jax.data.make_datasets`, and
prediction and scoring in :mod:`nrsfm_jax.scoring`. This module is imported by
``experiments/train.py``, the ablation and the tests.
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils

from nrsfm_jax import checkpoint as ckpt_lib
from nrsfm_jax import configs, geometry, loop, losses, metrics, models, objective, optim, plotting, runs, scoring
from nrsfm_jax import data as data_lib
from nrsfm_jax.models import Student

Array = jax.Array


def create_state(
    config: ml_collections.ConfigDict,
    num_points: int,
    window: int,
    key: Array,
    tx: optax.GradientTransformation | None = None,
) -> tuple[Student, objective.TrainState]:
  """Initialises the Student from ``config.model`` and its TrainState."""
  model = models.from_config('student', config.model, num_points)
  dummy = (jnp.zeros((1, window, num_points, 2)), jnp.ones((1, window, num_points)), jnp.ones((1, window)))
  # Jitted: an eager init compiles every op separately (~2x slower on CPU).
  params = jax.jit(functools.partial(model.init, method=Student.init_all))(key, *dummy)
  tx = tx if tx is not None else optim.make_optimizer(config, 1, 1)
  return model, objective.TrainState.create(apply_fn=model.apply, params=params, tx=tx)


def init_params_from(workdir: str, params, scale: float, log: Callable[[str], None] = print):
  """``params`` with every leaf that a trained run in ``workdir`` also has (same path and shape) taken from it.

  Stacks training stages: e.g. the refiner rows start from the lifter row
  (the TCN's output layer starts at zero, so the stacked model starts as
  exactly the lifter). The optimiser state and step start afresh; a resumed
  run's own checkpoint takes precedence over this.

  Raises:
    ValueError: the run was trained at another 2D scale (other data), or it
      shares no parameter with this model.
  """
  _, _, source, meta = runs.load_run(workdir)
  if not np.isclose(float(meta['scale']), scale, rtol=1e-5):
    raise ValueError(
        f'train.init_from={workdir} was trained at 2D scale {float(meta["scale"]):.6g}, this data has {scale:.6g}.'
    )
  merged, taken = ckpt_lib.merge_params(
      params, ckpt_lib.flatten_params(source), source=f'train.init_from={workdir}', strict=False
  )
  if not taken:
    raise ValueError(f'train.init_from={workdir}: no parameter of this model matches that run.')
  flat = ckpt_lib.flatten_params(params)
  fresh = sorted({k.split('/')[1] for k in flat if k not in taken})
  log(
      f'initialised {len(taken)} of {len(flat)} parameter arrays from {workdir} (step {meta["step"]}); '
      f'new: {", ".join(fresh) or "none"}'
  )
  return merged


def per_window_inputs(lcfg: objective.LossConfig, dataset: data_lib.WindowDataset) -> dict[str, np.ndarray]:
  """The 2D-derived ``[N, ...]`` arrays that ``lcfg``'s terms read from a batch besides the 2D.

  Today: ``bone_lengths`` ``[N, E]`` (:func:`data.sequence_bone_lengths`) when the bones term
  weighs target lengths (``loss.terms.bones.lengths > 0``). Nothing here reads 3D.
  """
  term = lcfg.term('bones')
  if term is None or not term.weight or not float(term.get('lengths', 0.0)):
    return {}
  quantile, by = float(term.get('length_quantile', 0.99)), term.get('length_by', 'view')
  return {'bone_lengths': data_lib.sequence_bone_lengths(dataset, term.get('bones', ()), quantile=quantile, by=by)}


def _teacher_targets(config, lcfg: objective.LossConfig, train_ds, log: Callable[[str], None]):
  """:func:`_raw_teacher_targets`, then (``train.pseudo3d_projection='eval'``) put through this
  row's own test-time treatment (:func:`scoring.as_evaluated`), then (``train.pseudo3d_hinge_filter``
  ``'limbs'`` or ``'frames'``) the limbs, or frames, whose knee or elbow bends against the rest of
  its target frame weighed 0 (:func:`teacher.hinge_weights`, on ``loss.terms.hinges.hinges``), then
  smoothed over time by ``train.pseudo3d_sigma`` frames when it is > 0."""
  pseudo, weight = _raw_teacher_targets(config, lcfg, train_ds, log)
  mode = config.train.get('pseudo3d_projection', 'none')
  if mode not in configs.PSEUDO3D_PROJECTIONS:
    raise ValueError(f'train.pseudo3d_projection must be one of {configs.PSEUDO3D_PROJECTIONS}, got {mode!r}.')
  if pseudo is not None and mode == 'eval':
    pseudo = scoring.as_evaluated(config, pseudo, train_ds)
    projection = scoring.projection_options(config)
    log(
        'teacher targets as this row is evaluated: '
        + ('observed x, y' if config.model.get('observed_xy', True) else "the targets' own x, y")
        + (f', bone projection {projection["mode"]} (gain {projection["gain"]:g})' if projection else '')
    )
  hinge_filter = config.train.get('pseudo3d_hinge_filter', 'none')
  if pseudo is not None and hinge_filter != 'none':
    from nrsfm_jax import teacher  # pylint: disable=g-import-not-at-top  (teacher builds on this module's peers)

    kept = teacher.hinge_weights(
        pseudo,
        train_ds.mask,
        config.loss.terms.hinges.hinges,
        hinge_filter,
        setting='train.pseudo3d_hinge_filter',
        hinges_key='loss.terms.hinges.hinges',
    )
    weight = kept if weight is None else np.asarray(weight, np.float32) * kept
    visible = np.asarray(train_ds.mask)[..., None] > 0
    log(
        f'teacher targets: train.pseudo3d_hinge_filter={hinge_filter!r} keeps '
        f'{100 * float(np.mean(kept[np.broadcast_to(visible, kept.shape)])):.1f}% of the target joints '
        '(knees and elbows bent against their frame left out; no 3D read)'
    )
  sigma = float(config.train.get('pseudo3d_sigma', 0.0))
  if pseudo is not None and sigma > 0:
    pseudo = np.asarray(geometry.smooth_over_time(pseudo, sigma, train_ds.mask), np.float32)
    log(f'teacher targets smoothed over time: Gaussian, sigma = {sigma:g} frames')
  return pseudo, weight


def _raw_teacher_targets(config, lcfg: objective.LossConfig, train_ds, log: Callable[[str], None]):
  """``(pseudo3d [N, L, P, 3] | None, per-joint weights [N, L, P] | None)`` for the teacher term.

  ``train.pseudo3d`` is a teacher's cached ``.npz``, or a student run's workdir: then the
  targets are that run's own reconstructions of the training windows (an anchor, e.g. the
  stacked ablation's stage 1 keeping stage 2 near it).

  The weights are :func:`losses.spread_confidence` of the hypotheses' spread
  with ``τ = loss.terms.teacher.confidence_scale`` × the median spread over the
  training set's visible joints (so the setting carries across datasets and
  units); ``confidence_scale = 0`` (default) weighs every joint alike.
  """
  if not config.train.pseudo3d:
    if lcfg.weight('teacher'):
      log('note: loss.terms.teacher.weight > 0 but train.pseudo3d is empty: the teacher term is off.')
    return None, None
  term = lcfg.term('teacher')
  c = float(term.get('confidence_scale', 0.0)) if term is not None else 0.0
  if c < 0:
    raise ValueError(f'loss.terms.teacher.confidence_scale must be >= 0, got {c}.')
  if os.path.isdir(config.train.pseudo3d):  # A run: its own reconstructions anchor this one.
    from nrsfm_jax import teacher  # pylint: disable=g-import-not-at-top  (teacher builds on this module's peers)

    if c:
      raise ValueError('loss.terms.teacher.confidence_scale needs hypotheses; train.pseudo3d is a run, not a teacher.')
    return teacher.reconstruction_targets(config.train.pseudo3d, train_ds, resolve_flips=False, log=log), None
  if not c:
    return data_lib.load_pseudo3d(config.train.pseudo3d, train_ds), None
  pseudo, spread = data_lib.load_pseudo3d(config.train.pseudo3d, train_ds, spread=True)
  visible = (train_ds.visibility * train_ds.mask[..., None]) > 0
  tau = c * float(np.median(spread[visible])) + 1e-12
  weight = np.asarray(losses.spread_confidence(spread, tau), np.float32)
  log(
      f'teacher confidence: τ = {tau:.4g} ({c:g} × median spread); mean joint weight '
      f'{float(weight[visible].mean()):.3f}'
  )
  return pseudo, weight


# Windows of the training set that score a run for :func:`selection_objective` (evenly spaced).
SELECTION_WINDOWS = 8192

# Module-level jit keyed on the (hashable) model and loss config, so scoring several runs of one
# config (restarts, folds) compiles once.
_selection_loss = jax.jit(objective.compute_loss, static_argnames=('apply_fn', 'cfg', 'axis_name'))


def selection_objective(
    config: ml_collections.ConfigDict,
    apply_fn: Callable,
    params,
    train_ds: data_lib.WindowDataset,
    *,
    max_windows: int = SELECTION_WINDOWS,
) -> dict[str, float]:
  """The training objective of ``params`` on a fixed subset of the training windows; ``{term: mean, 'total': ...}``.

  Uses nothing but the training 2D: every term of ``config.loss`` that needs no
  teacher targets (the teacher term is left out), on up to ``max_windows``
  evenly spaced training windows in batches of ``config.train.batch_size``,
  with a fixed key (the same random rotations for every run scored). Runs of
  one config that differ only in their seed are therefore compared on the
  same data and the same draws: this is what ``train.restarts`` keeps the
  lowest of.

  Args:
    config: the run's config (its ``loss`` and ``train.batch_size``).
    apply_fn: ``Student.apply``.
    params: the run's variables.
    train_ds: the training windows (``[N, L, P, 2]`` keypoints, ...).
    max_windows: at most this many windows are scored.

  Returns:
    Every scored term's mean over the batches, and ``total`` (Σ weight · term).
  """
  lcfg = objective.loss_config(config)
  n = train_ds.num_windows
  batch = min(int(config.train.batch_size), n)
  count = max(batch, min(n, int(max_windows)) // batch * batch)
  indices = np.linspace(0, n - 1, count).round().astype(np.int64).reshape(-1, batch)
  extra = per_window_inputs(lcfg, train_ds)
  totals: dict[str, float] = {}
  for i, idx in enumerate(indices):
    full = train_ds.take(idx)
    b = {k: jnp.asarray(full[k]) for k in ('keypoints', 'visibility', 'mask')}
    b.update({k: jnp.asarray(v[idx]) for k, v in extra.items()})
    _, (m, _) = _selection_loss(params, apply_fn=apply_fn, batch=b, key=jax.random.PRNGKey(i), cfg=lcfg)
    for k, v in jax.device_get(m).items():
      totals[k] = totals.get(k, 0.0) + float(v) / len(indices)
  return totals


def select_restart(entries: list[dict[str, Any]], selection: str = 'objective') -> dict[str, Any]:
  """The restart ``train.restarts`` keeps, of ``entries``.

  Each entry: ``{'objective': {'total': ...}, 'hinge_disagreement': ...}`` (``restarts.json``'s).

  ``'objective'``: the lowest training objective. ``'hinges'``: the fewest knees and elbows bent
  against the rest of their frame (:func:`hinge_disagreement`, rounded to 1e-3 so that runs
  alike on it are told apart by their objective). Neither reads any 3D.
  """
  if selection == 'objective':
    return min(entries, key=lambda e: e['objective']['total'])
  if selection == 'hinges':
    if any('hinge_disagreement' not in e for e in entries):
      raise configs.ConfigError("config.train.selection='hinges': a restart has no hinge_disagreement score.")
    return min(entries, key=lambda e: (round(float(e['hinge_disagreement']), 3), e['objective']['total']))
  raise configs.ConfigError(f'config.train.selection must be one of {configs.SELECTIONS}; got {selection!r}.')


def _hinges_for(config: ml_collections.ConfigDict, num_points: int) -> tuple[tuple[int, ...], ...]:
  """``config.loss.terms.hinges.hinges``; a config error unless they index ``num_points`` points."""
  return configs.hinge_indices(
      config.loss.terms.get('hinges', {}).get('hinges', ()),
      num_points,
      key='loss.terms.hinges.hinges',
      user="train.selection='hinges'",
      fix="train.selection='objective'",
  )


def _hinges_apply(config: ml_collections.ConfigDict, train_ds: data_lib.WindowDataset) -> bool:
  """Whether the config's hinges index this data's points (scored whenever they do; required by 'hinges')."""
  try:
    _hinges_for(config, train_ds.num_points)
  except configs.ConfigError:
    return False
  return True


def _selection_summary(entry: dict[str, Any]) -> str:
  text = f'training objective {entry["objective"]["total"]:.5g}'
  if 'hinge_disagreement' in entry:
    text += f', hinges against their frame {entry["hinge_disagreement"]:.4f}'
  return text


def hinge_disagreement(
    config: ml_collections.ConfigDict,
    apply_fn: Callable,
    params,
    train_ds: data_lib.WindowDataset,
    *,
    max_frames: int = SELECTION_WINDOWS,
) -> float:
  """How often a run's test-time 3D bends a knee or an elbow against the rest of its frame.

  The run's ``reconstruction`` (observed x, y, its depth) of up to ``max_frames`` real frames
  of evenly spaced training windows; per frame, the fraction of the hinges
  (``config.loss.terms.hinges.hinges``, :func:`losses.hinge_bend`) whose bend has the minority
  sign (:func:`metrics.hinge_minority`). A whole-body mirror image, which the 2D cannot tell
  from the body, flips every bend and changes nothing; a limb mirrored against the rest of the
  body, which the 2D cannot tell either, counts. Only the training 2D is read, and which way
  human knees and elbows bend.

  Returns:
    The mean over frames, in ``[0, 0.5]`` (0: every frame's hinges agree).
  """
  hinges = _hinges_for(config, train_ds.num_points)
  n = train_ds.num_windows
  count = max(1, min(n, int(max_frames) // train_ds.window_length))
  indices = np.unique(np.linspace(0, n - 1, count).round().astype(np.int64))
  batch = max(1, int(config.train.eval_batch_size))
  total, frames = 0.0, 0.0
  for start in range(0, len(indices), batch):
    b = train_ds.take(indices[start : start + batch])
    out = scoring.forward(params, b['keypoints'], b['visibility'], b['mask'], apply_fn=apply_fn, key='reconstruction')
    minority = np.asarray(metrics.hinge_minority(out, hinges))  # [B, L]
    real = b['mask'] > 0
    total += float(minority[real].sum())
    frames += float(real.sum())
  return total / max(frames, 1.0)


def _copy_run(source: str, target: str) -> None:
  """Copies ``source``'s checkpoints and metrics into ``target`` (replacing them), atomically per folder."""
  for name in ('checkpoints', 'metrics.jsonl'):
    src, dst = os.path.join(source, name), os.path.join(target, name)
    if not os.path.exists(src):
      continue
    tmp = dst + '.tmp'
    shutil.rmtree(tmp, ignore_errors=True)
    if os.path.isdir(src):
      shutil.copytree(src, tmp)
    else:
      shutil.copyfile(src, tmp)
    if os.path.isdir(dst):
      shutil.rmtree(dst)
    os.replace(tmp, dst)


def _train_restarts(
    config: ml_collections.ConfigDict, workdir: str, *, log: Callable[[str], None], evaluate: bool
) -> dict[str, Any]:
  """``train.restarts = R > 1``: R seeds, and the run keeps the most plausible one on the training 2D.

  Restart ``k`` is the same config with ``seed + k``, trained (and resumed) in
  ``<workdir>/restarts/seed_<seed + k>``. Each is scored by
  :func:`selection_objective` and :func:`hinge_disagreement`, which read the training 2D
  alone; ``train.selection`` says which one decides (:func:`select_restart`), and the chosen
  run's checkpoints and metrics are copied into ``workdir``, so the run
  reads like any other (``runs.load_run``, ``train.init_from``). The held-out
  scores of every restart are written to ``restarts.json`` for reporting; the
  choice never reads them.
  """
  restarts = int(config.train.restarts)
  summary_path = os.path.join(workdir, 'restarts.json')
  train_ds, eval_ds = data_lib.make_datasets(config)
  selection = str(config.train.get('selection', 'objective'))
  if selection == 'hinges':
    _hinges_for(config, train_ds.num_points)  # Said before any training, not after the first restart.
  entries = []
  for k in range(restarts):
    sub = ml_collections.ConfigDict(config.to_dict())
    sub.seed = int(config.seed) + k
    sub.train.restarts = 1
    sub_dir = os.path.join(workdir, 'restarts', f'seed_{sub.seed}')
    log(f'--- restart {k + 1}/{restarts}: seed {sub.seed} in {sub_dir} ---')
    held_out = train_and_evaluate(sub, sub_dir, log=log, evaluate=evaluate)
    _, model, params, _ = runs.load_run(sub_dir)
    score = selection_objective(config, model.apply, params, train_ds)
    entry = {'seed': sub.seed, 'workdir': sub_dir, 'objective': score}
    if _hinges_apply(config, train_ds):
      entry['hinge_disagreement'] = hinge_disagreement(config, model.apply, params, train_ds)
    log(f"restart seed {sub.seed}: {_selection_summary(entry)} (on {train_ds.num_windows} windows' 2D)")
    if held_out:
      entry['eval_overall'] = held_out['overall']
    entries.append(entry)
  best = select_restart(entries, selection)
  _copy_run(best['workdir'], workdir)
  loop.write_json_atomic(
      summary_path,
      {
          'chosen_seed': best['seed'],
          'criterion': f'train.selection={selection!r} (train.select_restart; the training 2D only)',
          'restarts': entries,
      },
  )
  log(
      f'restarts: kept seed {best["seed"]} by {selection} ('
      + '; '.join(f'seed {e["seed"]}: {_selection_summary(e)}' for e in entries)
      + ')'
  )
  if not evaluate:
    return {}
  _, model, params, meta = runs.load_run(workdir)
  result = scoring.evaluate_and_save(config, workdir, model.apply, params, eval_ds, log=log)
  return _record_final(workdir, int(meta['step']), result, log, plot=config.train.plot)


@loop.holds_workdir
def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, log: Callable[[str], None] = print, evaluate: bool = True
) -> dict[str, Any]:
  """Trains the student from ``config`` in ``workdir`` (resuming if it holds a checkpoint), then evaluates.

  Writes ``config.json``, ``metrics.jsonl`` (loss terms every ``log_every``
  steps), orbax checkpoints under ``checkpoints/``, ``eval.json`` and
  ``eval_predictions.npz`` (per-sequence camera-frame 3D in data units).

  Returns:
    :func:`scoring.score`'s result on the eval split (``{}`` for 2D-only data,
    or with ``evaluate=False``, which stops after training).

  With ``train.restarts = R > 1`` it trains R seeds and keeps the one with the
  lowest training objective (:func:`_train_restarts`).
  """
  os.makedirs(workdir, exist_ok=True)
  configs.validate(config)
  if loop.is_primary():
    loop.save_config(workdir, config, log)
  if int(config.train.get('restarts', 1)) > 1:
    if config.train.get('distributed', False):
      raise configs.ConfigError('config.train.restarts > 1 with train.distributed: run the seeds as separate jobs.')
    return _train_restarts(config, workdir, log=log, evaluate=evaluate)
  t_start = time.time()
  train_ds, eval_ds = data_lib.make_datasets(config)
  batch_size = config.train.batch_size
  spe = data_lib.steps_per_epoch(train_ds.num_windows, batch_size)
  num_steps = config.train.num_epochs * spe if config.train.num_epochs else config.train.num_steps
  log(
      f'data: {config.data.name}: {train_ds.num_windows} train windows of {train_ds.window_length} '
      f'frames ({len(train_ds.names)} sequences), {eval_ds.num_windows} eval windows; '
      f'2D scale {train_ds.scale:.4g}; {spe} steps/epoch, {num_steps} steps'
  )

  tx = optim.make_optimizer(config, num_steps, spe)
  init_key, loop_key = jax.random.split(jax.random.PRNGKey(config.seed))
  model, state = create_state(config, train_ds.num_points, train_ds.window_length, init_key, tx)
  if config.train.get('init_from', ''):
    state = state.replace(params=init_params_from(config.train.init_from, state.params, train_ds.scale, log))
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), config.train.max_checkpoints)
  state, old_meta = ckpt.restore(state, log=log)
  meta = {'seed': int(config.seed), 'scale': float(train_ds.scale), 'num_points': int(train_ds.num_points)}
  loop.check_resume(ckpt.directory, old_meta, meta, ('seed', 'scale'), what='a run')
  if old_meta is not None:
    log(f'resuming from the checkpoint at step {int(state.step)} in {ckpt.directory}')

  lcfg = objective.loss_config(config)
  pseudo, pseudo_weight = _teacher_targets(config, lcfg, train_ds, log)
  if lcfg.weight('teacher') and pseudo is None:
    log('note: loss.terms.teacher.weight > 0 but train.pseudo3d is empty: the teacher term is off.')
  mode = objective.choose_parallel(config.train.parallel, batch_size)
  multi_process = jax.process_count() > 1  # config.train.distributed: the global mesh of every process
  cpu_dots = config.train.get('cpu_dots', 'ynn')
  if mode == 'pmap' and cpu_dots != 'ynn':
    log(f"note: train.cpu_dots={cpu_dots!r} applies to the jit and shard_map steps, not to pmap's.")
  step_fn = objective.make_step(
      lcfg,
      mode,
      devices=jax.devices() if multi_process else None,
      compiler_options=loop.cpu_compiler_options(cpu_dots),
  )
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  log(
      f'model: {n_params:,} parameters, receptive field {model.config.receptive_field} frames; '
      f'parallel={mode} on {step_fn.num_devices} {jax.default_backend()} device(s)'
      + (f'; CPU dots: {cpu_dots}' if cpu_dots != 'ynn' else '')
  )

  batch_fn = loop.window_batches(
      train_ds,
      batch_size,
      config.seed,
      process=(jax.process_index(), jax.process_count()),
      pseudo3d=pseudo,
      pseudo3d_weight=pseudo_weight,
      **per_window_inputs(lcfg, train_ds),
  )

  def progress(m, rate):
    terms = ' '.join(f'{k}={float(m[k]):.4g}' for k in objective.LOSS_TERMS + ('total',) if k in m)
    return f', {rate * batch_size * train_ds.window_length:,.0f} frames/s | {terms}'

  protocol = data_lib.protocol_of(config.data)
  evaluate_fn = None
  if evaluate and loop.is_primary() and eval_ds.points3d is not None and protocol is not None:

    def evaluate_fn(plain_state):
      # Host parameters: with several processes the state spans them all, and only process 0 scores.
      params = jax.device_get(plain_state.params)
      pred = scoring.predict(
          model.apply,
          params,
          eval_ds,
          batch_size=config.train.eval_batch_size,
          projection=scoring.projection_options(config),
          context=scoring.eval_context(config),
      )
      return scoring.score(pred * eval_ds.scale, eval_ds, protocol=protocol)['overall']

  dstate = loop.run_loop(
      step_fn.prepare(state),
      lambda s, b: step_fn(s, b, loop_key),
      batch_fn,
      num_steps=num_steps,
      ckpt=ckpt,
      meta=meta,
      workdir=workdir,
      train_config=config.train,
      log=log,
      finish=step_fn.finish,
      progress=progress,
      evaluate=evaluate_fn,
  )
  state = step_fn.finish(dstate)
  log(f'training done in {loop.format_duration(time.time() - t_start)}')
  if multi_process and not (evaluate and loop.is_primary()):
    # Wait for process 0's evaluation: leaving now would start jax.distributed's shutdown, whose
    # barrier gives up after 5 minutes.
    multihost_utils.sync_global_devices('nrsfm_jax: evaluated')
  if not evaluate or not loop.is_primary():
    return {}
  params = jax.device_get(state.params)
  result = scoring.evaluate_and_save(config, workdir, model.apply, params, eval_ds, log=log)
  result = _record_final(workdir, int(state.step), result, log, plot=config.train.plot)
  if multi_process:
    multihost_utils.sync_global_devices('nrsfm_jax: evaluated')
  return result


def _record_final(
    workdir: str, step: int, result: dict[str, Any], log: Callable[[str], None], *, plot: bool = True
) -> dict[str, Any]:
  """Appends the final evaluation to ``metrics.jsonl`` (as ``eval/<metric>``) and draws ``training.png``."""
  if result:
    loop.MetricWriter(workdir).write(step, {f'eval/{k}': v for k, v in result['overall'].items()})
  if plot:
    plotting.try_plot_training(workdir, log)
  return result
