"""Throughput measurements for ``experiments/benchmark.py`` (never used by timed tests).

Each measurement compiles once, warms up, then times ``repeats`` calls with
``block_until_ready``. FLOPs come from XLA's own cost analysis of the compiled
step; the machine's peak is measured in the same process as the throughput of
a large jitted f32 matmul, so the reported fraction compares like with like.
"""

from __future__ import annotations

import collections
import functools
import glob
import os
import re
import resource
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from nrsfm_jax import configs, loop, objective, optim, train


def _time(fn, *args, repeats: int) -> float:
  """Median seconds per call of an already-compiled ``fn``."""
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def _step_rates(batch_size: int, window: int, params, compile_s: float, step_s: float, flops: float) -> dict[str, Any]:
  """Throughput entries shared by the student and teacher benchmarks."""
  frames = batch_size * window
  return {
      'batch_size': batch_size,
      'window': window,
      'frames_per_step': frames,
      'params': int(sum(x.size for x in jax.tree.leaves(params))),
      'compile_s': compile_s,
      'step_s': step_s,
      'windows_per_s': batch_size / step_s,
      'frames_per_s': frames / step_s,
      'flops_per_step': flops,
      'gflops': flops / step_s / 1e9,
  }


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get('flops', float('nan')))


def matmul_peak(n: int = 2048, repeats: int = 10, dtype=jnp.float32) -> dict[str, float]:
  """Measured f32 matmul throughput (the machine's practical peak), GFLOP/s.

  On CPU, the faster of XLA's two matmul backends (``configs.CPU_DOTS``: YNNPACK and Eigen), so a
  step compiled with either is compared with the best this machine does; ``backend`` says which.
  """
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
  best: dict[str, Any] = {}
  backends = configs.CPU_DOTS if jax.default_backend() == 'cpu' else ('ynn',)
  for dots in backends:
    fn = jax.jit(jnp.matmul, compiler_options=loop.cpu_compiler_options(dots))
    jax.block_until_ready(fn(a, b))
    seconds = _time(fn, a, b, repeats=repeats)
    if not best or seconds < best['seconds']:
      best = {'n': n, 'seconds': seconds, 'gflops': 2 * n**3 / seconds / 1e9, 'backend': dots}
  return best


