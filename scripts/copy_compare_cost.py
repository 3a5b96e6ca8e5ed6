#!/usr/bin/env python3
"""What it costs the file source to compare a copy with its still-open original.

    scripts/copy_compare_cost.py --mb 100 --mb 1024 [--bin target/release/logferry]

For each size: the router tails an `app.log` of that many MB (JSON lines of ~250 bytes, a
blackhole sink) until it has read all of it; then the file is copied to `app.log.1` (logrotate's
copytruncate, or a plain `cp`) and truncated only after the router decided what the copy is. A
copy found while its original is still open is compared with it byte for byte up to the
original's read position (`rotation.rs`, `same_bytes_to`), on the source's thread. Reported: the
bytes the router read (`rchar` of /proc/<pid>/io) from the copy's completion to its decision,
how long the reads went on (sampled every 20 ms), and a probe of the stall: a line appended to
a second file once the router began reading the copy, and when its read offset moved.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def rchar(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no rchar")


def metric(port: int, name: str, file: str) -> float | None:
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return None
    for line in body.splitlines():
        if line.startswith(name + "{") and f'file="{file}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def write_log(path: Path, mb: int) -> int:
    line_no = 0
    with open(path, "wb") as f:
        while f.tell() < mb * 1024 * 1024:
            block = []
            for _ in range(4000):
                block.append(json.dumps({"id": line_no, "msg": "x" * 220}) + "\n")
                line_no += 1
            f.write("".join(block).encode())
    return path.stat().st_size


def wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting for {what}")


def one(binary: Path, mb: int, port: int) -> None:
    work = Path(tempfile.mkdtemp(prefix=f"copycmp-{mb}-"))
    try:
        logs = work / "logs"
        logs.mkdir()
        app = logs / "app.log"
        probe = logs / "probe.log"
        size = write_log(app, mb)
        probe.write_text('{"probe":0}\n')
        cfg = work / "logferry.toml"
        cfg.write_text(
            f"""[global]
data_dir = "{work / 'data'}"
[api]
address = "127.0.0.1:{port}"
[sources.app]
type = "file"
include = ["{app}", "{app}.*[0-9]", "{probe}"]
read_from = "beginning"
parser = "json"
[sinks.out]
type = "blackhole"
inputs = ["app"]
"""
        )
        err = open(work / "router.stderr", "wb")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LOGFERRY_LOG": "logferry=info"}
        p = subprocess.Popen([str(binary), "run", "--config", str(cfg)], stderr=err, stdout=err, env=env)
        try:
            t0 = time.monotonic()
            wait_for(
                lambda: (metric(port, "logferry_file_read_offset_bytes", str(app)) or 0) >= size,
                600,
                "the first read of app.log",
            )
            first_read = time.monotonic() - t0
            time.sleep(1.0)
            before = rchar(p.pid)
            t_copy = time.monotonic()
            shutil.copyfile(app, logs / "app.log.1")
            copied = time.monotonic()
            # The probe: once the router reads the copy, a line in another file, read only
            # when the source's thread is free again.
            wait_for(lambda: rchar(p.pid) - before > 1024 * 1024, 600, "the router to read the copy")
            probed = time.monotonic()
            with open(probe, "a") as f:
                f.write('{"probe":1}\n')
            probe_size = probe.stat().st_size
            samples = []
            decided = None
            probe_seen = None
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                now = time.monotonic()
                samples.append((now, rchar(p.pid)))
                if probe_seen is None and (metric(port, "logferry_file_read_offset_bytes", str(probe)) or 0) >= probe_size:
                    probe_seen = now
                text = (work / "router.stderr").read_text(errors="replace")
                if decided is None and re.search(r"file is a copy|not a copy", text):
                    decided = now
                if decided and probe_seen and len(samples) > 10 and samples[-1][1] == samples[-10][1]:
                    break
                time.sleep(0.02)
            os.truncate(app, 0)
            grew = [t for (t, r), (_, r0) in zip(samples[1:], samples) if r != r0]
            read = samples[-1][1] - before
            print(
                f"{mb} MB ({size} bytes): first read {first_read:.1f} s; copy written in {copied - t_copy:.2f} s; "
                f"router read {read} bytes ({read / size:.2f}x the file) after the copy, "
                f"until {(grew[-1] - copied) if grew else 0:.2f} s after it was written "
                f"(reads began {probed - copied:.2f} s after it, so they took {(grew[-1] - probed) if grew else 0:.2f} s); "
                f"decision logged {((decided or now) - copied):.2f} s after; "
                f"a line appended to another file once the reads began was read "
                f"{((probe_seen or now) - probed):.2f} s later"
            )
            lines = [l for l in (work / "router.stderr").read_text().splitlines() if "copy" in l]
            for l in lines[-3:]:
                print("   ", l[:220])
        finally:
            p.terminate()
            p.wait(timeout=60)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, action="append", help="file size in MB (repeatable; default 100 and 1024)")
    ap.add_argument("--bin", type=Path, default=Path(os.environ.get("LOGFERRY_BIN", REPO / "target/release/logferry")))
    ap.add_argument("--port", type=int, default=2931)
    args = ap.parse_args()
    if not args.bin.exists():
        sys.exit(f"no router binary at {args.bin}")
    for mb in args.mb or [100, 1024]:
        one(args.bin, mb, args.port)


if __name__ == "__main__":
    main()
