"""Shared fixtures of the deployment suite: the repository, the router binary, and
`logferry validate` on a config text.

`run.sh` sets `LOGFERRY_BIN` (building target/release/logferry when it is not given) and
`LOGFERRY_CHECKOV`; run by hand, the defaults are the repo's release binary and `checkov` on
PATH.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

# Hang guard for one `logferry validate` (it does no I/O beyond reading the config).
VALIDATE_TIMEOUT = 60


@dataclass
class Validated:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture(scope="session")
def logferry_bin() -> Path:
    path = Path(os.environ.get("LOGFERRY_BIN", REPO / "target" / "release" / "logferry"))
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"router binary {path} not found; build it (cargo build --release -p logferry) "
            "or set LOGFERRY_BIN",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def validate(logferry_bin, tmp_path_factory):
    """`validate(text, name, env)` -> Validated: `logferry validate --config <file>` in a
    clean environment (PATH plus `env`), the config written to a tmp file named `name`."""
    root = tmp_path_factory.mktemp("validate")

    def run(text: str, name: str, env: dict[str, str] | None = None) -> Validated:
        path = root / name.replace("/", "_")
        path.write_text(text)
        p = subprocess.run(
            [str(logferry_bin), "validate", "--config", str(path)],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root), **(env or {})},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=VALIDATE_TIMEOUT,
        )
        return Validated(p.returncode, p.stdout, p.stderr)

    return run


def assert_valid(result: Validated, what: str) -> None:
    """The config passed `logferry validate`."""
    assert result.returncode == 0, f"{what}: logferry validate failed:\n{result.stderr}"
    assert "config OK" in result.stdout, result.stdout
