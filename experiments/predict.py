r"""Lifts a user's 2D keypoints to 3D, with no training: the shipped model, or your own run.

  python -m experiments.predict --input=detections.json --output=out/         # COCO-17 JSON
  python -m experiments.predict --input=openpose_json/ --output=out/          # OpenPose folder
  python -m experiments.predict --input=tracks.csv --output=out/              # frame,joint,x,y,score
  python -m experiments.predict --input=tracks.npz --workdir=runs/cmu17       # our .npz, your run
  python -m experiments.predict --demo                # a held-back mocap trial, scored against its 3D

Formats and the joint mapping to the model's Human3.6M-17 order: ``nrsfm_jax.data.keypoints``.
Writes, in --output (default: ``<input without extension>_3d``):

* ``<name>_3d.npz``: ``points3d [F, 17, 3]`` (root-relative, camera frame: x right, y down,
  z away from the camera, in the input's units; NaN on frames with no keypoint), the 2D
  ``keypoints``/``visibility`` it was lifted from, ``frames`` (the input's frame ids),
  ``joints`` (names) and, with a teacher (by default with the shipped model), ``uncertainty
  [F, 17]`` (the teacher's hypotheses' per-joint spread, input units) and ``teacher3d``
  (their joint-wise aggregate);
* ``<name>_3d.csv``: ``frame, joint, x, y, z[, uncertainty]`` (empty where a frame had no keypoint);
* ``<name>.gif``: the 2D input beside the 3D from two viewpoints; ``<name>_sheet.png``: a few frames.
"""

import sys

from absl import app, flags, logging

from nrsfm_jax import loop, predict
from nrsfm_jax.data import keypoints as kp_lib

_INPUT = flags.DEFINE_string('input', None, 'Keypoints: .json (COCO-17), .csv, .npz, or an OpenPose folder.')
_DEMO = flags.DEFINE_bool(
    'demo',
    False,
    'No file at hand: write the held-back trial 002_04, seen from a new camera angle, as a COCO-17 JSON in '
    '--output (default runs/predict_demo), lift it, and score it against its mocap 3D.',
)
_OUTPUT = flags.DEFINE_string('output', None, 'Output folder (default: <input without extension>_3d).')
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'A student run (experiments/train.py) or an exported .npz; default: the shipped model.'
)
_TEACHER = flags.DEFINE_string(
    'teacher',
    'auto',
    "A diffusion teacher for per-joint uncertainty: a teacher run or export; 'auto' (default): the shipped "
    "teacher with the shipped model, none with --workdir; '' for none (faster).",
)
_FORMAT = flags.DEFINE_enum('format', 'auto', ('auto',) + kp_lib.FORMATS, 'Input format (auto: from the name).')
_PERSON = flags.DEFINE_integer('person', 0, 'Which person of each frame (detector formats, in file order).')
_MIN_SCORE = flags.DEFINE_float('min_score', 0.3, 'Detector scores below this make a keypoint missing.')
_PICTURES = flags.DEFINE_bool('pictures', True, 'Write the GIF and the contact sheet (needs matplotlib).')
_GIF_FRAMES = flags.DEFINE_integer('gif_frames', 120, 'At most this many frames in the GIF (evenly subsampled).')


def main(argv):
  logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if _DEMO.value == bool(_INPUT.value):
    raise app.UsageError('Give --input=<file or folder>, or --demo.')
  try:  # A malformed input or a missing model is the user's to fix: one line, no traceback.
    predict.predict_file(
        _INPUT.value,
        _OUTPUT.value,
        model=_WORKDIR.value,
        teacher=_TEACHER.value,
        fmt=_FORMAT.value,
        person=_PERSON.value,
        min_score=_MIN_SCORE.value,
        pictures=_PICTURES.value,
        gif_frames=_GIF_FRAMES.value,
        demo=_DEMO.value,
    )
  except (OSError, ValueError, KeyError) as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  loop.run_cli(main, config_flags=())
