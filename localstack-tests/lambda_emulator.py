"""A Lambda Runtime API emulator, and the real `bootstrap` process behind it.

LocalStack's Lambda needs Docker, which these machines do not have. The function is a plain
process that speaks the Runtime API (https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html)
to the address in AWS_LAMBDA_RUNTIME_API, so the tests serve that API themselves:

- GET  /2018-06-01/runtime/invocation/next           -> the next event (long poll), with the
  headers Lambda-Runtime-Aws-Request-Id, Lambda-Runtime-Deadline-Ms,
  Lambda-Runtime-Invoked-Function-Arn, Lambda-Runtime-Trace-Id
- POST /2018-06-01/runtime/invocation/{id}/response  -> the function's result
- POST /2018-06-01/runtime/invocation/{id}/error     -> the function's error
- POST /2018-06-01/runtime/init/error                -> the function failed to start

`invoke(event)` queues an event and waits for its result (a hang guard, not an expectation).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PREFIX = "/2018-06-01/runtime"
REGION = "us-east-1"
ACCOUNT = "000000000000"


@dataclass
class Invocation:
    request_id: str
    kind: str  # "response" or "error"
    payload: object  # the parsed JSON body


class RuntimeApiEmulator:
    """Serves the Runtime API for one function process on 127.0.0.1:<free port>."""

    def __init__(self, function_name: str = "logferry-indexer", timeout_s: int = 300) -> None:
        self.function_name = function_name
        self.function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{function_name}"
        self.timeout_ms = timeout_s * 1000
        self._events: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._results: dict[str, Invocation] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self.init_errors: list[object] = []
        self.requests: list[tuple[str, str]] = []
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args) -> None:  # quiet
                pass

            def _reply(self, status: int, body: bytes = b"{}", headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                emulator.requests.append(("GET", self.path))
                if self.path != f"{PREFIX}/invocation/next":
                    return self._reply(404, b'{"errorMessage":"not found"}')
                while not emulator._stop.is_set():
                    try:
                        request_id, body = emulator._events.get(timeout=0.2)
                    except queue.Empty:
                        continue
                    deadline = int(time.time() * 1000) + emulator.timeout_ms
                    return self._reply(
                        200,
                        body,
                        {
                            "Lambda-Runtime-Aws-Request-Id": request_id,
                            "Lambda-Runtime-Deadline-Ms": str(deadline),
                            "Lambda-Runtime-Invoked-Function-Arn": emulator.function_arn,
                            "Lambda-Runtime-Trace-Id": f"Root=1-{uuid.uuid4().hex[:8]}-{uuid.uuid4().hex[:24]};Sampled=0",
                        },
                    )
                # Shutting down: the function keeps polling; a 500 ends its wait.
                self._reply(500, b'{"errorMessage":"emulator stopped"}')

            def do_POST(self) -> None:
                emulator.requests.append(("POST", self.path))
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    payload = json.loads(raw) if raw else None
                except ValueError:
                    payload = raw.decode(errors="replace")
                if self.path == f"{PREFIX}/init/error":
                    emulator.init_errors.append(payload)
                    return self._reply(202)
                parts = self.path[len(PREFIX) :].strip("/").split("/")
                if len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response", "error"):
                    with emulator._cond:
                        emulator._results[parts[1]] = Invocation(parts[1], parts[2], payload)
                        emulator._cond.notify_all()
                    return self._reply(202)
                self._reply(404, b'{"errorMessage":"not found"}')

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        """host:port, as AWS_LAMBDA_RUNTIME_API wants it (no scheme)."""
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    def __enter__(self) -> "RuntimeApiEmulator":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    def invoke(self, event: object, timeout: float = 120.0, alive=None) -> Invocation:
        """Queues `event` for the function and waits for its response or error. `alive`: a
        callable that raises when the function process died (checked while waiting)."""
        request_id = str(uuid.uuid4())
        self._events.put((request_id, json.dumps(event).encode()))
        deadline = time.monotonic() + timeout
        with self._cond:
            while request_id not in self._results:
                if alive is not None:
                    alive()
                if self.init_errors:
                    raise AssertionError(f"the function failed to initialize: {self.init_errors}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no result for invocation {request_id} after {timeout:.0f}s")
                self._cond.wait(timeout=min(remaining, 0.5))
            return self._results.pop(request_id)


class IndexerProcess:
    """The real `bootstrap` binary, polling a RuntimeApiEmulator, in a clean environment."""

    def __init__(self, binary: Path, workdir: Path, runtime: RuntimeApiEmulator, env: dict[str, str]) -> None:
        self.runtime = runtime
        self.stdout_path = workdir / "indexer.stdout"
        self.stderr_path = workdir / "indexer.stderr"
        full_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(workdir),
            "LANG": "C.UTF-8",
            "AWS_LAMBDA_RUNTIME_API": runtime.address,
            "AWS_LAMBDA_FUNCTION_NAME": runtime.function_name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{runtime.function_name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": "test",
            "AWS_REGION": REGION,
            "RUST_LOG": os.environ.get("LOGFERRY_TEST_LOG", "info"),
            **env,
        }
        with open(self.stdout_path, "wb") as o, open(self.stderr_path, "wb") as e:
            self.proc = subprocess.Popen(
                [str(binary)], env=full_env, cwd=workdir, stdin=subprocess.DEVNULL, stdout=o, stderr=e
            )

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"bootstrap exited with {self.proc.returncode}; stderr:\n{self.stderr[-4000:]}")

    def invoke(self, event: object, timeout: float = 120.0) -> Invocation:
        return self.runtime.invoke(event, timeout=timeout, alive=self.check_alive)

    def emf_lines(self) -> list[dict]:
        """The EMF lines the function printed (one per invocation)."""
        out = []
        for line in self.stdout.splitlines():
            try:
                v = json.loads(line)
            except ValueError:
                continue
            if isinstance(v, dict) and "_aws" in v:
                out.append(v)
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
