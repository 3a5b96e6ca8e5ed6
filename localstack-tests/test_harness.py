"""Tests of the harness itself, all expected to pass today.

Before a sink test can fail for a meaningful reason, each thing it stands on has to be shown
to work on its own, on this machine: LocalStack in host mode (S3 with user metadata and
Content-Encoding, Firehose really delivering into S3, CloudWatch Logs, S3 -> SQS
notifications for the indexer tests), the emulators (IMDSv2 token rules, answers a real AWS
SDK accepts), and the router driven through the same workload and checks the `s3` scenarios
use, with the local `file` sink in place of S3. When an `s3_sink` scenario fails while these
pass, the fault is in the sink.
"""

from __future__ import annotations

import gzip
import json
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone

import pytest

import configs
import workload
from conftest import unique
from workload import AppWriter, poll

# -- LocalStack ------------------------------------------------------------------------------


def test_s3_put_get_round_trip(s3, bucket):
    body = gzip.compress(b'{"a":1}\n{"a":2}\n')
    s3.put_object(
        Bucket=bucket,
        Key="logs/x/2026/01/01/00/00/one.ndjson.gz",
        Body=body,
        ContentType="application/x-ndjson",
        ContentEncoding="gzip",
        Metadata={"records": "2", "min-event-time": "2026-01-01T00:00:00.000Z"},
    )
    head = s3.head_object(Bucket=bucket, Key="logs/x/2026/01/01/00/00/one.ndjson.gz")
    assert head["ContentType"] == "application/x-ndjson"
    assert head["ContentEncoding"] == "gzip"
    assert head["Metadata"] == {"records": "2", "min-event-time": "2026-01-01T00:00:00.000Z"}
    got = s3.get_object(Bucket=bucket, Key="logs/x/2026/01/01/00/00/one.ndjson.gz")
    # botocore does not undo Content-Encoding: the reader sees the stored gzip bytes.
    assert got["Body"].read() == body
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="logs/")["Contents"]]
    assert keys == ["logs/x/2026/01/01/00/00/one.ndjson.gz"]


def test_firehose_delivers_to_s3(firehose, iam, s3, bucket):
    role = iam.create_role(
        RoleName=unique("firehose-delivery"),
        AssumeRolePolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "firehose.amazonaws.com"},
                        "Action": "sts:AssumeRole",
                    }
                ],
            }
        ),
    )["Role"]
    stream = unique("logferry-test")
    firehose.create_delivery_stream(
        DeliveryStreamName=stream,
        DeliveryStreamType="DirectPut",
        ExtendedS3DestinationConfiguration={
            "RoleARN": role["Arn"],
            "BucketARN": f"arn:aws:s3:::{bucket}",
            "Prefix": "firehose/",
            "ErrorOutputPrefix": "firehose-errors/",
            # LocalStack flushes per these hints; the smallest AWS accepts keep the test quick.
            "BufferingHints": {"IntervalInSeconds": 1, "SizeInMBs": 1},
        },
    )
    try:
        poll(
            lambda: (
                firehose.describe_delivery_stream(DeliveryStreamName=stream)["DeliveryStreamDescription"][
                    "DeliveryStreamStatus"
                ]
                == "ACTIVE"
            ),
            timeout=60,
            what="the delivery stream to become ACTIVE",
        )
        lines = [json.dumps({"id": f"fh-{i}", "msg": "via firehose"}) + "\n" for i in range(3)]
        resp = firehose.put_record_batch(
            DeliveryStreamName=stream, Records=[{"Data": line.encode()} for line in lines]
        )
        assert resp["FailedPutCount"] == 0

        def delivered():
            listing = s3.list_objects_v2(Bucket=bucket, Prefix="firehose/")
            data = b"".join(
                s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listing.get("Contents", [])
            )
            return data if all(line.encode() in data for line in lines) else None

        data = poll(delivered, timeout=90, what="Firehose to deliver into S3", interval=0.5)
        assert sorted(data.decode().splitlines()) == sorted(line.strip() for line in lines)
    finally:
        firehose.delete_delivery_stream(DeliveryStreamName=stream)
        iam.delete_role(RoleName=role["RoleName"])


