#!/usr/bin/env bash
# The main job, end to end: install, start Corral (API + worker + embedded model), apply the
# example agent, run it on the source tree of the installed httpx package, and print the answer,
# the steps, the trace and the audit chain; then run the example eval suite on the same agent
# version (questions about httpx, through the same governed runtime) and print its score table. Data goes to CORRAL_HOME (default: a fresh temp dir).
CORRAL_EXTRAS=local
# shellcheck source=scripts/_env.sh
. "$(dirname "$0")/_env.sh"

export CORRAL_HOME="${CORRAL_HOME:-$(mktemp -d -t corral-demo-XXXXXX)}"
WORKSPACE=$(python -c 'import httpx, os; print(os.path.dirname(httpx.__file__))')
# Runs may only read directories under a workspace root: add the package directory as one.
export CORRAL_WORKSPACES__ROOTS="$WORKSPACE${CORRAL_WORKSPACES__ROOTS:+:$CORRAL_WORKSPACES__ROOTS}"
export CORRAL_API__PORT="${CORRAL_API__PORT:-8420}"
echo "==> starting corral up (data in $CORRAL_HOME, log in $CORRAL_HOME/up.log)"
mkdir -p "$CORRAL_HOME"
corral up > "$CORRAL_HOME/up.log" 2>&1 &
UP_PID=$!
trap 'kill -INT $UP_PID 2>/dev/null; wait $UP_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  if curl -sf "http://127.0.0.1:$CORRAL_API__PORT/healthz" > /dev/null; then break; fi
  if ! kill -0 $UP_PID 2>/dev/null; then cat "$CORRAL_HOME/up.log"; exit 1; fi
  sleep 1
done

echo "==> corral whoami (the local admin; its key is in $CORRAL_HOME/admin.key)"
corral whoami
echo "==> corral apply -f examples/agents/"
corral apply -f examples/agents/
echo "==> corral run repo-analyst ... --workspace $WORKSPACE --follow"
corral run repo-analyst "What does this Python package do? Name its main modules." \
  --workspace "$WORKSPACE" --follow || true
RUN_ID=$(corral get runs --limit 1 -o name)
echo "==> corral describe run $RUN_ID"
corral describe run "$RUN_ID"
echo "==> corral trace $RUN_ID"
corral trace "$RUN_ID"
echo "==> corral audit events --run $RUN_ID"
corral audit events --run "$RUN_ID"
echo "==> corral apply -f examples/evals/"
corral apply -f examples/evals/
echo "==> corral eval run repo-analyst --workspace $WORKSPACE"
corral eval run repo-analyst --workspace "$WORKSPACE" || true
echo "==> corral audit verify"
corral audit verify
