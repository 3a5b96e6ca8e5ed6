#!/usr/bin/env bash
# The deployment suite in one command: install its venvs when missing or out of date, make
# sure there is a router binary, run pytest over deploy-tests/. Extra args go to pytest.
#
#   deploy-tests/run.sh                  # every test
#   deploy-tests/run.sh -k checkov -x
#   LOGFERRY_BIN=target/release/logferry deploy-tests/run.sh   # skip the build
#
# Venvs (never the LocalStack one): ${LOGFERRY_CACHE:-~/.cache/logferry}/deploy-venv
# (python-hcl2, kubernetes-validate, botocore, pytest, pyyaml) and .../deploy-venv-checkov
# (checkov; it ships its own `hcl2` module, bc-python-hcl2, that would shadow python-hcl2).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
cache=${LOGFERRY_CACHE:-$HOME/.cache/logferry}
# Transitive dependencies are pinned by date, the named ones by version.
exclude_newer=2026-11-20

pick_python() {
  local root v
  if command -v pyenv >/dev/null 2>&1; then
    root=$(pyenv root)
    for v in 3.12 3.11; do
      for p in "$root"/versions/"$v".*/bin/python3; do
        [[ -x $p ]] && { echo "$p"; return; }
      done
    done
  fi
  for p in python3.12 python3.11 python3; do
    command -v "$p" >/dev/null 2>&1 && { command -v "$p"; return; }
  done
  echo "deploy-tests/run.sh: no Python 3.11+ found" >&2
  exit 1
}

# ensure_venv DIR REQUIREMENTS: (re)install when the requirements file changed.
ensure_venv() {
  local dir=$1 req=$2 stamp want
  stamp=$dir/.logferry-requirements
  want=$(sha256sum "$req" | cut -d' ' -f1)
  if [[ -x $dir/bin/python && -f $stamp && $(cat "$stamp") == "$want" ]]; then
    return
  fi
  echo "deploy-tests/run.sh: installing $(basename "$req") into $dir" >&2
  rm -rf "$dir"
  local py
  py=$(pick_python)
  if command -v uv >/dev/null 2>&1; then
    uv venv -q --python "$py" "$dir"
    VIRTUAL_ENV=$dir uv pip install -q --exclude-newer "$exclude_newer" -r "$req"
  else
    "$py" -m venv "$dir"
    "$dir/bin/pip" install -q -r "$req"
  fi
  echo "$want" >"$stamp"
}

mkdir -p "$cache"
ensure_venv "$cache/deploy-venv" "$here/requirements.txt"
ensure_venv "$cache/deploy-venv-checkov" "$here/requirements-checkov.txt"
export LOGFERRY_CHECKOV=$cache/deploy-venv-checkov/bin/checkov

if [[ -z ${LOGFERRY_BIN:-} ]]; then
  # A no-op when the release binary is up to date (localstack-tests/run.sh reuses it).
  (cd "$repo" && cargo build --release -p logferry)
  export LOGFERRY_BIN=$repo/target/release/logferry
fi
[[ -x $LOGFERRY_BIN ]] || { echo "deploy-tests/run.sh: no router binary at $LOGFERRY_BIN" >&2; exit 1; }

cd "$here"
PYTHONDONTWRITEBYTECODE=1 exec "$cache/deploy-venv/bin/python" -m pytest "$@"
