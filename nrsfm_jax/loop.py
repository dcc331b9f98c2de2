"""The training loop both trainers share: config record, resume check, steps, progress, checkpoints, stops.

:func:`run_loop` drives any ``step(state, batch) -> (state, metrics)`` whose
metrics hold ``finite`` (see ``objective.train_step``): it logs progress with
an ETA, appends metrics to ``metrics.jsonl`` (:class:`MetricWriter`), saves
checkpoints on a cadence, and on a non-finite step or Ctrl-C saves the last
good state before stopping, so rerunning the same command resumes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from nrsfm_jax import configs
from nrsfm_jax.checkpoint import CheckpointError
from nrsfm_jax.configs import ConfigError
from nrsfm_jax.data import batch_indices
from nrsfm_jax.data.registry import DataError


class MetricWriter:
  """Appends metrics as JSON lines to ``workdir/metrics.jsonl`` (clu-style, no TF needed)."""

  def __init__(self, workdir: str, filename: str = 'metrics.jsonl'):
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, filename)

  def write(self, step: int, values: dict[str, Any]):
    if not is_primary():  # Multi-process: one writer (every process holds the same metrics).
      return
    with open(self.path, 'a') as f:
      f.write(json.dumps({'step': int(step), **{k: float(v) for k, v in values.items()}}) + '\n')


class NonFiniteLossError(FloatingPointError):
  """Raised when a step is not finite; nothing is saved, so the last checkpoint stays the newest."""


def format_duration(seconds: float) -> str:
  """``h:mm:ss``."""
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


def flatten_dict(tree: dict[str, Any], prefix: str = '') -> dict[str, Any]:
  """``{'a': {'b': 1}}`` → ``{'a.b': 1}``."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(flatten_dict(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


# ----------------------------------------------------------------------------
# Multi-process data parallelism (jax.distributed).
# ----------------------------------------------------------------------------

_DISTRIBUTED_READY = False


def initialize_distributed(train_config: ml_collections.ConfigDict, log: Callable[[str], None] = print) -> None:
  """``jax.distributed.initialize`` from ``config.train`` (once per process; before any JAX computation).

  ``train.coordinator_address`` (``host:port`` of process 0), ``train.num_processes`` and
  ``train.process_id``; left at ``''`` / 0 / -1 they come from the environment, as JAX detects it
  (SLURM, Open MPI, Cloud TPU, Kubernetes). On CPU the collectives are gloo's.

  Raises:
    ConfigError: only some of the three were given, or JAX found no cluster to join.
  """
  global _DISTRIBUTED_READY
  if _DISTRIBUTED_READY:
    return
  address = str(train_config.get('coordinator_address', '') or '')
  count = int(train_config.get('num_processes', 0) or 0)
  index = int(train_config.get('process_id', -1))
  given = [bool(address), count > 0, index >= 0]
  if any(given) and not all(given):
    raise ConfigError(
        'config.train.distributed: give all of train.coordinator_address, train.num_processes and '
        'train.process_id, or none of them (then the cluster environment, e.g. SLURM, provides them); '
        f'got {address!r}, {count}, {index}.'
    )
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # CPU-only processes talk over gloo.
  try:
    if all(given):
      jax.distributed.initialize(coordinator_address=address, num_processes=count, process_id=index)
    else:
      jax.distributed.initialize()
  except (ValueError, RuntimeError) as e:
    raise ConfigError(f'config.train.distributed: jax.distributed.initialize failed: {e}') from e
  _DISTRIBUTED_READY = True
  log(
      f'distributed: process {jax.process_index()} of {jax.process_count()}, '
      f'{jax.local_device_count()} local / {jax.device_count()} global {jax.default_backend()} devices'
  )


def is_primary() -> bool:
  """Whether this process writes the run's files (process 0; always true in a single process)."""
  return not _DISTRIBUTED_READY or jax.process_index() == 0


def save_config(workdir: str, config: ml_collections.ConfigDict, log: Callable[[str], None]) -> None:
  """Writes ``workdir/config.json``; on resume, reports the keys that differ from the saved run."""
  path = os.path.join(workdir, 'config.json')
  text = config.to_json_best_effort(indent=2, sort_keys=True)
  if os.path.exists(path):
    with open(path) as f:
      flat_old = flatten_dict(json.load(f))
    flat_new = flatten_dict(json.loads(text))
    diff = sorted(k for k in set(flat_old) | set(flat_new) if flat_old.get(k) != flat_new.get(k))
    if diff:
      log(f'note: config differs from the saved run in {workdir} at: ' + ', '.join(diff))
  with open(path, 'w') as f:
    f.write(text)


