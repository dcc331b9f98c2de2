r"""Speed benchmark: train-step throughput, compile time, memory, inference, fraction of matmul peak.

  python -m experiments.benchmark                  # default config + C3DPO-sized lifter
  python -m experiments.benchmark --quick          # small sizes, a smoke run
  python -m experiments.benchmark --output=bench.json
  python -m experiments.benchmark --dtype=bfloat16 --only=teacher_frame   # mixed precision, one case
  python -m experiments.benchmark --cpu_dots=eigen  # XLA's Eigen dots instead of YNNPACK (train.cpu_dots)
  python -m experiments.benchmark --only=c3dpo_b1024 --trace   # where the step's time goes (jax.profiler)
  python -m experiments.benchmark --large --only=teacher_d3dp --dtype=bfloat16 --attention=cudnn --trace --nosampling

Cases:
* ``default``: the default config's full student step (lifter + TCN + Ψ), its
  batch and window.
* ``lifter_b1024``: the default lifter row (``default.py:lifter``: 256 wide, 3 blocks), 1024
  single frames per step, as it trains in every ablation.
* ``c3dpo_b1024``: C3DPO's Human3.6M model (1024 wide, 6 blocks, Ψ with 4
  rotations on every frame, no TCN/smoothness), 1024 single frames per step,
  comparable with the official PyTorch code's samples/s.
* ``teacher_frame`` / ``teacher_st``: the teacher's denoiser step
  (``configs/teacher.py``) with per-frame tokens (the CPU default) and with
  per-joint spatial-temporal tokens at the same width, plus its H × K DDIM
  sampling throughput (pseudo-3D generation).
* ``paper`` / ``teacher_d3dp`` (``--large``, on by default on a GPU): the paper's student
  (C3DPO-sized lifter, 243-frame windows, batch 32) and D3DP's teacher size (16 × 243).
* ``evaluate``: ``evaluation.evaluate_run`` of a tiny run twice in one process, wall and
  compile time (``profiling.compile_seconds``, JAX's compile events): the second call reuses
  every compiled function.
"""

import json
import platform
import tempfile

import jax
import jax.numpy as jnp
from absl import app, flags, logging

from nrsfm_jax import configs, loop, profiling, train
from nrsfm_jax.models import denoiser

FLAGS = flags.FLAGS
flags.DEFINE_string('output', 'benchmark.json', 'Where to write the JSON results.')
flags.DEFINE_bool('quick', False, 'Small sizes and few repeats (smoke test).')
flags.DEFINE_integer('repeats', 10, 'Timed steps per case.')
flags.DEFINE_enum(
    'dtype',
    'float32',
    ['float32', 'bfloat16'],
    'Compute dtype of every model (model.dtype; bfloat16 = mixed precision, float32 parameters and optimiser).',
)
flags.DEFINE_enum(
    'attention',
    None,
    list(denoiser.ATTENTIONS),
    "The teachers' attention (model.attention; default: the config's, 'fused'). 'cudnn' (cuDNN flash "
    "attention) and 'cudnn_temporal' (cuDNN's over frames, XLA's over joints) need a CUDA GPU and "
    '--dtype=bfloat16.',
)
flags.DEFINE_string('only', '', 'Comma-separated case names to run (default: all).')
flags.DEFINE_bool(
    'trace',
    False,
    "Also trace each step with jax.profiler (profiling.trace_compiled): time per op kind on XLA's CPU "
    "worker threads or the GPU's op timeline (and its longest kernels), and op counts of the compiled HLO.",
)
flags.DEFINE_bool('sampling', True, "Also time the teachers' H x K sampling (pseudo-3D generation).")
flags.DEFINE_enum(
    'cpu_dots',
    'ynn',
    list(configs.CPU_DOTS),
    "Student steps' XLA CPU matmul backend (train.cpu_dots): XLA's default YNNPACK fusions or Eigen dots.",
)
flags.DEFINE_bool(
    'large',
    None,
    "Also the paper's student (243-frame windows, C3DPO-sized) and D3DP's teacher (16 x 243): for a GPU "
    '(default: on when the backend is not the CPU).',
)


