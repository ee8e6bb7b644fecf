#!/usr/bin/env bash
# Installs everything the tests need and runs them: lint, types, domain boundaries (import-linter
# contracts in .importlinter), and the whole suite on SQLite and PostgreSQL, including the tests
# that run the embedded model (pytest -m llm).
CORRAL_EXTRAS=dev,local
# shellcheck source=scripts/_env.sh
. "$(dirname "$0")/_env.sh"

# PostgreSQL: use CORRAL_TEST_POSTGRES_URL if given, else make sure a local server is up.
if [ -z "${CORRAL_TEST_POSTGRES_URL:-}" ]; then
  eval "$(bash scripts/ensure-postgres.sh)"
fi
export CORRAL_TEST_REQUIRE_POSTGRES=1

echo "==> ruff"
ruff check src tests benchmarks
ruff format --check src tests benchmarks
echo "==> mypy --strict src"
mypy src
echo "==> lint-imports (domain boundaries: .importlinter)"
lint-imports --no-cache
# The portal's browser tests drive Debian's chromium through Playwright (never `playwright
# install`); CI runs as root. With CORRAL_TEST_REQUIRE_BROWSER=1 they fail instead of skipping.
if [ ! -x /usr/bin/chromium ]; then
  echo "==> apt-get install chromium (portal browser tests)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi
export CORRAL_TEST_REQUIRE_BROWSER=1

echo "==> pytest (SQLite + PostgreSQL, embedded model included)"
pytest -q -p no:cacheprovider "$@"
