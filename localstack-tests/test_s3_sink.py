"""The `s3` sink's scenarios, written against its config contract before the sink exists.

These are the acceptance tests of the sink: they fail until it lands, so `run.sh` deselects
the `s3_sink` marker unless `LOGFERRY_S3_SINK=1`, and `check_cmd` unless `LOGFERRY_CHECK=1`.
The contract (see configs.s3_sink):

    [sinks.archive]
    type = "s3"
    inputs = ["meta"]
    bucket = "<bucket>"
    key_prefix = "logs/{ecs_cluster}/{ecs_task_id}/%Y/%m/%d/%H/%M/"
    compression = "gzip"       # <prefix><name>.ndjson.gz, Content-Encoding gzip,
                               # Content-Type application/x-ndjson
    flush_interval = "1s"
    max_object_size = "50MiB"
    region = "us-east-1"
    endpoint_url = "<LocalStack>"
    force_path_style = true

and every object carries user metadata `x-amz-meta-records` (records in the object),
`x-amz-meta-min-event-time` and `x-amz-meta-max-event-time` (RFC 3339 `@timestamp` bounds).

Each scenario is a deployment shape: (a) an ECS task sidecar with static credentials in the
environment, (b) an EKS pod sidecar on a node whose only credentials are the instance profile
behind IMDSv2, (c) `logferry check` as a readiness probe. Delivery is judged as for the `file`
sink in test_harness.py (same workload, same checks), so a failure here is the sink's.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

import configs
import workload
from conftest import DUMMY_CREDENTIALS, unique
from workload import AppWriter


@pytest.mark.s3_sink
def test_ecs_sidecar_to_s3(router, ecs_metadata, s3, bucket, endpoint, tmp_path, started_at):
    """(a) Fargate task: ECS metadata v4, credentials from the environment, live writes to a
    JSON log and a plain-text log, a rename rotation, SIGTERM; every line once in S3."""
    config = configs.pipeline(tmp_path, ecs="true") + configs.s3_sink(bucket, endpoint)
    app = AppWriter(tmp_path / "logs")
    app.write_json(100)
    app.write_text(50)
    env = {
        **DUMMY_CREDENTIALS,
        "ECS_CONTAINER_METADATA_URI_V4": ecs_metadata.uri,
        # Credentials are in the environment; the SDK must never wander off to a real IMDS.
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    running = router.start(config, env=env)
    workload.wait_for_open(running, app.json_path)
    app.write_json(150)
    app.rotate_json()
    app.write_text(100)
    app.write_json(250)
    listing = workload.S3Objects(s3, bucket)
    workload.wait_until_delivered(listing.list, app.expected, running)
    stderr = running.terminate()
    assert running.returncode == 0, stderr[-4000:]
    app.close()

    objects = listing.list()
    records = workload.assert_exactly_once(objects, app.expected)
    until = datetime.now(timezone.utc)
    for obj in objects:
        workload.assert_time_sliced(obj, rf"logs/default/{ecs_metadata.task_id}/", started_at, until)
        workload.assert_s3_object_contract(obj)
    workload.assert_fields(records, ecs_metadata.expected_fields(), "ECS")


@pytest.mark.s3_sink
def test_eks_sidecar_with_instance_profile_to_s3(router, imds, s3, bucket, endpoint, tmp_path, started_at):
    """(b) EKS pod: downward-API env and labels file, no AWS_* credentials at all; the SDK
    must take the node's instance-profile credentials from IMDSv2."""
    labels = tmp_path / "podinfo" / "labels"
    labels.parent.mkdir()
    labels.write_text('app="web"\napp.kubernetes.io/name="web"\npod-template-hash="7d4b9c8f5"\n')
    config = configs.pipeline(tmp_path, ec2="true", kubernetes="true", labels_file=labels) + configs.s3_sink(
        bucket, endpoint, key_prefix="logs/{kubernetes.namespace_name}/{kubernetes.pod_name}/%Y/%m/%d/%H/%M/"
    )
    pod = {
        "POD_NAME": "web-7d4b9c8f5-x2x9z",
        "POD_NAMESPACE": "shop",
        "POD_UID": "0f8e5d2c-3b1a-4c9d-8e7f-6a5b4c3d2e1f",
        "NODE_NAME": "ip-10-0-1-23.ec2.internal",
    }
    env = {**pod, "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url}
    assert not any(k.startswith("AWS_") and k != "AWS_EC2_METADATA_SERVICE_ENDPOINT" for k in router.env(env))
    app = AppWriter(tmp_path / "logs")
    app.write_json(100)
    app.write_text(50)
    running = router.start(config, env=env)
    workload.wait_for_open(running, app.json_path)
    app.write_json(200)
    app.write_text(100)
    listing = workload.S3Objects(s3, bucket)
    workload.wait_until_delivered(listing.list, app.expected, running)
    stderr = running.terminate()
    assert running.returncode == 0, stderr[-4000:]
    app.close()

    assert imds.credentials_served(), (
        f"the router never read the instance-profile credentials from IMDS: {imds.paths()}"
    )
    objects = listing.list()
    records = workload.assert_exactly_once(objects, app.expected)
    until = datetime.now(timezone.utc)
    for obj in objects:
        workload.assert_time_sliced(obj, r"logs/shop/web-7d4b9c8f5-x2x9z/", started_at, until)
        workload.assert_s3_object_contract(obj)
    workload.assert_fields(records, imds.expected_fields(), "EC2")
    expected_k8s = {
        "pod_name": pod["POD_NAME"],
        "namespace_name": pod["POD_NAMESPACE"],
        "pod_id": pod["POD_UID"],
        "host": pod["NODE_NAME"],
        "labels": {"app": "web", "app.kubernetes.io/name": "web", "pod-template-hash": "7d4b9c8f5"},
    }
    workload.assert_fields(records, {"kubernetes": expected_k8s}, "Kubernetes")


@pytest.mark.check_cmd
def test_check_reaches_the_bucket(router, bucket, endpoint, tmp_path):
    """(c) `logferry check`: 0 when every sink is reachable; non-zero naming the sink when
    its bucket does not exist."""
    good = router.write_config(
        configs.pipeline(tmp_path) + configs.s3_sink(bucket, endpoint), name="good.toml"
    )
    done = router.command("check", "--config", str(good), env=DUMMY_CREDENTIALS)
    assert done.returncode == 0, done.stdout + done.stderr

    missing = unique("logferry-missing")
    bad = router.write_config(
        configs.pipeline(tmp_path) + configs.s3_sink(missing, endpoint), name="bad.toml"
    )
    done = router.command("check", "--config", str(bad), env=DUMMY_CREDENTIALS)
    assert done.returncode != 0, done.stdout + done.stderr
    said = done.stdout + done.stderr
    assert "archive" in said, f"check did not name the sink: {said}"


def test_large_object_goes_up_as_multipart_with_sse(router, s3, bucket, endpoint, tmp_path):
    """An object past one part streams up as a multipart upload (parts >= 5 MiB), is whole
    and in order when read back, carries the requested encryption and storage class, and
    leaves no unfinished upload behind."""
    import gzip
    import json
    import os

    logs = tmp_path / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    n = 60_000
    with open(logs / "big.log", "w") as f:
        for i in range(n):
            # Random hex compresses poorly, so ~12 MB of lines give > 5 MiB of gzip.
            f.write(json.dumps({"id": i, "ts": "2026-11-25T11:00:00Z", "blob": os.urandom(100).hex()}) + "\n")
    config = configs.pipeline(tmp_path) + configs.s3_sink(bucket, endpoint, key_prefix="big/%Y/%m/%d/%H/").replace(
        'max_object_size = "50MiB"',
        'max_object_size = "200MiB"\nmultipart_part_size = "5MiB"\nserver_side_encryption = "AES256"\nstorage_class = "STANDARD_IA"',
    ).replace('flush_interval = "1s"', 'flush_interval = "60s"')
    done = router.run(config, env={**DUMMY_CREDENTIALS, "AWS_EC2_METADATA_DISABLED": "true"})
    assert done.returncode == 0, done.stderr
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert len(keys) == 1, keys
    head = s3.head_object(Bucket=bucket, Key=keys[0])
    assert "-" in head["ETag"], f"not a multipart object: {head['ETag']}"
    assert head["ContentLength"] > 5 * 1024 * 1024
    assert head.get("ServerSideEncryption") == "AES256"
    assert head.get("StorageClass") == "STANDARD_IA"
    assert head["ContentEncoding"] == "gzip"
    body = s3.get_object(Bucket=bucket, Key=keys[0])["Body"].read()
    ids = [json.loads(line)["id"] for line in gzip.decompress(body).splitlines()]
    assert ids == list(range(n))
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
