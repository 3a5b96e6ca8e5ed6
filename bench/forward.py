"""Throughput and memory benchmark of the forward source.

`bench/run.sh forward`: RECORDS (default 1,000,000) app-log records of ~250
bytes as JSON, encoded once with the `msgpack` package into PackedForward
frames of CHUNK (default 1,000) records with EventTime and a `chunk` option
(bench/data/, ignored by git). The router runs `forward (unix socket) ->
blackhole` with `--exit-on-eof` under /usr/bin/time -v; a client streams
every frame over the socket, keeping up to WINDOW (default 16) chunks
unacknowledged like Fluent Bit's `require_ack_response`, counts the acks,
then closes, which ends the run. Reports records/s, MB/s (msgpack bytes sent),
router CPU seconds and peak RSS.

MODE=message sends one Message-mode frame per record instead, without acks (the Docker
fluentd log driver's shape).

Needs `msgpack`: run with the LocalStack test venv's python (run.sh does,
after `localstack-tests/localstack.sh install`).
Not a test: figures vary with the machine; nothing here asserts a speed.
"""
import os
import random
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

import msgpack

from measure import sample_fields

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORDS = int(os.environ.get("RECORDS", "1000000"))
CHUNK = int(os.environ.get("CHUNK", "1000"))
# MODE=message: one Message-mode frame per record without acks, as the Docker fluentd log
# driver and fluent-logger send them.
MODE = os.environ.get("MODE", "packed")
WINDOW = int(os.environ.get("WINDOW", "16"))
DATA = os.path.join(ROOT, "bench", "data")
FRAMES = os.path.join(DATA, f"forward-{MODE}-{RECORDS}-{CHUNK}.msgpack")
BIN = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "logferry")


def generate():
    """Frames, back to back, each a PackedForward message with a chunk id."""
    if os.path.exists(FRAMES):
        return
    os.makedirs(DATA, exist_ok=True)
    rnd = random.Random(42)
    base = 1795648547
    tmp = FRAMES + ".tmp"
    with open(tmp, "wb") as f:
        for c in range(0, RECORDS, CHUNK):
            entries = []
            for i in range(c, min(c + CHUNK, RECORDS)):
                ms = i // 2
                t = msgpack.ExtType(0, struct.pack(">II", base + ms // 1000, (ms % 1000) * 1_000_000))
                record = sample_fields(rnd)
                record["latency_ms"] = round(record["latency_ms"], 1)
                record.update(container_name="app", source="stdout")
                if MODE == "message":
                    f.write(msgpack.packb(["app.bench", t, record]))
                else:
                    entries.append(msgpack.packb([t, record]))
            if MODE == "message":
                continue
            f.write(msgpack.packb(["app.bench", b"".join(entries), {"chunk": "c%d" % c, "size": len(entries)}],
                                  use_bin_type=True))
    os.rename(tmp, FRAMES)


def frames():
    """The frames' bytes as written (split where the unpacker ends each)."""
    with open(FRAMES, "rb") as f:
        raw = f.read()
    unpacker = msgpack.Unpacker(raw=True, max_buffer_size=len(raw) + 1)
    unpacker.feed(raw)
    start = 0
    for _ in unpacker:
        end = unpacker.tell()
        yield raw[start:end]
        start = end


def client(sock_path, data, out):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock_path)
    window = threading.Semaphore(WINDOW)
    acks = [0]
    if MODE == "message":
        # No acks to wait for: stream everything, then close.
        sent = 0
        batch = []
        for fr in data:
            batch.append(fr)
            if len(batch) == 1000:
                b = b"".join(batch)
                s.sendall(b)
                sent += len(b)
                batch.clear()
        b = b"".join(batch)
        s.sendall(b)
        s.close()
        out.update(acks=0, frames=0, bytes=sent + len(b))
        return

    def reader():
        u = msgpack.Unpacker(raw=False)
        while acks[0] < len(data):
            b = s.recv(65536)
            if not b:
                break
            u.feed(b)
            for m in u:
                if isinstance(m, dict) and "ack" in m:
                    acks[0] += 1
                    window.release()

    r = threading.Thread(target=reader)
    r.start()
    sent = 0
    for fr in data:
        window.acquire()
        s.sendall(fr)
        sent += len(fr)
    r.join(timeout=600)
    s.close()
    out.update(acks=acks[0], frames=len(data), bytes=sent)


def main():
    generate()
    work = tempfile.mkdtemp(prefix="logferry-bench-fwd-")
    sock = os.path.join(work, "fluent.sock")
    env = dict(os.environ, BENCH_DATA_DIR=os.path.join(work, "data"), BENCH_SOCK=sock, LOGFERRY_LOG="info")
    cmd = ["/usr/bin/time", "-v", BIN, "run", "--config", os.path.join(ROOT, "bench", "bench-forward.toml"),
           "--exit-on-eof"]
    try:
        p = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        while not os.path.exists(sock):
            if time.time() > deadline or p.poll() is not None:
                sys.exit("the router did not open its socket")
            time.sleep(0.05)
        got = {}
        data = list(frames())
        t0 = time.time()
        client(sock, data, got)
        _, t = p.communicate(timeout=600)
        wall = time.time() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if p.returncode != 0:
        sys.stderr.write(t)
        sys.exit(p.returncode)

    def field(name):
        m = re.search(re.escape(name) + r":\s*(.+)", t)
        return m.group(1).strip() if m else "0"

    delivered = [int(m.group(1)) for m in re.finditer(r'component=null .*?sent=(\d+)', t)]
    if delivered != [RECORDS] or got["acks"] != got["frames"]:
        sys.stderr.write(t)
        sys.exit(f"blackhole got {delivered}, expected {RECORDS}; acks {got['acks']} of {got['frames']} chunks")
    cpu = float(field("User time (seconds)")) + float(field("System time (seconds)"))
    rss_kib = int(field("Maximum resident set size (kbytes)"))
    mb = got["bytes"] / 1e6
    if MODE == "message":
        print(f"records         {RECORDS:,} Message-mode frames, no acks "
              f"({got['bytes'] / RECORDS:.0f} msgpack bytes/record, {mb:.0f} MB)")
    else:
        print(f"records         {RECORDS:,} in {got['frames']:,} PackedForward chunks "
              f"({got['bytes'] / RECORDS:.0f} msgpack bytes/record, {mb:.0f} MB), all acked")
    print(f"wall            {wall:.2f} s (first byte sent to router exit)")
    print(f"router cpu      {cpu:.2f} s (user {field('User time (seconds)')}, sys {field('System time (seconds)')})")
    print(f"records/s       {RECORDS / wall:,.0f} (wall), {RECORDS / cpu:,.0f} per router cpu-s")
    print(f"MB/s            {mb / wall:,.1f} (wall), {mb / cpu:,.1f} per router cpu-s")
    print(f"peak RSS        {rss_kib / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
