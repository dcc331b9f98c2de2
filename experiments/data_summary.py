"""Prints what data ships with nrsfm_jax and draws one frame of each dataset.

Usage:
  python -m experiments.data_summary [--plot_dir=runs/data_summary]  # --plot_dir= skips plots
"""

from absl import app, flags

from nrsfm_jax.data import format_summary, summarize_bundled
from nrsfm_jax.plotting import plot_bundled

_PLOT_DIR = flags.DEFINE_string(
    'plot_dir', 'runs/data_summary', 'Folder for one PNG per dataset; empty to skip plotting.'
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError('Too many command-line arguments.')
  print(format_summary(summarize_bundled()))
  if _PLOT_DIR.value:
    for path in plot_bundled(_PLOT_DIR.value):
      print(f'wrote {path}')


if __name__ == '__main__':
  app.run(main)
