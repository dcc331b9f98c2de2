"""README's Python API block runs as it stands (its names exist and its shapes are right)."""

import os
import re

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'README.md')


def _api_block() -> str:
  text = open(README).read()
  marker = text.index('tests/test_readme.py executes it')
  return re.search(r'```python\n(.*?)```', text[marker:], re.S).group(1)


@pytest.mark.slow
def test_readme_api_block_runs(capsys, monkeypatch):
  from nrsfm_jax import configs

  get = configs.get

  def one_device(*args, **kwargs):
    # The block trains on every local device ('auto'); here that is conftest's 4 fake ones on
    # 2 cores, which only slows it down (the data-parallel step has its own tests).
    config = get(*args, **kwargs)
    config.train.parallel = 'none'
    return config

  monkeypatch.setattr(configs, 'get', one_device)
  namespace: dict = {}
  exec(compile(_api_block(), 'README.md (Python API)', 'exec'), namespace)  # noqa: S102
  assert namespace['R_hat'].shape == (8, 3, 3) and namespace['per_frame'].shape == (8,)
  assert namespace['points3d'].shape == (8, 17, 3) and namespace['lifted']['points3d'].shape == (8, 17, 3)
  assert namespace['lifted']['uncertainty'].shape == (8, 17)
  assert namespace['x0_hat'].shape == namespace['x0'].shape
  assert 'depth 0' in capsys.readouterr().out
