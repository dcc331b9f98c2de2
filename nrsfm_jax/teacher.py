"""The diffusion teacher (eqs. 14–16): training, multi-hypothesis inference, cached pseudo-3D.

Two ways to train it (``config.teacher.mode``, see ``configs/teacher.py``):

* ``'supervised'``: on the ground-truth 3D of the training windows (D3DP's and
  the paper's protocol);
* ``'self'``: on a trained student's reconstructions of the same windows
  (:func:`reconstruction_targets`), as the student makes them or (``teacher.resolve_flips``)
  depth-flip-resolved against its mean shape (:func:`geometry.resolve_flip_by_reference`);
  no 3D is used anywhere.

Either mode can show a share of its training windows from random cameras
(``teacher.novel_views``, :func:`novel_views`: the target turned, the 2D re-projected).

Targets are root-relative camera-frame 3D in *normalised* units (data units
divided by the training 2D scale), the frame and units of the student's output.
The teacher's pseudo-3D for the student's training windows is computed once
and cached under ``<teacher workdir>/pseudo3d/<key>.npz``, the key hashing the
teacher's parameters, the windows and the sampling settings
(:func:`generate_pseudo3d`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from nrsfm_jax import checkpoint as ckpt_lib
from nrsfm_jax import (
    classic,
    configs,
    diffusion,
    geometry,
    loop,
    losses,
    metrics,
    models,
    objective,
    optim,
    plotting,
    runs,
    scoring,
)
from nrsfm_jax import data as data_lib
from nrsfm_jax.models import Denoiser, Student

Array = jax.Array

MODES = ('supervised', 'self')


def schedule_of(config: ml_collections.ConfigDict) -> diffusion.Schedule:
  return diffusion.make_schedule(config.diffusion.schedule, config.diffusion.num_timesteps)


# ----------------------------------------------------------------------------
# Targets.
# ----------------------------------------------------------------------------


def supervised_targets(dataset: data_lib.WindowDataset) -> np.ndarray:
  """Ground-truth targets: root-relative ``points3d / scale``, ``[N, L, P, 3]`` float32."""
  if dataset.points3d is None:
    raise ValueError(
        "teacher.mode='supervised' needs ground-truth 3D; these windows have none " "(use teacher.mode='self')."
    )
  return np.asarray(geometry.root_relative(dataset.points3d / dataset.scale), np.float32)


def reconstruction_targets(
    student_workdir: str,
    dataset: data_lib.WindowDataset,
    *,
    resolve_flips: bool = True,
    as_evaluated: bool = False,
    log: Callable[[str], None] = print,
) -> np.ndarray:
  """A trained student's root-relative reconstructions of ``dataset``'s windows: ``[N, L, P, 3]``.

  Args:
    student_workdir: the student run.
    dataset: windows normalised at that run's 2D scale.
    resolve_flips: depth-flip each frame to the handedness of the student's mean shape
      (:func:`geometry.resolve_flip_by_reference`; the self-mode teacher's targets). Off: the
      reconstructions as the student makes them (``train.pseudo3d`` set to a run's workdir).
    as_evaluated: put them through the student's own test-time treatment first
      (:func:`scoring.as_evaluated` with its config: the observed x, y, then its test-time bone
      projection), so the targets are what the student is scored as.
    log: progress sink.

  Raises:
    ValueError: no workdir given, or the student was trained at another 2D scale (other data).
  """
  if not student_workdir:
    raise ValueError("teacher.mode='self' needs teacher.student_workdir (a workdir of experiments/train.py).")
  student_config, model, params, meta = runs.load_run(student_workdir)
  if not np.isclose(float(meta['scale']), dataset.scale, rtol=1e-6):
    raise ValueError(
        f'{student_workdir} was trained at 2D scale {meta["scale"]:.6g}, these windows have '
        f"{dataset.scale:.6g}: the teacher must use the student's data config."
    )
  points = scoring.predict(model.apply, params, dataset, context=scoring.eval_context(student_config))
  if as_evaluated:
    points = scoring.as_evaluated(student_config, points, dataset)
    projection = scoring.projection_options(student_config)
    log(
        f'targets as {student_workdir} is evaluated'
        + (f': bone projection {projection["mode"]} (gain {projection["gain"]:g})' if projection else '')
    )
  if resolve_flips:
    reference = model.apply(params, method=Student.mean_shape)
    resolved = jax.jit(geometry.resolve_flip_by_reference)(points, reference, mask=dataset.visibility)
    flipped = float(np.mean(np.any(np.asarray(resolved) != points, axis=(-1, -2))[dataset.mask > 0]))
    log(
        f'self targets: {student_workdir} (step {meta["step"]}); {100 * flipped:.1f}% of frames '
        "depth-flipped to the mean shape's handedness"
    )
    points = resolved
  else:
    log(f'targets: the reconstructions of {student_workdir} (step {meta["step"]}), as it makes them')
  return np.asarray(geometry.root_relative(points), np.float32)


def hinge_weights(
    targets: np.ndarray,
    mask: np.ndarray,
    hinges,
    mode: str,
    *,
    setting: str = 'teacher.hinge_filter',
    hinges_key: str = 'teacher.hinges',
) -> np.ndarray | None:
  """Per-joint weights of the denoising loss that leave out limbs mirrored against their frame.

  A knee or elbow bending against the rest of its frame (:func:`metrics.hinge_outliers`) is a
  limb whose depth the targets' maker read the wrong way (the 2D cannot tell it from the right
  one; on the true 3D of the bundled subjects the four hinges agree on 69–99% of the frames).
  No 3D is read.

  Args:
    targets: ``[N, L, P, 3]`` self-mode targets.
    mask: ``[N, L]`` the windows' frame mask.
    hinges: ``(a, b, c, l, r)`` joint indices (``data.CMU_HINGES``).
    mode: ``'none'`` (None: every joint counts), ``'frames'`` (a frame with any such hinge
      is left out) or ``'limbs'`` (only each such hinge's ``b`` and ``c`` joints: the knee and
      foot, or elbow and wrist).
    setting, hinges_key: the config keys errors name (a student's ``train.pseudo3d_hinge_filter``
      and ``loss.terms.hinges.hinges`` use the same weights).

  Returns:
    ``[N, L, P]`` float32 weights in {0, 1}, or None for ``'none'``.

  Raises:
    configs.ConfigError: an unknown mode, or hinges that do not index ``P`` points.
  """
  if mode not in configs.HINGE_FILTERS:
    raise configs.ConfigError(f'config.{setting} must be one of {configs.HINGE_FILTERS}; got {mode!r}.')
  if mode == 'none':
    return None
  hinges = configs.hinge_indices(
      hinges, targets.shape[-2], key=hinges_key, user=f'{setting}={mode!r}', fix=f"{setting}='none'"
  )
  out = np.asarray(jax.jit(metrics.hinge_outliers, static_argnums=1)(jnp.asarray(targets), hinges))  # [N, L, H]
  weights = np.ones(targets.shape[:-1], np.float32)
  if mode == 'frames':
    weights *= ~np.any(out, -1, keepdims=True)
  else:
    for h, (_, b, c, _, _) in enumerate(hinges):
      weights[..., b] *= ~out[..., h]
      weights[..., c] *= ~out[..., h]
  return weights * (np.asarray(mask)[..., None] > 0)


# A classic reconstruction of a training sequence counts as a body (:func:`classic_targets`) when
# this share of its (frame, hinge) pairs bend the anatomical way, after its depth sign is chosen
# by the same vote. Fixed a priori (knees and elbows bend one way; a solution that has them bend
# both ways in more than a tenth of the pairs has not found the body's depth), not tuned on 3D.
CLASSIC_AGREEMENT = 0.9


def hinge_agreement(points: np.ndarray, visibility: np.ndarray, hinges) -> float:
  """Share of the (frame, hinge) pairs of ``points [F, P, 3]`` that bend the anatomical way.

  Only pairs whose five joints are all visible (``visibility [F, P]``) count; NaN if none does.
  A depth flip turns the share ``a`` into ``1 − a`` (:func:`losses.hinge_bend` changes sign).
  """
  idx = np.asarray(hinges, np.int64)
  bend = np.asarray(losses.hinge_bend(jnp.asarray(points, jnp.float32), tuple(map(tuple, idx))))  # [F, H]
  seen = np.all(np.asarray(visibility)[:, idx] > 0, -1)  # [F, H]
  return float(np.mean(bend[seen] > 0)) if seen.any() else float('nan')


def classic_targets(
    dataset: data_lib.WindowDataset,
    solver: str,
    hinges,
    *,
    agreement: float = CLASSIC_AGREEMENT,
    cache_dir: str | None = None,
    log: Callable[[str], None] = print,
) -> tuple[np.ndarray, np.ndarray, dict[str, dict[str, Any]]]:
  """A classic NRSfM solver's reconstruction of every training sequence, and which look like a body.

  Each (sequence, view) of ``dataset`` is put back together whole (:func:`data.reassemble`) and
  solved from its 2D alone by :func:`classic.fit` (``solver``). Its depth sign is the one under
  which most of its knees and elbows bend the anatomical way (:func:`hinge_agreement`), and it
  *passes* when that share reaches ``agreement``. On sequences where the body barely turns
  before the fixed camera the classic solvers cannot recover the depth, and their hinges then
  bend both ways; no 3D is read.

  Args:
    dataset: training windows (normalised 2D).
    solver: one of :data:`classic.SOLVERS`.
    hinges: ``(a, b, c, l, r)`` joint indices (``data.CMU_HINGES``).
    agreement: the share a sequence needs to pass.
    cache_dir: where each (sequence, view) solution is kept in the data's units with the 2D it
      was fitted to (``<name>_v<view>.npz``), reused when the 2D is the same (folds of a
      cross-subject run share them); None: no cache.
    log: progress sink.

  Returns:
    ``(targets [N, L, P, 3], passed [N], info)``: root-relative targets in normalised units,
    whether each window's sequence passed, and per ``'<name>/<view>'`` its share, sign and
    frame count.
  """
  if solver not in classic.SOLVERS:
    raise ValueError(f'unknown classic solver {solver!r}; expected one of {classic.SOLVERS}.')
  if not 0.5 <= agreement <= 1.0:
    raise ValueError(f'agreement must be in [0.5, 1], got {agreement}.')
  hinges = configs.hinge_indices(
      hinges,
      dataset.num_points,
      key='loss.terms.hinges.hinges',
      user="classic anchor's depth sign",
      fix='loss.terms.hinges.hinges for this skeleton, or keep the lifter row as the anchor',
  )
  tracks = data_lib.reassemble(dataset, dataset.keypoints * dataset.scale)
  visibility = data_lib.reassemble(dataset, dataset.visibility)
  solutions, info = {}, {}
  t0, last_length = time.time(), -1
  for i, ((name, view), kp) in enumerate(sorted(tracks.items())):
    vis = visibility[(name, view)]
    path = os.path.join(cache_dir, f'{name}_v{view}.npz') if cache_dir else None
    points = None
    if path and os.path.exists(path):
      with np.load(path) as f:
        # The same 2D to float precision: each fold normalises by its own scale, so the tracks
        # come back from ``keypoints * scale`` a few ulps apart.
        same = f['tracks'].shape == kp.shape and np.array_equal(f['visibility'], vis)
        if same and np.allclose(f['tracks'], kp, rtol=1e-5, atol=1e-5 * float(np.abs(kp).max())):
          points = f['points']
    if points is None:
      if len(kp) != last_length:
        # Each new length compiles every candidate afresh; over a few hundred sequences the kept
        # executables exhausted the process's memory maps ("LLVM compilation error: Cannot
        # allocate memory" after 120 of 144 sequences of the bundled cmu17), so they are dropped.
        jax.clear_caches()
        last_length = len(kp)
      points = np.asarray(classic.fit(solver, jnp.asarray(kp), jnp.asarray(vis))[0].points, np.float32)
      if path:
        os.makedirs(cache_dir, exist_ok=True)
        np.savez(path + '.tmp.npz', tracks=kp, visibility=vis, points=points)
        os.replace(path + '.tmp.npz', path)
    share = hinge_agreement(points, vis, hinges)
    flipped = bool(share < 0.5)
    if flipped:
      points = np.asarray(geometry.flip_depth(points), np.float32)
      share = 1.0 - share
    passed = bool(share >= agreement)
    solutions[(name, view)] = points / dataset.scale
    info[f'{name}/{view}'] = dict(agreement=round(share, 4), passed=passed, flipped=flipped, frames=len(kp))
    if (i + 1) % 20 == 0 or i + 1 == len(tracks):
      log(f'classic {solver}: {i + 1}/{len(tracks)} sequences and views ({time.time() - t0:.0f} s)')
  targets = data_lib.rewindow(dataset, solutions)
  passed = np.asarray(
      [info[f'{dataset.names[s]}/{int(v)}']['passed'] for s, v in zip(dataset.sequence_ids, dataset.view_ids)]
  )
  frames = sum(d['frames'] for d in info.values())
  kept = sum(d['frames'] for d in info.values() if d['passed'])
  log(
      f'classic {solver} targets: {sum(d["passed"] for d in info.values())} of {len(info)} sequences and views '
      f'pass (hinge agreement >= {agreement:g}): {kept} of {frames} frames'
  )
  return np.asarray(geometry.root_relative(targets), np.float32), passed, info


# ----------------------------------------------------------------------------
# Loss, step, sampling.
# ----------------------------------------------------------------------------


def novel_views(
    batch: dict[str, Array], key: Array, *, prob: float, yaw_deg: float, pitch_deg: float = 0.0
) -> dict[str, Array]:
  """Shows a share of a teacher batch's windows from random cameras (teacher.novel_views).

  Each window, with probability ``prob``, has its ``target`` ``[B, L, P, 3]`` (root-relative,
  camera frame) turned by one rotation ``R = R_x(pitch) R_y(yaw)``, yaw uniform in
  ``±yaw_deg`` about the camera's vertical (y) axis and pitch in ``±pitch_deg``, and its
  ``keypoints`` ``[B, L, P, 2]`` replaced by the turned target's x, y, centred on the visible
  points as the data's 2D is (:func:`data.center_2d`). Visibility, masks and weights are kept.
  Orthographic projection of a rotated 3D is exact, so each new pair is a consistent example of
  lifting from another view (of the student's shapes in self mode).

  Returns:
    The batch with ``target`` and ``keypoints`` replaced (the other windows unchanged).
  """
  x0 = batch['target']
  b = x0.shape[0]
  k_on, k_yaw, k_pitch = jax.random.split(key, 3)
  on = jax.random.uniform(k_on, (b,)) < prob
  yaw = jnp.deg2rad(yaw_deg) * jax.random.uniform(k_yaw, (b,), minval=-1.0, maxval=1.0)
  pitch = jnp.deg2rad(pitch_deg) * jax.random.uniform(k_pitch, (b,), minval=-1.0, maxval=1.0)
  zeros = jnp.zeros_like(yaw)
  rot = geometry.so3_exp(jnp.stack([pitch, zeros, zeros], -1)) @ geometry.so3_exp(jnp.stack([zeros, yaw, zeros], -1))
  rot = jnp.where(on[:, None, None], rot, jnp.eye(3, dtype=rot.dtype))
  turned = jnp.einsum('blpj,bij->blpi', x0, rot.astype(x0.dtype))
  keypoints, _ = data_lib.center_2d(turned[..., :2], batch['visibility'], xp=jnp)
  keypoints = jnp.where(on[:, None, None, None], keypoints, batch['keypoints'])
  return {**batch, 'target': turned, 'keypoints': keypoints.astype(batch['keypoints'].dtype)}


def teacher_loss(
    params, apply_fn: Callable, schedule: diffusion.Schedule, batch: dict[str, Array], key: Array
) -> tuple[Array, dict[str, Array]]:
  """x0 objective on one batch: noise ``target`` at a random t, predict it back (masked MPJPE).

  ``batch['target_weight']`` ``[B, L, P]``, where given, weighs each target joint (times the frame mask).
  """
  x0 = batch['target']
  t_key, n_key = jax.random.split(key)
  t = diffusion.sample_timesteps(t_key, x0.shape[0], schedule.num_timesteps)
  x_t = diffusion.q_sample(schedule, x0, t, jax.random.normal(n_key, x0.shape))
  pred = apply_fn(params, x_t, t, batch['keypoints'], batch['visibility'], batch['mask'])
  weights = jnp.broadcast_to(batch['mask'][..., None], x0.shape[:-1])
  if 'target_weight' in batch:  # [B, L, P]: teacher.hinge_filter's (hinge_weights).
    weights = weights * batch['target_weight']
  loss = losses.masked_mean(*diffusion.x0_loss(pred, x0, mask=weights))
  return loss, {'loss': loss}


@functools.partial(jax.jit, donate_argnums=0, static_argnames=('views',))
def teacher_step(
    state: objective.TrainState,
    batch: dict[str, Array],
    key: Array,
    schedule: diffusion.Schedule,
    views: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> tuple[objective.TrainState, dict[str, Array]]:
  """One jitted optimisation step (noise from ``fold_in(key, step)``); non-finite steps are skipped.

  ``views``: ``(prob, yaw_deg, pitch_deg)`` of :func:`novel_views` (static; ``prob = 0``: off).
  """
  step_key = jax.random.fold_in(key, state.step)
  if views[0] > 0:
    view_key, step_key = jax.random.split(step_key)
    batch = novel_views(batch, view_key, prob=views[0], yaw_deg=views[1], pitch_deg=views[2])
  (_, m), grads = jax.value_and_grad(teacher_loss, has_aux=True)(
      state.params, state.apply_fn, schedule, batch, step_key
  )
  new_state, grad_norm, finite = objective.accept_if_finite(state.apply_gradients(grads=grads), state, m['loss'], grads)
  return new_state, dict(m, grad_norm=grad_norm, finite=finite.astype(jnp.float32))


@functools.partial(jax.jit, static_argnames=('apply_fn', 'num_hypotheses', 'num_steps', 'eta'))
def sample(
    params,
    keypoints: Array,
    visibility: Array,
    mask: Array,
    key: Array,
    schedule: diffusion.Schedule,
    *,
    apply_fn: Callable,
    num_hypotheses: int,
    num_steps: int,
    eta: float = 0.0,
) -> Array:
  """H DDIM hypotheses for a batch of windows: ``[H, B, T, P, 3]`` (normalised, root-relative).

  Args:
    params: denoiser variables.
    keypoints: ``[B, T, P, 2]``; visibility ``[B, T, P]``; mask ``[B, T]``.
    key: sampling key.
    schedule: noise schedule.
    apply_fn: ``Denoiser.apply`` (static).
    num_hypotheses / num_steps / eta: H, K and DDIM's η.
  """
  h = num_hypotheses
  tile = lambda x: jnp.tile(x, (h,) + (1,) * (x.ndim - 1))
  cond = (tile(keypoints), tile(visibility), tile(mask))
  denoise = lambda x, t: apply_fn(params, x, t, *cond)
  shape = keypoints.shape[:-1] + (3,)
  return diffusion.sample_hypotheses(denoise, schedule, key, shape, num_hypotheses=h, num_steps=num_steps, eta=eta)


def predict(
    apply_fn: Callable,
    params,
    schedule: diffusion.Schedule,
    dataset: data_lib.WindowDataset,
    *,
    num_hypotheses: int,
    num_steps: int,
    eta: float = 0.0,
    seed: int = 0,
    batch_size: int = 64,
    aggregations: tuple[str, ...] = ('mean', 'jpma'),
    log: Callable[[str], None] | None = None,
) -> dict[str, np.ndarray]:
  """Aggregated teacher 3D for every window: ``{aggregation: [N, L, P, 3]}`` (normalised units).

  ``aggregations`` are :func:`diffusion.aggregate` methods, and ``'spread'``:
  the hypotheses' per-joint disagreement ``[N, L, P]`` (:func:`diffusion.hypothesis_spread`).

  Window i's hypotheses use ``fold_in(PRNGKey(seed), i)``-derived keys, so the
  result does not depend on ``batch_size`` (fewer windows than that run as one smaller batch:
  :func:`scoring.padded_batches`).
  """
  outs = {a: [] for a in aggregations}
  n = dataset.num_windows
  base = jax.random.PRNGKey(seed)
  t0 = time.time()
  done = 0
  for count, b in scoring.padded_batches(dataset, batch_size):
    hyps = jax.vmap(
        lambda i, kp, vis, m: sample(
            params,
            kp[None],
            vis[None],
            m[None],
            jax.random.fold_in(base, i),
            schedule,
            apply_fn=apply_fn,
            num_hypotheses=num_hypotheses,
            num_steps=num_steps,
            eta=eta,
        )[:, 0],
        out_axes=1,
    )(jnp.asarray(b['index']), b['keypoints'], b['visibility'], b['mask'])
    for a in aggregations:
      agg = _spread(hyps) if a == 'spread' else _aggregate(hyps, b['keypoints'], b['visibility'], method=a)
      outs[a].append(np.asarray(agg)[:count])
    done += count
    if log is not None and time.time() - t0 > 10 and done < n:
      log(f'  sampled {done}/{n} windows ({time.time() - t0:.0f} s)')
      t0 = time.time()
  return {a: np.concatenate(v, 0) for a, v in outs.items()}


_aggregate = jax.jit(diffusion.aggregate, static_argnames='method')
_spread = jax.jit(diffusion.hypothesis_spread)


# ----------------------------------------------------------------------------
# Training loop.
# ----------------------------------------------------------------------------


def create_state(
    config: ml_collections.ConfigDict, num_points: int, window: int, key: Array, tx: optax.GradientTransformation
) -> tuple[Denoiser, objective.TrainState]:
  model = models.from_config('denoiser', config.model, num_points)
  dummy = (
      jnp.zeros((1, window, num_points, 3)),
      jnp.zeros((1,), jnp.int32),
      jnp.zeros((1, window, num_points, 2)),
      jnp.ones((1, window, num_points)),
      jnp.ones((1, window)),
  )
  params = jax.jit(model.init)(key, *dummy)
  return model, objective.TrainState.create(apply_fn=model.apply, params=params, tx=tx)


def _datasets(config: ml_collections.ConfigDict):
  """Training windows (the student's, from ``config.data``) and evaluation windows of the same length."""
  train = data_lib.make_dataset(config.data, 'train', seed=config.seed)
  length = data_lib.window_length(config.data, 'train')
  return train, data_lib.make_dataset(config.data, 'eval', scale=train.scale, seed=config.seed, length=length)


def load_teacher(workdir: str, step: int | None = None):
  """``(config, model, params, meta)`` of a teacher trained by :func:`train_teacher` (``runs.load_run``)."""
  config, model, params, meta = runs.load_run(workdir, step)
  if not isinstance(model, Denoiser):
    raise ValueError(f'{workdir} holds a student run, not a teacher (its config has no teacher section).')
  return config, model, params, meta


@loop.holds_workdir
def train_teacher(
    config: ml_collections.ConfigDict, workdir: str, *, log: Callable[[str], None] = print, evaluate: bool = True
) -> dict[str, Any]:
  """Trains the denoiser in ``workdir`` (resuming), evaluates it, and caches pseudo-3D for the windows.

  Writes ``config.json``, ``metrics.jsonl``, ``checkpoints/``, ``teacher_eval.json``
  (the teacher's own scores on the eval split for each aggregation and each
  (H, K) of ``config.eval``; reused on a rerun only if
  ``teacher_eval.provenance.json`` shows the same parameters and settings),
  ``eval3d/<key>.npz`` (the eval split's samples at the pseudo-3D setting, when ``config.eval``
  scores it: :func:`score_as_student` reads them) and ``pseudo3d/<key>.npz``.

  Returns:
    ``{'eval': {...}, 'pseudo3d': path}``; ``{}`` with ``evaluate=False``,
    which stops after training (no scores, no pseudo-3D).
  """
  configs.validate(config)
  mode = config.teacher.mode
  if mode not in MODES:
    raise ValueError(f'Unknown teacher.mode {mode!r}; expected one of {MODES}.')
  os.makedirs(workdir, exist_ok=True)
  loop.save_config(workdir, config, log)
  t_start = time.time()
  train_ds, eval_ds = _datasets(config)
  if mode == 'supervised':
    targets = supervised_targets(train_ds)
  else:
    # (teacher.target_projection's value was checked by configs.validate above.)
    targets = reconstruction_targets(
        config.teacher.student_workdir,
        train_ds,
        resolve_flips=bool(config.teacher.get('resolve_flips', False)),
        as_evaluated=config.teacher.get('target_projection', 'none') == 'eval',
        log=log,
    )
  target_weight = None
  if mode != 'self' and config.teacher.get('hinge_filter', 'none') != 'none':
    raise configs.ConfigError(
        f"config.teacher.hinge_filter={config.teacher.hinge_filter!r} filters a self-mode teacher's targets; "
        f"teacher.mode={mode!r} trains on the ground-truth 3D. Set it to 'none'."
    )
  if mode == 'self':
    target_weight = hinge_weights(
        targets, train_ds.mask, config.teacher.get('hinges', ()), config.teacher.get('hinge_filter', 'none')
    )
  if target_weight is not None:
    kept = target_weight[np.asarray(train_ds.mask) > 0]
    log(
        f'teacher.hinge_filter={config.teacher.hinge_filter!r}: {100 * float(np.mean(kept)):.1f}% of the target '
        f'joints kept ({100 * float(np.mean(np.all(kept > 0, -1))):.1f}% of the frames whole)'
    )
  batch_size = config.train.batch_size
  num_steps = config.train.num_steps
  log(
      f'teacher ({mode}): {train_ds.num_windows} windows of {train_ds.window_length} frames, '
      f'{eval_ds.num_windows} eval windows; {num_steps} steps of {batch_size}'
  )

  tx = optim.make_optimizer(config, num_steps, data_lib.steps_per_epoch(train_ds.num_windows, batch_size))
  init_key, loop_key = jax.random.split(jax.random.PRNGKey(config.seed))
  model, state = create_state(config, train_ds.num_points, train_ds.window_length, init_key, tx)
  schedule = schedule_of(config)
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), config.train.max_checkpoints)
  state, old_meta = ckpt.restore(state, log=log)
  views = (
      float(config.teacher.get('novel_views', 0.0)),
      float(config.teacher.get('view_yaw', 180.0)),
      float(config.teacher.get('view_pitch', 0.0)),
  )
  meta = {
      'seed': int(config.seed),
      'scale': float(train_ds.scale),
      'num_points': int(train_ds.num_points),
      'mode': mode,
      'views': 'off' if views[0] == 0 else ','.join(f'{v:g}' for v in views),
      'targets': _digest(targets) if target_weight is None else _digest(targets, target_weight),
  }
  loop.check_resume(ckpt.directory, old_meta, meta, ('scale', 'mode', 'seed', 'views'), what='a teacher')
  if old_meta is not None and old_meta.get('targets', meta['targets']) != meta['targets']:
    raise ValueError(
        f'{ckpt.directory} holds a teacher trained on other targets (in self mode: the student '
        f'in {config.teacher.student_workdir} changed since): use another --workdir.'
    )
  if old_meta is not None:
    log(f'resuming from step {int(state.step)}')
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  log(
      f'denoiser: {config.model.arch}, {n_params:,} parameters; {config.diffusion.schedule} schedule, '
      f'T={schedule.num_timesteps}'
  )

  batch_fn = loop.window_batches(train_ds, batch_size, config.seed, target=targets, target_weight=target_weight)
  if views[0] > 0:
    log(
        f'teacher.novel_views={views[0]:g}: that share of the training windows seen from a random camera '
        f"(yaw ±{views[1]:g}°, pitch ±{views[2]:g}°), its 2D the turned target's projection"
    )
  state = loop.run_loop(
      state,
      lambda s, b: teacher_step(s, b, loop_key, schedule, views),
      batch_fn,
      num_steps=num_steps,
      ckpt=ckpt,
      meta=meta,
      workdir=workdir,
      train_config=config.train,
      log=log,
      progress=lambda m, rate: f' | loss={float(m["loss"]):.4g} (MPJPE, normalised units)',
  )
  log(f'teacher training done in {loop.format_duration(time.time() - t_start)}')
  if config.train.plot:
    plotting.try_plot_training(workdir, log)
  if not evaluate:
    return {}
  eval_path = os.path.join(workdir, 'teacher_eval.json')
  # The scores depend on the parameters and on every sampling / data / model setting.
  provenance = {
      'step': int(state.step),
      'params': _digest(*[np.asarray(x) for x in jax.tree.leaves(state.params)]),
      'config': {
          k: config[k].to_dict() if hasattr(config[k], 'to_dict') else config[k]
          for k in ('seed', 'data', 'model', 'diffusion', 'eval')
      },
  }
  provenance_path = os.path.join(workdir, 'teacher_eval.provenance.json')
  result = None
  if os.path.exists(eval_path) and os.path.exists(provenance_path):
    with open(provenance_path) as f:
      if json.load(f) == json.loads(json.dumps(provenance)):
        with open(eval_path) as g:
          result = json.load(g)
        log(f'teacher already scored with these settings: {eval_path}')
  if result is None:
    result = evaluate_teacher(config, model.apply, state.params, eval_ds, log=log, cache_dir=workdir)
    loop.write_json_atomic(eval_path, result)
    loop.write_json_atomic(provenance_path, provenance)
  path = generate_pseudo3d(workdir, config, log=log)
  return {'eval': result, 'pseudo3d': path}


def evaluate_teacher(
    config: ml_collections.ConfigDict,
    apply_fn: Callable,
    params,
    dataset: data_lib.WindowDataset,
    *,
    log: Callable[[str], None] = print,
    cache_dir: str | None = None,
) -> dict[str, Any]:
  """The teacher's own scores on ``dataset`` for every (H, K) in ``config.eval.grid`` and aggregation.

  ``cache_dir`` (the teacher's workdir): the samples at the pseudo-3D setting (``diffusion``'s
  H, K) are kept there (:func:`_eval_samples`), so :func:`score_as_student` reuses them.

  Returns:
    ``{'H<h>_K<k>': {aggregation: score()-overall}}`` (empty without 3D).
  """
  if dataset.points3d is None:
    return {}
  protocol = data_lib.protocol_of(config.data) or 'cmu17'
  d = config.diffusion
  result = {}
  for h, k in [tuple(int(v) for v in hk) for hk in config.eval.grid]:
    t0 = time.time()
    if cache_dir is not None and (h, k) == (int(d.num_hypotheses), int(d.num_steps)):
      preds = _eval_samples(cache_dir, config, apply_fn, params, dataset, ('mean', 'jpma'))
    else:
      preds = _sample_as_configured(config, apply_fn, params, dataset, ('mean', 'jpma'), hk=(h, k))
    entry = {a: scoring.score(p * dataset.scale, dataset, protocol=protocol)['overall'] for a, p in preds.items()}
    result[f'H{h}_K{k}'] = entry
    text = '; '.join(f'{a}: ' + ' '.join(f'{m}={v:.4g}' for m, v in s.items()) for a, s in entry.items())
    log(f'teacher H={h} K={k} ({time.time() - t0:.0f} s): {text}')
  return result


def _sample_as_configured(
    tcfg: ml_collections.ConfigDict,
    apply_fn: Callable,
    params,
    dataset: data_lib.WindowDataset,
    aggregations: tuple[str, ...],
    log: Callable[[str], None] | None = None,
    hk: tuple[int, int] | None = None,
) -> dict[str, np.ndarray]:
  """:func:`predict` at the teacher's pseudo-3D setting (``tcfg.diffusion``'s H, K, eta; its seed),
  or at another ``hk = (H, K)`` with the same eta and seed (``config.eval.grid``)."""
  d = tcfg.diffusion
  h, k = hk if hk is not None else (int(d.num_hypotheses), int(d.num_steps))
  return predict(
      apply_fn,
      params,
      schedule_of(tcfg),
      dataset,
      num_hypotheses=h,
      num_steps=k,
      eta=float(d.eta),
      seed=int(tcfg.seed),
      batch_size=tcfg.train.eval_batch_size,
      aggregations=aggregations,
      log=log,
  )


def _eval_samples(
    cache_dir: str,
    tcfg: ml_collections.ConfigDict,
    apply_fn: Callable,
    params,
    dataset: data_lib.WindowDataset,
    aggregations: tuple[str, ...],
) -> dict[str, np.ndarray]:
  """The teacher's ``aggregations`` of ``dataset`` at its pseudo-3D setting, cached in ``cache_dir``.

  ``eval3d/<key>.npz``, keyed like the pseudo-3D (parameters, windows, sampling settings): the
  teacher's own score at that setting and :func:`score_as_student` sample the same eval windows
  the same way, so the second reads the first's samples (one H × K sampling of the eval split, not
  two). A file lacking an aggregation is sampled again and rewritten with every one asked for.
  """
  settings = dict(_sampling_settings(tcfg), split='eval')
  key = pseudo3d_key(params, dataset, settings)
  path = os.path.join(cache_dir, 'eval3d', f'{key}.npz')
  if os.path.exists(path):
    with np.load(path) as f:
      if all(a in f.files for a in aggregations):
        return {a: f[a] for a in aggregations}
  preds = _sample_as_configured(tcfg, apply_fn, params, dataset, aggregations)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + '.tmp.npz'
  np.savez(tmp, **preds)
  os.replace(tmp, path)
  return preds


def sample_eval_split(
    tcfg: ml_collections.ConfigDict,
    model: Denoiser,
    params,
    scale: float,
    data_cfg: ml_collections.ConfigDict | None = None,
    *,
    cache_dir: str | None = None,
) -> tuple[data_lib.WindowDataset, np.ndarray]:
  """``(eval windows, the teacher's 3D for them [N, L, P, 3] normalised)`` at its pseudo-3D settings.

  The windows are ``data_cfg``'s (default: the teacher's own data) eval split, as long as the
  training windows, at the teacher's 2D ``scale``; the 3D is the ``diffusion.aggregation`` of
  ``diffusion.num_hypotheses`` DDIM samples of ``diffusion.num_steps`` steps. ``cache_dir`` (the
  teacher's workdir): reuse or keep the samples there (:func:`_eval_samples`).
  """
  data_cfg = data_cfg if data_cfg is not None else tcfg.data
  length = data_lib.window_length(data_cfg, 'train')
  dataset = data_lib.make_dataset(data_cfg, 'eval', scale=scale, seed=tcfg.seed, length=length)
  d = tcfg.diffusion
  if cache_dir is not None:
    return dataset, _eval_samples(cache_dir, tcfg, model.apply, params, dataset, (d.aggregation,))[d.aggregation]
  return dataset, _sample_as_configured(tcfg, model.apply, params, dataset, (d.aggregation,))[d.aggregation]


def score_as_student(
    teacher_workdir: str, student_config: ml_collections.ConfigDict, *, log: Callable[[str], None] = print
) -> dict[str, float] | None:
  """The teacher alone on the eval split, scored as ``student_config``'s run scores its own 3D.

  The teacher is sampled at the settings that make its pseudo-3D (H, K, aggregation), then given
  the student's test-time treatment (:func:`scoring.as_evaluated`: the observed x, y of the
  visible points and the student's ``train.eval_bone_*`` projection), so the two rows differ only
  in the model. The score is cached next to the teacher (``as_student_<key>.json``, keyed by the
  teacher's parameters and every setting that changes it).

  Returns:
    :func:`scoring.score`'s ``'overall'``; None when the eval split has no 3D.
  """
  tcfg, model, params, meta = load_teacher(teacher_workdir)
  data_cfg = ml_collections.ConfigDict(student_config.data.to_dict())
  d = tcfg.diffusion
  settings = {
      'step': int(meta['step']),
      'params': _digest(*[np.asarray(x) for x in jax.tree.leaves(params)]),
      'data': data_cfg.to_dict(),
      'sampling': [int(d.num_hypotheses), int(d.num_steps), float(d.eta), d.aggregation, int(tcfg.seed)],
      'observed_xy': bool(student_config.model.get('observed_xy', True)),
      'projection': {
          k: list(v) if isinstance(v, tuple) else v for k, v in scoring.projection_options(student_config).items()
      },
  }
  key = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
  path = os.path.join(teacher_workdir, f'as_student_{key}.json')
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)['overall']
  t0 = time.time()
  dataset, pred = sample_eval_split(tcfg, model, params, float(meta['scale']), data_cfg, cache_dir=teacher_workdir)
  if dataset.points3d is None:
    return None
  pred = scoring.as_evaluated(student_config, pred, dataset)
  protocol = data_lib.protocol_of(data_cfg) or 'cmu17'
  overall = scoring.score(pred * dataset.scale, dataset, protocol=protocol)['overall']
  overall = {k: float(v) for k, v in overall.items()}
  loop.write_json_atomic(path, dict(settings, overall=overall))
  log(
      f'teacher alone, scored as the student ({time.time() - t0:.0f} s): '
      + ' '.join(f'{m}={v:.4g}' for m, v in overall.items())
  )
  return overall


