#!/usr/bin/env bash
# Installs the upstream MCP servers the MCP gateway tests import, pinned, into .cache/npm-mcp/
# (gitignored):
#   @modelcontextprotocol/server-everything   every protocol feature (progress, annotations...)
#   @modelcontextprotocol/server-filesystem   allowed directories given on its command line
#   @modelcontextprotocol/server-memory       a knowledge graph in a JSON file
# The Python upstreams (mcp-server-git, mcp-server-time) are pinned in the `dev` extra instead.
# Idempotent: when the stamp file names the pinned set, nothing is done, so a second run costs
# nothing. Prints the cache directory on its last line; the servers' entry points are in
# $CACHE/node_modules/.bin/ (mcp-server-everything, mcp-server-filesystem, mcp-server-memory).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

EVERYTHING_VERSION=2026.8.31
FILESYSTEM_VERSION=2026.8.31
MEMORY_VERSION=2026.8.31
CACHE=${CORRAL_MCP_SERVERS_CACHE:-$PWD/.cache/npm-mcp}
SPECS=(
  "@modelcontextprotocol/server-everything@$EVERYTHING_VERSION"
  "@modelcontextprotocol/server-filesystem@$FILESYSTEM_VERSION"
  "@modelcontextprotocol/server-memory@$MEMORY_VERSION"
)
STAMP="${SPECS[*]}"

if [ -f "$CACHE/.installed" ] && [ "$(cat "$CACHE/.installed")" = "$STAMP" ]; then
  echo "$CACHE"
  exit 0
fi
echo "==> npm install ${SPECS[*]} into $CACHE" >&2
rm -rf "$CACHE"
mkdir -p "$CACHE"
echo '{"name": "corral-mcp-servers", "private": true}' >"$CACHE/package.json"
npm install --prefix "$CACHE" --no-audit --no-fund --loglevel=error "${SPECS[@]}" >&2
echo "$STAMP" >"$CACHE/.installed"
echo "$CACHE"
