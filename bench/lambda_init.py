#!/usr/bin/env python3
"""Cold start of the indexer Lambda: from exec of `bootstrap` to its first
`GET /runtime/invocation/next` on a Runtime API served here (what Lambda
reports as Init Duration, minus the sandbox's own set-up), and the sizes of
the binary and the zip.

    python3 bench/lambda_init.py                          # target/lambda/bootstrap/bootstrap
    python3 bench/lambda_init.py path/to/bootstrap [runs]

Build the function first with `lambda/build.sh`. Prints the median and the
spread of `runs` (default 30) starts; the page cache is warm after the first,
as on a Lambda host that has the image.
"""

import http.server
import os
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "lambda", "bootstrap", "bootstrap")
RUNS = int(sys.argv[2]) if len(sys.argv) > 2 else 30

polled = threading.Event()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_args):
        pass

    def do_GET(self):
        if self.path.endswith("/runtime/invocation/next"):
            polled.set()
        # No event comes; the process is killed once it asked.
        time.sleep(5)

    def do_POST(self):
        polled.set()  # an init error also ends the init
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()


def main():
    if not os.access(BIN, os.X_OK):
        sys.exit(f"lambda_init.py: no bootstrap at {BIN}; build it with lambda/build.sh")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {
        "PATH": "/usr/bin:/bin",
        "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{server.server_address[1]}",
        "AWS_LAMBDA_FUNCTION_NAME": "logferry-indexer",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "RUST_LOG": "warn",
    }
    times = []
    for _ in range(RUNS):
        polled.clear()
        t0 = time.perf_counter()
        p = subprocess.Popen([BIN], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not polled.wait(30):
            p.kill()
            sys.exit("lambda_init.py: the function never polled for an event")
        times.append((time.perf_counter() - t0) * 1000)
        p.kill()
        p.wait()
    server.shutdown()
    zip_path = os.path.join(os.path.dirname(BIN), "bootstrap.zip")
    size = os.path.getsize(BIN) / 2**20
    zsize = f", zip {os.path.getsize(zip_path) / 1e6:.1f} MB" if os.path.exists(zip_path) else ""
    q = statistics.quantiles(times, n=10)
    print(f"bootstrap       {size:.1f} MiB{zsize}")
    print(f"init (exec -> first /next), {RUNS} starts: median {statistics.median(times):.1f} ms, "
          f"p10 {q[0]:.1f} ms, p90 {q[-1]:.1f} ms, first {times[0]:.1f} ms")


if __name__ == "__main__":
    main()
