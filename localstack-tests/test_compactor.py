"""The compactor, end to end: router -> S3 -> indexer -> compactor -> Parquet, read by real engines.

The real router writes gzip NDJSON objects to S3 on LocalStack; the real `bootstrap` indexes
them (SQS event) and then compacts each hour they fall in (`{"compact": ...}`, as a backfill
or the SQS trigger sends it). The Parquet files are read back with pyarrow and with DuckDB
(hive partitioning over the downloaded layout: DuckDB's httpfs extension would need the
internet), and must hold exactly the records of the NDJSON objects.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

import configs
from conftest import DUMMY_CREDENTIALS, REGION
from test_indexer import (  # noqa: F401 (fixtures)
    ROUTER_ENV,
    SUMMARY,
    delete_done,
    get,
    indexer,
    list_keys,
    notified_bucket,
    receive,
    sqs_event,
    write_app_log,
)

LABELS = {"web": {"app": "web", "team": "payments"}, "worker": {"app": "worker", "team": "batch"}}


def app_line(i: int, app: str) -> str:
    rec = {
        "id": f"{app}-{i:04d}",
        "level": ("info", "warn", "error")[i % 3],
        "msg": f"request {i} done in {i % 97} ms",
        "latency_ms": i % 97,
        "kubernetes": {"pod_name": f"{app}-0", "namespace_name": "prod", "labels": LABELS[app]},
    }
    if i % 50 == 0:
        rec["level"] = 40  # a numeric level: kept in `rest`, not quarantined
    if i % 100 == 1:
        rec["latency_ms"] = "n/a"  # not the declared bigint: kept in `rest`
    return json.dumps(rec)


# The deployment's own fields as columns of their own (the rest stays in `rest`).
DECLARED = "id:string,latency_ms:bigint"


def run_router(router, tmp: Path, bucket: str, endpoint: str, task: str, lines: list[str]) -> None:
    work = tmp / task
    write_app_log(work / "logs" / "app.log", lines)
    sink = configs.s3_sink(bucket, endpoint, key_prefix="logs/{ecs_task_id}/")
    config = (
        configs.pipeline(work)
        + f'fields = {{ ecs_cluster = "c1", ecs_task_id = {configs.q(task)}, container_name = "app" }}\n'
        + sink
    )
    done = router.run(router.write_config(config, name=f"{task}.toml"), env=ROUTER_ENV)
    assert done.returncode == 0, done.stderr[-4000:]


def json_records(data: bytes) -> list[dict]:
    """The JSON lines of a stored object (the one hand-written line that is not JSON is left out)."""
    out = []
    for line in gzip.decompress(data).decode().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            assert line == "this is not json"
    return out


def query(router, bucket: str, endpoint: str, args: list[str]) -> tuple[list[dict], tuple[str, ...]]:
    """`logferry query` output records, and its summary's counts (in range, opened, skipped, matched)."""
    done = router.command(
        "query", "--bucket", bucket, *args, "--endpoint-url", endpoint, "--region", REGION, env=DUMMY_CREDENTIALS
    )
    assert done.returncode == 0, done.stderr[-4000:]
    m = SUMMARY.search(done.stderr)
    assert m, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()], m.groups()


def rebuild(row: dict) -> dict:
    """A record from its Parquet row: typed columns, then `rest` over them (deep for kubernetes)."""
    out = {}
    for k, v in row.items():
        if k in ("rest", "dt", "hour", "source") or v is None:
            continue
        if k == "timestamp":  # the column of `@timestamp` (Athena allows no `@`)
            out["@timestamp"] = v.strftime("%Y-%m-%dT%H:%M:%S.") + f"{v.microsecond // 1000:03d}Z"
        elif k == "kubernetes":
            out[k] = {
                kk: (dict(vv) if kk in ("labels", "annotations") else vv) for kk, vv in v.items() if vv is not None
            }
        else:
            out[k] = v
    rest = json.loads(row["rest"]) if row.get("rest") else {}
    for k, v in rest.items():
        if k == "kubernetes" and isinstance(out.get(k), dict) and isinstance(v, dict):
            out[k].update(v)
        else:
            out[k] = v
    return out


