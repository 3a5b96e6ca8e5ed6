#!/usr/bin/env bash
# LocalStack for the end-to-end tests, in host mode (no Docker on these machines).
#
#   localstack.sh install   venv with the pinned LocalStack, boto3, pytest, pyarrow, duckdb (idempotent)
#   localstack.sh start     start it on 127.0.0.1:${LOCALSTACK_PORT:-4566}, wait until healthy
#   localstack.sh stop      stop what start started; nothing is left running
#   localstack.sh status    print the endpoint's health
#   localstack.sh endpoint  print the endpoint URL
#
# Why host mode and a pinned venv: LocalStack 4.14 (localstack-core[runtime]) runs as a plain
# Python 3.13 process; pinned with --exclude-newer, the same resolution installs on every
# machine. The venv lives outside the repo (${LOGFERRY_CACHE:-~/.cache/logferry}) and all
# LocalStack state under a temp dir that stop deletes, so nothing is ever committed.
# With LOCALSTACK_ENDPOINT set, an already running LocalStack is used: start/stop only
# check it.
#
# Environment: LOGFERRY_CACHE, LOCALSTACK_PORT, LOCALSTACK_ENDPOINT, LOCALSTACK_PYTHON (a
# python3.13 to build the venv with), LOCALSTACK_START_TIMEOUT (s, default 120),
# LOCALSTACK_RUN_DIR (state, pid and log; default ${TMPDIR:-/tmp}/logferry-localstack-PORT).
set -euo pipefail

LS_SPEC='localstack-core[runtime]==4.14.0'
LS_EXTRA=(boto3 pytest fluent-logger==0.11.1 msgpack==1.1.1 pyarrow duckdb)
EXCLUDE_NEWER=2026-02-27
SERVICES=s3,logs,firehose,kinesis,sqs,sts,iam
REQUIRED=(s3 logs firehose kinesis)
# LocalStack's Kinesis is kinesis-mock (npm `kinesis-local`, its default node engine), which
# it would npm-install on the first Kinesis call of every start (the state dir is new each
# time): installed once by `install` under the cache, linked into each run's static libs.
KINESIS_MOCK_VERSION=0.5.2

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${LOGFERRY_CACHE:-$HOME/.cache/logferry}
VENV=$CACHE/localstack-venv
MARKER=$VENV/.logferry-installed
KINESIS_MOCK_DIR=$CACHE/kinesis-local-$KINESIS_MOCK_VERSION
PORT=${LOCALSTACK_PORT:-4566}
RUN_DIR=${LOCALSTACK_RUN_DIR:-${TMPDIR:-/tmp}/logferry-localstack-$PORT}
PID_FILE=$RUN_DIR/localstack.pid
LOG_FILE=$RUN_DIR/localstack.log
START_TIMEOUT=${LOCALSTACK_START_TIMEOUT:-120}

log() { echo "localstack.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

endpoint() {
  if [[ -n ${LOCALSTACK_ENDPOINT:-} ]]; then
    echo "${LOCALSTACK_ENDPOINT%/}"
  else
    echo "http://127.0.0.1:$PORT"
  fi
}

# A python for small helpers: the venv's when installed, else any python3.
helper_python() {
  if [[ -x $VENV/bin/python ]]; then echo "$VENV/bin/python"; else command -v python3; fi
}

# Prints the health JSON, or fails. Bounded: 5 s per request.
health_json() {
  "$(helper_python)" - "$(endpoint)" <<'EOF'
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1] + "/_localstack/health", timeout=5) as r:
    sys.stdout.write(r.read().decode())
EOF
}

# Succeeds when every REQUIRED service is available or running.
healthy() {
  local json
  json=$(health_json 2>/dev/null) || return 1
  "$(helper_python)" - "$json" "${REQUIRED[@]}" <<'EOF'
import json, sys
services = json.loads(sys.argv[1]).get("services", {})
sys.exit(0 if all(services.get(s) in ("available", "running") for s in sys.argv[2:]) else 1)
EOF
}

find_python313() {
  if [[ -n ${LOCALSTACK_PYTHON:-} ]]; then echo "$LOCALSTACK_PYTHON"; return; fi
  local root candidate
  if command -v pyenv >/dev/null 2>&1 && root=$(pyenv root 2>/dev/null); then
    candidate=$(ls -d "$root"/versions/3.13.*/bin/python3.13 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -n $candidate && -x $candidate ]]; then echo "$candidate"; return; fi
  fi
  if command -v python3.13 >/dev/null 2>&1; then command -v python3.13; return; fi
  die "Python 3.13 not found (LocalStack 4.14 needs it): install it (pyenv install 3.13) or set LOCALSTACK_PYTHON"
}

