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