def test_cloudwatch_logs_round_trip(logs):
    group = "/logferry/test/" + unique("group")
    logs.create_log_group(logGroupName=group)
    try:
        logs.create_log_stream(logGroupName=group, logStreamName="app/task-1")
        now = int(time.time() * 1000)
        logs.put_log_events(
            logGroupName=group,
            logStreamName="app/task-1",
            logEvents=[
                {"timestamp": now, "message": '{"id":"cw-1"}'},
                {"timestamp": now + 1, "message": '{"id":"cw-2"}'},
            ],
        )
        events = poll(
            lambda: logs.get_log_events(logGroupName=group, logStreamName="app/task-1", startFromHead=True)[
                "events"
            ],
            timeout=30,
            what="the log events to be readable",
        )
        assert [e["message"] for e in events] == ['{"id":"cw-1"}', '{"id":"cw-2"}']
        streams = logs.describe_log_streams(logGroupName=group)["logStreams"]
        assert [s["logStreamName"] for s in streams] == ["app/task-1"]
    finally:
        logs.delete_log_group(logGroupName=group)


def test_s3_object_created_notification_reaches_sqs(aws_client, s3, bucket):
    """The indexer tests feed the Lambda what LocalStack sends: S3 -> SQS must work here."""
    sqs = aws_client("sqs")
    url = sqs.create_queue(QueueName=unique("logferry-objects"))["QueueUrl"]
    try:
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        s3.put_bucket_notification_configuration(
            Bucket=bucket,
            NotificationConfiguration={
                "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]
            },
        )
        s3.put_object(Bucket=bucket, Key="logs/a.ndjson.gz", Body=gzip.compress(b"{}\n"))

        def object_created():
            for m in sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1).get("Messages", []):
                body = json.loads(m["Body"])
                for rec in body.get("Records", []):
                    if rec["s3"]["object"]["key"] == "logs/a.ndjson.gz":
                        return rec
            return None

        rec = poll(object_created, timeout=60, what="the ObjectCreated notification")
        assert rec["eventName"].startswith("ObjectCreated:")
        assert rec["s3"]["bucket"]["name"] == bucket
    finally:
        sqs.delete_queue(QueueUrl=url)


# -- emulators -------------------------------------------------------------------------------


def _http(method: str, url: str, headers: dict[str, str] | None = None):
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def test_imds_emulator_enforces_the_token_flow(imds):
    md = imds.url + "/latest/meta-data/"
    assert _http("GET", md + "instance-id")[0] == 401  # IMDSv1 is off
    assert _http("PUT", imds.url + "/latest/api/token")[0] == 400  # TTL header required
    ttl = {imds.TTL_HEADER: "21600"}
    assert _http("PUT", imds.url + "/latest/api/token", {**ttl, "X-Forwarded-For": "1.2.3.4"})[0] == 403
    status, headers, token = _http("PUT", imds.url + "/latest/api/token", ttl)
    assert status == 200 and token
    assert {k.lower(): v for k, v in headers.items()}[imds.TTL_HEADER] == "21600"
    auth = {imds.TOKEN_HEADER: token}
    assert _http("GET", md + "instance-id", {imds.TOKEN_HEADER: "forged"})[0] == 401
    status, _, body = _http("GET", md + "instance-id", auth)
    assert (status, body) == (200, imds.instance_id)
    assert _http("GET", md + "no-such-thing", auth)[0] == 404
    assert _http("GET", md + "iam/security-credentials/", auth)[2] == imds.role
    creds = json.loads(_http("GET", md + f"iam/security-credentials/{imds.role}", auth)[2])
    assert creds["Code"] == "Success" and creds["Type"] == "AWS-HMAC"
    assert creds["AccessKeyId"].startswith("ASIA") and creds["Token"] and creds["SecretAccessKey"]
    expires = datetime.fromisoformat(creds["Expiration"].replace("Z", "+00:00"))
    assert 5 * 3600 < (expires - datetime.now(timezone.utc)).total_seconds() <= 6 * 3600
    doc = json.loads(_http("GET", imds.url + "/latest/dynamic/instance-identity/document", auth)[2])
    assert (doc["accountId"], doc["region"], doc["instanceId"]) == (
        imds.account_id,
        imds.region,
        imds.instance_id,
    )
    info = json.loads(_http("GET", md + "iam/info", auth)[2])
    assert info["InstanceProfileArn"].endswith(f"instance-profile/{imds.role}")
    # Every request is recorded with its headers and outcome.
    assert imds.served(imds.credentials_path)
    first = imds.requests[0]
    assert (first.method, first.path, first.status) == ("GET", "/latest/meta-data/instance-id", 401)
    puts = [r for r in imds.requests if r.method == "PUT" and r.status == 200]
    assert puts and puts[0].headers[imds.TTL_HEADER] == "21600"


