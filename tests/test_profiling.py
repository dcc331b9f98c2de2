"""Tests for nrsfm_jax.profiling's step trace (what benchmark.py --trace prints)."""

from nrsfm_jax import configs, profiling


def test_trace_train_step_breaks_the_step_down_by_op_kind():
  config = configs.get('tiny')
  config.train.cpu_dots = 'eigen'
  t = profiling.trace_train_step(config, batch_size=4, window=9, steps=2)
  assert t['wall_ms'] > 0 and t['busy_ms'] > 0
  assert t['by_kind'] and all(v >= 0 for v in t['by_kind'].values())
  assert list(t['by_kind'].values()) == sorted(t['by_kind'].values(), reverse=True)
  assert 'ynn_fusion' not in t['by_kind']  # Eigen dots: YNNPACK's fusions are off.
  assert t['hlo_ops'].get('dot', 0) > 0


def test_teacher_benchmark_counts_flops_before_optimisation_and_traces_the_same_step():
  """The FLOP count is the lowered program's (the same on every backend; on the CPU close to the
  compiled count: 9% off for this tiny model, whose elementwise ops XLA's optimiser rewrites, 2-3%
  for the students), and trace_steps traces the compiled step that was timed."""
  import jax

  from nrsfm_jax import teacher

  config = configs.get('teacher')
  config.model.width, config.model.depth, config.model.num_heads = 32, 1, 2
  r = profiling.benchmark_teacher_step(config, batch_size=2, window=9, repeats=1, sampling=False, trace_steps=1)
  _, state, batch, key, schedule = profiling._teacher_setup(config, 2, 9, 17)
  compiled = teacher.teacher_step.lower(state, batch, key, schedule).compile()
  cost = compiled.cost_analysis()
  compiled_flops = float((cost[0] if isinstance(cost, (list, tuple)) else cost)['flops'])
  assert abs(r['flops_per_step'] / compiled_flops - 1) < 0.15
  assert r['sample_frames_per_s'] != r['sample_frames_per_s']  # NaN: sampling off
  assert r['trace']['wall_ms'] > 0 and r['trace']['by_kind']
  assert jax.tree.leaves(state)  # The setup's state is usable (the step donates only its own).


def test_gpu_kernel_kinds():
  assert profiling.gpu_kernel_kind('nvjet_sm90_tst_256x144_64x4_1x2_h_bz_coopA_NNT') == 'matmul'
  assert profiling.gpu_kernel_kind('sm90_xmma_gemm_bf16bf16_bf16f32') == 'matmul'
  assert profiling.gpu_kernel_kind('cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16') == 'attention'
  assert profiling.gpu_kernel_kind('void cudnn::fusion::compute_dot_do_o_specialized<true, 64>(void const*)') == 'cudnn'
  assert profiling.gpu_kernel_kind('loop_pad_fusion_75') == 'loop_pad_fusion'
  assert profiling.gpu_kernel_kind('input_add_reduce_fusion_104') == 'input_add_reduce_fusion'
