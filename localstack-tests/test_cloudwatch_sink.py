"""The `cloudwatch_logs` sink against LocalStack, with the real binary.

Why these two cases: the templates decide where events land (group and stream
created from record fields, with retention), and the batch boundary is where
PutLogEvents rules bite (more than 10,000 events and more than 1 MiB in one
flush must become several valid requests, still in order).
"""

from __future__ import annotations

import json
import time

import configs
from conftest import DUMMY_CREDENTIALS, unique
from workload import poll

ENV = {**DUMMY_CREDENTIALS, "AWS_EC2_METADATA_DISABLED": "true"}


def cloudwatch_sink(endpoint: str, group: str, stream: str) -> str:
    return f"""
[sinks.cw]
type = "cloudwatch_logs"
inputs = ["meta"]
log_group = {configs.q(group)}
log_stream = {configs.q(stream)}
retention_days = 7
flush_interval = "1s"
region = "us-east-1"
endpoint_url = {configs.q(endpoint)}
"""


def read_stream(logs, group: str, stream: str) -> list[dict]:
    events, token = [], None
    while True:
        kw = dict(logGroupName=group, logStreamName=stream, startFromHead=True)
        if token:
            kw["nextToken"] = token
        r = logs.get_log_events(**kw)
        events += r["events"]
        if not r["events"] or r["nextForwardToken"] == token:
            return events
        token = r["nextForwardToken"]


