"""multiline + redact benchmark (`bench/transforms.sh`).

Generates LINES (default 1,200,000) lines once under bench/data/: JSON
app-log lines (about 1 in 8 carrying an e-mail, an IPv4 address, a card
number or an AWS key id) mixed with timestamped text lines followed by Java
stack traces (with `Caused by:` and `... N more`) or Python tracebacks. Runs
`logferry run --exit-on-eof` twice under /usr/bin/time -v: file ->
multiline -> redact -> blackhole (transforms.toml) and file -> blackhole
(transforms-base.toml), checks the record counts each sink received, and
reports lines/s, CPU seconds and peak RSS of both.

Not a test: figures vary with the machine; nothing here asserts a speed.
"""
import os
import random
import shutil
import sys
import tempfile

from measure import run_router

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINES = int(os.environ.get("LINES", "1200000"))
DATA = os.path.join(ROOT, "bench", "data")
LOG = os.path.join(DATA, f"mixed-{LINES}.log")
EVENTS = LOG + ".events"
BIN = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "logferry")

JAVA_FRAMES = ["com.acme.shop.OrderService.close(OrderService.java:118)",
               "com.acme.shop.OrderController.cancel(OrderController.java:57)",
               "org.springframework.web.servlet.FrameworkServlet.service(FrameworkServlet.java:883)",
               "jakarta.servlet.http.HttpServlet.service(HttpServlet.java:658)",
               "org.apache.catalina.core.ApplicationFilterChain.doFilter(ApplicationFilterChain.java:166)",
               "java.base/java.lang.Thread.run(Thread.java:833)"]


def secret(rnd):
    k = rnd.randrange(4)
    if k == 0:
        return "user%d@example.com" % rnd.randrange(10**6)
    if k == 1:
        return "10.%d.%d.%d" % (rnd.randrange(256), rnd.randrange(256), rnd.randrange(256))
    if k == 2:
        return rnd.choice(["4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005"])
    return "AKIAIOSFODNN7EXAMPLE"


def generate():
    if os.path.exists(LOG) and os.path.exists(EVENTS):
        return
    os.makedirs(DATA, exist_ok=True)
    rnd = random.Random(7)
    out, lines, events = [], 0, 0
    tmp = LOG + ".tmp"
    with open(tmp, "w") as f:
        while lines < LINES:
            ts = "2026-11-25T10:%02d:%02d.%03dZ" % ((lines // 60000) % 60, (lines // 1000) % 60, lines % 1000)
            event = []
            if rnd.random() < 0.97:
                msg = "request completed in %d ms" % rnd.randrange(500)
                if rnd.random() < 0.125:
                    msg += " for " + secret(rnd)
                event.append('{"ts":"%s","level":"info","logger":"http.server","msg":"%s","request_id":"%08x",'
                             '"path":"/api/v1/orders","status":200,"trace_id":"%016x"}\n'
                             % (ts, msg, rnd.getrandbits(32), rnd.getrandbits(64)))
            else:
                event.append("2026-11-25 10:00:%02d.%03d ERROR [exec-%d] c.a.Svc - failed for %s\n"
                             % (lines % 60, lines % 1000, rnd.randrange(8), secret(rnd)))
                if rnd.random() < 0.6:
                    event.append("java.lang.IllegalStateException: order %d is closed\n" % rnd.randrange(10**6))
                    event.extend("\tat %s\n" % rnd.choice(JAVA_FRAMES) for _ in range(rnd.randrange(8, 25)))
                    event.append("Caused by: java.sql.SQLException: Connection refused: 10.0.3.7:5432\n")
                    event.extend("\tat %s\n" % rnd.choice(JAVA_FRAMES) for _ in range(3))
                    event.append("\t... 48 more\n")
                else:
                    event.append("Traceback (most recent call last):\n")
                    for _ in range(rnd.randrange(2, 8)):
                        event.append('  File "/srv/app/payments.py", line %d, in charge\n' % rnd.randrange(400))
                        event.append("    resp = client.post(url, json=body, timeout=5)\n")
                    event.append("httpx.ConnectTimeout: timed out\n")
            out.extend(event)
            lines += len(event)
            events += 1
            if len(out) >= 10000:
                f.write("".join(out))
                out.clear()
        f.write("".join(out))
    with open(EVENTS, "w") as f:
        f.write("%d %d\n" % (lines, events))
    os.rename(tmp, LOG)


def run(config, lines):
    work = tempfile.mkdtemp(prefix="logferry-bench-")
    env = dict(os.environ, BENCH_DATA_DIR=os.path.join(work, "data"), BENCH_LOGS=LOG, LOGFERRY_LOG="info")
    try:
        r = run_router(BIN, os.path.join(ROOT, "bench", config), env)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return r.sent("null"), r.wall, r.cpu, r.rss_mib


def main():
    generate()
    with open(EVENTS) as f:
        lines, events = (int(x) for x in f.read().split())
    size = os.path.getsize(LOG)
    print(f"input           {lines:,} lines, {events:,} events, {size / 1e6:.0f} MB")
    for name, config, want in [("multiline+redact", "transforms.toml", events),
                               ("no transforms", "transforms-base.toml", lines)]:
        sent, wall, cpu, rss = run(config, lines)
        if sent != [want]:
            sys.exit(f"{name}: the sink received {sent} records, expected {want}")
        print(f"{name:17s} {lines / wall:,.0f} lines/s (wall {wall:.2f} s), cpu {cpu:.2f} s "
              f"({lines / cpu:,.0f} lines/cpu-s), peak RSS {rss:.1f} MiB, {want:,} records out")


if __name__ == "__main__":
    main()
