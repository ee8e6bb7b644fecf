#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers on 127.0.0.1:5432 and prints the export line for
# CORRAL_TEST_POSTGRES_URL. Starts an installed cluster, or installs Debian's postgresql first.
set -euo pipefail
URL="postgresql+asyncpg://postgres@127.0.0.1:5432/test"
ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
if ! command -v pg_isready > /dev/null; then
  echo "installing PostgreSQL from Debian's packages" >&2
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
if ! ready; then
  version=$(ls /etc/postgresql | sort -n | tail -1)
  pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || true
  for _ in $(seq 1 30); do ready && break; sleep 1; done
fi
ready || { echo "PostgreSQL did not start on 127.0.0.1:5432" >&2; exit 1; }
# A fresh Debian cluster wants a password over TCP: give postgres one and use it.
if ! psql -h 127.0.0.1 -U postgres -d postgres -w -c "select 1" > /dev/null 2>&1; then
  su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'corral'\"" >&2
  URL="postgresql+asyncpg://postgres:corral@127.0.0.1:5432/test"
  export PGPASSWORD=corral
fi
if ! psql -h 127.0.0.1 -U postgres -d test -w -c "select 1" > /dev/null 2>&1; then
  psql -h 127.0.0.1 -U postgres -d postgres -w -q -c "CREATE DATABASE test" >&2
fi
echo "export CORRAL_TEST_POSTGRES_URL='$URL'"
