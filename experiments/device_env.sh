# Sourced by the scripts for a lent GPU machine (gpu_check.sh, gpu_sweep.sh): its python has jax with
# CUDA but no ml_collections and no network, so ml_collections comes from the wheel carried in .whl/
# (pip download --no-deps --python-version 3.12 --only-binary=:all: ml_collections==1.1.0 -d .whl).
# Also: the repository on PYTHONPATH and jax's persistent compilation cache in /tmp.
if ! python -c 'import ml_collections' 2>/dev/null; then
  pip install -q --no-index --no-deps --target=.deps .whl/ml_collections-*.whl
  export PYTHONPATH="$PWD/.deps${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export NRSFM_JAX_CACHE_DIR="${NRSFM_JAX_CACHE_DIR:-/tmp/nrsfm_jax_xla}"
