r"""Which 3D-free criterion chooses the prior-free solver's K? Every candidate K, scored.

  python -m experiments.classic_study [--sequences=drink,dance,pickup,yoga,stretch --bases=2,3,4,5,6,7,8,10]

A flag layer over :func:`nrsfm_jax.ablation.classic_study`. For each sequence and each K: the
prior-free solution (:func:`nrsfm_jax.classic.cameras` with rank 3K, then
:func:`nrsfm_jax.classic.nuclear_norm_shapes`), its 3D-free criteria (the rank ratio of its
shapes, :func:`nrsfm_jax.classic.shape_rank_ratio`, which ``classic.fit`` uses; the held-out 2D
error, :func:`nrsfm_jax.classic.heldout_error`, its rule before; the mean disagreement with the
other K's solutions, :func:`nrsfm_jax.classic.relative_distance`) and, for judging the criteria
only, its e3D and e3D-akhter against the 3D. Prints one line per fit and writes
``classic_study.json`` and a markdown table into --output_dir.

``--rotations`` instead asks how much of the error is in the cameras
(:func:`nrsfm_jax.ablation.rotation_study`): at one K per sequence (the one ``classic.fit`` chooses,
or ``--bases`` when it holds one value), the nuclear-norm shapes on the solver's cameras, on each
of ``--starts`` single corrective-matrix starts (with each 3D-free criterion's pick), and on the
true 3D's own cameras (generalised Procrustes of the 3D: a reference that reads the 3D). Writes
``rotation_study.json`` and ``rotation_study.md``:

  python -m experiments.classic_study --rotations --sequences=dance,drink --starts=16
"""

import os

from absl import app, flags

from nrsfm_jax import ablation, classic, loop

_SEQUENCES = flags.DEFINE_list(
    'sequences', ['drink', 'dance', 'pickup', 'yoga', 'stretch'], 'Bundled names or .npz paths.'
)
_BASES = flags.DEFINE_list('bases', [str(k) for k in classic.SHAPE_BASES], 'Candidate K.')
_ROTATIONS = flags.DEFINE_bool('rotations', False, "Study the solver's cameras instead of K (ablation.rotation_study).")
_STARTS = flags.DEFINE_integer('starts', 16, '--rotations: single corrective-matrix starts per sequence.')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', 'runs/classic_study', 'Where classic_study.json and .md go.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  bases = [int(k) for k in _BASES.value]
  os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
  if _ROTATIONS.value:
    k = bases[0] if len(bases) == 1 else None
    rotations = {seq: ablation.rotation_study(seq, k, _STARTS.value) for seq in _SEQUENCES.value}
    loop.write_json_atomic(os.path.join(_OUTPUT_DIR.value, 'rotation_study.json'), rotations)
    text = ablation.rotation_study_table(rotations)
    with open(os.path.join(_OUTPUT_DIR.value, 'rotation_study.md'), 'w') as f:
      f.write(text + '\n')
    print(text)
    return
  results = {seq: ablation.classic_study(seq, bases) for seq in _SEQUENCES.value}
  loop.write_json_atomic(
      os.path.join(_OUTPUT_DIR.value, 'classic_study.json'),
      {seq: {str(k): r for k, r in rows.items()} for seq, rows in results.items()},
  )
  text = ablation.classic_study_table(results)
  with open(os.path.join(_OUTPUT_DIR.value, 'classic_study.md'), 'w') as f:
    f.write(text + '\n')
  print(text)


if __name__ == '__main__':
  app.run(main)
