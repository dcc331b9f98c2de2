"""Test setup: 4 fake CPU devices for the data-parallel tests (set before jax is imported).

The repository root goes on ``sys.path`` so the tests of ``experiments/`` scripts import
the same way under ``pytest`` as under ``python -m pytest``.
"""

import os
import sys

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=4').strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
