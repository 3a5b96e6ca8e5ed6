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
