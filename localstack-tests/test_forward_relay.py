"""Two hops, at least once: a sidecar Logferry (file source -> forward sink) relays to a node
daemon Logferry (forward source -> S3 on LocalStack), the shape the seeds describe for EKS.
The daemon acknowledges a chunk only once S3 holds its records, so killing the daemon with
kill -9 mid-stream loses nothing: the sidecar sends every unacknowledged chunk again.
"""

from __future__ import annotations

import configs
from test_guarantees import ENV, NumberedApp, Numbers, assert_all_delivered, free_port
from workload import poll, wait_for_open


def daemon_config(tmp, port: int, bucket: str, endpoint: str) -> str:
    return f"""\
[global]
data_dir = {configs.q(tmp / "daemon-data")}

[sources.fwd]
type = "forward"
address = "127.0.0.1:{port}"

[sinks.archive]
type = "s3"
inputs = ["fwd"]
bucket = {configs.q(bucket)}
key_prefix = "relay/{{tag}}/"
compression = "gzip"
flush_interval = "1s"
region = "us-east-1"
endpoint_url = {configs.q(endpoint)}
force_path_style = true
"""


def sidecar_config(tmp, port: int) -> str:
    return f"""\
[global]
data_dir = {configs.q(tmp / "sidecar-data")}

[sources.app]
type = "file"
include = [{configs.q(tmp / "logs" / "app.log")}]
parser = "json"
glob_interval = "250ms"

[sinks.daemon]
type = "forward"
inputs = ["app"]
host = "127.0.0.1"
port = {port}
tag = "app.relay"
require_ack = true
ack_timeout = "5s"
flush_interval = "250ms"
"""


def test_sidecar_to_daemon_survives_a_daemon_kill(router, s3, bucket, endpoint, tmp_path):
    total = 60_000
    port = free_port()
    daemon_cfg = router.write_config(daemon_config(tmp_path, port, bucket, endpoint), name="daemon.toml")
    sidecar_cfg = router.write_config(sidecar_config(tmp_path, port), name="sidecar.toml")
    daemon = router.start(daemon_cfg, env=ENV)
    app = NumberedApp(tmp_path / "logs")
    app.write(1000)
    sidecar = router.start(sidecar_cfg, env=ENV)
    wait_for_open(sidecar, app.path)
    numbers = Numbers(s3, bucket, prefix="relay/")
    app.start_paced(total, chunk=1000, pause=0.1)
    poll(lambda: len(numbers.update()) > 0, timeout=60, what="first relayed objects")
    daemon.kill()
    assert sidecar.alive(), sidecar.stderr[-4000:]
    daemon = router.start(daemon_cfg, env=ENV)
    app.join()
    counts = numbers.wait_for(total, daemon)
    # The tag travelled with the records: it names the key prefix on the daemon.
    assert numbers.seen_keys and all(k.startswith("relay/app.relay/") for k in numbers.seen_keys)
    # Whether the sidecar logs a failed delivery depends on where the kill fell: with chunks
    # in flight it warns and sends them again; between chunks it finds the connection closed
    # before its next write and reconnects without a warning. Either way nothing is lost.
    for r in (sidecar, daemon):
        stderr = r.terminate()
        assert r.returncode == 0, stderr[-4000:]
    app.close()
    dupes = assert_all_delivered(counts, total, "sidecar -> daemon (killed once) -> S3")
    assert dupes < total, "duplicates are the chunks in flight at the kill, not everything"
