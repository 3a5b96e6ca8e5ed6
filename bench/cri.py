"""Throughput of node-daemon mode: CRI container logs with partial lines joined.

`python3 bench/cri.py` (after `cargo build --release -p logferry`): generates once a
kubelet-named CRI file of LINES (default 1,000,000) runtime lines under
bench/data/containers/ (stdout and stderr interleaved; every fourth application line is
long and cut by the "runtime" into P, P, F parts, the two streams' parts interleaving),
runs `logferry run --exit-on-eof` (file -> cri -> blackhole, kubernetes fields from the
path), checks the record count, and reports CRI lines/s, records/s, MB/s, CPU and peak RSS.
`python3 bench/cri.py plain`: the same bytes without P parts (every line F), for comparison.

Not a test: figures vary with the machine; nothing here asserts a speed.
"""
import os
import random
import shutil
import sys
import tempfile

from measure import run_router

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODE = sys.argv[1] if len(sys.argv) > 1 else "joined"
LINES = int(os.environ.get("LINES", "1000000"))
NAME = "web-7d4b9c8f5-x2x9z_prod_app-" + "3f1c2a9e" * 8 + ".log"
DIR = os.path.join(ROOT, "bench", "data", "containers", f"{MODE}-{LINES}")
LOG = os.path.join(DIR, NAME)
BIN = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "logferry")


def generate() -> int:
    """Writes the file once; returns the number of records it should give."""
    count_file = LOG + ".records"
    if os.path.exists(LOG) and os.path.exists(count_file):
        return int(open(count_file).read())
    os.makedirs(DIR, exist_ok=True)
    rnd = random.Random(42)
    msgs = ["request completed", "cache miss for key", "payment authorised", "upstream timeout after retries"]
    out, records, n, i = [], 0, 0, 0
    open_parts = {}  # stream -> remaining parts of a cut line
    while n < LINES:
        stream = "stderr" if rnd.random() < 0.3 else "stdout"
        ms = i // 2
        ts = "2026-11-25T%02d:%02d:%02d.%03d456789Z" % ((ms // 3600000) % 24, (ms // 60000) % 60, (ms // 1000) % 60, ms % 1000)
        i += 1
        if stream in open_parts:
            parts = open_parts[stream]
            text = parts.pop(0)
            tag = "P" if parts and MODE == "joined" else "F"
            if not parts:
                del open_parts[stream]
            if tag == "F":
                records += 1
            out.append(f"{ts} {stream} {tag} {text}\n")
            n += 1
            continue
        line = '{"level":"info","msg":"%s","request_id":"%032x","latency_ms":%.1f}' % (
            rnd.choice(msgs), rnd.getrandbits(128), rnd.random() * 250)
        if i % 4 == 0:
            # A long line (a stack trace, a big payload) the runtime cut in three.
            text = line + " " + "x" * rnd.randint(300, 600)
            third = len(text) // 3
            open_parts[stream] = [text[:third], text[third:2 * third], text[2 * third:]]
            continue
        out.append(f"{ts} {stream} F {line}\n")
        records += 1
        n += 1
    # Lines still open at the end: the router flushes them at --exit-on-eof as records too.
    records += len(open_parts) if MODE == "joined" else 0
    tmp = LOG + ".tmp"
    with open(tmp, "w") as f:
        f.write("".join(out))
    os.rename(tmp, LOG)
    with open(count_file, "w") as f:
        f.write(str(records))
    return records


def main():
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} not found: cargo build --release -p logferry")
    records = generate()
    size = os.path.getsize(LOG)
    work = tempfile.mkdtemp(prefix="logferry-bench-cri-")
    env = dict(os.environ, BENCH_DATA_DIR=work, BENCH_LOGS=os.path.join(DIR, "*.log"), LOGFERRY_LOG="info")
    try:
        r = run_router(BIN, os.path.join(ROOT, "bench", "cri.toml"), env)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sent = r.sent("null")
    if sent != [records]:
        sys.stderr.write(r.stderr)
        sys.exit(f"the sink got {sent} records, expected {records}")
    user, sys_, wall, rss = r.user, r.sys, r.wall, r.rss_mib
    cpu, mb = user + sys_, size / 1e6
    print(f"mode            {MODE}")
    print(f"CRI lines       {LINES:,} ({size / LINES:.0f} bytes/line, {mb:.0f} MB) -> {records:,} records")
    print(f"wall            {wall:.2f} s; cpu {cpu:.2f} s (user {user:.2f}, sys {sys_:.2f})")
    print(f"CRI lines/s     {LINES / wall:,.0f} (wall), {LINES / cpu:,.0f} per cpu-s")
    print(f"records/s       {records / wall:,.0f} (wall)")
    print(f"MB/s            {mb / wall:,.1f} (wall)")
    print(f"peak RSS        {rss:.1f} MiB")


if __name__ == "__main__":
    main()
