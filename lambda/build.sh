#!/usr/bin/env bash
# Builds the indexer Lambda for the provided.al2023 runtime (x86_64):
#   target/lambda/bootstrap/bootstrap       the executable
#   target/lambda/bootstrap/bootstrap.zip   the deployment package (Terraform's filename)
#
# Amazon Linux 2023 has glibc 2.34; this machine links against a newer one, so
# the binary is built with cargo-lambda (zig as the linker) for the target
# x86_64-unknown-linux-gnu.2.34. cargo-lambda and zig come from PyPI, pinned,
# into a venv under ${LOGFERRY_CACHE:-~/.cache/logferry}/cargo-lambda-venv
# (installed on first use, nothing in the repository).
# Prints the path of the binary on its last line.
set -euo pipefail

CARGO_LAMBDA_VERSION=1.9.2
ZIGLANG_VERSION=0.13.0
TARGET=x86_64-unknown-linux-gnu.2.34

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
cache=${LOGFERRY_CACHE:-$HOME/.cache/logferry}
venv=$cache/cargo-lambda-venv
marker=$venv/.logferry-installed
want="cargo-lambda==$CARGO_LAMBDA_VERSION ziglang==$ZIGLANG_VERSION"

log() { echo "lambda/build.sh: $*" >&2; }

if [[ ! -x $venv/bin/cargo-lambda || ! -f $marker || "$(cat "$marker")" != "$want" ]]; then
  log "installing $want into $venv"
  mkdir -p "$cache"
  python3 -m venv --clear "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check $want
  echo "$want" >"$marker"
fi

# cargo-lambda finds zig through the venv's `python3 -m ziglang`.
export PATH=$venv/bin:$PATH
cd "$repo"
t0=$SECONDS
out=$repo/target/lambda
# Two passes over one cargo build: the second only packages the zip.
cargo lambda build --release -p logferry-indexer --bin bootstrap --target "$TARGET" --lambda-dir "$out" >&2
cargo lambda build --release -p logferry-indexer --bin bootstrap --target "$TARGET" --lambda-dir "$out" \
  --output-format zip >&2
bin=$out/bootstrap/bootstrap
[[ -x $bin && -f $out/bootstrap/bootstrap.zip ]] || { log "error: $bin or bootstrap.zip missing"; exit 1; }
log "built in $((SECONDS - t0)) s: $bin ($(du -h "$bin" | cut -f1)), $out/bootstrap/bootstrap.zip"
echo "$bin"
