"""`memory_limit` with many open objects, in the `s3` sink (issue 13): a backlog of 60,000 lines
one second apart, sliced by minute, so 1,000 objects are open at once until `flush_interval`.
Before the object batcher charged open objects, this peaked at 335-340 MiB of RSS with gzip.
Every line must be in S3 once, one object per slice.

Peak RSS comes from GNU time (`/usr/bin/time -f %M`), not from this process's `wait4`: Linux
carries the peak of the memory a child started from over `exec`, and a child forked (or
vforked) from pytest starts from pytest's 70-80 MiB."""

from __future__ import annotations

import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

from conftest import DUMMY_CREDENTIALS, RUN_TIMEOUT
import configs
from workload import S3Objects, ids_seen

ENV = {**DUMMY_CREDENTIALS, "AWS_EC2_METADATA_DISABLED": "true"}
LINES = 60_000
LIMIT_MIB = 32
TIME = "/usr/bin/time"


def write_backlog(path) -> None:
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(LINES):
            ts = (start + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%SZ")
            f.write(f'{{"ts":"{ts}","id":"l{i}","level":"info","msg":"request {i * 7919 % 100000} served"}}\n')


def test_thousand_open_minute_slices_stay_under_the_limit(router, s3, bucket, endpoint, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    write_backlog(logs / "app.log")
    cfg = router.write_config(f"""\
[global]
data_dir = {configs.q(tmp_path / "data")}
memory_limit = "{LIMIT_MIB}MiB"

[sources.app]
type = "file"
include = [{configs.q(logs / "app.log")}]
parser = "json"
time_key = "ts"
read_from = "beginning"

[sinks.archive]
type = "s3"
inputs = ["app"]
bucket = {configs.q(bucket)}
key_prefix = "b/%Y%m%d%H%M/"
compression = "gzip"
flush_interval = "60s"
region = "us-east-1"
endpoint_url = {configs.q(endpoint)}
force_path_style = true
""")
    assert Path(TIME).exists(), f"this test measures peak RSS with GNU time: {TIME} is missing"
    stderr = tmp_path / "router.stderr"
    peak_file = tmp_path / "peak-kib"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(
            [TIME, "-f", "%M", "-o", str(peak_file), str(router.binary), "run", "--config", str(cfg), "--exit-on-eof"],
            env=router.env(ENV),
            cwd=router.dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        proc.wait(timeout=RUN_TIMEOUT)  # a hang guard
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"router still running after {RUN_TIMEOUT:.0f}s:\n{stderr.read_text()[-4000:]}") from None
    assert proc.returncode == 0, stderr.read_text()[-4000:]
    peak_mib = int(peak_file.read_text().split()[-1]) / 1024
    objects = S3Objects(s3, bucket).list()
    print(f"\n1,000 minute slices in S3: peak RSS {peak_mib:.1f} MiB, {len(objects)} objects")
    assert peak_mib < LIMIT_MIB + 32, f"peak RSS {peak_mib:.1f} MiB"
    counts = ids_seen(objects)
    assert sorted(counts) == sorted(f"l{i}" for i in range(LINES)), "every line, nothing else"
    assert all(c == 1 for c in counts.values()), "each once"
    assert len(objects) == 1000, "one object per minute: none closed early"
    assert all(o.metadata.get("records") == "60" for o in objects), "PutObject metadata as before"

