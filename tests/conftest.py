"""Test setup: 4 fake CPU devices for the data-parallel tests (set before jax is imported)."""

import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=4').strip()