def test_imds_emulator_serves_a_real_sdk_instance_profile(imds):
    """botocore's own IMDS fetcher (the same protocol as the Rust SDK's provider) accepts it."""
    from botocore.utils import InstanceMetadataFetcher

    fetcher = InstanceMetadataFetcher(timeout=5, num_attempts=2, base_url=imds.url)
    creds = fetcher.retrieve_iam_role_credentials()
    assert creds["access_key"] == imds.access_key_id
    assert creds["token"] == imds.session_token
    assert creds["role_name"] == imds.role
    assert imds.credentials_served()
    assert all(imds.TOKEN_HEADER in r.headers for r in imds.requests if r.method == "GET")


def test_ecs_metadata_emulator_shape(ecs_metadata):
    status, _, body = _http("GET", ecs_metadata.uri)
    assert status == 200
    me = json.loads(body)
    assert me["Name"] == "log_router"
    task = json.loads(_http("GET", ecs_metadata.uri + "/task")[2])
    assert task["Cluster"].endswith("cluster/default")
    assert task["TaskARN"].rsplit("/", 1)[1] == ecs_metadata.task_id
    assert f"{task['Family']}:{task['Revision']}" == ecs_metadata.task_definition
    assert [c["Name"] for c in task["Containers"]] == ["log_router", "app"]
    assert task["LaunchType"] == "FARGATE"
    assert ecs_metadata.expected_fields()["aws_region"] == task["TaskARN"].split(":")[3]
    assert _http("GET", ecs_metadata.url + "/v4/other/task")[0] == 404


# -- the router, with the local file sink ----------------------------------------------------


def test_router_ecs_sidecar_to_file_sink(router, ecs_metadata, tmp_path, started_at):
    """Scenario (a) of test_s3_sink.py with the `file` sink: live writes, a rotation, SIGTERM."""
    out = tmp_path / "out"
    config = configs.pipeline(tmp_path, ecs="true") + configs.file_sink(out)
    app = AppWriter(tmp_path / "logs")
    app.write_json(100)
    app.write_text(50)
    running = router.start(
        config, env={"ECS_CONTAINER_METADATA_URI_V4": ecs_metadata.uri, "AWS_EC2_METADATA_DISABLED": "true"}
    )
    workload.wait_for_open(running, app.json_path)
    app.write_json(150)
    app.rotate_json()
    app.write_text(100)
    app.write_json(250)
    workload.wait_until_delivered(lambda: workload.file_sink_objects(out), app.expected, running)
    stderr = running.terminate()
    assert running.returncode == 0, stderr[-4000:]
    app.close()

    objects = workload.file_sink_objects(out)
    records = workload.assert_exactly_once(objects, app.expected)
    until = datetime.now(timezone.utc)
    for obj in objects:
        workload.assert_time_sliced(obj, r"default/", started_at, until)
    workload.assert_fields(records, ecs_metadata.expected_fields(), "ECS")
    assert all("@timestamp" in r for r in records)
    assert ecs_metadata.served(f"/v4/{ecs_metadata.endpoint_id}/task")


