"""The indexer Lambda and `logferry query`, end to end.

The real router writes objects to S3 on LocalStack; the bucket notifies an SQS queue; the test
hands the queued messages, as an SQS event, to the real `bootstrap` process through a Lambda
Runtime API emulator (lambda_emulator.py), as Lambda's SQS event source mapping would; then the
real `logferry query` searches the archive through the index documents the function wrote.
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import urllib.parse
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import configs
from conftest import DUMMY_CREDENTIALS, REGION, unique
from lambda_emulator import IndexerProcess, RuntimeApiEmulator
from workload import parse_ts, poll

ROUTER_ENV = {**DUMMY_CREDENTIALS, "AWS_EC2_METADATA_DISABLED": "true"}
SUMMARY = re.compile(r"(\d+) objects in range, (\d+) opened, (\d+) skipped by index, (\d+) records matched")
TOKEN_FIELDS = ("log", "msg", "message", "request_id", "trace_id")


# -- helpers ---------------------------------------------------------------------------------


@pytest.fixture
def notified_bucket(s3, sqs, bucket):
    """`bucket` whose ObjectCreated notifications go to a fresh SQS queue; yields (bucket, queue_url)."""
    queue_url = sqs.create_queue(QueueName=unique("logferry-idx"))["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={"QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]},
    )
    yield bucket, queue_url
    sqs.delete_queue(QueueUrl=queue_url)


def sqs_event(queue_url: str, messages: list[dict]) -> dict:
    """An SQS event as Lambda's event source mapping builds it from received messages."""
    arn = f"arn:aws:sqs:{REGION}:000000000000:{queue_url.rsplit('/', 1)[-1]}"
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m.get("ReceiptHandle", "rh"),
                "body": m["Body"],
                "attributes": {k: str(v) for k, v in (m.get("Attributes") or {}).items()},
                "messageAttributes": {},
                "md5OfBody": m.get("MD5OfBody", ""),
                "eventSource": "aws:sqs",
                "eventSourceARN": arn,
                "awsRegion": REGION,
            }
            for m in messages
        ]
    }


def object_keys(message: dict) -> list[str]:
    """Decoded object keys an S3 notification body names (none for s3:TestEvent)."""
    body = json.loads(message["Body"])
    return [urllib.parse.unquote_plus(r["s3"]["object"]["key"]) for r in body.get("Records", [])]


def receive(sqs, queue_url: str, want: set[str], timeout: float = 60.0) -> list[dict]:
    """Receives messages until every key in `want` was named (the s3:TestEvent too, if queued)."""
    got: list[dict] = []

    def more():
        resp = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1, AttributeNames=["All"]
        )
        got.extend(resp.get("Messages", []))
        named = {k for m in got for k in object_keys(m)}
        return want <= named

    poll(more, timeout=timeout, what=f"notifications for {sorted(want)}")
    # Anything else already queued (the s3:TestEvent) joins the batch.
    resp = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
    got.extend(resp.get("Messages", []))
    return got


def delete_done(sqs, queue_url: str, messages: list[dict], failures: list[dict]) -> None:
    failed = {f["itemIdentifier"] for f in failures}
    for m in messages:
        if m["MessageId"] not in failed:
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])


def list_keys(s3, bucket: str, prefix: str = "") -> list[str]:
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(o["Key"] for o in page.get("Contents", []))
    return sorted(keys)


def get(s3, bucket: str, key: str) -> tuple[bytes, dict]:
    got = s3.get_object(Bucket=bucket, Key=key)
    return got["Body"].read(), got


def records_of(data: bytes) -> list[dict]:
    return [json.loads(line) for line in gzip.decompress(data).decode().splitlines() if line.strip()]


def word_in(text: str, word: str) -> bool:
    """The query's --grep rule for one-token words: whole word, case-sensitive."""
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text) is not None


def grep_matches(record: dict, word: str) -> bool:
    return any(isinstance(record.get(f), str) and word_in(record[f], word) for f in TOKEN_FIELDS)


