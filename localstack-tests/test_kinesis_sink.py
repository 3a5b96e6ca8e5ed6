"""The `kinesis_streams` sink end to end: the real router, a LocalStack data stream of two
shards, and boto3's GetRecords over every shard as the judge.

What is proven here and not in the unit tests: the sink's PutRecords calls are accepted by a
Kinesis API, every log line comes back exactly once (the set of ids is compared, duplicates
fail), each record carries the partition key its template rendered, and with
`aggregation = true` the records are KPL aggregates that a decoder written here
independently of the sink (magic, protobuf, MD5) turns back into the same lines.

The sink under test (see README):

    [sinks.stream]
    type = "kinesis_streams"
    inputs = ["meta"]
    stream = "<stream>"
    partition_key = "{level}"
    region = "us-east-1"
    endpoint_url = "<LocalStack>"
    flush_interval = "1s"
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter

import pytest

import configs
from conftest import DUMMY_CREDENTIALS, unique
from workload import AppWriter, poll

LINES = 5_000
SUMMARY = re.compile(r"kinesis sink finished.*?records_sent=(\d+).*?events_sent=(\d+)")
KPL_MAGIC = bytes([0xF3, 0x89, 0x9A, 0xC2])


def kinesis_sink(stream: str, endpoint: str, *, extra: str = "") -> str:
    q = configs.q
    return f"""
