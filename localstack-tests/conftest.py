"""Fixtures for the end-to-end tests: LocalStack clients, throwaway buckets, the emulators, and
a `router` helper that runs the real `logferry` binary.

Why the router runs in a hand-built environment: the binary under test resolves AWS
credentials, region and endpoints through the AWS SDK's default chains, which read `AWS_*`
variables and `~/.aws/*`. A test that inherited the developer's (or CI's) environment could
pass for the wrong reason (real credentials, a default region) or talk to a real account. So
every router process starts from PATH, a HOME inside the test's tmp dir and `LOGFERRY_LOG`,
plus exactly what the test passes; the scenario then proves which credential source was used.

`run.sh` sets `LOCALSTACK_ENDPOINT`, `LOGFERRY_BIN` and `LOGFERRY_INDEXER_BIN`; run by hand, the
defaults are http://127.0.0.1:4566, the repo's `target/release/logferry` and
`target/lambda/bootstrap/bootstrap`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from emulators import EcsMetadataEmulator, ImdsEmulator  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ENDPOINT = "http://127.0.0.1:4566"
REGION = "us-east-1"
DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
# Hang guards, not expectations (a loaded 2-core CI box is slow, a passing run is not).
RUN_TIMEOUT = float(os.environ.get("LOGFERRY_TEST_RUN_TIMEOUT", "120"))
STOP_TIMEOUT = float(os.environ.get("LOGFERRY_TEST_STOP_TIMEOUT", "60"))


def pytest_configure(config):
    for name, doc in [
        ("s3_sink", "needs the `s3` sink (deselected by run.sh unless LOGFERRY_S3_SINK=1)"),
        ("check_cmd", "needs `logferry check` (deselected by run.sh unless LOGFERRY_CHECK=1)"),
    ]:
        config.addinivalue_line("markers", f"{name}: {doc}")


# -- LocalStack ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def endpoint() -> str:
    url = os.environ.get("LOCALSTACK_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")
    try:
        with urllib.request.urlopen(f"{url}/_localstack/health", timeout=10) as r:
            health = json.load(r)
    except Exception as e:
        pytest.fail(
            f"LocalStack is not reachable at {url} ({e}); start it with "
            "localstack-tests/localstack.sh start, or run localstack-tests/run.sh",
            pytrace=False,
        )
    services = health.get("services", {})
    down = [s for s in ("s3", "logs", "firehose") if services.get(s) not in ("available", "running")]
    if down:
        pytest.fail(f"LocalStack at {url} lacks {down}: {services}", pytrace=False)
    return url


@pytest.fixture(scope="session")
def aws_client(endpoint):
    """Factory: `aws_client("sqs")` -> a boto3 client on LocalStack with dummy credentials."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(
        aws_access_key_id="test", aws_secret_access_key="test", region_name=REGION
    )
    cfg = Config(
        connect_timeout=10,
        read_timeout=60,
        retries={"max_attempts": 5, "mode": "standard"},
        s3={"addressing_style": "path"},
    )
    cache: dict[str, object] = {}

    def make(service: str):
        if service not in cache:
            cache[service] = session.client(service, endpoint_url=endpoint, config=cfg)
        return cache[service]

    return make


@pytest.fixture(scope="session")
def s3(aws_client):
    return aws_client("s3")


@pytest.fixture(scope="session")
def logs(aws_client):
    return aws_client("logs")


@pytest.fixture(scope="session")
def firehose(aws_client):
    return aws_client("firehose")


@pytest.fixture(scope="session")
def iam(aws_client):
    return aws_client("iam")


@pytest.fixture(scope="session")
def sqs(aws_client):
    return aws_client("sqs")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def bucket(s3):
    """A fresh bucket for one test; emptied and deleted afterwards (best effort)."""
    name = unique("logferry-test")
    s3.create_bucket(Bucket=name)
    yield name
    try:
        paginator = s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=name):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
        s3.delete_bucket(Bucket=name)
    except Exception as e:  # LocalStack state is thrown away on stop anyway
        print(f"warning: could not delete bucket {name}: {e}", file=sys.stderr)


# -- emulators -------------------------------------------------------------------------------


@pytest.fixture
def imds():
    with ImdsEmulator() as emulator:
        yield emulator


@pytest.fixture
def ecs_metadata():
    with EcsMetadataEmulator() as emulator:
        yield emulator


# -- the router ------------------------------------------------------------------------------


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str


