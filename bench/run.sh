#!/usr/bin/env bash
# One command: build, generate data (once), run, report.
#   bench/run.sh            # 2,000,000 lines
#   LINES=500000 bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p logferry --quiet
exec python3 bench/bench.py "$@"