def write_lines(path, n: int, pad: int, ts: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for i in range(n):
            rec = {"id": i, "msg": f"event {i} " + "x" * pad}
            if ts:
                rec["ts"] = ts
            f.write(json.dumps(rec) + "\n")


def test_group_and_stream_from_templates_every_event_in_order(router, logs, endpoint, tmp_path):
    family = unique("web")
    config = (
        configs.pipeline(tmp_path)
        + f'fields = {{ ecs_task_definition = "{family}:3", container_name = "app", ecs_task_id = "t-1" }}\n'
        + cloudwatch_sink(endpoint, "/ecs/{ecs_task_definition}", "{container_name}/{ecs_task_id}")
    )
    write_lines(tmp_path / "logs" / "app.log", 2000, 40)
    before = int(time.time() * 1000)
    done = router.run(config, env=ENV)
    assert done.returncode == 0, done.stderr
    # `:` is not allowed in group names: the sink replaces it.
    group, stream = f"/ecs/{family}_3", "app/t-1"
    groups = logs.describe_log_groups(logGroupNamePrefix=group)["logGroups"]
    assert [g["logGroupName"] for g in groups] == [group]
    assert groups[0].get("retentionInDays") == 7
    events = read_stream(logs, group, stream)
    ids = [json.loads(e["message"])["id"] for e in events]
    assert ids == list(range(2000))
    after = int(time.time() * 1000)
    for e in events:
        # No time_key: the event time is the read time, and @timestamp says the same.
        assert before - 1000 <= e["timestamp"] <= after
        body = json.loads(e["message"])
        assert body["container_name"] == "app" and body["@timestamp"].endswith("Z")


def test_more_than_10000_events_and_1_mib_in_one_flush(router, logs, endpoint, tmp_path):
    group = unique("/logferry/boundary")
    config = configs.pipeline(tmp_path) + cloudwatch_sink(endpoint, group, "s")
    # 12,000 events of ~150 bytes: over both the count and the byte limit.
    write_lines(tmp_path / "logs" / "app.log", 12_000, 120)
    done = router.run(config, env=ENV)
    assert done.returncode == 0, done.stderr
    events = poll(lambda: (e := read_stream(logs, group, "s")) and len(e) >= 12_000 and e, timeout=60, what="12,000 events")
    ids = [json.loads(e["message"])["id"] for e in events]
    assert ids == list(range(12_000))
    stamps = [e["timestamp"] for e in events]
    assert stamps == sorted(stamps)


def iso_ms(ms: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_log_key_timestamp_key_and_emf(router, logs, endpoint, tmp_path):
    """`log_key` sends the field's text as the message (records without it dropped),
    `timestamp_key = ""` leaves the added `@timestamp` out while the event timestamp is still
    the record's time, and LocalStack takes PutLogEvents with `x-amzn-logs-format: json/emf`."""
    group = unique("/logferry/format")
    base = int(time.time() * 1000) - 60_000
    n = 300
    (tmp_path / "logs").mkdir()
    with open(tmp_path / "logs" / "app.log", "w") as f:
        for i in range(n):
            rec = {"ts": iso_ms(base + i), "n": i}
            if i % 10 != 9:
                rec["log"] = f'line {i} "quoted" é\ttab'
            if i == 5:
                rec["@timestamp"] = "the app's own"
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    sink = """
[sinks.{name}]
type = "cloudwatch_logs"
inputs = ["app"]
log_group = {group}
log_stream = "{name}"
flush_interval = "1s"
region = "us-east-1"
endpoint_url = {endpoint}
"""
    config = f"""
[global]
data_dir = {configs.q(tmp_path / "data")}

[sources.app]
type = "file"
include = [{configs.q(tmp_path / "logs" / "*.log")}]
parser = "json"
time_key = "ts"
glob_interval = "250ms"
"""
    for name, extra in [("raw", 'log_key = "log"\nlog_format = "json/emf"\n'), ("plain", 'timestamp_key = ""\n')]:
        config += sink.format(name=name, group=configs.q(group), endpoint=configs.q(endpoint)) + extra
    done = router.run(config, env=ENV)
    assert done.returncode == 0, done.stderr
    assert "log_key" in done.stderr and "log_key_missing" in done.stderr, done.stderr

    kept = [i for i in range(n) if i % 10 != 9]
    raw = poll(lambda: (e := read_stream(logs, group, "raw")) and len(e) >= len(kept) and e, timeout=60, what="raw events")
    assert [e["message"] for e in raw] == [f'line {i} "quoted" é\ttab' for i in kept]
    assert [e["timestamp"] for e in raw] == [base + i for i in kept]

    plain = poll(lambda: (e := read_stream(logs, group, "plain")) and len(e) >= n and e, timeout=60, what="plain events")
    bodies = [json.loads(e["message"]) for e in plain]
    assert [b["n"] for b in bodies] == list(range(n))
    assert [e["timestamp"] for e in plain] == [base + i for i in range(n)]
    for b in bodies:
        if b["n"] == 5:
            assert b["@timestamp"] == "the app's own"
        else:
            assert "@timestamp" not in b, b
        assert b["ts"] == iso_ms(base + b["n"])


def test_log_format_emf_sends_the_header(router, tmp_path):
    """LocalStack ignores the header, so a local endpoint records what the sink sends."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[tuple[str | None, str | None, dict]] = []

    class Recorder(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            seen.append((self.headers.get("X-Amz-Target"), self.headers.get("x-amzn-logs-format"), json.loads(body or b"{}")))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        (tmp_path / "logs").mkdir()
        with open(tmp_path / "logs" / "app.log", "w") as f:
            for i in range(50):
                f.write(json.dumps({"log": json.dumps({"_aws": {"CloudWatchMetrics": []}, "i": i})}) + "\n")
        config = f"""
[global]
data_dir = {configs.q(tmp_path / "data")}

[sources.app]
type = "file"
include = [{configs.q(tmp_path / "logs" / "*.log")}]
"""
        for name, extra in [("emf", 'log_format = "json/emf"\nlog_key = "log"\n'), ("plain", "")]:
            config += f"""
[sinks.{name}]
type = "cloudwatch_logs"
inputs = ["app"]
log_group = "g"
log_stream = "{name}"
flush_interval = "1s"
region = "us-east-1"
endpoint_url = {configs.q(endpoint)}
{extra}"""
        done = router.run(config, env=ENV)
        assert done.returncode == 0, done.stderr
    finally:
        server.shutdown()
    puts = [(fmt, body) for target, fmt, body in seen if target == "Logs_20140328.PutLogEvents"]
    by_stream: dict[str, list] = {}
    for fmt, body in puts:
        by_stream.setdefault(body["logStreamName"], []).append((fmt, len(body["logEvents"])))
    assert sum(c for _, c in by_stream["emf"]) == 50 and sum(c for _, c in by_stream["plain"]) == 50, by_stream
    assert all(fmt == "json/emf" for fmt, _ in by_stream["emf"]), by_stream
    assert all(fmt is None for fmt, _ in by_stream["plain"]), by_stream
    # Other calls (CreateLogGroup, CreateLogStream) carry no format.
    assert all(fmt is None for target, fmt, _ in seen if target != "Logs_20140328.PutLogEvents")