# uv as a command: the one on PATH, else the python3 module (installed into the user's
# Python on first use, never into the repo).
UV=()
find_uv() {
  if command -v uv >/dev/null 2>&1 && uv --version >/dev/null 2>&1; then UV=(uv); return; fi
  if python3 -m uv --version >/dev/null 2>&1; then UV=(python3 -m uv); return; fi
  log "installing uv into the user's Python (python3 -m pip install uv)"
  python3 -m pip install --quiet uv >&2 \
    || python3 -m pip install --quiet --user --break-system-packages uv >&2 \
    || die "could not install uv with pip"
  python3 -m uv --version >/dev/null 2>&1 || die "uv installed but not runnable"
  UV=(python3 -m uv)
}

# kinesis-mock for the Kinesis service (npm; idempotent).
install_kinesis_mock() {
  [[ -f $KINESIS_MOCK_DIR/node_modules/kinesis-local/main.js ]] && return 0
  command -v npm >/dev/null 2>&1 || die "npm not found (LocalStack's Kinesis runs kinesis-mock on Node.js)"
  log "installing kinesis-local@$KINESIS_MOCK_VERSION (LocalStack's Kinesis) into $KINESIS_MOCK_DIR"
  mkdir -p "$CACHE"
  npm install --silent --no-audit --no-fund --prefix "$KINESIS_MOCK_DIR.tmp" "kinesis-local@$KINESIS_MOCK_VERSION" >&2 \
    || die "npm install kinesis-local@$KINESIS_MOCK_VERSION failed"
  rm -rf "$KINESIS_MOCK_DIR"
  mv "$KINESIS_MOCK_DIR.tmp" "$KINESIS_MOCK_DIR"
}

cmd_install() {
  local py want
  install_kinesis_mock
  py=$(find_python313)
  want="$LS_SPEC ${LS_EXTRA[*]} --exclude-newer $EXCLUDE_NEWER python=$("$py" -c 'import sys; print(sys.version.split()[0])')"
  if [[ -x $VENV/bin/python && -f $MARKER && "$(cat "$MARKER")" == "$want" ]]; then
    log "already installed: $VENV"
    return 0
  fi
  find_uv
  local t0=$SECONDS
  mkdir -p "$CACHE"
  if ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' 2>/dev/null; then
    log "creating $VENV with $py"
    "${UV[@]}" venv --quiet --clear -p "$py" "$VENV" >&2
  fi
  rm -f "$MARKER"
  log "installing $LS_SPEC ${LS_EXTRA[*]} (--exclude-newer $EXCLUDE_NEWER)"
  "${UV[@]}" pip install --quiet -p "$VENV/bin/python" --exclude-newer "$EXCLUDE_NEWER" \
    "$LS_SPEC" "${LS_EXTRA[@]}" >&2
  "$VENV/bin/python" -c 'import localstack.runtime.main, boto3, pytest' \
    || die "the venv does not import localstack/boto3/pytest"
  echo "$want" >"$MARKER"
  log "installed in $((SECONDS - t0)) s: $VENV"
}

# The pid recorded by start, if that process is still alive.
running_pid() {
  [[ -f $PID_FILE ]] || return 1
  local pid
  pid=$(cat "$PID_FILE")
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 1
  # A stale pid file must never make stop signal an unrelated process that reused the pid.
  ps -o args= -p "$pid" 2>/dev/null | grep -q 'localstack' || return 1
  echo "$pid"
}

port_in_use() {
  "$(helper_python)" - "$PORT" <<'EOF'
import socket, sys
s = socket.socket()
# SO_REUSEADDR as LocalStack's server has it: connections of a previous run lingering in
# TIME_WAIT do not count, only a live listener does.
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(0)
finally:
    s.close()
sys.exit(1)
EOF
}

wait_healthy() {
  local deadline=$((SECONDS + START_TIMEOUT)) pid=${1:-}
  until healthy; do
    if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
      log "LocalStack exited during start-up; last lines of $LOG_FILE:"
      tail -n 40 "$LOG_FILE" >&2 || true
      return 1
    fi
    if ((SECONDS >= deadline)); then
      log "LocalStack at $(endpoint) not healthy after ${START_TIMEOUT}s; last lines of $LOG_FILE:"
      tail -n 40 "$LOG_FILE" >&2 || true
      return 1
    fi
    sleep 0.5
  done
}

