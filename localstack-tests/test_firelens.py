"""Logferry as a FireLens log router, against LocalStack: `logferry run --fluent-bit-config`
on a file shaped like the one ECS generates (router/tests/fixtures/fluent-bit/localstack.conf,
with its user file), records sent the way the Docker `awsfirelens` driver sends them (Fluent
forward over the unix socket, tag `<container>-firelens-<task id>`).

Why these assertions: FireLens routes by tag, so each container's records must land only in
its own output (app -> CloudWatch Logs stream `app-<tag>`, worker -> S3 under
`firelens/<tag>/`), every one of them, each with the `record_modifier` ECS fields, and the
user's `grep` must drop what it excludes.
"""

from __future__ import annotations

import gzip
import json
import socket
import time
import uuid

from conftest import DUMMY_CREDENTIALS, REPO, unique
from workload import poll

FIXTURE = REPO / "router" / "tests" / "fixtures" / "fluent-bit" / "localstack.conf"
ENV = {**DUMMY_CREDENTIALS, "AWS_EC2_METADATA_DISABLED": "true"}
PER_CONTAINER = 300
DEBUG_LINES = 25


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def s3_records(s3, bucket: str, prefix: str) -> list[dict]:
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            out += [json.loads(line) for line in gzip.decompress(body).splitlines()]
    return out


def send_lines(socket_path, tag: str, container: str, lines: list[str]) -> None:
    """Like the Docker fluentd/awsfirelens log driver: one record per stdout line."""
    from fluent import sender

    s = sender.FluentSender(tag, host=f"unix://{socket_path}", timeout=10)
    try:
        for line in lines:
            ok = s.emit(None, {"container_name": f"/ecs-{container}", "source": "stdout", "log": line})
            assert ok, f"emit failed: {s.last_error}"
    finally:
        s.close()


def send(socket_path, tag: str, container: str, n: int, debug: int) -> None:
    """`n` JSON lines with ids, then `debug` lines the user's grep drops."""
    lines = [
        f"DEBUG noise {i}" if i >= n else json.dumps({"id": i, "msg": f"{container} {i}"}) for i in range(n + debug)
    ]
    send_lines(socket_path, tag, container, lines)


def test_firelens_config_routes_each_container_to_its_output(router, logs, s3, bucket, endpoint, tmp_path):
    task_id = uuid.uuid4().hex
    group = unique("/ecs/firelens")
    sock = tmp_path / "fluent.sock"
    env = {
        **ENV,
        "LOCALSTACK_ENDPOINT": endpoint,
        "FIRELENS_SOCKET": str(sock),
        "FIRELENS_FORWARD_PORT": str(free_port()),
        "FIRELENS_API_PORT": str(free_port()),
        # The health check's tcp input binds now (as in_tcp does); not 8877 on a shared host.
        "FIRELENS_HEALTH_PORT": str(free_port()),
        "FIRELENS_TASK_ID": task_id,
        "FIRELENS_GROUP": group,
        "FIRELENS_BUCKET": bucket,
        "FIRELENS_DATA_DIR": str(tmp_path / "data"),
    }
    running = router.start_args("run", "--fluent-bit-config", str(FIXTURE), env=env)
    poll(lambda: sock.exists() or not running.alive(), timeout=60, what="the forward socket")
    assert running.alive(), running.stderr

    sent_from = int(time.time()) * 1000
    send(sock, f"app-firelens-{task_id}", "app", PER_CONTAINER, DEBUG_LINES)
    send(sock, f"worker-firelens-{task_id}", "worker", PER_CONTAINER, DEBUG_LINES)
    # No output matches this tag: routed nowhere, as in Fluent Bit.
    send(sock, f"sidecar-firelens-{task_id}", "sidecar", 10, 0)
    sent_until = int(time.time() * 1000) + 1
    time.sleep(1)
    stderr = running.terminate()
    assert running.returncode == 0, stderr
    assert "fluent-bit:" in stderr and "firelens-healthcheck" in stderr

    stream = f"app-app-firelens-{task_id}"
    events = poll(
        lambda: (ev := read_stream(logs, group, stream)) and len(ev) >= PER_CONTAINER and ev,
        timeout=60,
        what=f"{PER_CONTAINER} events in {group}/{stream}",
    )
    records = [json.loads(e["message"]) for e in events]
    assert sorted(json.loads(r["log"])["id"] for r in records) == list(range(PER_CONTAINER))
    streams = [s["logStreamName"] for s in logs.describe_log_streams(logGroupName=group)["logStreams"]]
    assert streams == [stream]

    objects = s3_records(s3, bucket, f"firelens/worker-firelens-{task_id}/")
    assert sorted(json.loads(r["log"])["id"] for r in objects) == list(range(PER_CONTAINER))
    listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    assert all(o["Key"].startswith(f"firelens/worker-firelens-{task_id}/") for o in listed), listed

    for r in records + objects:
        assert r["ecs_cluster"] == "firelens-test"
        assert r["ecs_task_arn"] == f"arn:aws:ecs:us-east-1:000000000000:task/firelens-test/{task_id}"
        assert r["ecs_task_definition"] == "firelens-test:3"
        assert not r["log"].startswith("DEBUG")
        # The tag routes; it is not written into the record.
        assert "tag" not in r

    # What Fluent Bit's outputs send (issue 14 item 5): no time key in CloudWatch messages, the
    # event timestamp is the record's time; S3 records carry it as `date` (json_date_key).
    for e, r in zip(events, records):
        assert "@timestamp" not in r and "date" not in r, r
        assert sent_from <= e["timestamp"] <= sent_until, (e["timestamp"], sent_from, sent_until)
    for r in objects:
        assert "@timestamp" not in r, r
        assert r["date"].endswith("Z") and r["date"][:4].isdigit(), r
