"""The `firehose` sink end to end: the real router, a LocalStack delivery stream with an S3
destination, and the bucket as the judge.

What is proven here and not in the unit tests: the sink's PutRecordBatch calls are accepted
by a Firehose API, the NDJSON it packs comes out of the destination as the same lines (every
line exactly once), and the packing really happens: tens of thousands of log lines travel
in a handful of Firehose records (Firehose bills per record). The record count comes from
the sink's own summary line at exit (`firehose sink finished records_sent=N events_sent=M`),
the same number `/metrics` shows as `logferry_firehose_records_sent_total`.

The sink under test (see README):

    [sinks.stream]
    type = "firehose"
    inputs = ["meta"]
    delivery_stream = "<stream>"
    region = "us-east-1"
    endpoint_url = "<LocalStack>"
    flush_interval = "1s"
    max_record_size = "1000KiB"
"""

from __future__ import annotations

import json
import re

import pytest

import configs
import workload
from conftest import DUMMY_CREDENTIALS, unique
from workload import AppWriter, poll

LINES = 20_000
DEST_PREFIX = "firehose/"
SUMMARY = re.compile(r"firehose sink finished.*?records_sent=(\d+).*?events_sent=(\d+)")


def firehose_sink(stream: str, endpoint: str, *, max_record_size: str = "1000KiB") -> str:
    q = configs.q
    return f"""
[sinks.stream]
type = "firehose"
inputs = ["meta"]
delivery_stream = {q(stream)}
region = "us-east-1"
endpoint_url = {q(endpoint)}
flush_interval = "1s"
max_record_size = {q(max_record_size)}
"""


@pytest.fixture
def delivery_stream(firehose, iam, bucket):
    """A Direct PUT stream into `bucket` under `firehose/`, ACTIVE; deleted afterwards."""
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
    name = unique("logferry-fh")
    firehose.create_delivery_stream(
        DeliveryStreamName=name,
        DeliveryStreamType="DirectPut",
        ExtendedS3DestinationConfiguration={
            "RoleARN": role["Arn"],
            "BucketARN": f"arn:aws:s3:::{bucket}",
            "Prefix": DEST_PREFIX,
            "ErrorOutputPrefix": "firehose-errors/",
            # The smallest hints AWS accepts: LocalStack flushes to S3 quickly.
            "BufferingHints": {"IntervalInSeconds": 1, "SizeInMBs": 1},
        },
    )
    poll(
        lambda: firehose.describe_delivery_stream(DeliveryStreamName=name)["DeliveryStreamDescription"][
            "DeliveryStreamStatus"
        ]
        == "ACTIVE",
        timeout=60,
        what="the delivery stream to become ACTIVE",
    )
    yield name
    try:
        firehose.delete_delivery_stream(DeliveryStreamName=name)
        iam.delete_role(RoleName=role["RoleName"])
    except Exception as e:  # LocalStack state goes with LocalStack anyway
        print(f"warning: could not delete {name}: {e}")


def summary(stderr: str) -> tuple[int, int]:
    """(Firehose records sent, log records sent) from the sink's exit line."""
    m = SUMMARY.search(stderr)
    assert m, f"no `firehose sink finished` line in the router's log:\n{stderr[-4000:]}"
    return int(m.group(1)), int(m.group(2))


def test_firehose_sink_packs_lines_and_delivers_each_once(
    router, s3, bucket, delivery_stream, endpoint, tmp_path
):
    """~20,000 JSON lines, `--exit-on-eof`: every line arrives in the destination bucket
    exactly once, carried by a handful of Firehose records."""
    app = AppWriter(tmp_path / "logs")
    app.write_json(LINES, batch=1000, pause=0)
    app.close()
    config = configs.pipeline(tmp_path) + firehose_sink(delivery_stream, endpoint)

    done = router.run(config, env=DUMMY_CREDENTIALS)
    assert done.returncode == 0, done.stderr[-4000:]

    records_sent, events_sent = summary(done.stderr)
    print(f"firehose records sent: {records_sent} for {events_sent} lines")
    assert events_sent == LINES, done.stderr[-4000:]
    # ~160 bytes a line: 20,000 lines are ~3.2 MB, four 1000KiB records when packed full;
    # flush_interval may cut some short, but never to anything near a record per line.
    assert 1 <= records_sent <= LINES // 100, (records_sent, LINES)

    listing = workload.S3Objects(s3, bucket, prefix=DEST_PREFIX)
    objects = workload.wait_until_delivered(listing.list, app.expected)
    records = workload.assert_exactly_once(objects, app.expected)
    assert len(records) == LINES
    assert all("@timestamp" in r for r in records)
    # LocalStack writes one object per buffer flush; it never splits a Firehose record.
    print(f"destination objects: {len(objects)}")
    assert len(objects) <= records_sent


def test_firehose_sink_drops_and_counts_oversize_lines(
    router, s3, bucket, delivery_stream, endpoint, tmp_path
):
    """A line longer than `max_record_size` cannot go to Firehose: it is dropped (logged,
    counted), the others around it are delivered, and the router still exits 0."""
    app = AppWriter(tmp_path / "logs")
    app.write_json(500, pause=0)
    # Written straight to the file: ids the app "wrote" but that must not arrive.
    big = [f"big-{i}" for i in range(3)]
    with open(app.json_path, "a", encoding="utf-8") as f:
        for rid in big:
            f.write(json.dumps({"id": rid, "pad": "x" * 5000}) + "\n")
    app.write_json(500, pause=0)
    app.close()
    config = configs.pipeline(tmp_path) + firehose_sink(delivery_stream, endpoint, max_record_size="4KiB")

    done = router.run(config, env=DUMMY_CREDENTIALS)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "over_size_limit" in done.stderr, done.stderr[-4000:]
    records_sent, events_sent = summary(done.stderr)
    assert events_sent == 1000
    assert records_sent < 1000 // 10

    listing = workload.S3Objects(s3, bucket, prefix=DEST_PREFIX)
    objects = workload.wait_until_delivered(listing.list, app.expected)
    workload.assert_exactly_once(objects, app.expected)


def test_check_requires_an_active_stream(router, delivery_stream, endpoint, tmp_path):
    """`logferry check`: 0 for an ACTIVE stream; non-zero naming the sink for a missing one."""
    good = router.write_config(
        configs.pipeline(tmp_path) + firehose_sink(delivery_stream, endpoint), name="good.toml"
    )
    done = router.command("check", "--config", str(good), env=DUMMY_CREDENTIALS)
    assert done.returncode == 0, done.stdout + done.stderr

    bad = router.write_config(
        configs.pipeline(tmp_path) + firehose_sink(unique("logferry-missing"), endpoint), name="bad.toml"
    )
    done = router.command("check", "--config", str(bad), env=DUMMY_CREDENTIALS)
    said = done.stdout + done.stderr
    assert done.returncode != 0, said
    assert "stream" in said, f"check did not name the sink: {said}"
