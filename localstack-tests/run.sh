#!/usr/bin/env bash
# The end-to-end suite in one command: build the router, install and start LocalStack (host
# mode), run pytest over localstack-tests/, always stop LocalStack, exit with pytest's status.
# Extra arguments go to pytest (e.g. `run.sh -k firehose -x`).
#
# LOGFERRY_BIN=/path/to/logferry skips the build and tests that binary instead;
# LOGFERRY_INDEXER_BIN=/path/to/bootstrap likewise for the indexer Lambda (lambda/build.sh).
# LOCALSTACK_ENDPOINT=http://host:port uses a LocalStack that is already running.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
ls_sh=$here/localstack.sh
t_start=$SECONDS

if [[ -z ${LOGFERRY_BIN:-} ]]; then
  (cd "$repo" && cargo build --release -p logferry)
  export LOGFERRY_BIN=$repo/target/release/logferry
fi
[[ -x $LOGFERRY_BIN ]] || { echo "run.sh: no router binary at $LOGFERRY_BIN" >&2; exit 1; }
# The indexer Lambda (glibc 2.34 build through cargo-lambda), once per run.
if [[ -z ${LOGFERRY_INDEXER_BIN:-} ]]; then
  LOGFERRY_INDEXER_BIN=$("$repo/lambda/build.sh" | tail -n 1)
  export LOGFERRY_INDEXER_BIN
fi
[[ -x $LOGFERRY_INDEXER_BIN ]] || { echo "run.sh: no indexer binary at $LOGFERRY_INDEXER_BIN" >&2; exit 1; }

"$ls_sh" install
venv_python=${LOGFERRY_CACHE:-$HOME/.cache/logferry}/localstack-venv/bin/python

# Stop LocalStack on exit, always, unless it was already running before this script (then
# it belongs to whoever started it).
if [[ -z ${LOCALSTACK_ENDPOINT:-} ]] && "$ls_sh" status >/dev/null 2>&1; then
  echo "run.sh: LocalStack is already running; using it and leaving it running" >&2
else
  trap '"$ls_sh" stop || true' EXIT
fi
trap 'exit 130' INT
trap 'exit 143' TERM
# Not exported as LOCALSTACK_ENDPOINT here: for localstack.sh that variable means "not ours,
# do not stop it". pytest gets it below.
endpoint=$("$ls_sh" start | tail -n 1)
echo "run.sh: LocalStack at $endpoint; router $LOGFERRY_BIN; indexer $LOGFERRY_INDEXER_BIN" >&2

cd "$here"
status=0
LOCALSTACK_ENDPOINT=$endpoint PYTHONDONTWRITEBYTECODE=1 "$venv_python" -m pytest "$@" || status=$?
echo "run.sh: pytest exited $status after $((SECONDS - t_start)) s in total" >&2
exit "$status"