cmd_start() {
  if [[ -n ${LOCALSTACK_ENDPOINT:-} ]]; then
    log "using the LocalStack at $(endpoint) (LOCALSTACK_ENDPOINT)"
    wait_healthy || die "LocalStack at $(endpoint) is not healthy"
    endpoint
    return 0
  fi
  local pid
  if pid=$(running_pid); then
    log "already running (pid $pid)"
    wait_healthy "$pid" || die "LocalStack (pid $pid) is not healthy"
    endpoint
    return 0
  fi
  [[ -x $VENV/bin/python && -f $MARKER ]] || die "not installed; run: $0 install"
  if port_in_use; then
    die "127.0.0.1:$PORT is in use by another process: stop it, set LOCALSTACK_PORT to a free port, or point LOCALSTACK_ENDPOINT at a running LocalStack"
  fi
  rm -rf "$RUN_DIR"
  mkdir -p "$RUN_DIR/fs" "$RUN_DIR/tmp" "$RUN_DIR/volume" "$CACHE/localstack-home"
  # Where LocalStack looks for a pre-installed package: its static libs, under FILESYSTEM_ROOT
  # in host mode, but /usr/lib/localstack when it detects a container (as on these machines,
  # where its own npm install also fails: it runs without the user's npm settings).
  if [[ -f $KINESIS_MOCK_DIR/node_modules/kinesis-local/main.js ]]; then
    local libs
    for libs in "$RUN_DIR/fs/usr/lib/localstack" /usr/lib/localstack; do
      if mkdir -p "$libs/kinesis-local" 2>/dev/null; then
        ln -sfn "$KINESIS_MOCK_DIR" "$libs/kinesis-local/$KINESIS_MOCK_VERSION"
      else
        log "cannot link kinesis-local into $libs; LocalStack will try to npm-install it"
      fi
    done
  fi
  log "starting LocalStack on 127.0.0.1:$PORT (log: $LOG_FILE)"
  # A clean environment: the outer AWS_* settings must not reach LocalStack. setsid makes
  # LocalStack the leader of its own process group, so stop can end it and any child.
  # - FILESYSTEM_ROOT, LOCALSTACK_VOLUME_DIR, TMPDIR: all state under RUN_DIR (TMPDIR draws
  #   a harmless "deprecated" warning from LocalStack, but also keeps libraries' temp files
  #   there);
  # - HOME: a cache dir of its own (plux entry-point cache survives restarts);
  # - DNS_ADDRESS=0: no DNS server (it would bind port 53; nothing here needs it);
  # - SKIP_SSL_CERT_DOWNLOAD, DISABLE_EVENTS: no outbound calls (no internet here);
  # - localstack_main.py = `python -m localstack.runtime.main`, but listening on 127.0.0.1
  #   only (4.14's twisted server ignores the host of GATEWAY_LISTEN and binds 0.0.0.0);
  # - LOCALSTACK_HOST, SQS_ENDPOINT_STRATEGY=path: URLs it hands out (SQS queue URLs) point
  #   at 127.0.0.1:PORT, not at *.localhost.localstack.cloud, which needs public DNS.
  (
    cd "$RUN_DIR"
    exec setsid env -i \
      PATH="$VENV/bin:/usr/local/bin:/usr/bin:/bin" \
      HOME="$CACHE/localstack-home" \
      LANG=C.UTF-8 \
      TMPDIR="$RUN_DIR/tmp" \
      FILESYSTEM_ROOT="$RUN_DIR/fs" \
      LOCALSTACK_VOLUME_DIR="$RUN_DIR/volume" \
      GATEWAY_LISTEN="127.0.0.1:$PORT" \
      LOCALSTACK_HOST="127.0.0.1:$PORT" \
      SERVICES="$SERVICES" \
      KINESIS_MOCK_VERSION="$KINESIS_MOCK_VERSION" \
      SQS_ENDPOINT_STRATEGY=path \
      DNS_ADDRESS=0 \
      SKIP_SSL_CERT_DOWNLOAD=1 \
      DISABLE_EVENTS=1 \
      PERSISTENCE=0 \
      DEBUG="${LOCALSTACK_DEBUG:-0}" \
      LOGFERRY_LOCALSTACK_BIND=127.0.0.1 \
      "$VENV/bin/python" "$HERE/localstack_main.py"
  ) >"$LOG_FILE" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$PID_FILE"
  local t0=$SECONDS
  if ! wait_healthy "$pid"; then
    cmd_stop || true
    die "LocalStack did not start"
  fi
  log "healthy after $((SECONDS - t0)) s (pid $pid)"
  endpoint
}

cmd_stop() {
  if [[ -n ${LOCALSTACK_ENDPOINT:-} ]]; then
    log "LocalStack at $(endpoint) was not started here; leaving it running"
    return 0
  fi
  local pid
  if ! pid=$(running_pid); then
    rm -f "$PID_FILE"
    log "not running"
    return 0
  fi
  log "stopping LocalStack (pid $pid)"
  # The process group (setsid made pid its leader); fall back to the pid alone.
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + 30))
  while kill -0 "$pid" 2>/dev/null || kill -0 -- "-$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      log "still running after 30 s: SIGKILL"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
      sleep 1
      break
    fi
    sleep 0.2
  done
  rm -f "$PID_FILE"
  # State goes; the log stays for a look after a failed run (it is outside the repo).
  rm -rf "$RUN_DIR/fs" "$RUN_DIR/tmp" "$RUN_DIR/volume"
  log "stopped"
}

cmd_status() {
  local json
  if json=$(health_json 2>/dev/null); then
    echo "$(endpoint): $json"
    healthy && return 0
    return 1
  fi
  echo "$(endpoint): not reachable"
  return 1
}

case ${1:-} in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  endpoint) endpoint ;;
  *)
    echo "usage: $0 install|start|stop|status|endpoint" >&2
    exit 2
    ;;
esac
