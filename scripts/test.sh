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

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --profile ci "$@"
else
  echo "cargo-nextest not found; using cargo test (install it with: cargo install cargo-nextest --locked)" >&2
  cargo test --workspace "$@"
fi
