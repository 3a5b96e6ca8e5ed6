#!/usr/bin/env bash
# One command: build, generate data (once), run, report (records/s, MB/s, CPU seconds, peak RSS).
#   bench/run.sh              # file -> json -> enrich -> blackhole, 2,000,000 lines
#   LINES=500000 bench/run.sh
#   bench/run.sh forward      # 1,000,000 records over the forward source's unix socket
#   bench/run.sh transforms   # multiline + redact on 1,200,000 lines, and without them
#   bench/run.sh cri          # 1,000,000 kubelet CRI lines, partial lines joined
#   bench/run.sh daemon       # 200 rotating pod files at 50,000 lines/s: path fields vs the API watch
#   bench/run.sh all          # every workload above, one after the other
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p logferry --quiet
forward() {
  # The client needs the msgpack package: the LocalStack test venv has it.
  localstack-tests/localstack.sh install
  "${LOGFERRY_CACHE:-$HOME/.cache/logferry}/localstack-venv/bin/python" bench/forward.py
}
case ${1:-} in
  forward) forward ;;
  transforms) shift; python3 bench/transforms.py "$@" ;;
  cri) shift; python3 bench/cri.py "$@" ;;
  daemon) python3 bench/daemon.py ;;
  all)
    python3 bench/bench.py
    forward
    python3 bench/transforms.py
    python3 bench/cri.py
    python3 bench/daemon.py
    ;;
  *) exec python3 bench/bench.py "$@" ;;
esac
