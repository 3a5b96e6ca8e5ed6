"""The `forward` source against real Fluent clients: the `fluent-logger` package from PyPI
(Message mode, as the Docker fluentd log driver sends it) over TCP and the unix socket, and
frames built with the `msgpack` package (PackedForward, gzip, chunk acks) delivered to S3.

The first test needs only the router (file sink); the S3 one needs LocalStack.
"""

from __future__ import annotations

import gzip
import json
import socket
import struct
import time
from pathlib import Path

import msgpack
from fluent import sender

import configs
from conftest import DUMMY_CREDENTIALS

# Hang guards, not expectations.
WAIT = 60.0
SECS = 1795648547  # 2026-11-25T23:15:47Z


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, sock: Path | None, running) -> None:
    deadline = time.monotonic() + WAIT
    while True:
        ok = sock is None or sock.exists()
        if ok and port:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                ok = False
        if ok:
            return
        assert running.alive(), running.stderr[-4000:]
        assert time.monotonic() < deadline, "the forward source never listened"
        time.sleep(0.05)


def file_records(root: Path) -> dict[str, list[dict]]:
    """Records of the file sink, by the first directory of their object (the tag)."""
    out: dict[str, list[dict]] = {}
    for p in sorted(root.rglob("*.ndjson")):
        if p.name.startswith("."):
            continue
        tag = p.relative_to(root).parts[0]
        out.setdefault(tag, []).extend(json.loads(line) for line in p.read_text().splitlines() if line)
    return out


def forward_config(tmp_path: Path, source: str, sink: str) -> str:
    return f"""
[global]
data_dir = "{tmp_path / 'data'}"

[sources.fw]
type = "forward"
{source}
{sink}
"""


def test_fluent_logger_over_tcp_and_unix_socket(router, tmp_path):
    port = free_port()
    sock = tmp_path / "fluent.sock"
    out = tmp_path / "out"
    config = forward_config(
        tmp_path,
        f'address = "127.0.0.1:{port}"\npath = "{sock}"',
        f"""
[sinks.out]
type = "file"
inputs = ["fw"]
path = "{out}"
key_prefix = "{{tag}}/"
compression = "none"
flush_interval = "200ms"
""",
    )
    running = router.start(config)
    wait_listening(port, sock, running)

    tcp = sender.FluentSender("app", host="127.0.0.1", port=port, nanosecond_precision=True)
    uds = sender.FluentSender("app", host=f"unix://{sock}", nanosecond_precision=True)
    at = sender.EventTime.from_unix_nano(SECS * 10**9 + 250_000_000)
    for i in range(500):
        assert tcp.emit_with_time("tcp", at, {"id": i, "log": f"line {i}", "container_name": "web"}), tcp.last_error
        assert uds.emit("unix", {"id": 500 + i, "log": "über\nzwei", "source": "stderr"}), uds.last_error
    tcp.close()
    uds.close()

    # fluent-logger asks for no acks: SIGTERM drains (reads until quiet, flushes the sink).
    stderr = running.terminate()
    assert running.returncode == 0, stderr[-4000:]
    assert not sock.exists(), "the socket file outlived the router"
    by_tag = file_records(out)
    assert sorted(by_tag) == ["app.tcp", "app.unix"]
    assert sorted(r["id"] for r in by_tag["app.tcp"]) == list(range(500))
    assert sorted(r["id"] for r in by_tag["app.unix"]) == list(range(500, 1000))
    first = next(r for r in by_tag["app.tcp"] if r["id"] == 0)
    assert first == {"@timestamp": "2026-11-25T23:15:47.250Z", "id": 0, "log": "line 0", "container_name": "web"}
    assert all(r["log"] == "über\nzwei" and r["source"] == "stderr" for r in by_tag["app.unix"])


def read_ack(conn: socket.socket) -> dict:
    unpacker = msgpack.Unpacker(raw=False)
    conn.settimeout(WAIT)
    while True:
        data = conn.recv(4096)
        assert data, "connection closed before the ack"
        unpacker.feed(data)
        for msg in unpacker:
            return msg


def s3_records(s3, bucket: str) -> list[dict]:
    records = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            records += [json.loads(line) for line in gzip.decompress(body).splitlines() if line]
    return records


def test_msgpack_chunks_are_acked_once_in_s3(router, s3, bucket, endpoint, tmp_path):
    sock = tmp_path / "fluent.sock"
    config = forward_config(
        tmp_path,
        f'path = "{sock}"',
        configs.s3_sink(bucket, endpoint, inputs="fw", key_prefix="fluent/{tag}/"),
    )
    running = router.start(config, env={**DUMMY_CREDENTIALS, "AWS_EC2_METADATA_DISABLED": "true"})
    wait_listening(0, sock, running)

    def entry(i: int) -> bytes:
        t = msgpack.ExtType(0, struct.pack(">II", SECS, 7_000_000))
        return msgpack.packb([t, {"id": i, "log": f"packed {i}", "container_id": "abc123"}])

    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(str(sock))
    # PackedForward, as Fluent Bit's out_forward sends a chunk.
    packed = b"".join(entry(i) for i in range(300))
    conn.sendall(msgpack.packb(["ecs.app", packed, {"chunk": "p1", "size": 300}], use_bin_type=True))
    assert read_ack(conn) == {"ack": "p1"}
    # Acked means durable: the records are in the bucket now.
    assert sorted(r["id"] for r in s3_records(s3, bucket)) == list(range(300))

    # CompressedPackedForward: gzip members, each of part of the entries.
    raw = b"".join(entry(i) for i in range(300, 1300))
    payload = gzip.compress(raw[:1000]) + gzip.compress(raw[1000:])
    opt = {"chunk": "g1", "size": 1000, "compressed": "gzip"}
    conn.sendall(msgpack.packb(["ecs.app", payload, opt], use_bin_type=True))
    assert read_ack(conn) == {"ack": "g1"}
    records = s3_records(s3, bucket)
    assert sorted(r["id"] for r in records) == list(range(1300))
    assert all(r["@timestamp"] == "2026-11-25T23:15:47.007Z" and r["container_id"] == "abc123" for r in records)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys and all(k.startswith("fluent/ecs.app/") for k in keys), keys
    conn.close()
    stderr = running.terminate()
    assert running.returncode == 0, stderr[-4000:]
