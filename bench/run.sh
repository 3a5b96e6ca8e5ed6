#!/usr/bin/env bash
# One command: build, generate data (once), run, report.
#   bench/run.sh            # 2,000,000 lines
#   LINES=500000 bench/run.sh
#   bench/run.sh forward    # 1,000,000 records over the forward source's unix socket
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p logferry --quiet
if [[ ${1:-} == forward ]]; then
  # The client needs the msgpack package: the LocalStack test venv has it.
  localstack-tests/localstack.sh install
  exec "${LOGFERRY_CACHE:-$HOME/.cache/logferry}/localstack-venv/bin/python" bench/forward.py
fi
exec python3 bench/bench.py "$@"