def test_an_hour_compacts_to_parquet_that_duckdb_and_pyarrow_read(router, indexer, s3, sqs, notified_bucket, endpoint, tmp_path):  # noqa: F811
    bucket, queue_url = notified_bucket
    web = [app_line(i, "web") for i in range(700)]
    worker = [app_line(i, "worker") for i in range(500)]
    run_router(router, tmp_path, bucket, endpoint, "task-web", web)
    run_router(router, tmp_path, bucket, endpoint, "task-worker", worker)
    # A hand-written object under the prefix with one line that cannot be a row.
    bad_key = "logs/manual/with-a-bad-line.ndjson.gz"
    # (1 bad line in 21: under the indexer's MAX_BAD_LINE_RATIO, so it is indexed, not quarantined.)
    manual = [json.dumps({"@timestamp": None, "id": f"manual-{i}"}) for i in range(20)]
    manual.insert(2, "this is not json")
    s3.put_object(Bucket=bucket, Key=bad_key, Body=gzip.compress("\n".join(manual).encode() + b"\n"))

    objects = list_keys(s3, bucket, "logs/")
    messages = receive(sqs, queue_url, set(objects))
    fn = indexer(COMPACT_COLUMNS=DECLARED)
    result = fn.invoke(sqs_event(queue_url, messages))
    assert result.payload == {"batchItemFailures": []}, result.payload
    delete_done(sqs, queue_url, messages, [])

    ndjson = {key: json_records(get(s3, bucket, key)[0]) for key in objects}
    queries = {
        "all": ["--since", "3h"],
        "web-grep": ["--since", "3h", "--where", "ecs_task_id=task-web", "--grep", "in 42 ms"],
        "numeric-level": ["--since", "3h", "--where", "level=40"],
        "declared-id": ["--since", "3h", "--where", "id=web-0042"],
    }
    before = {name: query(router, bucket, endpoint, args) for name, args in queries.items()}
    assert len(before["all"][0]) == 700 + 500, "the manual records have no time: no time range matches them"
    assert len(before["web-grep"][0]) == len([i for i in range(700) if i % 97 == 42])
    assert len(before["numeric-level"][0]) == 14 + 10
    assert len(before["declared-id"][0]) == 1
    want = [r for key in objects for r in ndjson[key]]
    assert len(want) == 700 + 500 + 20
    # The hours the index put the objects in (a run can straddle an hour).
    hours = sorted({k.split("/")[1][3:] + "T" + k.split("/")[2][5:] for k in list_keys(s3, bucket, "_index/")})
    assert 1 <= len(hours) <= 2, hours

    for hour in hours:
        done = fn.invoke({"compact": {"bucket": bucket, "prefix": "logs/", "hour": hour}})
        assert done.kind == "response", done.payload
        summary = done.payload["compacted"][0]["summary"]
        assert summary["found_by"] == "index", summary
    compact_emf = [e for e in fn.emf_lines() if e["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "Logferry/Compactor"]
    assert len(compact_emf) == len(hours)
    assert sum(e["Objects"] for e in compact_emf) == len(objects)
    assert sum(e["Records"] for e in compact_emf) == len(want)
    assert sum(e["Quarantined"] for e in compact_emf) == 1

    # Download the compacted layout as it is in S3.
    local = tmp_path / "compacted"
    parquet_keys = [k for k in list_keys(s3, bucket, "compacted/") if k.endswith(".parquet")]
    assert 1 <= len(parquet_keys) <= len(hours), parquet_keys
    for k in list_keys(s3, bucket, "compacted/"):
        path = local / k
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(get(s3, bucket, k)[0])
        assert k.split("/")[1].startswith("dt=") and k.split("/")[2].startswith("hour=") and k.split("/")[3] == "source=logs"

    # pyarrow: the schema, zstd, statistics, and every record exactly once.
    rows = []
    for k in parquet_keys:
        f = pq.ParquetFile(local / k)
        schema = f.schema_arrow
        assert schema.field("timestamp").type == pa.timestamp("us", tz="UTC")
        labels = schema.field("kubernetes").type.field("labels").type
        assert pa.types.is_map(labels) and labels.key_type == pa.string() and labels.item_type == pa.string()
        assert schema.field("id").type == pa.string() and schema.field("latency_ms").type == pa.int64()
        col = f.metadata.row_group(0).column(0)
        assert col.compression == "ZSTD" and col.statistics.has_min_max
        rows.extend(f.read().to_pylist())
    got = [rebuild(r) for r in rows]
    key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
    assert sorted(map(key, got)) == sorted(map(key, want))

    # DuckDB over the hive layout: counts by partition and by a label equal the NDJSON's.
    con = duckdb.connect()
    glob = str(local / "compacted" / "**" / "*.parquet")
    total = con.execute(f"SELECT count(*) FROM read_parquet('{glob}', hive_partitioning = true)").fetchone()[0]
    assert total == len(want)
    hour0 = hours[0]
    dt, hh = hour0.split("T")
    want_web = sum(
        1
        for r in want
        if (r.get("@timestamp") or "").startswith(f"{dt}T{hh}") and r.get("kubernetes", {}).get("labels", {}).get("app") == "web"
    )
    got_web = con.execute(
        f"SELECT count(*) FROM read_parquet('{glob}', hive_partitioning = true) "
        f"WHERE dt = '{dt}' AND hour = {int(hh)} AND source = 'logs' AND kubernetes.labels['app'] = 'web'"
    ).fetchone()[0]
    assert got_web == want_web and (len(hours) == 2 or want_web == 700), (got_web, want_web)
    levels = dict(
        con.execute(
            f"SELECT level, count(*) FROM read_parquet('{glob}', hive_partitioning = true) "
            "WHERE level IS NOT NULL GROUP BY level"
        ).fetchall()
    )
    assert levels == dict(Counter(r["level"] for r in want if isinstance(r.get("level"), str)))
    numeric = con.execute(
        f"SELECT count(*) FROM read_parquet('{glob}', hive_partitioning = true) "
        "WHERE json_extract_string(rest, '$.level') = '40'"
    ).fetchone()[0]
    assert numeric == sum(1 for r in want if r.get("level") == 40) == 14 + 10
    # Declared columns: typed values in the column, the others in `rest`, none lost.
    one = con.execute(
        f"SELECT id, latency_ms, rest FROM read_parquet('{glob}', hive_partitioning = true) WHERE id = 'web-0042'"
    ).fetchall()
    assert one == [("web-0042", 42 % 97, None)], one
    in_column, in_rest, typed_sum = con.execute(
        f"SELECT count(latency_ms), count(json_extract_string(rest, '$.latency_ms')), sum(latency_ms) "
        f"FROM read_parquet('{glob}', hive_partitioning = true)"
    ).fetchone()
    ints = [r["latency_ms"] for r in want if isinstance(r.get("latency_ms"), int)]
    assert (in_column, typed_sum) == (len(ints), sum(ints)), (in_column, typed_sum)
    assert in_rest == sum(1 for r in want if r.get("latency_ms") == "n/a") == 7 + 5

    # The bad line is in the compactor's quarantine, with its reason and place.
    q = [k for k in list_keys(s3, bucket, "_quarantine/compact/")]
    assert len(q) == 1, q
    lines = [json.loads(x) for x in gzip.decompress(get(s3, bucket, q[0])[0]).splitlines()]
    assert lines == [
        {"reason": "not_json_object", "key": bad_key, "etag": lines[0]["etag"], "line": 3, "text": "this is not json"}
    ]

    # Manifests list every input with its ETag; the inputs are tagged (the default action).
    manifests = [json.loads(get(s3, bucket, k)[0]) for k in list_keys(s3, bucket, "compacted/") if "/_manifest-" in k]
    inputs = {i["key"]: i for m in manifests for i in m["inputs"]}
    assert set(inputs) == set(objects)
    for k in objects:
        assert inputs[k]["etag"] == s3.head_object(Bucket=bucket, Key=k)["ETag"]
        tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key=k)["TagSet"]}
        assert tags.get("logferry-compacted") == "true", (k, tags)

    # Again: everything is covered, nothing is written twice.
    layout = list_keys(s3, bucket, "compacted/")
    for hour in hours:
        done = fn.invoke({"compact": {"bucket": bucket, "prefix": "logs/", "hour": hour}})
        s = done.payload["compacted"][0]["summary"]
        assert (s["objects"], s["records"], s["files"]) == (0, 0, 0), s
    assert list_keys(s3, bucket, "compacted/") == layout
    assert sum(
        d.payload["compacted"][0]["summary"]["covered"]
        for d in [fn.invoke({"compact": {"bucket": bucket, "prefix": "logs/", "hour": h}}) for h in hours]
    ) == len(objects)

    # `logferry query` now reads the compacted files for these objects: the same records, and
    # the same counts of objects in range, opened and skipped by the index.
    for name, args in queries.items():
        got, summary = query(router, bucket, endpoint, args)
        want_records, want_summary = before[name]
        assert sorted(map(key, got)) == sorted(map(key, want_records)), name
        assert summary == want_summary, (name, summary, want_summary)
        assert [r["@timestamp"] for r in got] == sorted(r["@timestamp"] for r in got), f"{name}: not in time order"
    done = router.command(
        "query", "--bucket", bucket, "--since", "3h", "--endpoint-url", endpoint, "--region", REGION, env=DUMMY_CREDENTIALS
    )
    assert "compacted files read" in done.stderr, done.stderr

    # A bad request is a named error, not a crash.
    bad = fn.invoke({"compact": {"bucket": bucket, "prefix": "logs/", "hour": "not an hour"}})
    assert bad.kind == "error" and bad.payload["errorType"] == "InvalidEvent", bad.payload


