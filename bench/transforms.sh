#!/usr/bin/env bash
# multiline + redact workload: build, generate data (once), run with and
# without the transforms, report.
#   bench/transforms.sh              # 1,200,000 lines
#   LINES=300000 bench/transforms.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p logferry --quiet
exec python3 bench/transforms.py "$@"