def cases(quick: bool):
  default = configs.get('default')
  c3dpo = configs.get('c3dpo')
  c3dpo.model.use_refiner = False
  c3dpo.loss.terms.smooth.weight = 0.0
  c3dpo.loss.terms.reproj_init.weight = 0.0
  c3dpo.loss.terms.canon.frames = 0
  if quick:
    out = [('default', default, 4, 81), ('c3dpo_b128', c3dpo, 128, 1)]
  else:
    lifter = configs.get('default', 'lifter')
    out = [
        ('default', default, default.train.batch_size, default.data.window),
        ('lifter_b1024', lifter, lifter.train.batch_size, 1),
        ('c3dpo_b1024', c3dpo, 1024, 1),
    ]
  if FLAGS.large:  # The paper's student: C3DPO-sized lifter, 243-frame windows, batch 32.
    paper = configs.get('paper')
    out.append(('paper', paper, 4 if quick else paper.train.batch_size, 27 if quick else paper.data.window))
  return out


def teacher_cases(quick: bool):
  frame = configs.get('teacher')
  st = configs.get('teacher')
  st.model.arch = 'st'
  st.model.width = 64
  st.model.num_heads = 4
  batch, window = (4, 27) if quick else (frame.train.batch_size, frame.data.window)
  # 'st' at the CPU default's 256 width does not fit a reasonable step time; 64 wide is shown.
  out = [('teacher_frame', frame, batch, window), ('teacher_st64', st, batch, window)]
  if FLAGS.large:  # D3DP's size (spatial-temporal, depth 8, width 512), 16 windows of 243 frames.
    out.append(('teacher_d3dp', configs.get('teacher', 'd3dp'), 4 if quick else 16, 27 if quick else 243))
  return out