def sqs_body_event(body: dict) -> dict:
    """An SQS event of one message whose body is `body`, as the event source mapping sends it."""
    return {"Records": [{
        "messageId": "m-1", "receiptHandle": "r", "body": json.dumps(body), "attributes": {},
        "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:compact", "awsRegion": "us-east-1",
    }]}


def put_objects(s3, bucket: str, prefix: str, names: range, hour: str = "10") -> list[dict]:
    want = []
    for n in names:
        recs = [{"@timestamp": f"2026-12-03T{hour}:{n:02d}:{i:02d}.000Z", "id": f"{n}-{i}", "level": "info"} for i in range(25)]
        want.extend(recs)
        body = gzip.compress("".join(json.dumps(r) + "\n" for r in recs).encode())
        s3.put_object(Bucket=bucket, Key=f"{prefix}obj-{n:02d}.ndjson.gz", Body=body)
    return want


def compacted_records(s3, bucket: str) -> list[str]:
    rows = []
    for k in list_keys(s3, bucket, "compacted/"):
        if k.endswith(".parquet"):
            rows.extend(pq.read_table(pa.BufferReader(get(s3, bucket, k)[0])).to_pylist())
    return sorted(json.dumps(rebuild(r), sort_keys=True) for r in rows)


def test_deadline_sqs_and_schedule_triggers(indexer, s3, bucket):  # noqa: F811
    """One group per object. With 30 s left (under the 60 s margin) only the first group runs and
    the invocation fails as `Incomplete`; the same request in an SQS message compacts the rest;
    then late objects arrive and the hourly Scheduled Event (over the last two closed hours)
    compacts them. Every record once."""
    prefix = "logs2/2026/12/03/10/"
    want = put_objects(s3, bucket, prefix, range(4))
    fn = indexer(
        COMPACT_FILE_INPUT_BYTES="1", COMPACT_INPUTS="delete",
        COMPACT_BUCKET=bucket, COMPACT_SOURCES="logs2/%Y/%m/%d/%H/", COMPACT_DELAY="10m", COMPACT_HOURS="2",
    )
    event = {"compact": {"bucket": bucket, "prefix": prefix, "hour": "2026-12-03T10"}}
    fn.runtime.timeout_ms = 30_000
    cut = fn.invoke(event)
    assert cut.kind == "error" and cut.payload["errorType"] == "Incomplete", cut.payload
    assert "3 groups left" in cut.payload["errorMessage"], cut.payload
    assert len([k for k in list_keys(s3, bucket, "compacted/") if k.endswith(".parquet")]) == 1
    fn.runtime.timeout_ms = 300_000
    done = fn.invoke(sqs_body_event(event))
    assert done.kind == "response" and done.payload == {"batchItemFailures": []}, done.payload
    key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
    assert compacted_records(s3, bucket) == sorted(map(key, want))
    assert list_keys(s3, bucket, prefix) == [], "COMPACT_INPUTS=delete removes the compacted inputs"

    # Late objects, then the hourly schedule at 11:15 (hour 10 closed more than 10 min ago).
    want += put_objects(s3, bucket, prefix, range(10, 12))
    sched = {"version": "0", "id": "e", "detail-type": "Scheduled Event", "source": "aws.events",
             "account": "000000000000", "time": "2026-12-03T11:15:00Z", "region": "us-east-1",
             "resources": ["arn:aws:events:us-east-1:000000000000:rule/compact-hourly"], "detail": {}}
    done = fn.invoke(sched)
    assert done.kind == "response", done.payload
    # COMPACT_HOURS=2: hour 10 and the one before, oldest first.
    before, job = done.payload["compacted"]
    assert (before["prefix"], before["summary"]["objects"]) == ("logs2/2026/12/03/09/", 0), before
    assert (job["prefix"], job["source"]) == (prefix, "logs2"), job
    assert (job["summary"]["objects"], job["summary"]["files"]) == (2, 2), job
    assert compacted_records(s3, bucket) == sorted(map(key, want))
    assert len([k for k in list_keys(s3, bucket, "compacted/") if "/_manifest-" in k]) == 6