@pytest.fixture
def indexer(indexer_bin, tmp_path, endpoint):
    """Starts `bootstrap` against a Runtime API emulator; `indexer(**env)` returns it."""
    started: list[tuple[RuntimeApiEmulator, IndexerProcess]] = []

    def start(**env: str) -> IndexerProcess:
        runtime = RuntimeApiEmulator().__enter__()
        workdir = tmp_path / f"indexer-{len(started)}"
        workdir.mkdir()
        proc = IndexerProcess(
            indexer_bin,
            workdir,
            runtime,
            {**DUMMY_CREDENTIALS, "AWS_ENDPOINT_URL": endpoint, **env},
        )
        started.append((runtime, proc))
        return proc

    yield start
    for runtime, proc in started:
        proc.stop()
        runtime.__exit__(None, None, None)


def write_app_log(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


def run_router(router, tmp: Path, bucket: str, endpoint: str, name: str, task: str, lines: list[str]) -> None:
    """One `logferry run --exit-on-eof` of an ECS task `task` over `lines`, into `bucket`."""
    work = tmp / name
    write_app_log(work / "logs" / "app.log", lines)
    # One object per run, whatever the clock: no time in the key prefix (a run crossing a
    # minute would write two), and no flush before the end of input.
    sink = configs.s3_sink(bucket, endpoint, key_prefix=f"logs/{{ecs_cluster}}/{{ecs_task_id}}/{name}/")
    assert 'flush_interval = "1s"' in sink
    config = (
        configs.pipeline(work)
        + f'fields = {{ ecs_cluster = "c1", ecs_task_id = {configs.q(task)}, container_name = "app" }}\n'
        + sink.replace('flush_interval = "1s"', 'flush_interval = "1h"')
    )
    done = router.run(router.write_config(config, name=f"{name}.toml"), env=ROUTER_ENV)
    assert done.returncode == 0, done.stderr[-4000:]


def json_line(rid: str, level: str, msg: str) -> str:
    return json.dumps({"id": rid, "level": level, "msg": msg})


# -- scenarios -------------------------------------------------------------------------------


def test_indexer_binary_targets_glibc_2_34(indexer_bin):
    """provided.al2023 has glibc 2.34: the binary must need no newer symbol version."""
    out = subprocess.run(["objdump", "-T", str(indexer_bin)], capture_output=True, text=True, check=True).stdout
    versions = {tuple(int(x) for x in v.split(".")) for v in re.findall(r"GLIBC_([0-9.]+)", out)}
    assert versions, "no GLIBC_ symbol versions found: not a dynamically linked glibc binary?"
    assert max(versions) <= (2, 34), f"needs GLIBC_{'.'.join(map(str, max(versions)))}"


def test_router_objects_are_indexed_and_queried(router, indexer, s3, sqs, notified_bucket, endpoint, tmp_path):
    bucket, queue_url = notified_bucket
    started = datetime.now(timezone.utc)
    levels = ("info", "warn", "error")
    a1 = [
        json_line(f"a1-{i:03d}", levels[i % 3], f"payment timeout for order {i}" if i % 7 == 0 else f"order {i} processed")
        for i in range(60)
    ] + ["worker-3 read timeout id=txt-a1-1", "worker-4 timeouts climbing id=txt-a1-2", "Timeout (capital) id=txt-a1-3"]
    b1 = [json_line(f"b1-{i:03d}", levels[i % 3], f"payment timeout for order {i}") for i in range(40)]
    a2 = [json_line(f"a2-{i:03d}", levels[i % 3], f"order {i} shipped, no timeouts") for i in range(50)]
    run_router(router, tmp_path, bucket, endpoint, "a1", "task-a", a1)
    run_router(router, tmp_path, bucket, endpoint, "b1", "task-b", b1)
    run_router(router, tmp_path, bucket, endpoint, "a2", "task-a", a2)

    objects = list_keys(s3, bucket, "logs/")
    assert [k.split("/")[3] for k in objects] == ["a1", "a2", "b1"], objects
    messages = receive(sqs, queue_url, set(objects))

    fn = indexer()
    result = fn.invoke(sqs_event(queue_url, messages))
    assert result.kind == "response", result.payload
    assert result.payload == {"batchItemFailures": []}, result.payload
    delete_done(sqs, queue_url, messages, [])

    # One index document per object, under the hour of its first record.
    index_keys = list_keys(s3, bucket, "_index/")
    assert len(index_keys) == 3, index_keys
    docs = {}
    for k in index_keys:
        data, _ = get(s3, bucket, k)
        doc = json.loads(data)
        docs[doc["key"]] = (k, doc, data)
    assert set(docs) == set(objects)
    by_task: Counter = Counter()
    for key in objects:
        index_key, doc, _ = docs[key]
        data, meta = get(s3, bucket, key)
        records = records_of(data)
        times = [parse_ts(r["@timestamp"]) for r in records]
        task = records[0]["ecs_task_id"]
        by_task[task] += 1
        assert doc["version"] == 1 and doc["bucket"] == bucket and doc["encoding"] == "gzip"
        assert doc["etag"] == meta["ETag"] and doc["size"] == meta["ContentLength"]
        assert doc["records"] == len(records) and doc["bad_lines"] == 0
        assert doc["uncompressed_bytes"] == len(gzip.decompress(data))
        assert parse_ts(doc["min_time"]) == min(times) and parse_ts(doc["max_time"]) == max(times)
        assert started - timedelta(minutes=1) <= min(times) <= datetime.now(timezone.utc)
        assert index_key.startswith(min(times).strftime("_index/dt=%Y-%m-%d/hour=%H/")), index_key
        assert doc["distinct"]["ecs_task_id"] == {"complete": True, "values": [task]}
        assert doc["distinct"]["ecs_cluster"] == {"complete": True, "values": ["c1"]}
        assert doc["distinct"]["container_name"] == {"complete": True, "values": ["app"]}
        assert doc["levels"] == dict(Counter(r["level"] for r in records if "level" in r))
        assert doc["tokens"]["fields"] == list(TOKEN_FIELDS)
    assert by_task == {"task-a": 2, "task-b": 1}

    emf = fn.emf_lines()
    assert len(emf) == 1, fn.stdout
    assert (emf[0]["Objects"], emf[0]["Indexed"], emf[0]["Quarantined"], emf[0]["Failed"]) == (3, 3, 0, 0)
    assert emf[0]["Records"] == len(a1) + len(b1) + len(a2)

    # Reprocessing the same notifications rewrites the same keys with the same bytes.
    again = fn.invoke(sqs_event(queue_url, messages))
    assert again.payload == {"batchItemFailures": []}
    assert list_keys(s3, bucket, "_index/") == index_keys
    for key, (index_key, _, data) in docs.items():
        assert get(s3, bucket, index_key)[0] == data, f"index document of {key} changed"

    # The query: task-a and the word "timeout". Expected from the objects themselves.
    all_records = {key: records_of(get(s3, bucket, key)[0]) for key in objects}
    expected = [
        r
        for key in objects
        for r in all_records[key]
        if r["ecs_task_id"] == "task-a" and grep_matches(r, "timeout")
    ]
    assert len(expected) == 9 + 1, [r.get("id") or r.get("log") for r in expected]  # 0,7..56 and one text line
    done = router.command(
        "query", "--bucket", bucket, "--since", "2h", "--where", "ecs_task_id=task-a", "--grep", "timeout",
        "--endpoint-url", endpoint, "--region", REGION,
        env=DUMMY_CREDENTIALS,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    got = [json.loads(line) for line in done.stdout.splitlines()]
    key = lambda r: (r["@timestamp"], json.dumps(r, sort_keys=True))  # noqa: E731
    assert sorted(got, key=key) == sorted(expected, key=key)
    assert [r["@timestamp"] for r in got] == sorted(r["@timestamp"] for r in got), "not in time order"
    m = SUMMARY.search(done.stderr)
    assert m, done.stderr
    in_range, opened, skipped, matched = map(int, m.groups())
    # b1 is skipped by its distinct task ids, a2 by its token filter (it has "timeouts" only).
    assert (in_range, opened, skipped, matched) == (3, 1, 2, len(expected)), done.stderr

    # A field filter alone; the endpoint from AWS_ENDPOINT_URL; text output.
    done = router.command(
        "query", "--bucket", bucket, "--since", "2h", "--where", "ecs_task_id=task-b", "--output", "text",
        env={**DUMMY_CREDENTIALS, "AWS_ENDPOINT_URL": endpoint, "AWS_REGION": REGION},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    lines = done.stdout.splitlines()
    assert len(lines) == len(b1)
    assert all(" task-b " in line and "payment timeout" in line for line in lines), lines[:3]
    assert SUMMARY.search(done.stderr).groups() == ("3", "1", "2", str(len(b1))), done.stderr

    # --limit, and a range before the objects: nothing in range.
    done = router.command(
        "query", "--bucket", bucket, "--since", "2h", "--limit", "5", "--endpoint-url", endpoint, "--region", REGION,
        env=DUMMY_CREDENTIALS,
    )
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 5, done.stderr
    long_ago = (started - timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    until = (started - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    done = router.command(
        "query", "--bucket", bucket, "--from", long_ago, "--until", until, "--endpoint-url", endpoint,
        "--region", REGION, env=DUMMY_CREDENTIALS,
    )
    assert done.returncode == 0 and done.stdout == "", done.stderr
    assert SUMMARY.search(done.stderr).groups() == ("0", "0", "0", "0"), done.stderr


def gz(lines: list[str]) -> bytes:
    return gzip.compress("".join(line + "\n" for line in lines).encode(), mtime=0)


def test_bad_objects_are_quarantined_without_failing_the_batch(indexer, s3, sqs, notified_bucket):
    bucket, queue_url = notified_bucket
    now = datetime.now(timezone.utc).replace(microsecond=0)
    good = [
        json.dumps({"@timestamp": (now + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                    "ecs_task_id": "task-q", "msg": f"event {i}"})
        for i in range(20)
    ]
    bomb_line = json.dumps({"log": "a" * 200})
    objects = {
        "logs/good.ndjson.gz": (gz(good), "gzip"),
        "logs/with space/café ü+plus.ndjson.gz": (gz(good[:10]), "gzip"),
        "logs/corrupt.ndjson.gz": (gz(good)[:60], "gzip"),  # truncated stream
        "logs/bomb.ndjson.gz": (gz([bomb_line] * 20_000), "gzip"),  # ~4 MiB from a few KiB
        "logs/plain.ndjson": ("".join(f"not json {i}\n" for i in range(10)).encode(), None),
    }
    assert len(objects["logs/bomb.ndjson.gz"][0]) < 64 * 1024
    for key, (body, encoding) in objects.items():
        extra = {"ContentEncoding": encoding} if encoding else {}
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/x-ndjson", **extra)
    messages = receive(sqs, queue_url, set(objects))

    # Two messages that must be reported failed (and only those): an object in a bucket that
    # does not exist (GetObject fails: retry later), and a body that is not an S3 event.
    real = next(m for m in messages if object_keys(m) == ["logs/good.ndjson.gz"])
    missing_bucket = json.loads(real["Body"])
    missing_bucket["Records"][0]["s3"]["bucket"]["name"] = unique("logferry-missing")
    batch = messages + [
        {"MessageId": "msg-missing-bucket", "Body": json.dumps(missing_bucket)},
        {"MessageId": "msg-garbage", "Body": "this is not json"},
    ]

    fn = indexer(MAX_DECOMPRESSED_BYTES="1MiB")
    result = fn.invoke(sqs_event(queue_url, batch))
    assert result.kind == "response", result.payload
    failures = sorted(f["itemIdentifier"] for f in result.payload["batchItemFailures"])
    assert failures == ["msg-garbage", "msg-missing-bucket"], result.payload

    # The good objects (one with a space, a plus and non-ASCII in its key) are indexed...
    index_docs = [json.loads(get(s3, bucket, k)[0]) for k in list_keys(s3, bucket, "_index/")]
    assert sorted(d["key"] for d in index_docs) == ["logs/good.ndjson.gz", "logs/with space/café ü+plus.ndjson.gz"]
    assert sorted(d["records"] for d in index_docs) == [10, 20]
    # ...the bad ones are copied to quarantine with an error document next to them.
    reasons = {
        "logs/corrupt.ndjson.gz": "corrupt",
        "logs/bomb.ndjson.gz": "too_large",
        "logs/plain.ndjson": "bad_lines",
    }
    quarantined = list_keys(s3, bucket, "_quarantine/")
    assert quarantined == sorted([f"_quarantine/{k}" for k in reasons] + [f"_quarantine/{k}.error.json" for k in reasons])
    for key, reason in reasons.items():
        copy, _ = get(s3, bucket, f"_quarantine/{key}")
        assert copy == objects[key][0], f"quarantined copy of {key} differs"
        err = json.loads(get(s3, bucket, f"_quarantine/{key}.error.json")[0])
        assert (err["key"], err["reason"]) == (key, reason), err
    bomb_err = json.loads(get(s3, bucket, "_quarantine/logs/bomb.ndjson.gz.error.json")[0])
    assert 1024 * 1024 < bomb_err["uncompressed_bytes_read"] < 2 * 1024 * 1024, bomb_err
    emf = fn.emf_lines()[-1]
    assert (emf["Objects"], emf["Indexed"], emf["Quarantined"], emf["Failed"]) == (7, 2, 3, 2), emf
    delete_done(sqs, queue_url, messages, result.payload["batchItemFailures"])

    # What the function wrote notifies the queue too: all of it is ignored (no loops).
    own = set(list_keys(s3, bucket, "_index/")) | set(quarantined)
    echoes = receive(sqs, queue_url, own)
    again = fn.invoke(sqs_event(queue_url, echoes))
    assert again.payload == {"batchItemFailures": []}
    emf = fn.emf_lines()[-1]
    assert (emf["Ignored"], emf["Indexed"], emf["Quarantined"]) == (len(own), 0, 0), emf
    assert len(list_keys(s3, bucket, "_index/")) == 2

    # The same object through EventBridge and as a direct S3 notification: same document.
    unicode_key = "logs/with space/café ü+plus.ndjson.gz"
    before = {k: get(s3, bucket, k)[0] for k in list_keys(s3, bucket, "_index/")}
    eventbridge = {
        "version": "0", "id": "e1", "detail-type": "Object Created", "source": "aws.s3",
        "account": "000000000000", "time": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "region": REGION,
        "resources": [f"arn:aws:s3:::{bucket}"],
        "detail": {"version": "0", "bucket": {"name": bucket},
                   "object": {"key": urllib.parse.quote_plus(unicode_key, safe="/"), "size": 1, "etag": "x"},
                   "request-id": "r", "requester": "000000000000", "reason": "PutObject"},
    }
    r = fn.invoke(eventbridge)
    assert r.kind == "response" and r.payload["indexed"] == 1, r.payload
    direct = json.loads(real["Body"])
    r = fn.invoke(direct)
    assert r.kind == "response" and r.payload["indexed"] == 1, r.payload
    assert {k: get(s3, bucket, k)[0] for k in list_keys(s3, bucket, "_index/")} == before
    # A direct invocation whose object cannot be read fails as a whole (Lambda retries it).
    r = fn.invoke(missing_bucket)
    assert r.kind == "error", r.payload
    # Named, not the Rust type behind the error: operators filter on errorType.
    assert r.payload["errorType"] == "S3Read", r.payload
    assert "NoSuchBucket" in r.payload["errorMessage"] and "1 of 1 objects failed" in r.payload["errorMessage"], r.payload
    # An event this function does not handle.
    r = fn.invoke({"hello": "world"})
    assert r.kind == "error" and r.payload["errorType"] == "InvalidEvent", r.payload


def test_the_deployment_package_is_small(indexer_bin):
    # Terraform uploads bootstrap.zip (built next to the binary by lambda/build.sh); the release
    # profile strips it (issue 17: at most 10 MB; 17.8 MB with line tables).
    package = indexer_bin.parent / "bootstrap.zip"
    if not package.exists():
        pytest.skip(f"no {package}: LOGFERRY_INDEXER_BIN points at a binary built without lambda/build.sh")
    assert package.stat().st_size <= 10_000_000, f"{package}: {package.stat().st_size / 1e6:.1f} MB"
