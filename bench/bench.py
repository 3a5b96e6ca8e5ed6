"""Throughput and memory benchmark of `logferry run --exit-on-eof`.

`bench/run.sh`: generates LINES (default 2,000,000) realistic JSON app-log
lines of ~250 bytes once under bench/data/, runs file -> json -> enrich ->
blackhole, and reports lines/s, MB/s, CPU seconds (user+sys) and peak RSS
from /usr/bin/time -v.

`bench/run.sh s3`: LINES default 500,000, file -> json -> enrich -> gzip ->
S3 on a LocalStack started for the run (localstack-tests/localstack.sh);
reports delivered lines/s, router CPU seconds per MB delivered, compressed
size and peak RSS, and checks the delivered count in the bucket.

Not a test: figures vary with the machine; nothing here asserts a speed.
"""
import os
import random
import shutil
import subprocess
import sys
import tempfile

from measure import run_router, sample_fields

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODE = sys.argv[1] if len(sys.argv) > 1 else "blackhole"
LINES = int(os.environ.get("LINES", "500000" if MODE == "s3" else "2000000"))
DATA = os.path.join(ROOT, "bench", "data")
LOG = os.path.join(DATA, f"app-{LINES}.log")
BIN = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "logferry")


def generate():
    if os.path.exists(LOG):
        return
    os.makedirs(DATA, exist_ok=True)
    rnd = random.Random(42)
    tmp = LOG + ".tmp"
    with open(tmp, "w") as f:
        buf = []
        for i in range(LINES):
            ms = i // 2
            ts = "2026-11-25T%02d:%02d:%02d.%03dZ" % ((ms // 3600000) % 24, (ms // 60000) % 60, (ms // 1000) % 60, ms % 1000)
            r = sample_fields(rnd)
            buf.append('{"ts":"%s","level":"%s","logger":"%s","msg":"%s","request_id":"%s","user_id":%d,'
                       '"latency_ms":%.1f,"path":"%s","status":%d,"trace_id":"%s"}\n'
                       % (ts, r["level"], r["logger"], r["msg"], r["request_id"], r["user_id"],
                          r["latency_ms"], r["path"], r["status"], r["trace_id"]))
            if len(buf) >= 10000:
                f.write("".join(buf))
                buf.clear()
        f.write("".join(buf))
    os.rename(tmp, LOG)


LS = os.path.join(ROOT, "localstack-tests", "localstack.sh")
VENV_PY = os.path.join(os.environ.get("LOGFERRY_CACHE", os.path.expanduser("~/.cache/logferry")),
                       "localstack-venv", "bin", "python")
S3_SCRIPT = """
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                  aws_access_key_id="test", aws_secret_access_key="test")
if sys.argv[2] == "create":
    s3.create_bucket(Bucket=sys.argv[3])
else:
    import gzip
    n = size = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=sys.argv[3]):
        for o in page.get("Contents", []):
            size += o["Size"]
            body = s3.get_object(Bucket=sys.argv[3], Key=o["Key"])["Body"].read()
            n += gzip.decompress(body).count(b"\\n")
    print(n, size)
"""


def s3_helper(endpoint, *args):
    out = subprocess.run([VENV_PY, "-c", S3_SCRIPT, endpoint, *args], check=True, capture_output=True, text=True)
    return out.stdout.split()


def main():
    generate()
    size = os.path.getsize(LOG)
    work = tempfile.mkdtemp(prefix="logferry-bench-")
    env = dict(os.environ, BENCH_DATA_DIR=os.path.join(work, "data"), BENCH_LOGS=LOG, LOGFERRY_LOG="info")
    config = "bench.toml"
    sink = "null"
    endpoint = None
    if MODE == "s3":
        port = os.environ.get("BENCH_LOCALSTACK_PORT", "4588")
        ls_env = dict(os.environ, LOCALSTACK_PORT=port)
        subprocess.run([LS, "install"], check=True, env=ls_env)
        endpoint = subprocess.run([LS, "start"], check=True, env=ls_env, capture_output=True, text=True).stdout.split()[-1]
        bucket = "logferry-bench"
        s3_helper(endpoint, "create", bucket)
        env.update(BENCH_BUCKET=bucket, BENCH_ENDPOINT=endpoint, AWS_ACCESS_KEY_ID="test",
                   AWS_SECRET_ACCESS_KEY="test", AWS_EC2_METADATA_DISABLED="true")
        config = "bench-s3.toml"
        sink = "archive"
    try:
        r = run_router(BIN, os.path.join(ROOT, "bench", config), env)
        stored = s3_helper(endpoint, "count", "logferry-bench") if endpoint else None
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if endpoint:
            subprocess.run([LS, "stop"], env=dict(os.environ, LOCALSTACK_PORT=os.environ.get("BENCH_LOCALSTACK_PORT", "4588")))
    sent = r.sent(sink)
    if sent != [LINES]:
        sys.stderr.write(r.stderr)
        sys.exit(f"sink {sink} delivered {sent}, expected {LINES}")
    if stored is not None and int(stored[0]) != LINES:
        sys.exit(f"the bucket holds {stored[0]} records, expected {LINES}")
    user, sys_, wall, rss_kib = r.user, r.sys, r.wall, r.rss_mib * 1024
    cpu = user + sys_
    mb = size / 1e6
    print(f"lines           {LINES:,} ({size / LINES:.0f} bytes/line, {mb:.0f} MB)")
    print(f"wall            {wall:.2f} s")
    print(f"cpu             {cpu:.2f} s (user {user:.2f}, sys {sys_:.2f})")
    print(f"lines/s         {LINES / wall:,.0f} (wall)")
    print(f"lines/cpu-s     {LINES / cpu:,.0f}")
    print(f"MB/s            {mb / wall:,.1f} (wall), {mb / cpu:,.1f} per cpu-s")
    print(f"peak RSS        {rss_kib / 1024:.1f} MiB")
    if stored is not None:
        print(f"delivered       {int(stored[0]):,} records in S3, {int(stored[1]) / 1e6:.1f} MB gzip "
              f"({size / max(int(stored[1]), 1):.1f}x)")
        print(f"cpu-s per MB    {cpu / mb:.4f} (router process, gzip included)")


if __name__ == "__main__":
    main()