def check_resume(
    directory: str, old: dict[str, Any] | None, new: dict[str, Any], keys: Sequence[str], what: str = 'a run'
) -> None:
  """Refuses to resume a checkpoint whose metadata differs from this run's at ``keys`` (floats: rtol 1e-6).

  A key missing from the old metadata is not compared (older runs).

  Raises:
    ValueError: naming the directory, each differing key and both values.
  """
  if old is None:
    return
  diff = []
  for k in keys:
    if k not in old:
      continue
    a, b = old[k], new[k]
    same = np.isclose(float(a), float(b), rtol=1e-6) if isinstance(b, float) else a == b
    if not same:
      diff.append(f'{k} {a!r} (this config: {b!r})')
  if diff:
    raise ValueError(f'{directory} holds {what} with ' + ', '.join(diff) + ': use another --workdir.')


def write_json_atomic(path: str, payload: Any) -> None:
  """Writes JSON atomically (a killed process leaves the old file or none, never half of one)."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(payload, f, indent=2)
  os.replace(tmp, path)


LOCK_NAME = 'run.lock'


class WorkdirBusyError(RuntimeError):
  """Another live process is training in this workdir."""


# Errors a training script reports as one line (their messages name the cause and the way out).
RUN_ERRORS = (NonFiniteLossError, WorkdirBusyError, CheckpointError, ConfigError, DataError)


def _process_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Exists, owned by someone else.
    return True
  return True


@contextlib.contextmanager
def workdir_lock(workdir: str, log: Callable[[str], None] = print):
  """Holds ``<workdir>/run.lock`` (this pid and host) while training: one run per workdir.

  A second process on the same workdir raises :class:`WorkdirBusyError` at
  once, naming the holder. A lock left by a process that is gone (same host,
  pid not running) is taken over with a note. The lock is removed on exit,
  whatever the exit.
  """
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_NAME)
  me = {'pid': os.getpid(), 'host': socket.gethostname()}
  while True:
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      try:
        with open(path) as f:
          holder = json.load(f)
        pid, host = int(holder['pid']), str(holder['host'])
      except (OSError, ValueError, KeyError, TypeError):
        raise WorkdirBusyError(
            f'{workdir} is locked by {path}, which cannot be read: if no run is using this '
            'workdir, delete that file.'
        ) from None
      if host == me['host'] and pid != me['pid'] and not _process_alive(pid):
        log(f'note: taking over the lock of process {pid} on {host}, which is gone ({path})')
        with contextlib.suppress(FileNotFoundError):
          os.remove(path)
        continue
      raise WorkdirBusyError(
          f'{workdir} is in use by process {pid} on {host} (lock {path}): wait for it to finish, '
          'or use another --workdir.'
      ) from None
    with os.fdopen(fd, 'w') as f:
      json.dump(me, f)
    break
  try:
    yield
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)


def holds_workdir(fn: Callable) -> Callable:
  """Decorator for ``fn(config, workdir, *, log=...)``: runs it under :func:`workdir_lock`.

  With ``config.train.distributed`` it first joins the cluster (:func:`initialize_distributed`);
  the other processes then run ``fn`` silently (``log`` a no-op) without the lock.
  """

  @functools.wraps(fn)
  def wrapped(config, workdir, *args, log: Callable[[str], None] = print, **kwargs):
    if 'train' in config and config.train.get('distributed', False):
      initialize_distributed(config.train, log)
      if not is_primary():  # The processes share the workdir; process 0 holds it and writes the files.
        return fn(config, workdir, *args, log=lambda s: None, **kwargs)
    with workdir_lock(workdir, log):
      return fn(config, workdir, *args, log=log, **kwargs)

  return wrapped


def save_state(ckpt, state, meta: dict[str, Any]) -> int:
  """Saves ``state`` under its own step counter (not the loop's, which may lag by one); returns it."""
  step = int(jax.device_get(state.step))
  ckpt.save(step, state, meta)
  return step


def window_batches(
    dataset, batch_size: int, seed: int, *, process: tuple[int, int] = (0, 1), **per_window
) -> Callable[[int], dict[str, Any]]:
  """``step -> batch``: step's shuffled windows (``data.batch_indices``) with keypoints, visibility, mask.

  ``per_window`` arrays (``[N, ...]``, indexed like the windows, e.g. teacher
  targets or pseudo-3D; None is left out) are gathered into the batch under
  their keyword. ``process=(index, count)``: this process's contiguous share
  (``batch_size / count`` windows) of every global batch, the only part it loads.
  """
  extra = {k: v for k, v in per_window.items() if v is not None}
  index, count = process
  if batch_size % count:
    raise ValueError(f'train.batch_size={batch_size} is not divisible by the {count} processes.')

  def batch_fn(step: int) -> dict[str, Any]:
    idx = batch_indices(dataset.num_windows, batch_size, seed=seed, step=step)
    idx = idx.reshape(count, -1)[index]
    full = dataset.take(idx)
    batch = {k: full[k] for k in ('keypoints', 'visibility', 'mask')}
    batch.update({k: v[idx] for k, v in extra.items()})
    return batch

  return batch_fn


def run_loop(
    state,
    step_fn: Callable,
    batch_fn: Callable[[int], dict[str, Any]],
    *,
    num_steps: int,
    ckpt,
    meta: dict[str, Any],
    workdir: str,
    train_config: ml_collections.ConfigDict,
    log: Callable[[str], None],
    finish: Callable = lambda s: s,
    progress: Callable[[dict[str, Any], float], str] = lambda m, rate: '',
    evaluate: Callable[[Any], dict[str, float]] | None = None,
) -> Any:
  """Runs ``step_fn`` from the state's step to ``num_steps`` and returns the final (device-layout) state.

  Args:
    state: the state in ``step_fn``'s layout (e.g. replicated), at step ``start``.
    step_fn: ``(state, batch) -> (state, metrics)``; ``metrics['finite']`` is 0
      for a step that was not applied.
    batch_fn: ``step -> batch`` (host arrays).
    num_steps: the step to stop at.
    ckpt: a ``checkpoint.Checkpointer``.
    meta: checkpoint metadata.
    workdir: the run's directory (metrics go to ``metrics.jsonl`` there, :class:`MetricWriter`).
    train_config: ``config.train``; its ``log_every`` and ``checkpoint_every``
      are the cadences (0: never, except the last step's log).
    log: progress sink.
    finish: converts ``step_fn``'s state layout back to a plain state for saving.
    progress: ``(metrics, steps_per_second) -> str`` appended to the progress line.
    evaluate: ``plain state -> {metric: value}``, called every ``train_config.eval_every``
      steps (not at ``num_steps``: the caller's final evaluation scores that step); its values
      go to ``metrics.jsonl`` as ``eval/<metric>``.

  Raises:
    NonFiniteLossError: a non-finite step. Nothing is saved then: the last
      checkpoint stays the newest, and a rerun resumes from it.
    KeyboardInterrupt: after saving the state (unless interrupted inside the
      step, whose donated buffers are gone: then the last checkpoint stands).
  """
  writer = MetricWriter(workdir)
  log_every, checkpoint_every = train_config.log_every, train_config.checkpoint_every
  start = step = int(jax.device_get(finish(state).step))
  t_loop, timed = time.time(), 0
  try:
    while step < num_steps:
      state, m = step_fn(state, batch_fn(step))
      if not bool(m['finite']):
        # Nothing is saved: the state that led here is suspect (a finite but diverging update can
        # precede the non-finite step), and saving it would rotate out an older good checkpoint.
        m = jax.device_get(m)
        bad = [k for k, v in m.items() if k != 'finite' and not np.isfinite(v)]
        last = ckpt.latest_step()
        kept = (
            f'the checkpoint of step {last} in {ckpt.directory} is kept, and a rerun resumes from it'
            if last is not None
            else 'no checkpoint was written, so a rerun starts afresh'
        )
        raise NonFiniteLossError(
            f'non-finite {"/".join(bad) or "updated parameters"} at step {step}: the step was not applied '
            f'and nothing since the last checkpoint is saved; {kept}. Lower optim.lr or check the data. '
            f'Metrics: {dict((k, float(v)) for k, v in m.items())}'
        )
      step += 1
      if step == start + 1:
        log(f'first step (compilation included) took {time.time() - t_loop:.1f} s')
        t_loop = time.time()
      else:
        timed += 1
      if (log_every and step % log_every == 0) or step == num_steps:
        m = jax.device_get(m)
        rate = timed / max(time.time() - t_loop, 1e-9)
        writer.write(step, {k: v for k, v in m.items() if k != 'finite'})
        log(
            f'step {step}/{num_steps} | {rate:.2f} steps/s{progress(m, rate)} | '
            f'ETA {format_duration((num_steps - step) / max(rate, 1e-9))}'
        )
        t_loop, timed = time.time(), 0
      eval_every = int(train_config.get('eval_every', 0) or 0)
      if evaluate is not None and eval_every and step % eval_every == 0 and step < num_steps:
        t_eval = time.time()
        scores = evaluate(finish(state))
        writer.write(step, {f'eval/{k}': v for k, v in scores.items()})
        log(f'eval at step {step}: ' + ' '.join(f'{k}={v:.4g}' for k, v in scores.items()))
        t_loop += time.time() - t_eval  # The steps/s shown stays the training's.
      if checkpoint_every and step % checkpoint_every == 0:
        save_state(ckpt, finish(state), meta)
  except KeyboardInterrupt:
    try:
      saved = save_state(ckpt, finish(state), meta)
      log(f'interrupted: saved step {saved}; rerun the same command to resume')
    except RuntimeError:  # Interrupted inside the step call: its input buffers were donated.
      log(f'interrupted mid-step: resume from the last checkpoint (step {ckpt.latest_step()})')
    raise
  save_state(ckpt, finish(state), meta)
  return state


# ----------------------------------------------------------------------------
# Command lines.
# ----------------------------------------------------------------------------


def cpu_compiler_options(cpu_dots: str = 'ynn', backend: str | None = None) -> dict[str, str]:
  """XLA compiler options choosing the CPU matrix-multiply backend (``train.cpu_dots``).

  ``'ynn'``: XLA's default (YNNPACK dot fusions): no options. ``'eigen'``: YNNPACK
  fusions off, so dots run as XLA's own Eigen kernels (faster for wide MLPs on large frame
  batches on a 2-core CPU; measured in ``experiments/benchmark.py --cpu_dots``). Empty off
  CPU (``backend``, default ``jax.default_backend()``).

  Raises:
    ValueError: an unknown ``cpu_dots``.
  """
  if cpu_dots not in configs.CPU_DOTS:
    raise ValueError(f'train.cpu_dots={cpu_dots!r}; expected one of {configs.CPU_DOTS}.')
  if cpu_dots == 'ynn' or (backend or jax.default_backend()) != 'cpu':
    return {}
  return {'xla_cpu_experimental_ynn_fusion_type': ''}


# Where the scripts keep XLA's compiled programs between runs (jax's persistent compilation cache):
# $NRSFM_JAX_CACHE_DIR, else ~/.cache/nrsfm_jax/xla; NRSFM_JAX_CACHE_DIR='' turns it off.
CACHE_ENV = 'NRSFM_JAX_CACHE_DIR'


def enable_compilation_cache(path: str | None = None, min_compile_seconds: float = 1.0) -> str | None:
  """Turns on jax's persistent compilation cache, so a rerun loads its compiled steps from disk.

  Only programs that took at least ``min_compile_seconds`` to compile are stored (the train and
  eval steps, not the small ops). Works on CPU and GPU.

  Args:
    path: the cache folder (default: ``$NRSFM_JAX_CACHE_DIR``, else ``~/.cache/nrsfm_jax/xla``).
    min_compile_seconds: the smallest compile time worth caching.

  Returns:
    The folder used, or None where ``NRSFM_JAX_CACHE_DIR`` is set empty.
  """
  if path is None:
    path = os.environ.get(CACHE_ENV, os.path.join(os.path.expanduser('~'), '.cache', 'nrsfm_jax', 'xla'))
  if not path:
    return None
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', float(min_compile_seconds))
  return path


# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -2, -3, -8
MALLOC_ENV = 'NRSFM_JAX_MALLOC'


def tune_malloc() -> bool:
  """Keeps freed memory in one glibc malloc arena instead of returning it to the OS every step.

  XLA's CPU runtime frees and reallocates its step buffers on worker threads; with glibc's
  defaults (per-thread arenas that shrink their heaps, large blocks mmap'd) each page is faulted
  in again on the next step: the teacher's step took about 20,000 minor page faults and 70 ms of
  kernel time per 180 ms step on 2 cores. One arena, no mmap below 1 GiB and no trimming below
  2 GiB (256 MiB top pad) removes them: the same step in 145-153 ms against 172-190 ms, the
  results bit for bit the same (the allocator does no arithmetic). Call it before the first jax
  computation (:func:`run_cli` does). A no-op (False) off glibc, or with ``$NRSFM_JAX_MALLOC=0``.
  """
  if os.environ.get(MALLOC_ENV, '1') == '0' or not sys.platform.startswith('linux'):
    return False
  import ctypes  # pylint: disable=g-import-not-at-top

  try:
    libc = ctypes.CDLL('libc.so.6')
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # musl, or no libc.so.6
    return False
  gib = 1 << 30
  settings = ((_M_ARENA_MAX, 1), (_M_MMAP_THRESHOLD, gib), (_M_TRIM_THRESHOLD, 2 * gib - 1), (_M_TOP_PAD, gib // 4))
  return all(mallopt(k, v) == 1 for k, v in settings)


def run_cli(main: Callable[[list[str]], Any], config_flags: Sequence[str] = ('config',)) -> None:
  """``absl.app.run(main)``, where user errors are one ``error:`` line, not a traceback.

  * :data:`RUN_ERRORS` raised by ``main`` (a busy workdir, a diverged step, bad
    data or config): their messages say what to do.
  * A mistaken config flag: ml_collections applies ``--config.a.b=v`` overrides
    while absl parses the flags, before ``main`` runs, and an unknown key raises
    a bare KeyError or AttributeError there; a config file that fails to load
    raises OSError at first use. Both become ``error: --config.a.b=v: config.a
    has no key 'b' (did you mean ...?)``.

  Other errors raised inside ``main`` keep their tracebacks. XLA's compiled programs persist
  between runs (:func:`enable_compilation_cache`), and freed memory stays in the process
  (:func:`tune_malloc`).

  Args:
    main: the script's ``main(argv)``.
    config_flags: names of its ``config_flags.DEFINE_config_file`` flags.
  """
  from absl import app, flags  # pylint: disable=g-import-not-at-top  (only scripts need absl's app)

  started = []
  tune_malloc()
  enable_compilation_cache()

  def wrapped(argv):
    for name in config_flags:
      try:
        config = getattr(flags.FLAGS, name)
        config.keys()  # A config that failed to load raises on first use.
      except OSError as e:  # ml_collections' "Configuration is not available ...": the load failure.
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        sys.exit(f'error: --{name}={flags.FLAGS[name].serialize().split("=", 1)[-1]}: {lines[-1] if lines else e}')
      try:  # Keys the user set that the chosen data does not read would be silently ignored.
        configs.check_applies(config, overridden_keys(sys.argv[1:], name))
      except configs.ConfigError as e:
        sys.exit(f'error: {e}')
    started.append(True)
    return main(argv)

  try:
    app.run(wrapped)
  except RUN_ERRORS as e:
    sys.exit(f'error: {e}')
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    if started:
      raise
    sys.exit(f'error: {override_error(e, sys.argv[1:], config_flags)}')


def overridden_keys(argv: Sequence[str], flag: str = 'config') -> list[str]:
  """The dotted config keys that ``--<flag>.a.b=v`` arguments set (``['a.b']``)."""
  head = f'--{flag}.'
  return [arg[len(head) :].split('=', 1)[0] for arg in argv if arg.startswith(head)]


def override_error(error: BaseException, argv: Sequence[str], config_flags: Sequence[str] = ('config',)) -> str:
  """One line for an override that ml_collections refused: the flag, the missing key and a suggestion."""
  while error.args and isinstance(error.args[0], BaseException):  # AttributeError(KeyError(...)).
    error = error.args[0]
  text = error.args[0] if error.args and isinstance(error.args[0], str) else str(error)
  lines = [line.strip().strip('\'"') for line in text.strip().strip('\'"').splitlines() if line.strip()]
  key = lines[0].strip('\'"') if lines else ''
  match = re.search(r'Did you mean "([^"]+)"', text)
  hint = f' (did you mean {match.group(1)!r}?)' if match else ''
  for arg in argv:
    for name in config_flags:
      head = f'--{name}.'
      if not arg.startswith(head):
        continue
      path = arg[len(head) :].split('=', 1)[0].split('.')
      if key in path:
        parent = '.'.join([name] + path[: path.index(key)])
        return f'{arg}: {parent} has no key {key!r}{hint}'
  return f'a config override was refused: {key or text}{hint}'
