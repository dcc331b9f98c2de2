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


def _compile_and_time(step, state, *args, repeats: int):
  """Compiles the jitted ``step(state, *args) -> (state, metrics)``, warms it up and times ``repeats``
  calls. Returns ``(compiled, state, compile_s, median step seconds, FLOPs per step)``."""
  t = time.perf_counter()
  lowered = step.lower(state, *args)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t
  flops = _flops(step, (state, *args), lowered, compiled)
  state, _ = compiled(state, *args)  # Warm-up.
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    state, metrics = compiled(state, *args)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  return compiled, state, compile_s, float(np.median(times)), flops


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


def _flops(fn, args: tuple, lowered, compiled) -> float:
  """FLOPs of one call of the jitted ``fn(*args)``, from XLA's cost analysis of the HLO before
  backend optimisation.

  The same count on every backend where XLA gives it (on the CPU it agrees with the compiled
  program's own within 3%). A compiled GPU program's analysis leaves out the matmuls it hands to
  cuBLAS (custom calls: D3DP's teacher step read 0.67 of its 14.2 TFLOP) and jax 0.11.2 on an H200
  gave no count for the lowered program, so off the CPU ``fn`` is lowered again for the CPU (which
  fails for cuDNN's attention); the compiled program's count is the last resort.
  """

  def count(cost) -> float:
    if isinstance(cost, (list, tuple)):
      cost = cost[0] if cost else {}
    return float((cost or {}).get('flops', float('nan')))

  flops = count(lowered.cost_analysis())
  if np.isnan(flops) and jax.default_backend() != 'cpu':
    try:
      flops = count(fn.trace(*args).lower(lowering_platforms=('cpu',)).cost_analysis())
    except Exception:  # noqa: BLE001 (any lowering failure: fall back to the compiled count)
      pass
  if np.isnan(flops):
    flops = count(compiled.cost_analysis())
  return flops


