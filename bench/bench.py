"""Throughput and memory benchmark of `logferry run --exit-on-eof`.

Generates LINES (default 2,000,000) realistic JSON app-log lines of ~250 bytes
once under bench/data/, runs file -> json -> enrich -> blackhole, and reports
lines/s, MB/s, CPU seconds (user+sys) and peak RSS from /usr/bin/time -v.
Not a test: figures vary with the machine; nothing here asserts a speed.
"""
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINES = int(os.environ.get("LINES", "2000000"))
DATA = os.path.join(ROOT, "bench", "data")
LOG = os.path.join(DATA, f"app-{LINES}.log")
BIN = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "logferry")


def generate():
    if os.path.exists(LOG):
        return
    os.makedirs(DATA, exist_ok=True)
    rnd = random.Random(42)
    levels = ["info"] * 7 + ["warn", "error", "debug"]
    loggers = ["http.server", "db.pool", "payments.client", "auth.session", "cache.redis"]
    msgs = ["request completed", "cache miss for key", "payment authorised",
            "upstream timeout after retries", "user signed in", "connection returned to pool"]
    paths = ["/api/v1/orders", "/api/v1/users/me", "/healthz", "/api/v1/payments", "/static/app.js"]
    tmp = LOG + ".tmp"
    with open(tmp, "w") as f:
        buf = []
        for i in range(LINES):
            ms = i // 2
            ts = "2026-11-25T%02d:%02d:%02d.%03dZ" % ((ms // 3600000) % 24, (ms // 60000) % 60, (ms // 1000) % 60, ms % 1000)
            rid = "%08x-%04x-%04x-%04x-%012x" % (rnd.getrandbits(32), rnd.getrandbits(16), rnd.getrandbits(16),
                                                 rnd.getrandbits(16), rnd.getrandbits(48))
            buf.append('{"ts":"%s","level":"%s","logger":"%s","msg":"%s","request_id":"%s","user_id":%d,'
                       '"latency_ms":%.1f,"path":"%s","status":200,"trace_id":"%016x"}\n'
                       % (ts, rnd.choice(levels), rnd.choice(loggers), rnd.choice(msgs), rid,
                          rnd.randint(1, 99999), rnd.random() * 250, rnd.choice(paths), rnd.getrandbits(64)))
            if len(buf) >= 10000:
                f.write("".join(buf))
                buf.clear()
        f.write("".join(buf))
    os.rename(tmp, LOG)


def main():
    generate()
    size = os.path.getsize(LOG)
    work = tempfile.mkdtemp(prefix="logferry-bench-")
    env = dict(os.environ, BENCH_DATA_DIR=os.path.join(work, "data"), BENCH_LOGS=LOG, LOGFERRY_LOG="info")
    cmd = ["/usr/bin/time", "-v", BIN, "run", "--config", os.path.join(ROOT, "bench", "bench.toml"), "--exit-on-eof"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    shutil.rmtree(work, ignore_errors=True)
    if p.returncode != 0:
        sys.stderr.write(p.stderr)
        sys.exit(p.returncode)
    t = p.stderr

    def field(name):
        m = re.search(re.escape(name) + r":\s*(.+)", t)
        return m.group(1).strip() if m else "0"

    sent = [int(m.group(1)) for m in re.finditer(r'component=null .*?sent=(\d+)', t)]
    if sent != [LINES]:
        sys.stderr.write(t)
        sys.exit(f"blackhole received {sent}, expected {LINES}")
    user = float(field("User time (seconds)"))
    sys_ = float(field("System time (seconds)"))
    wall_s = field("Elapsed (wall clock) time (h:mm:ss or m:ss)")
    parts = [float(x) for x in wall_s.split(":")]
    wall = sum(v * 60 ** i for i, v in enumerate(reversed(parts)))
    rss_kib = int(field("Maximum resident set size (kbytes)"))
    cpu = user + sys_
    mb = size / 1e6
    print(f"lines           {LINES:,} ({size / LINES:.0f} bytes/line, {mb:.0f} MB)")
    print(f"wall            {wall:.2f} s")
    print(f"cpu             {cpu:.2f} s (user {user:.2f}, sys {sys_:.2f})")
    print(f"lines/s         {LINES / wall:,.0f} (wall)")
    print(f"lines/cpu-s     {LINES / cpu:,.0f}")
    print(f"MB/s            {mb / wall:,.1f} (wall), {mb / cpu:,.1f} per cpu-s")
    print(f"peak RSS        {rss_kib / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