def _print_trace(t: dict) -> None:
  """Prints one line of ``profiling.trace_compiled``'s summary (and the longest GPU kernels)."""
  top = ', '.join(f'{k} {v:.1f}' for k, v in list(t['by_kind'].items())[:8])
  print(
      f'  trace: {t["wall_ms"]:.1f} ms wall per step, inside ops {t["busy_ms"]:.1f} ms (summed); '
      f'ms per step by kind: {top}; HLO: {t["hlo_ops"].get("dot", 0)} dot, '
      f'{t["hlo_ops"].get("custom-call", 0)} custom-call, {t["hlo_ops"].get("transpose", 0)} transpose, '
      f'{t["hlo_ops"].get("reduce-window", 0)} reduce-window'
  )
  for name, ms in list(t.get('kernels', {}).items())[:12]:
    print(f'    kernel {ms:7.2f} ms  {name}')


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
  repeats = 3 if FLAGS.quick else FLAGS.repeats
  # The peak at the models' compute dtype on a GPU (XLA's CPU matmuls are float32 either way);
  # 2048² saturates a CPU but not a large GPU (H200: 78 TFLOP/s at 2048², 353 at 8192² in float32).
  on_cpu = jax.default_backend() == 'cpu'
  n = 1024 if FLAGS.quick else 2048 if on_cpu else 8192
  peak_dtype = 'float32' if on_cpu else FLAGS.dtype
  peak = profiling.matmul_peak(n, repeats=repeats, dtype=jnp.dtype(peak_dtype))
  print(
      f'{jax.default_backend()} ({jax.devices()[0].device_kind}), jax {jax.__version__}: '
      f'{peak_dtype} matmul {peak["n"]}x{peak["n"]}: {peak["gflops"]:.1f} GFLOP/s'
      + (f' ({peak["backend"]} dots, the faster)' if on_cpu else '')
      + f'; models compute in {FLAGS.dtype}'
      + (f'; student steps with CPU dots: {FLAGS.cpu_dots}' if jax.default_backend() == 'cpu' else '')
      + (f'; teacher attention {FLAGS.attention}' if FLAGS.attention else '')
  )
  if FLAGS.large is None:
    FLAGS.large = jax.default_backend() != 'cpu'
  wanted = set(filter(None, FLAGS.only.split(',')))
  keep = lambda name: not wanted or name in wanted
  results = {
      'dtype': FLAGS.dtype,
      'cpu_dots': FLAGS.cpu_dots,
      'attention': FLAGS.attention or 'config default',
      'backend': jax.default_backend(),
      'device': jax.devices()[0].device_kind,
      'jax': jax.__version__,
      'machine': platform.machine(),
      'matmul': peak,
      'cases': {},
  }
  header = (
      f'{"case":<12}{"batch":>7}{"window":>7}{"params":>11}{"compile s":>10}{"step ms":>9}'
      f'{"windows/s":>11}{"frames/s":>11}{"GFLOP/s":>9}{"% peak":>8}{"infer fr/s":>12}'
  )
  print(header)
  trace_steps = (2 if FLAGS.quick else 3) if FLAGS.trace else 0
  for name, config, batch, window in cases(FLAGS.quick):
    if not keep(name):
      continue
    config.model.dtype = FLAGS.dtype
    config.train.cpu_dots = FLAGS.cpu_dots
    r = profiling.benchmark_train_step(
        config, batch_size=batch, window=window, repeats=repeats, trace_steps=trace_steps
    )
    r['fraction_of_matmul_peak'] = r['gflops'] / peak['gflops']
    results['cases'][name] = r
    print(
        f'{name:<12}{batch:>7}{window:>7}{r["params"]:>11,}{r["compile_s"]:>10.1f}{r["step_s"] * 1e3:>9.1f}'
        f'{r["windows_per_s"]:>11.1f}{r["frames_per_s"]:>11,.0f}{r["gflops"]:>9.1f}'
        f'{100 * r["fraction_of_matmul_peak"]:>7.1f}%{r["inference_frames_per_s"]:>12,.0f}'
    )
    if 'trace' in r:
      _print_trace(r['trace'])
  print(
      f'{"case":<14}{"batch":>7}{"window":>7}{"params":>11}{"compile s":>10}{"step ms":>9}'
      f'{"frames/s":>11}{"GFLOP/s":>9}{"% peak":>8}{"H×K sample fr/s":>17}'
  )
  for name, config, batch, window in teacher_cases(FLAGS.quick):
    if not keep(name):
      continue
    config.model.dtype = FLAGS.dtype
    if FLAGS.attention:
      config.model.attention = FLAGS.attention
    r = profiling.benchmark_teacher_step(
        config,
        batch_size=batch,
        window=window,
        repeats=repeats,
        sampling=FLAGS.sampling,
        trace_steps=trace_steps,
    )
    r['fraction_of_matmul_peak'] = r['gflops'] / peak['gflops']
    results['cases'][name] = r
    print(
        f'{name:<14}{batch:>7}{window:>7}{r["params"]:>11,}{r["compile_s"]:>10.1f}{r["step_s"] * 1e3:>9.1f}'
        f'{r["frames_per_s"]:>11,.0f}{r["gflops"]:>9.1f}{100 * r["fraction_of_matmul_peak"]:>7.1f}%'
        f'{r["sample_frames_per_s"]:>17,.0f}'
    )
    if 'trace' in r:
      _print_trace(r['trace'])
  # Evaluation twice in one process (a tiny run trained here): the second call should reuse every
  # compiled function (issue #13: under 10% of its time compiling).
  evals = []
  if keep('evaluate'):
    with tempfile.TemporaryDirectory() as workdir:
      tiny = configs.get('tiny')
      tiny.train.num_steps = 2
      train.train_and_evaluate(tiny, workdir, log=lambda s: None, evaluate=False)
      evals = profiling.benchmark_evaluate(workdir, repeats=2)
    results['evaluate'] = evals
  for i, e in enumerate(evals, 1):
    print(
        f'evaluate #{i} (tiny run, cmu17 006): {e["wall_s"]:.2f} s, {e["compile_s"]:.2f} s compiling '
        f'({100 * e["compile_fraction"]:.0f}%)'
        + ('; target < 10%: ' + ('met' if e['compile_fraction'] < 0.1 else 'NOT met') if i > 1 else '')
    )
  results['peak_rss_mib'] = profiling.peak_rss_mib()
  print(f'peak RSS {results["peak_rss_mib"]:.0f} MiB')
  with open(FLAGS.output, 'w') as f:
    json.dump(results, f, indent=2)
  print(f'wrote {FLAGS.output}')


if __name__ == '__main__':
  # As every training script (loop.run_cli): freed step buffers stay in the process, so the steps
  # timed here run as they do in training. No persistent compilation cache: compile times are real.
  loop.tune_malloc()
  app.run(main)