def test_router_eks_metadata_backfill_to_file_sink(router, imds, tmp_path):
    """Scenario (b)'s metadata (downward API, labels file, IMDSv2) through the real binary."""
    labels = tmp_path / "podinfo" / "labels"
    labels.parent.mkdir()
    labels.write_text(
        'app="web"\napp.kubernetes.io/name="web"\npod-template-hash="7d4b9c8f5"\nnote="say \\"hi\\""\n'
    )
    out = tmp_path / "out"
    config = configs.pipeline(
        tmp_path, ec2="true", kubernetes="true", labels_file=labels
    ) + configs.file_sink(out, key_prefix="{kubernetes.namespace_name}/%Y/%m/%d/%H/%M/")
    app = AppWriter(tmp_path / "logs")
    app.write_json(120)
    app.write_text(80)
    app.close()
    pod = {
        "POD_NAME": "web-7d4b9c8f5-x2x9z",
        "POD_NAMESPACE": "shop",
        "POD_UID": "0f8e5d2c-3b1a-4c9d-8e7f-6a5b4c3d2e1f",
        "NODE_NAME": "ip-10-0-1-23.ec2.internal",
    }
    done = router.run(config, env={**pod, "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url})
    assert done.returncode == 0, done.stderr[-4000:]

    objects = workload.file_sink_objects(out)
    assert objects and all(o.key.startswith("shop/") for o in objects), [o.key for o in objects]
    records = workload.assert_exactly_once(objects, app.expected)
    workload.assert_fields(records, imds.expected_fields(), "EC2")
    expected_k8s = {
        "pod_name": pod["POD_NAME"],
        "namespace_name": pod["POD_NAMESPACE"],
        "pod_id": pod["POD_UID"],
        "host": pod["NODE_NAME"],
        "labels": {
            "app": "web",
            "app.kubernetes.io/name": "web",
            "pod-template-hash": "7d4b9c8f5",
            "note": 'say "hi"',
        },
    }
    workload.assert_fields(records, {"kubernetes": expected_k8s}, "Kubernetes")
    # The router spoke IMDSv2: a token first, then only token-bearing GETs.
    reqs = imds.requests
    assert reqs and reqs[0].method == "PUT" and reqs[0].path == "/latest/api/token"
    assert all(imds.TOKEN_HEADER in r.headers for r in reqs if r.method == "GET")
    assert imds.served("/latest/dynamic/instance-identity/document")


def test_router_validate_rejects_a_bad_config(router, tmp_path):
    """The harness sees the router's config errors (exit status and message)."""
    bad = configs.pipeline(tmp_path) + configs.file_sink(tmp_path / "out").replace(
        'inputs = ["meta"]', 'inputs = ["nope"]'
    )
    done = router.command("validate", "--config", str(router.write_config(bad)))
    assert done.returncode != 0
    assert "nope" in done.stderr + done.stdout


def test_s3_checks_hold_for_a_conforming_upload(router, ecs_metadata, s3, bucket, tmp_path, started_at):
    """The checks of test_s3_sink.py, applied to what a conforming `s3` sink would write: the
    router's `file` output under the S3 key layout, uploaded as the sink is to upload it. So
    the scenarios are known to accept a correct sink (and, below, to reject a wrong one)."""
    out = tmp_path / "out"
    config = configs.pipeline(tmp_path, ecs="true") + configs.file_sink(out, configs.S3_KEY_PREFIX)
    app = AppWriter(tmp_path / "logs")
    app.write_json(60)
    app.write_text(40)
    app.close()
    done = router.run(config, env={"ECS_CONTAINER_METADATA_URI_V4": ecs_metadata.uri})
    assert done.returncode == 0, done.stderr[-4000:]
    for obj in workload.file_sink_objects(out):
        stamps = sorted(r["@timestamp"] for r in obj.records)
        s3.put_object(
            Bucket=bucket,
            Key=obj.key,
            Body=obj.data,
            ContentType="application/x-ndjson",
            ContentEncoding="gzip",
            Metadata={
                "records": str(len(obj.records)),
                "min-event-time": stamps[0],
                "max-event-time": stamps[-1],
            },
        )
    listing = workload.S3Objects(s3, bucket)
    objects = workload.wait_until_delivered(listing.list, app.expected)
    records = workload.assert_exactly_once(objects, app.expected)
    until = datetime.now(timezone.utc)
    for obj in objects:
        workload.assert_time_sliced(obj, rf"logs/default/{ecs_metadata.task_id}/", started_at, until)
        workload.assert_s3_object_contract(obj)
    workload.assert_fields(records, ecs_metadata.expected_fields(), "ECS")

    # ... and they reject a wrong record count, and a line delivered twice.
    wrong = objects[0]
    s3.copy_object(
        Bucket=bucket,
        Key=wrong.key,
        CopySource={"Bucket": bucket, "Key": wrong.key},
        MetadataDirective="REPLACE",
        ContentType="application/x-ndjson",
        ContentEncoding="gzip",
        Metadata={**wrong.metadata, "records": str(len(wrong.records) + 1)},
    )
    refetched = workload.S3Objects(s3, bucket).list()
    bad = next(o for o in refetched if o.key == wrong.key)
    with pytest.raises(AssertionError):
        workload.assert_s3_object_contract(bad)
    dup_key = wrong.key.replace(".ndjson.gz", "-copy.ndjson.gz")
    s3.put_object(Bucket=bucket, Key=dup_key, Body=wrong.data)
    with pytest.raises(AssertionError, match="more than once"):
        workload.assert_exactly_once(workload.S3Objects(s3, bucket).list(), app.expected)