[sinks.stream]
type = "kinesis_streams"
inputs = ["meta"]
stream = {q(stream)}
partition_key = "{{level}}"
region = "us-east-1"
endpoint_url = {q(endpoint)}
flush_interval = "1s"
{extra}
"""


@pytest.fixture(scope="session")
def kinesis(aws_client):
    return aws_client("kinesis")


@pytest.fixture
def stream(kinesis):
    """A fresh stream of two shards, ACTIVE; deleted afterwards."""
    name = unique("logferry-ks")
    kinesis.create_stream(StreamName=name, ShardCount=2)
    poll(
        lambda: kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamStatus"]
        == "ACTIVE",
        timeout=120,
        what="the stream to become ACTIVE",
    )
    yield name
    try:
        kinesis.delete_stream(StreamName=name, EnforceConsumerDeletion=True)
    except Exception as e:  # LocalStack state goes with LocalStack anyway
        print(f"warning: could not delete {name}: {e}")


def read_all(kinesis, name: str, want: int, timeout: float = 120) -> list[dict]:
    """Every record of every shard (PartitionKey, Data), reading from TRIM_HORIZON until at
    least `want` records are in (or `timeout`), then once more to the end so that extra
    records (duplicates) would be seen too."""
    shards = kinesis.list_shards(StreamName=name)["Shards"]
    assert len(shards) == 2, shards
    iters = {
        s["ShardId"]: kinesis.get_shard_iterator(
            StreamName=name, ShardId=s["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        for s in shards
    }
    out: list[dict] = []
    deadline = time.monotonic() + timeout
    drained_after_enough = False
    while True:
        got = 0
        for shard, it in list(iters.items()):
            while it:
                r = kinesis.get_records(ShardIterator=it, Limit=10_000)
                recs = r["Records"]
                got += len(recs)
                for rec in recs:
                    out.append({"shard": shard, "key": rec["PartitionKey"], "data": rec["Data"]})
                it = r.get("NextShardIterator")
                if not recs:
                    break
            iters[shard] = it
        if len(out) >= want and got == 0:
            if drained_after_enough:
                return out
            drained_after_enough = True
        if time.monotonic() > deadline:
            return out
        time.sleep(0.5)


def summary(stderr: str) -> tuple[int, int]:
    m = SUMMARY.search(stderr)
    assert m, f"no `kinesis sink finished` line in the router's log:\n{stderr[-4000:]}"
    return int(m.group(1)), int(m.group(2))


def lines_of(data: bytes) -> list[dict]:
    assert data.endswith(b"\n"), data[-100:]
    return [json.loads(line) for line in data.decode("utf-8").splitlines()]


def varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def fields(buf: bytes):
    """(field number, wire type, value) of a protobuf message: ints and byte strings."""
    i = 0
    while i < len(buf):
        tag, i = varint(buf, i)
        num, wt = tag >> 3, tag & 7
        if wt == 0:
            v, i = varint(buf, i)
        elif wt == 2:
            n, i = varint(buf, i)
            v, i = buf[i : i + n], i + n
        else:
            raise AssertionError(f"unexpected wire type {wt}")
        yield num, wt, v


def deaggregate(data: bytes) -> list[tuple[str, bytes]]:
    """The KPL format (amazon-kinesis-producer's aggregation.md), decoded by hand."""
    assert data[:4] == KPL_MAGIC, data[:8]
    proto, digest = data[4:-16], data[-16:]
    assert hashlib.md5(proto).digest() == digest, "MD5 mismatch"
    keys: list[str] = []
    recs: list[tuple[int, bytes]] = []
    for num, _, v in fields(proto):
        if num == 1:
            keys.append(v.decode())
        elif num == 3:
            rec = {n: val for n, _, val in fields(v)}
            assert 1 in rec and 3 in rec, rec
            recs.append((rec[1], rec[3]))
    return [(keys[k], d) for k, d in recs]


def test_kinesis_sink_delivers_every_line_once_with_its_key(router, kinesis, stream, endpoint, tmp_path):
    """5,000 JSON lines, `--exit-on-eof`: GetRecords over both shards returns every id exactly
    once, one record per line, keyed by the line's `level`."""
    app = AppWriter(tmp_path / "logs")
    app.write_json(LINES, batch=1000, pause=0)
    app.close()
    config = configs.pipeline(tmp_path) + kinesis_sink(stream, endpoint)

    done = router.run(config, env=DUMMY_CREDENTIALS)
    assert done.returncode == 0, done.stderr[-4000:]
    records_sent, events_sent = summary(done.stderr)
    assert (records_sent, events_sent) == (LINES, LINES), done.stderr[-4000:]

    got = read_all(kinesis, stream, LINES)
    ids = Counter()
    for rec in got:
        (line,) = lines_of(rec["data"])
        ids[line["id"]] += 1
        assert rec["key"] == line["level"], (rec["key"], line)
    missing = app.expected - set(ids)
    dupes = [k for k, c in ids.items() if c > 1]
    assert not missing, f"{len(missing)} lines lost, e.g. {sorted(missing)[:5]}"
    assert not dupes, f"{len(dupes)} lines twice, e.g. {dupes[:5]}"
    assert set(ids) == app.expected
    assert len(got) == LINES
    shards = Counter(r["shard"] for r in got)
    print(f"records per shard: {dict(shards)}")


def test_kinesis_sink_aggregates_in_the_kpl_format(router, kinesis, stream, endpoint, tmp_path):
    """`aggregation = true`: a few KPL records carry all 5,000 lines, each with its own
    partition key inside the aggregate."""
    app = AppWriter(tmp_path / "logs")
    app.write_json(LINES, batch=1000, pause=0)
    app.close()
    config = configs.pipeline(tmp_path) + kinesis_sink(stream, endpoint, extra="aggregation = true")

    done = router.run(config, env=DUMMY_CREDENTIALS)
    assert done.returncode == 0, done.stderr[-4000:]
    records_sent, events_sent = summary(done.stderr)
    assert events_sent == LINES, done.stderr[-4000:]
    # ~180 bytes a line: under 1 MiB in all; flush_interval may cut a few aggregates short.
    assert 1 <= records_sent <= 20, records_sent

    got = read_all(kinesis, stream, records_sent)
    assert len(got) == records_sent
    ids = Counter()
    for rec in got:
        inner = deaggregate(rec["data"])
        assert rec["key"] == inner[0][0], "the outer key is the first line's"
        for key, data in inner:
            (line,) = lines_of(data)
            assert key == line["level"]
            ids[line["id"]] += 1
    assert set(ids) == app.expected
    assert all(c == 1 for c in ids.values()), [k for k, c in ids.items() if c > 1][:5]


def test_check_requires_an_existing_stream(router, stream, endpoint, tmp_path):
    """`logferry check`: one `ok` line and 0 for an ACTIVE stream; a `FAIL` line naming the
    sink and non-zero for a missing one."""
    good = router.write_config(configs.pipeline(tmp_path) + kinesis_sink(stream, endpoint), name="good.toml")
    done = router.command("check", "--config", str(good), env=DUMMY_CREDENTIALS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"ok    stream (kinesis_streams:{stream})" in done.stdout, done.stdout

    missing = unique("logferry-missing")
    bad = router.write_config(configs.pipeline(tmp_path) + kinesis_sink(missing, endpoint), name="bad.toml")
    done = router.command("check", "--config", str(bad), env=DUMMY_CREDENTIALS)
    assert done.returncode != 0, done.stdout + done.stderr
    assert f"FAIL  stream (kinesis_streams:{missing}): ResourceNotFoundException" in done.stdout, done.stdout


FIRELENS_FIXTURE = (
    __import__("conftest").REPO / "router" / "tests" / "fixtures" / "fluent-bit" / "kinesis.conf"
)


def test_firelens_config_with_a_parser_filter_and_log_key_into_kinesis(router, kinesis, stream, endpoint, tmp_path):
    """Issue 14's FireLens case, unchanged: the ECS-shaped file with its health `tcp` input, a
    user file with `Parsers_File` and a `parser` filter, and a `kinesis_streams` output with
    `log_key log`. Each Kinesis record must be exactly the parsed `log` value and a newline
    (nothing else of the record), keyed by the parsed `level`; an unparsable line passes the
    filter unchanged and is sent whole; the health port takes a line like `nc` sends it and
    closes; `/healthz` answers without `HTTP_Server On`."""
    import socket
    import urllib.request

    from test_firelens import free_port, send_lines

    task_id = "t" + str(int(time.time() * 1000))
    sock = tmp_path / "fluent.sock"
    health, api = free_port(), free_port()
    env = {
        **DUMMY_CREDENTIALS,
        "AWS_EC2_METADATA_DISABLED": "true",
        "LOCALSTACK_ENDPOINT": endpoint,
        "FIRELENS_SOCKET": str(sock),
        "FIRELENS_HEALTH_PORT": str(health),
        "FIRELENS_API_PORT": str(api),
        "FIRELENS_TASK_ID": task_id,
        "FIRELENS_STREAM": stream,
        "FIRELENS_DATA_DIR": str(tmp_path / "data"),
    }
    running = router.start_args("run", "--fluent-bit-config", str(FIRELENS_FIXTURE), env=env)
    poll(lambda: sock.exists() or not running.alive(), timeout=60, what="the forward socket")
    assert running.alive(), running.stderr

    # The documented health check: `echo '{"health": "check"}' | nc 127.0.0.1 8877`.
    with socket.create_connection(("127.0.0.1", health), timeout=10) as c:
        c.sendall(b'{"health": "check"}\n')
        c.settimeout(15)
        assert c.recv(1) == b"", "the health port should take the line and close"
    with urllib.request.urlopen(f"http://127.0.0.1:{api}/healthz", timeout=10) as r:
        assert r.status == 200

    n = 400
    lines = [f"{'INFO' if i % 3 else 'WARN'} msg {i}" for i in range(n)] + ["no level here"]
    send_lines(sock, f"app-firelens-{task_id}", "app", lines)
    time.sleep(1)
    stderr = running.terminate()
    assert running.returncode == 0, stderr[-4000:]

    got = read_all(kinesis, stream, n + 1)
    data = Counter(r["data"] for r in got)
    want = Counter(f"msg {i}\n".encode() for i in range(n))
    unparsed = [r for r in got if r["data"].startswith(b"{")]
    assert len(unparsed) == 0, unparsed
    assert data - Counter([b"no level here\n"]) == want, (len(got), list(data.items())[:5])
    assert data[b"no level here\n"] == 1
    for r in got:
        if r["data"] != b"no level here\n":
            i = int(r["data"].split()[1])
            assert r["key"] == ("INFO" if i % 3 else "WARN"), r