# ----------------------------------------------------------------------------
# Cached pseudo-3D.
# ----------------------------------------------------------------------------


def _digest(*arrays) -> str:
  h = hashlib.sha1()
  for a in arrays:
    a = np.ascontiguousarray(a)
    h.update(str(a.shape).encode())
    h.update(a.tobytes())
  return h.hexdigest()


def _sampling_settings(tcfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """What makes a teacher's samples at its pseudo-3D setting, besides its parameters and the windows."""
  d = tcfg.diffusion
  return {
      'H': int(d.num_hypotheses),
      'K': int(d.num_steps),
      'eta': float(d.eta),
      'seed': int(tcfg.seed),
      'schedule': d.schedule,
      'T': int(d.num_timesteps),
      # Settings that change the output without changing the parameters' shapes.
      'model': tcfg.model.to_dict(),
  }


def pseudo3d_key(params, dataset: data_lib.WindowDataset, settings: dict[str, Any]) -> str:
  """Cache key: teacher parameters × training windows × sampling settings (16 hex digits)."""
  leaves = [np.asarray(x) for x in jax.tree.leaves(params)]
  data_key = _digest(dataset.keypoints, dataset.visibility, dataset.mask) + repr((dataset.names, float(dataset.scale)))
  text = json.dumps({'params': _digest(*leaves), 'data': data_key, **settings}, sort_keys=True)
  return hashlib.sha1(text.encode()).hexdigest()[:16]


def generate_pseudo3d(
    teacher_workdir: str, student_config: ml_collections.ConfigDict | None = None, *, log: Callable[[str], None] = print
) -> str:
  """Pseudo-3D for the student's training windows, computed once and cached.

  Args:
    teacher_workdir: a workdir of :func:`train_teacher`.
    student_config: the student's config (its ``data`` gives the windows);
      default: the teacher's own config (same data section).
    log: progress printer.

  Returns:
    The path of the ``.npz`` (see ``data.save_pseudo3d``) to pass as the
    student's ``train.pseudo3d``.
  """
  tcfg, model, params, meta = load_teacher(teacher_workdir)
  scfg = student_config if student_config is not None else tcfg
  train_ds = data_lib.make_dataset(scfg.data, 'train', seed=scfg.seed)
  if not np.isclose(float(meta['scale']), train_ds.scale, rtol=1e-6):
    raise ValueError(
        f'The teacher in {teacher_workdir} was trained at 2D scale {meta["scale"]:.6g}; the '
        f"student's training windows have {train_ds.scale:.6g}: different data."
    )
  d = tcfg.diffusion
  settings = dict(
      _sampling_settings(tcfg),
      aggregation=d.aggregation,
      spread=True,  # the file also holds the hypotheses' spread (files made before lack it)
      step=int(meta['step']),
  )
  key = pseudo3d_key(params, train_ds, settings)
  path = os.path.join(os.path.abspath(teacher_workdir), 'pseudo3d', f'{key}.npz')
  if os.path.exists(path):
    log(f'pseudo-3D: cached at {path}')
    with np.load(path) as f:
      if 'spread' in f.files:
        log(spread_summary(f['spread'], train_ds))
    return path
  os.makedirs(os.path.dirname(path), exist_ok=True)
  t0 = time.time()
  log(
      f'pseudo-3D: sampling {train_ds.num_windows} windows with H={settings["H"]}, K={settings["K"]}, '
      f'{settings["aggregation"]} aggregation'
  )
  preds = _sample_as_configured(tcfg, model.apply, params, train_ds, (d.aggregation, 'spread'), log=log)
  tmp = path + '.tmp.npz'
  data_lib.save_pseudo3d(tmp, preds[d.aggregation], train_ds, spread=preds['spread'])
  os.replace(tmp, path)
  loop.write_json_atomic(
      os.path.join(os.path.dirname(path), f'{key}.json'),
      dict(
          settings,
          teacher_workdir=os.path.abspath(teacher_workdir),
          windows=train_ds.num_windows,
          window=train_ds.window_length,
          scale=train_ds.scale,
      ),
  )
  log(f'pseudo-3D: wrote {path} in {time.time() - t0:.0f} s')
  log(spread_summary(preds['spread'], train_ds))
  return path


def spread_summary(spread: np.ndarray, dataset: data_lib.WindowDataset) -> str:
  """One line: the median and 95th percentile of the hypotheses' per-joint spread ``[N, L, P]``
  (normalised units) over ``dataset``'s visible joints of real frames, in data units.

  Near 0 the teacher is a deterministic regressor of its 2D: its H hypotheses add nothing to
  one (a self-mode teacher whose targets are its student's own function of the same 2D is one).
  """
  keep = (np.asarray(dataset.mask)[..., None] > 0) & (np.asarray(dataset.visibility) > 0)
  values = np.asarray(spread)[keep] * dataset.scale
  if values.size == 0:
    return "pseudo-3D: the hypotheses' spread has no visible joint to summarise"
  median, p95 = np.percentile(values, [50, 95])
  return f"pseudo-3D: the hypotheses' per-joint spread, median {median:.3g}, 95th percentile {p95:.3g} (data units)"
