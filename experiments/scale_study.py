r"""How `predict.lift` should read a user's units: the 2D spread against the limbs, on held-out views.

  python -m experiments.scale_study [--workdir=<run or export>] [--trials=002_04,006_14,...]

Each bundled trial is seen from camera angles the shipped model never trained on, in pixels
(0.4 px/mm, `predict.demo_view`), and lifted with the input's scale taken three ways: from its
2D RMS (what `dataset_scale` gives), from its limbs (`predict.limb_scale`, the default), and the
true 0.4. Prints the MPJPE (mm) of each, per view and on average.
"""

import numpy as np
from absl import app, flags, logging

from nrsfm_jax import loop, metrics, predict
from nrsfm_jax.data import center_2d, dataset_scale

_WORKDIR = flags.DEFINE_string('workdir', None, 'A student run or export (default: the shipped model).')
_TRIALS = flags.DEFINE_list('trials', ['002_04', '006_14', '005_02', '003_01', '002_07'], 'Bundled trials.')
_VIEWS = ((20.0, 15.0), (0.0, 30.0), (45.0, 0.0), (120.0, 20.0))


def main(argv):
  logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  predictor = predict.load_predictor(_WORKDIR.value)
  rows = {'2D RMS': [], 'limbs (default)': [], 'true': []}
  print(f'model: {predictor.source}')
  print('trial   azimuth elevation | ' + ' | '.join(rows))
  for trial in _TRIALS.value:
    for azimuth, elevation in _VIEWS:
      keypoints, truth = predict.demo_view(trial, azimuth=azimuth, elevation=elevation)
      visibility = np.ones(keypoints.shape[:2], np.float32)
      rms = dataset_scale(center_2d(keypoints, visibility)[0], visibility) / predictor.scale
      scales = {'2D RMS': rms, 'limbs (default)': predict.limb_scale(keypoints, visibility), 'true': 0.4}
      for name, scale in scales.items():
        points = predict.lift(predictor, keypoints, visibility, scale=scale)['points3d']
        rows[name].append(float(np.mean(metrics.mpjpe(points, truth))) / 0.4)
      print(f'{trial}  {azimuth:7.0f} {elevation:9.0f} | ' + ' | '.join(f'{v[-1]:.1f}' for v in rows.values()))
  print('mean                      | ' + ' | '.join(f'{np.mean(v):.1f}' for v in rows.values()))


if __name__ == '__main__':
  loop.run_cli(main, config_flags=())
