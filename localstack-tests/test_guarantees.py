"""The delivery guarantees (DESIGN.md, "Delivery guarantee"), proven with the real binary
against LocalStack: crashes, a sink outage, the memory bound, a permanent error, the drain on
SIGTERM, the app-exit lifecycle and dead letters.

Every scenario writes uniquely numbered lines (`{"n": N, ...}`) and compares the set of numbers
in S3 (or CloudWatch) with the set written: at least once means no number is missing;
duplicates are allowed after a crash and reported. Outages are made with a `TcpProxy` in front
of LocalStack (the sink's `endpoint_url` points at it), because LocalStack's state would not
survive a restart.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import shutil
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

import configs
from conftest import DUMMY_CREDENTIALS, unique
from emulators import TcpProxy
from workload import poll, wait_for_open

ENV = {**DUMMY_CREDENTIALS, "AWS_EC2_METADATA_DISABLED": "true"}
N_RE = re.compile(rb'"n":(\d+)')


# -- the application ---------------------------------------------------------------------------


class NumberedApp:
    """Writes `{"n": N, "msg": ...}` lines to `<dir>/app.log`, optionally rotating it every
    `rotate_bytes`, alternating rename-and-create and copytruncate. Both leave the old lines in
    `app.log.K` (as logrotate does), which the router's `include` covers. The writer pauses
    during a rotation, as logrotate's copytruncate needs to lose nothing."""

    def __init__(self, log_dir: Path, rotate_bytes: int | None = None) -> None:
        self.dir = Path(log_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "app.log"
        self.rotate_bytes = rotate_bytes
        self.next = 0
        self.rotations = Counter()
        self._f = open(self.path, "a", encoding="utf-8")
        self._thread: threading.Thread | None = None

    def write(self, n: int) -> None:
        lines = []
        for i in range(self.next, self.next + n):
            lines.append(f'{{"n":{i},"level":"info","msg":"order {i} processed for tenant {i % 97}"}}\n')
        self._f.write("".join(lines))
        self._f.flush()
        self.next += n
        if self.rotate_bytes and self._f.tell() >= self.rotate_bytes:
            self._rotate()

    def _rotate(self) -> None:
        k = sum(self.rotations.values()) + 1
        rotated = self.dir / f"app.log.{k}"
        if k % 2:
            os.rename(self.path, rotated)
            self._f.close()
            self._f = open(self.path, "a", encoding="utf-8")
            self.rotations["rename"] += 1
        else:
            shutil.copyfile(self.path, rotated)
            os.truncate(self.path, 0)
            self._f.seek(0)
            self.rotations["copytruncate"] += 1

    def write_paced(self, total: int, chunk: int, pause: float) -> None:
        while self.next < total:
            self.write(min(chunk, total - self.next))
            time.sleep(pause)

    def start_paced(self, total: int, chunk: int, pause: float) -> None:
        self._thread = threading.Thread(target=self.write_paced, args=(total, chunk, pause), daemon=True)
        self._thread.start()

    def join(self, timeout: float = 300) -> None:
        if self._thread:
            self._thread.join(timeout)
            assert not self._thread.is_alive(), "the app writer hung"

    @property
    def writing(self) -> bool:
        return bool(self._thread and self._thread.is_alive())

    def close(self) -> None:
        self._f.close()


# -- what arrived ----------------------------------------------------------------------------


class Numbers:
    """The numbers in a bucket's objects under a prefix, read incrementally (each key once)."""

    def __init__(self, s3, bucket: str, prefix: str = "") -> None:
        self.s3, self.bucket, self.prefix = s3, bucket, prefix
        self.seen_keys: set[str] = set()
        self.counts: Counter = Counter()

    def update(self) -> Counter:
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for o in page.get("Contents", []):
                key = o["Key"]
                if key in self.seen_keys:
                    continue
                body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
                data = gzip.decompress(body) if key.endswith(".gz") else body
                self.counts.update(int(m) for m in N_RE.findall(data))
                self.seen_keys.add(key)
        return self.counts

    def wait_for(self, total: int, router=None, timeout: float = 240) -> Counter:
        def complete():
            if router is not None and not router.alive():
                raise AssertionError(
                    f"router exited ({router.proc.returncode}) early; stderr:\n{router.stderr[-4000:]}"
                )
            c = self.update()
            return c if len(c) >= total else None

        try:
            return poll(complete, timeout=timeout, what=f"{total} numbered lines in S3", interval=1.0)
        except AssertionError as e:
            missing = [n for n in range(total) if n not in self.counts]
            raise AssertionError(f"{e}; {len(missing)} missing, e.g. {missing[:10]}") from None


def assert_all_delivered(counts: Counter, total: int, what: str) -> int:
    missing = [n for n in range(total) if n not in counts]
    extra = [n for n in counts if not 0 <= n < total]
    assert not missing, f"{what}: {len(missing)} lines lost, e.g. {missing[:10]}"
    assert not extra, f"{what}: numbers never written: {extra[:10]}"
    dupes = sum(c - 1 for c in counts.values())
    print(f"\n{what}: {total} lines delivered, {dupes} duplicates")
    return dupes


def vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def checkpoint_total(data_dir: Path, source: str = "app") -> int:
    path = data_dir / "checkpoints" / f"{source}.json"
    try:
        doc = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return 0
    return sum(f["offset"] for f in doc.get("files", []))


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def metric(api_port: int, name: str, labels: str = r"[^}]*") -> float | None:
    """One sample of `name{labels}` from the router's /metrics; None when absent or unreachable."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    m = re.search(rf"^{name}\{{{labels}\}} (\d+(?:\.\d+)?)$", text, re.M)
    return float(m.group(1)) if m else None


# -- configs ---------------------------------------------------------------------------------


def config(
    tmp: Path,
    bucket: str,
    endpoint: str,
    *,
    include: str = "app.log*",
    global_extra: str = "",
    tail: str = "",
    prefix: str = "g/%Y/%m/%d/%H/%M/",
) -> str:
    return f"""\
[global]
data_dir = {configs.q(tmp / "data")}
{global_extra}

[sources.app]
type = "file"
include = [{configs.q(tmp / "logs" / include)}]
parser = "json"
glob_interval = "250ms"

[sinks.archive]
type = "s3"
inputs = ["app"]
bucket = {configs.q(bucket)}
key_prefix = {configs.q(prefix)}
compression = "gzip"
flush_interval = "1s"
region = "us-east-1"
endpoint_url = {configs.q(endpoint)}
force_path_style = true
{tail}
"""


# -- scenarios -------------------------------------------------------------------------------


def test_crash_loop_with_rotation_loses_nothing(router, s3, bucket, endpoint, tmp_path):
    """1,000,000 numbered lines, the file rotated every 5 MB (rename and copytruncate in turn),
    the router killed with SIGKILL at 10 random moments and restarted: every line in S3."""
    total = 1_000_000
    rng = random.Random(int(os.environ.get("LOGFERRY_TEST_SEED", "4")))
    app = NumberedApp(tmp_path / "logs", rotate_bytes=5 * 1024 * 1024)
    cfg = router.write_config(config(tmp_path, bucket, endpoint))
    running = router.start(cfg, env=ENV)
    app.write(1000)
    wait_for_open(running, app.path)
    # About 25 s of writing; the kills fall inside it.
    app.start_paced(total, chunk=2000, pause=0.05)
    start = time.monotonic()
    kills = sorted(rng.uniform(0.5, 22.0) for _ in range(10))
    for at in kills:
        time.sleep(max(0.0, at - (time.monotonic() - start)))
        running.proc.send_signal(signal.SIGKILL)
        running.proc.wait(timeout=30)
        time.sleep(rng.uniform(0.0, 0.5))
        running = router.start(cfg, env=ENV)
    app.join()
    assert app.rotations["rename"] >= 5 and app.rotations["copytruncate"] >= 5, app.rotations
    counts = Numbers(s3, bucket).wait_for(total, running, timeout=600)
    stderr = running.terminate()
    assert running.returncode == 0, stderr[-4000:]
    app.close()
    assert_all_delivered(counts, total, f"crash loop ({len(kills)} kill -9, {dict(app.rotations)} rotations)")


DISK_BUFFER = 'buffer = { type = "disk", max_size = "512MiB" }\n'


@pytest.mark.parametrize("buffer", ["memory", "disk"])
def test_sink_outage_of_30s_loses_nothing(router, s3, bucket, endpoint, tmp_path, buffer):
    """The sink's endpoint stops answering for 30 s mid-stream, then comes back. With a disk
    buffer the source keeps reading during the outage (its checkpoint moves on)."""
    total = 200_000
    with TcpProxy(endpoint) as proxy:
        app = NumberedApp(tmp_path / "logs")
        tail = DISK_BUFFER if buffer == "disk" else ""
        running = router.start(config(tmp_path, bucket, proxy.url, tail=tail), env=ENV)
        app.write(1000)
        wait_for_open(running, app.path)
        numbers = Numbers(s3, bucket)
        app.start_paced(total, chunk=1000, pause=0.2)  # ~40 s of writing
        poll(lambda: len(numbers.update()) > 0, timeout=60, what="first objects")
        proxy.down()
        time.sleep(5)  # requests in flight fail; what the memory path holds fills up
        before = checkpoint_total(tmp_path / "data")
        time.sleep(25)
        during = checkpoint_total(tmp_path / "data")
        assert running.alive(), running.stderr[-4000:]
        proxy.up()
        if buffer == "disk":
            # ~25 s of writing at ~360 KB/s went into the buffer and was acknowledged.
            assert during - before > 2_000_000, f"checkpoint moved {during - before} bytes during the outage"
        print(f"\n{buffer} buffer: checkpoint moved {during - before} bytes during the outage")
        app.join()
        counts = numbers.wait_for(total, running)
        stderr = running.terminate()
        assert running.returncode == 0, stderr[-4000:]
        app.close()
    assert_all_delivered(counts, total, f"30 s outage, {buffer} buffer")


def test_memory_bound_with_the_sink_blocked(router, s3, bucket, endpoint, tmp_path):
    """memory_limit = 32MiB, the sink unreachable, 2,000,000 lines arrive: peak RSS stays under
    64 MiB, the source stops reading (the file is the queue), and once the sink is back every
    line is delivered."""
    total = 2_000_000
    api_port = free_port()
    with TcpProxy(endpoint) as proxy:
        proxy.down()
        app = NumberedApp(tmp_path / "logs")
        cfg = config(
            tmp_path,
            bucket,
            proxy.url,
            global_extra='memory_limit = "32MiB"',
            tail=f'\n[api]\naddress = "127.0.0.1:{api_port}"\n',
        )
        running = router.start(cfg, env=ENV)
        for _ in range(total // 100_000):
            app.write(100_000)
        size = app.path.stat().st_size

        # The router reads until the limit is full, then stops: the offset stays put.
        last = [None]

        def settled():
            off = metric(api_port, "logferry_file_read_offset_bytes")
            same = off is not None and off == last[0]
            last[0] = off
            return same and off

        stalled_at = poll(settled, timeout=120, what="the source to stop reading", interval=3.0)
        assert stalled_at < size / 2, f"read {stalled_at} of {size} bytes with the sink blocked"
        blocked_peak = vm_hwm_kib(running.pid)
        proxy.up()
        counts = Numbers(s3, bucket).wait_for(total, running, timeout=600)
        peak = vm_hwm_kib(running.pid)
        stderr = running.terminate()
        assert running.returncode == 0, stderr[-4000:]
        app.close()
    print(f"\nmemory bound: peak RSS {blocked_peak / 1024:.1f} MiB while blocked, {peak / 1024:.1f} MiB overall")
    assert peak < 64 * 1024, f"peak RSS {peak / 1024:.1f} MiB"
    assert_all_delivered(counts, total, "memory bound")


def test_disk_buffer_corruption_is_skipped_counted_and_the_rest_delivered(router, s3, bucket, endpoint, tmp_path):
    """Records wait in a disk buffer while the sink is unreachable; the router is killed,
    bytes are flipped in a segment, the sink comes back and the router restarts: it skips and
    counts the damaged frame and delivers everything else."""
    total = 100_000
    api_port = free_port()
    api = f'\n[api]\naddress = "127.0.0.1:{api_port}"\n'
    with TcpProxy(endpoint) as proxy:
        proxy.down()
        app = NumberedApp(tmp_path / "logs")
        app.write(total)
        size = app.path.stat().st_size
        cfg = router.write_config(config(tmp_path, bucket, proxy.url, tail=DISK_BUFFER + api))
        running = router.start(cfg, env=ENV)
        poll(lambda: checkpoint_total(tmp_path / "data") == size, timeout=120, what="everything in the buffer")
        running.kill()
        segments = sorted((tmp_path / "data" / "buffers" / "archive").glob("*.seg"))
        assert segments, "no buffer segment"
        data = bytearray(segments[0].read_bytes())
        mid = len(data) // 2
        for i in range(mid, mid + 32):
            data[i] ^= 0x5A
        segments[0].write_bytes(bytes(data))
        proxy.up()
        running = router.start(cfg, env=ENV)
        numbers = Numbers(s3, bucket)

        def drained():
            # The damage counted first (the gauges start at 0 before the buffer is read).
            archive = 'component="archive"'
            corrupt = metric(api_port, "logferry_buffer_corrupt_frames_total", archive) or 0
            return corrupt >= 1 and metric(api_port, "logferry_buffer_bytes", archive) == 0

        poll(drained, timeout=180, what="the damage counted and the buffer drained")
        assert "damaged data in the disk buffer" in running.stderr
        time.sleep(3)  # the last object's flush_interval
        counts = numbers.update()
        stderr = running.terminate()
        assert running.returncode == 0, stderr[-4000:]
        app.close()
    missing = [n for n in range(total) if n not in counts]
    # One damaged region costs the frames it touches (frames are ~1 MiB, ~14,000 lines).
    assert 0 < len(missing) <= 30_000, f"{len(missing)} lines missing"
    assert missing[-1] - missing[0] + 1 == len(missing), "the loss is one contiguous run of lines"
    print(f"\ncorruption: {len(missing)} lines in the damaged frame skipped, {total - len(missing)} delivered")


def test_missing_bucket_is_reported_and_delivery_resumes_once_it_exists(router, s3, endpoint, tmp_path):
    """A permanent error at start: a clear error and /readyz 503; the bucket is created:
    delivery resumes without a restart and nothing is lost."""
    bucket = unique("logferry-late")
    api_port = free_port()
    cfg = config(tmp_path, bucket, endpoint, tail=f'\n[api]\naddress = "127.0.0.1:{api_port}"\n')
    app = NumberedApp(tmp_path / "logs")
    app.write(5000)
    running = router.start(cfg, env=ENV)
    try:
        poll(lambda: "NoSuchBucket" in running.stderr, timeout=60, what="the NoSuchBucket error")
        poll(lambda: http_status(f"http://127.0.0.1:{api_port}/readyz") == 503, timeout=60, what="/readyz 503")
        app.write(5000)
        s3.create_bucket(Bucket=bucket)
        counts = Numbers(s3, bucket).wait_for(10_000, running, timeout=180)
        poll(lambda: http_status(f"http://127.0.0.1:{api_port}/readyz") == 200, timeout=60, what="/readyz 200")
        stderr = running.terminate()
        assert running.returncode == 0, stderr[-4000:]
        app.close()
        dupes = assert_all_delivered(counts, 10_000, "bucket created late")
        assert dupes == 0
    finally:
        running.kill()
        _empty_bucket(s3, bucket)


def test_sigterm_while_the_app_writes_its_last_lines(router, s3, bucket, endpoint, tmp_path):
    """SIGTERM while the app writes its last 1,000 lines: all delivered, exit 0 in time."""
    cfg = config(tmp_path, bucket, endpoint, tail='\n[lifecycle]\ndrain_quiet = "1s"\ndrain_timeout = "20s"\n')
    app = NumberedApp(tmp_path / "logs")
    app.write(2000)
    running = router.start(cfg, env=ENV)
    wait_for_open(running, app.path)
    running.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    for _ in range(10):
        app.write(100)
        time.sleep(0.05)
    running.proc.wait(timeout=60)
    took = time.monotonic() - signalled
    assert running.proc.returncode == 0, running.stderr[-4000:]
    assert took < 30, f"exit {took:.1f}s after SIGTERM"
    app.close()
    counts = Numbers(s3, bucket).update()
    dupes = assert_all_delivered(counts, 3000, "drain")
    assert dupes == 0


def test_ecs_app_container_stopped_drains_and_exits(router, ecs_metadata, s3, bucket, endpoint, tmp_path):
    """The ECS emulator reports the app container STOPPED: the router drains and exits 0."""
    cfg = config(
        tmp_path,
        bucket,
        endpoint,
        tail='\n[lifecycle]\ndrain_quiet = "1s"\ncheck_interval = "200ms"\n'
        '[lifecycle.exit_when]\necs_container_stopped = "app"\n',
    )
    app = NumberedApp(tmp_path / "logs")
    app.write(3000)
    running = router.start(cfg, env={**ENV, "ECS_CONTAINER_METADATA_URI_V4": ecs_metadata.uri})
    wait_for_open(running, app.path)
    app.write(2000)
    ecs_metadata.set_app_status("STOPPED")
    running.proc.wait(timeout=60)
    assert running.proc.returncode == 0, running.stderr[-4000:]
    assert "ECS container is STOPPED" in running.stderr
    app.close()
    dupes = assert_all_delivered(Numbers(s3, bucket).update(), 5000, "ECS lifecycle")
    assert dupes == 0


def test_cloudwatch_rejects_go_to_dead_letters(router, logs, endpoint, tmp_path):
    """Events CloudWatch never takes (20 days old) land in dead_letter_dir with their reason;
    the rest is delivered and the counts agree."""
    group = unique("/logferry/dead")
    dead = tmp_path / "dead"
    old = "2020-01-01T00:00:00.000Z"
    lines = []
    for i in range(300):
        rec = {"n": i, "msg": f"event {i}"}
        if i % 3 == 0:
            rec["ts"] = old
        lines.append(json.dumps(rec))
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "app.log").write_text("\n".join(lines) + "\n")
    cfg = f"""\
[global]
data_dir = {configs.q(tmp_path / "data")}
dead_letter_dir = {configs.q(dead)}

[sources.app]
type = "file"
include = [{configs.q(tmp_path / "logs" / "*.log")}]
parser = "json"
time_key = "ts"

[sinks.cw]
type = "cloudwatch_logs"
inputs = ["app"]
log_group = {configs.q(group)}
log_stream = "s"
flush_interval = "1s"
region = "us-east-1"
endpoint_url = {configs.q(endpoint)}
"""
    done = router.run(cfg, env=ENV)
    assert done.returncode == 0, done.stderr
    events = []
    r = logs.get_log_events(logGroupName=group, logStreamName="s", startFromHead=True)
    events = [json.loads(e["message"])["n"] for e in r["events"]]
    assert sorted(events) == [i for i in range(300) if i % 3]
    letters = [json.loads(line) for f in sorted((dead / "cw").iterdir()) for line in f.read_text().splitlines()]
    assert sorted(d["record"]["n"] for d in letters) == list(range(0, 300, 3))
    assert {d["reason"] for d in letters} == {"too_old"} and {d["sink"] for d in letters} == {"cw"}


def _empty_bucket(s3, bucket: str) -> None:
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
        s3.delete_bucket(Bucket=bucket)
    except Exception:
        pass


if __name__ == "__main__":
    pytest.main([__file__, "-x", "-q"])
