#!/usr/bin/env bash
# Installs what the tests need and runs every test (the README's second
# set-up command; .ci/run calls it). Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
  echo "error: cargo not found; install Rust with rustup (https://rustup.rs) first" >&2
  exit 1
fi
# gzip/zstd C sources build with the system C compiler.
if ! command -v cc >/dev/null; then
  echo "error: a C compiler (cc) is needed; on Debian/Ubuntu: apt-get install -y build-essential" >&2
  exit 1
fi

# 0. Real Fluent peers (router/tests/fluentbit_peer.rs): when ../shared/peers is there,
#    unpack Fluent Bit once into ~/.cache/logferry (the tests would, too). Without it
#    those tests print SKIP and pass.
peers="${LOGFERRY_PEERS:-$(pwd)/../shared/peers}"
if [ -f "$peers/fluent-bit-5.1.1.xz" ]; then
  cache="${XDG_CACHE_HOME:-$HOME/.cache}/logferry"
  mkdir -p "$cache"
  if [ ! -x "$cache/fluent-bit-5.1.1" ]; then
    xz -dc "$peers/fluent-bit-5.1.1.xz" > "$cache/.fluent-bit-5.1.1.$$"
    chmod +x "$cache/.fluent-bit-5.1.1.$$"
    mv "$cache/.fluent-bit-5.1.1.$$" "$cache/fluent-bit-5.1.1"
  fi
  if ! "$cache/fluent-bit-5.1.1" --version >/dev/null 2>&1; then
    echo "error: $cache/fluent-bit-5.1.1 does not run; it needs libyaml-0-2, libsqlite3-0 and libssl3" \
      "(Debian/Ubuntu: apt-get install -y libyaml-0-2 libsqlite3-0 libssl3)" >&2
    exit 1
  fi
else
  echo "note: no $peers/fluent-bit-5.1.1.xz: the Fluent Bit interop tests will SKIP" >&2
fi

# 1. Unit, property and binary tests (Rust).
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --profile ci "$@"
else
  echo "cargo-nextest not found; using cargo test (install it with: cargo install cargo-nextest --locked)" >&2
  cargo test --workspace "$@"
fi

# 2. Deployment files (terraform/, task-definitions/, eks/, router/Dockerfile): terraform fmt,
#    HCL parsing, checkov, Kubernetes schemas, the ECS API model, and `logferry validate` on
#    every config they ship. Own venvs under ~/.cache/logferry (installed when missing);
#    builds the release binary the LocalStack step reuses.
deploy-tests/run.sh

# 3. End to end against LocalStack: installs it (Python 3.13 venv under
#    ~/.cache/logferry) when missing, starts it on loopback, runs the pytest
#    scenarios with the release binary, stops it.
localstack-tests/run.sh