class RunningRouter:
    """A router process in the background. Its stdout and stderr go to files (a pipe nobody
    reads would fill up and stall the router)."""

    def __init__(self, proc: subprocess.Popen, stdout: Path, stderr: Path) -> None:
        self.proc = proc
        self.pid = proc.pid
        self._stdout = stdout
        self._stderr = stderr
        self.returncode: int | None = None

    @property
    def stderr(self) -> str:
        return self._stderr.read_text(errors="replace")

    @property
    def stdout(self) -> str:
        return self._stdout.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self, timeout: float = STOP_TIMEOUT) -> str:
        """SIGTERM (graceful: flush every sink, save checkpoints, exit 0), wait, return stderr.

        The exit status is left in `.returncode`; a router that does not exit within
        `timeout` is killed and the test fails.
        """
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(
                    f"router did not exit within {timeout:.0f}s of SIGTERM; stderr:\n{self.stderr[-4000:]}"
                ) from None
        self.returncode = self.proc.returncode
        return self.stderr

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.returncode = self.proc.returncode


class Router:
    """Runs `$LOGFERRY_BIN` with a config written into the test's tmp dir."""

    def __init__(self, binary: Path, workdir: Path) -> None:
        self.binary = binary
        self.dir = workdir
        self.home = workdir / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self._running: list[RunningRouter] = []
        self._n = 0

    def write_config(self, text: str, name: str = "logferry.toml") -> Path:
        path = self.dir / name
        path.write_text(text)
        return path

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """PATH, a private HOME (no ~/.aws leaks in), LOGFERRY_LOG, and `extra`. Nothing else
        from the outer environment, in particular no AWS_* variable."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "LOGFERRY_LOG": os.environ.get("LOGFERRY_TEST_LOG", "info"),
        }
        env.update(extra or {})
        return env

    def _config_path(self, config: str | Path) -> Path:
        if isinstance(config, Path):
            return config
        return self.write_config(config)

    def command(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = RUN_TIMEOUT
    ) -> Completed:
        """Any subcommand (`validate`, `check`, ...) to completion."""
        try:
            p = subprocess.run(
                [str(self.binary), *args],
                env=self.env(env),
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as e:
            raise AssertionError(
                f"`logferry {' '.join(args)}` still running after {timeout:.0f}s; "
                f"stderr:\n{(e.stderr or b'')[-4000:]!r}"
            ) from None
        return Completed(p.returncode, p.stdout, p.stderr)

    def run(
        self,
        config: str | Path,
        *,
        env: dict[str, str] | None = None,
        exit_on_eof: bool = True,
        timeout: float = RUN_TIMEOUT,
    ) -> Completed:
        """`logferry run --config F [--exit-on-eof]` to completion."""
        args = ["run", "--config", str(self._config_path(config))]
        if exit_on_eof:
            args.append("--exit-on-eof")
        return self.command(*args, env=env, timeout=timeout)

    def start(self, config: str | Path, *, env: dict[str, str] | None = None) -> RunningRouter:
        """`logferry run --config F` in the background; stop it with `.terminate()`."""
        return self.start_args("run", "--config", str(self._config_path(config)), env=env)

    def start_args(self, *args: str, env: dict[str, str] | None = None) -> RunningRouter:
        """`logferry ARGS...` in the background (e.g. a container's exact command)."""
        self._n += 1
        out = self.dir / f"router-{self._n}.stdout"
        err = self.dir / f"router-{self._n}.stderr"
        with open(out, "wb") as o, open(err, "wb") as e:
            proc = subprocess.Popen(
                [str(self.binary), *args],
                env=self.env(env),
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=o,
                stderr=e,
            )
        running = RunningRouter(proc, out, err)
        self._running.append(running)
        return running

    def cleanup(self) -> None:
        for r in self._running:
            if r.alive():
                try:
                    r.terminate(timeout=10)
                except AssertionError:
                    pass
                r.kill()


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
def indexer_bin() -> Path:
    """The indexer Lambda's `bootstrap` (run.sh builds it with lambda/build.sh)."""
    path = Path(
        os.environ.get("LOGFERRY_INDEXER_BIN", REPO / "target" / "lambda" / "bootstrap" / "bootstrap")
    )
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"indexer binary {path} not found; build it (lambda/build.sh) or set LOGFERRY_INDEXER_BIN",
            pytrace=False,
        )
    return path


@pytest.fixture
def router(logferry_bin, tmp_path):
    r = Router(logferry_bin, tmp_path)
    yield r
    r.cleanup()


@pytest.fixture
def started_at():
    """Wall-clock start of the test (UTC), for checking time-sliced keys."""
    return datetime.now(timezone.utc)