def open_uploads(s3, bucket: str, prefix: str) -> list[str]:
    return [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])]


def test_a_killed_runs_upload_is_aborted_by_the_rerun(indexer, s3, bucket):  # noqa: F811
    """What a run killed mid-upload leaves: its lease, its `_pending-<id>.json` and an incomplete
    multipart upload of `part-<id>.parquet` with a part in it (no manifest, so nothing was
    settled). While the lease lives, another run is `Busy` and changes nothing. Once it has
    lapsed, the re-run takes it over (a PutObject with If-Match, on LocalStack's S3), finds the
    pending marker, aborts the upload with the real ListMultipartUploads and
    AbortMultipartUpload calls, writes the same output and removes the lease; an upload of
    another id, which no pending marker names, is left alone."""
    prefix = "logs3/2026/12/03/10/"
    want = put_objects(s3, bucket, prefix, range(3))
    fn = indexer(COMPACT_INPUTS="keep")
    event = {"compact": {"bucket": bucket, "prefix": prefix, "hour": "2026-12-03T10"}}
    first = fn.invoke(event)
    assert first.kind == "response", first.payload
    key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
    assert compacted_records(s3, bucket) == sorted(map(key, want))
    outputs = list_keys(s3, bucket, "compacted/")
    (part,) = [k for k in outputs if k.endswith(".parquet")]
    (manifest,) = [k for k in outputs if "/_manifest-" in k]
    part_bytes = get(s3, bucket, part)[0]

    # Back to the state of a run killed in its upload.
    dir_, name = part.rsplit("/", 1)
    gid = name.removeprefix("part-").removesuffix(".parquet")
    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in outputs]})
    s3.put_object(Bucket=bucket, Key=f"{dir_}/_pending-{gid}.json",
                  Body=json.dumps([f"{prefix}obj-{n:02d}.ndjson.gz" for n in range(3)]).encode())
    killed = s3.create_multipart_upload(Bucket=bucket, Key=part)["UploadId"]
    s3.upload_part(Bucket=bucket, Key=part, UploadId=killed, PartNumber=1, Body=part_bytes[: 5 << 20])
    other = f"{dir_}/part-0000000000000000.parquet"
    s3.create_multipart_upload(Bucket=bucket, Key=other)
    assert sorted(open_uploads(s3, bucket, "compacted/")) == sorted([part, other])

    lease = f"{dir_}/_lease.json"
    s3.put_object(Bucket=bucket, Key=lease, Body=b'{"run":"killed","until":"2999-01-01T00:00:00Z"}')
    staged = sorted(list_keys(s3, bucket, "compacted/"))
    busy = fn.invoke(event)
    assert busy.kind == "error" and busy.payload["errorType"] == "Busy", busy.payload
    assert "killed" in busy.payload["errorMessage"], busy.payload
    assert sorted(list_keys(s3, bucket, "compacted/")) == staged, "a busy run changes nothing"
    assert sorted(open_uploads(s3, bucket, "compacted/")) == sorted([part, other])

    # The killed run's lease lapsed long ago.
    s3.put_object(Bucket=bucket, Key=lease, Body=b'{"run":"killed","until":"2026-12-03T11:16:00Z"}')
    again = fn.invoke(event)
    assert again.kind == "response", again.payload
    assert open_uploads(s3, bucket, "compacted/") == [other], "the killed run's upload is aborted, no other"
    assert compacted_records(s3, bucket) == sorted(map(key, want))
    assert get(s3, bucket, part)[0] == part_bytes, "the re-run writes the same file"
    assert manifest in list_keys(s3, bucket, "compacted/")
    assert lease not in list_keys(s3, bucket, "compacted/"), "the run gives its lease up"