def peak_rss_mib() -> float:
  """Peak resident memory of this process so far (MiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _student_step(config: ml_collections.ConfigDict, batch_size: int, window: int, num_points: int):
  """``(model, state, batch, key, jitted step)`` of ``config`` on random 2D (``train.cpu_dots`` applied)."""
  tx = optim.make_optimizer(config, 1000, 100)
  model, state = train.create_state(config, num_points, window, jax.random.PRNGKey(0), tx)
  keys = jax.random.split(jax.random.PRNGKey(1), 3)  # keypoints, visibility, step key
  batch = {
      'keypoints': jax.random.normal(keys[0], (batch_size, window, num_points, 2)),
      'visibility': (jax.random.uniform(keys[1], (batch_size, window, num_points)) > 0.05).astype(jnp.float32),
      'mask': jnp.ones((batch_size, window)),
  }
  step = jax.jit(
      functools.partial(objective.train_step, loss_config=objective.loss_config(config)),
      donate_argnums=0,
      compiler_options=loop.cpu_compiler_options(config.train.get('cpu_dots', 'ynn')),
  )
  return model, state, batch, keys[2], step


def trace_train_step(
    config: ml_collections.ConfigDict, *, batch_size: int, window: int, num_points: int = 17, steps: int = 3
) -> dict[str, Any]:
  """Where a compiled student step spends its time: a ``jax.profiler`` trace of ``steps`` steps.

  Sums, per step, the duration of the events on XLA's CPU worker threads (the thunks it runs,
  grouped by kind: the op name without its number, e.g. ``ynn_fusion``, ``dot``,
  ``reduce-window``) and counts the ops of each kind in the compiled HLO.

  Returns:
    ``{'wall_ms', 'busy_ms'`` (per step: wall time, and the worker threads' time inside
    thunks, summed over threads), ``'by_kind': {kind: ms per step}`` (largest first),
    ``'hlo_ops': {op: count}}``.
  """
  _, state, batch, key, step = _student_step(config, batch_size, window, num_points)
  compiled = step.lower(state, batch, key).compile()
  for _ in range(2):  # Warm-up.
    state, metrics = compiled(state, batch, key)
  jax.block_until_ready(metrics)
  with tempfile.TemporaryDirectory() as logdir:
    t = time.perf_counter()
    with jax.profiler.trace(logdir):
      for _ in range(steps):
        state, metrics = compiled(state, batch, key)
      jax.block_until_ready(metrics)
    wall = (time.perf_counter() - t) / steps
    paths = glob.glob(os.path.join(logdir, '**', '*.xplane.pb'), recursive=True)
    profile = jax.profiler.ProfileData.from_file(sorted(paths)[-1])
  kinds: collections.Counter = collections.Counter()
  busy = 0.0
  for plane in profile.planes:
    for line in plane.lines:
      if 'XLAEigen' not in line.name:  # XLA's CPU worker threads
        continue
      for event in line.events:
        if event.name == 'ThunkExecutor::Execute':
          busy += event.duration_ns
        elif not event.name.startswith('ThunkExecutor'):
          kinds[re.sub(r'[.\d]+$', '', event.name)] += event.duration_ns
  ops = collections.Counter(m.group(1) for m in re.finditer(r'= \S+ ([a-z][\w-]*)\(', compiled.as_text()))
  return {
      'wall_ms': 1e3 * wall,
      'busy_ms': busy / steps / 1e6,
      'by_kind': {k: v / steps / 1e6 for k, v in kinds.most_common()},
      'hlo_ops': dict(ops.most_common()),
  }


def benchmark_train_step(
    config: ml_collections.ConfigDict,
    *,
    batch_size: int,
    window: int,
    num_points: int = 17,
    repeats: int = 10,
    inference: bool = True,
) -> dict[str, Any]:
  """Times the jitted train step (and inference) of ``config``'s model on random data.

  Args:
    config: experiment config (the model and loss sections, and ``train.cpu_dots``).
    batch_size: windows per step.
    window: frames per window (``1`` benchmarks a per-frame lifter as C3DPO).
    num_points: keypoints per frame.
    repeats: timed calls (after one compile call and one warm-up).
    inference: also time the forward pass alone.

  Returns:
    A dict with compile time, step time, windows/s, frames/s, XLA FLOPs per
    step, achieved GFLOP/s, XLA's memory analysis and the parameter count.
  """
  model, state, batch, key, step = _student_step(config, batch_size, window, num_points)
  t = time.perf_counter()
  compiled = step.lower(state, batch, key).compile()
  compile_s = time.perf_counter() - t
  flops = _flops(compiled)
  mem = compiled.memory_analysis()
  state, _ = compiled(state, batch, key)  # Warm-up.
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    state, metrics = compiled(state, batch, key)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  step_s = float(np.median(times))
  frames = batch_size * window
  result = {
      **_step_rates(batch_size, window, state.params, compile_s, step_s, flops),
      'temp_mib': getattr(mem, 'temp_size_in_bytes', 0) / 2**20 if mem is not None else float('nan'),
      'argument_mib': getattr(mem, 'argument_size_in_bytes', 0) / 2**20 if mem is not None else float('nan'),
  }
  if inference:
    fwd = jax.jit(lambda p, kp, vis, m: model.apply(p, kp, vis, m)['points'])
    args = (state.params, batch['keypoints'], batch['visibility'], batch['mask'])
    jax.block_until_ready(fwd(*args))
    result['inference_frames_per_s'] = frames / _time(fwd, *args, repeats=repeats)
  return result


def benchmark_teacher_step(
    config: ml_collections.ConfigDict, *, batch_size: int, window: int, num_points: int = 17, repeats: int = 10
) -> dict[str, Any]:
  """Times the teacher's jitted train step and its H×K DDIM sampling on random data.

  Args:
    config: teacher config (``configs/teacher.py``: model, diffusion, optim).
    batch_size / window / num_points: the batch shape.
    repeats: timed calls.

  Returns:
    Compile time, step time, frames/s, XLA FLOPs and GFLOP/s of the step, the
    parameter count and ``sample_frames_per_s`` (pseudo-3D generation with
    ``config.diffusion``'s H and K).
  """
  from nrsfm_jax import teacher

  tx = optim.make_optimizer(config, 1000, 100)
  model, state = teacher.create_state(config, num_points, window, jax.random.PRNGKey(0), tx)
  schedule = teacher.schedule_of(config)
  keys = jax.random.split(jax.random.PRNGKey(1), 3)
  batch = {
      'keypoints': jax.random.normal(keys[0], (batch_size, window, num_points, 2)),
      'visibility': jnp.ones((batch_size, window, num_points)),
      'mask': jnp.ones((batch_size, window)),
      'target': jax.random.normal(keys[1], (batch_size, window, num_points, 3)),
  }
  t = time.perf_counter()
  compiled = teacher.teacher_step.lower(state, batch, keys[2], schedule).compile()
  compile_s = time.perf_counter() - t
  flops = _flops(compiled)
  state, _ = compiled(state, batch, keys[2], schedule)  # Warm-up.
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    state, metrics = compiled(state, batch, keys[2], schedule)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  step_s = float(np.median(times))
  frames = batch_size * window
  d = config.diffusion
  sample = functools.partial(
      teacher.sample,
      apply_fn=model.apply,
      num_hypotheses=int(d.num_hypotheses),
      num_steps=int(d.num_steps),
      eta=float(d.eta),
  )
  args = (state.params, batch['keypoints'], batch['visibility'], batch['mask'], keys[2], schedule)
  jax.block_until_ready(sample(*args))
  return {
      **_step_rates(batch_size, window, state.params, compile_s, step_s, flops),
      'hypotheses': int(d.num_hypotheses),
      'ddim_steps': int(d.num_steps),
      'sample_frames_per_s': frames / _time(sample, *args, repeats=max(1, repeats // 3)),
  }


# JAX's compile events (tracing, lowering to MLIR, XLA's backend compile), in seconds.
_COMPILE_EVENTS = (
    '/jax/core/compile/jaxpr_trace_duration',
    '/jax/core/compile/jaxpr_to_mlir_module_duration',
    '/jax/core/compile/backend_compile_duration',
)
_compile_seconds = [0.0]
_listening = [False]


def _on_event(event: str, duration: float, **_) -> None:
  if event in _COMPILE_EVENTS:
    _compile_seconds[0] += duration


def compile_seconds() -> float:
  """Seconds this process has spent tracing, lowering and compiling since the first call (a counter)."""
  if not _listening[0]:
    jax.monitoring.register_event_duration_secs_listener(_on_event)
    _listening[0] = True
  return _compile_seconds[0]


def benchmark_evaluate(workdir: str, repeats: int = 2) -> list[dict[str, float]]:
  """Wall time and compile time of ``evaluation.evaluate_run(workdir)`` called ``repeats`` times in one process.

  Returns:
    One ``{'wall_s', 'compile_s', 'compile_fraction'}`` per call: the first pays for the
    compiles (or the persistent cache's loads), the later ones should reuse them.
  """
  from nrsfm_jax import evaluation  # pylint: disable=g-import-not-at-top

  compile_seconds()
  out = []
  for _ in range(repeats):
    c0, t0 = compile_seconds(), time.perf_counter()
    evaluation.evaluate_run(workdir, log=lambda s: None)
    wall, comp = time.perf_counter() - t0, compile_seconds() - c0
    out.append({'wall_s': wall, 'compile_s': comp, 'compile_fraction': comp / wall})
  return out
