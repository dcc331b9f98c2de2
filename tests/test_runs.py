"""Tests for nrsfm_jax.runs: one way to reload a run."""

import json
import os

import chex
import jax
import pytest

from nrsfm_jax import models, runs, train


def test_load_run(run, loaded):
  workdir, _ = run
  config, model, params, meta = loaded
  with open(os.path.join(workdir, 'config.json')) as f:
    assert config.to_dict() == json.load(f)
  assert meta['num_points'] == 17 and meta['step'] == 2
  assert model.config == models.from_config('student', config.model, 17).config
  _, state = train.create_state(config, 17, config.data.window, jax.random.PRNGKey(0))
  chex.assert_trees_all_equal_shapes(params, state.params)


def test_load_run_errors(run, tmp_path):
  with pytest.raises(FileNotFoundError, match='No run directory at .*nope'):
    runs.load_run(str(tmp_path / 'nope'))
  assert not (tmp_path / 'nope').exists()
  with pytest.raises(FileNotFoundError, match=r'config\.json is missing'):
    runs.load_run(str(tmp_path))
  (tmp_path / 'config.json').write_text('{}')
  with pytest.raises(FileNotFoundError, match=r'No checkpoints directory at .*checkpoints'):
    runs.load_run(str(tmp_path))
  assert not (tmp_path / 'checkpoints').exists()
  with pytest.raises(ValueError, match=r'No checkpoint for step 99 .* saved steps: \[2\]'):
    runs.load_run(run[0], step=99)