def matmul_peak(n: int = 2048, repeats: int = 10, dtype=jnp.float32) -> dict[str, float]:
  """Measured matmul throughput at ``dtype`` (the machine's practical peak), GFLOP/s.

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
  """Where a compiled student step spends its time: :func:`trace_compiled` of ``steps`` steps."""
  _, state, batch, key, step = _student_step(config, batch_size, window, num_points)
  return trace_compiled(step.lower(state, batch, key).compile(), state, batch, key, steps=steps)


def _op_kind(name: str) -> str:
  """An XLA op's or kernel's name without its trailing number (``fusion.12``, ``loop_pad_fusion_75``)."""
  return re.sub(r'[_.\d]+$', '', name)


def gpu_kernel_kind(name: str) -> str:
  """A GPU kernel's kind: ``'matmul'`` (cuBLAS / cuBLASLt / CUTLASS / nvjet), ``'attention'``
  (cuDNN's flash attention), ``'cudnn'`` (its other kernels), else XLA's fusion kind (the kernel's
  name without its number: ``loop_pad_fusion``, ``input_add_reduce_fusion``, ...)."""
  low = name.lower()
  if any(k in low for k in ('gemm', 'nvjet', 'cutlass', 'xmma', 'cublas')):
    return 'matmul'
  if any(k in low for k in ('sdpa', 'flash', 'fmha')):
    return 'attention'
  if 'cudnn' in low:
    return 'cudnn'
  return _op_kind(name.split('(')[0].split('<')[0].replace('void ', ''))


def trace_compiled(compiled, state, *args, steps: int = 3) -> dict[str, Any]:
  """A ``jax.profiler`` trace of ``steps`` calls of ``compiled(state, *args) -> (state, metrics)``.

  On the CPU: the duration of the events on XLA's worker threads (the thunks it runs, grouped by
  kind: the op name without its number, e.g. ``ynn_fusion``, ``dot``, ``reduce-window``). On a
  GPU: the device's ``XLA Ops`` timeline grouped the same way or, where the profiler has none
  (jax 0.11.2 on an H200 had none), every kernel on the GPU's streams by
  :func:`gpu_kernel_kind`, and the ``kernels`` that ran the most time.

  Returns:
    ``{'wall_ms', 'busy_ms'`` (per step: wall time, and the time inside ops, summed over CPU
    threads, or the GPU's kernel time), ``'by_kind': {kind: ms per step}`` (largest first),
    ``'hlo_ops': {op: count}}`` of the compiled HLO; on a GPU also ``'kernels'`` (the 25 longest,
    ms per step) and ``'gpu_lines'`` (the profile's timelines).
  """
  for _ in range(2):  # Warm-up.
    state, metrics = compiled(state, *args)
  jax.block_until_ready(metrics)
  with tempfile.TemporaryDirectory() as logdir:
    t = time.perf_counter()
    with jax.profiler.trace(logdir):
      for _ in range(steps):
        state, metrics = compiled(state, *args)
      jax.block_until_ready(metrics)
    wall = (time.perf_counter() - t) / steps
    paths = glob.glob(os.path.join(logdir, '**', '*.xplane.pb'), recursive=True)
    profile = jax.profiler.ProfileData.from_file(sorted(paths)[-1])
  kinds: collections.Counter = collections.Counter()
  kernels: collections.Counter = collections.Counter()
  gpu_lines: set[str] = set()
  busy = 0.0
  for plane in profile.planes:
    on_gpu = plane.name.startswith('/device:GPU')
    for line in plane.lines:
      if on_gpu:
        gpu_lines.add(line.name)
      if on_gpu and line.name == 'XLA Ops':
        for event in line.events:
          kinds[_op_kind(event.name)] += event.duration_ns
      elif on_gpu and line.name.startswith('Stream'):
        for event in line.events:
          kernels[event.name] += event.duration_ns
      elif 'XLAEigen' in line.name:  # XLA's CPU worker threads
        for event in line.events:
          if event.name == 'ThunkExecutor::Execute':
            busy += event.duration_ns
          elif not event.name.startswith('ThunkExecutor'):
            kinds[_op_kind(event.name)] += event.duration_ns
  if kernels:  # GPU: the kernels' own time (the streams), by kind of kernel.
    busy = sum(kernels.values())
    if not kinds:  # No 'XLA Ops' timeline (its name changes between versions): the kernels' kinds.
      for name, ns in kernels.items():
        kinds[gpu_kernel_kind(name)] += ns
  ops = collections.Counter(m.group(1) for m in re.finditer(r'= \S+ ([a-z][\w-]*)\(', compiled.as_text()))
  out = {
      'wall_ms': 1e3 * wall,
      'busy_ms': busy / steps / 1e6,
      'by_kind': {k: v / steps / 1e6 for k, v in kinds.most_common()},
      'hlo_ops': dict(ops.most_common()),
  }
  if kernels:
    out['kernels'] = {k[:160]: v / steps / 1e6 for k, v in kernels.most_common(25)}
    out['gpu_lines'] = sorted(gpu_lines)
  return out


def benchmark_train_step(
    config: ml_collections.ConfigDict,
    *,
    batch_size: int,
    window: int,
    num_points: int = 17,
    repeats: int = 10,
    inference: bool = True,
    trace_steps: int = 0,
) -> dict[str, Any]:
  """Times the jitted train step (and inference) of ``config``'s model on random data.

  Args:
    config: experiment config (the model and loss sections, and ``train.cpu_dots``).
    batch_size: windows per step.
    window: frames per window (``1`` benchmarks a per-frame lifter as C3DPO).
    num_points: keypoints per frame.
    repeats: timed calls (after one compile call and one warm-up).
    inference: also time the forward pass alone.
    trace_steps: > 0: also :func:`trace_compiled` that many steps of the same compiled step
      (``'trace'``).

  Returns:
    A dict with compile time, step time, windows/s, frames/s, XLA FLOPs per
    step, achieved GFLOP/s, XLA's memory analysis and the parameter count.
  """
  model, state, batch, key, step = _student_step(config, batch_size, window, num_points)
  compiled, state, compile_s, step_s, flops = _compile_and_time(step, state, batch, key, repeats=repeats)
  mem = compiled.memory_analysis()
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
  if trace_steps:  # Last: the step donates the state it is given.
    result['trace'] = trace_compiled(compiled, state, batch, key, steps=trace_steps)
  return result


def _teacher_setup(config: ml_collections.ConfigDict, batch_size: int, window: int, num_points: int):
  """``(model, state, batch, key, schedule)`` of the teacher ``config`` on random data."""
  from nrsfm_jax import teacher

  tx = optim.make_optimizer(config, 1000, 100)
  model, state = teacher.create_state(config, num_points, window, jax.random.PRNGKey(0), tx)
  keys = jax.random.split(jax.random.PRNGKey(1), 3)
  batch = {
      'keypoints': jax.random.normal(keys[0], (batch_size, window, num_points, 2)),
      'visibility': jnp.ones((batch_size, window, num_points)),
      'mask': jnp.ones((batch_size, window)),
      'target': jax.random.normal(keys[1], (batch_size, window, num_points, 3)),
  }
  return model, state, batch, keys[2], teacher.schedule_of(config)


def benchmark_teacher_step(
    config: ml_collections.ConfigDict,
    *,
    batch_size: int,
    window: int,
    num_points: int = 17,
    repeats: int = 10,
    sampling: bool = True,
    trace_steps: int = 0,
) -> dict[str, Any]:
  """Times the teacher's jitted train step and its H×K DDIM sampling on random data.

  Args:
    config: teacher config (``configs/teacher.py``: model, diffusion, optim).
    batch_size / window / num_points: the batch shape.
    repeats: timed calls.
    sampling: also time the H×K sampling (``sample_frames_per_s``; NaN when off).
    trace_steps: > 0: also :func:`trace_compiled` that many steps of the same compiled step
      (``'trace'``).

  Returns:
    Compile time, step time, frames/s, XLA FLOPs and GFLOP/s of the step, the
    parameter count and ``sample_frames_per_s`` (pseudo-3D generation with
    ``config.diffusion``'s H and K).
  """
  from nrsfm_jax import teacher

  model, state, batch, key, schedule = _teacher_setup(config, batch_size, window, num_points)
  compiled, state, compile_s, step_s, flops = _compile_and_time(
      teacher.teacher_step, state, batch, key, schedule, repeats=repeats
  )
  frames = batch_size * window
  d = config.diffusion
  sample_rate = float('nan')
  if sampling:
    sample = functools.partial(
        teacher.sample,
        apply_fn=model.apply,
        num_hypotheses=int(d.num_hypotheses),
        num_steps=int(d.num_steps),
        eta=float(d.eta),
    )
    args = (state.params, batch['keypoints'], batch['visibility'], batch['mask'], key, schedule)
    jax.block_until_ready(sample(*args))
    sample_rate = frames / _time(sample, *args, repeats=max(1, repeats // 3))
  result = {
      **_step_rates(batch_size, window, state.params, compile_s, step_s, flops),
      'hypotheses': int(d.num_hypotheses),
      'ddim_steps': int(d.num_steps),
      'sample_frames_per_s': sample_rate,
  }
  if trace_steps:  # Last: the step donates the state it is given.
    result['trace'] = trace_compiled(compiled, state, batch, key, schedule, steps=trace_steps)
  return result


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
