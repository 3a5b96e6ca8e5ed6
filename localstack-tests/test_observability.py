"""`/metrics`, `/readyz` and `/healthz` scraped during a real run against LocalStack: the
counters must agree with what arrived in S3, and an outage must show as retries and a stall.
"""

from __future__ import annotations

import gzip
import re
import time
import urllib.error
import urllib.request

from emulators import TcpProxy
from test_guarantees import ENV, NumberedApp, Numbers, config, free_port, metric
from workload import poll, wait_for_open


def get(url: str) -> tuple[int | None, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return None, ""


def scalar(api_port: int, name: str) -> float | None:
    """One sample of a metric without labels."""
    status, text = get(f"http://127.0.0.1:{api_port}/metrics")
    m = re.search(rf"^{name} (\d+(?:\.\d+)?)$", text, re.M) if status == 200 else None
    return float(m.group(1)) if m else None


def s3_bytes(s3, bucket: str) -> int:
    """Uncompressed bytes of every object in the bucket."""
    total = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            total += len(gzip.decompress(body))
    return total


def test_metrics_match_deliveries_and_an_outage_shows_as_retries_and_a_stall(router, s3, bucket, endpoint, tmp_path):
    api_port = free_port()
    api = f'\n[api]\naddress = "127.0.0.1:{api_port}"\nstall_timeout = "3s"\nwedged_timeout = "0s"\n'
    base = f"http://127.0.0.1:{api_port}"
    first, second = 20_000, 1_000
    with TcpProxy(endpoint) as proxy:
        app = NumberedApp(tmp_path / "logs")
        running = router.start(
            config(tmp_path, bucket, proxy.url, global_extra='memory_limit = "48MiB"', tail=api), env=ENV
        )
        app.write(first)
        wait_for_open(running, app.path)
        numbers = Numbers(s3, bucket)
        counts = numbers.wait_for(first, running)
        assert sum(counts.values()) == first, "no duplicates without a crash"

        src, snk = 'component="app",kind="file"', 'component="archive",kind="s3"'
        poll(
            lambda: metric(api_port, "logferry_source_acked_events_total", src) == first,
            timeout=30,
            what="every record acknowledged in /metrics",
        )
        file_label = f'component="app",file="{app.path}"'
        seen = {
            "source received": metric(api_port, "logferry_component_received_events_total", src),
            "source bytes": metric(api_port, "logferry_component_received_bytes_total", src),
            "sink received": metric(api_port, "logferry_component_received_events_total", snk),
            "sink sent": metric(api_port, "logferry_component_sent_events_total", snk),
            "sink bytes": metric(api_port, "logferry_component_sent_bytes_total", snk),
            "sink bytes in": metric(api_port, "logferry_component_received_bytes_total", snk),
            "objects": metric(api_port, "logferry_sink_objects_written_total", snk),
            "unacked": metric(api_port, "logferry_source_unacked_events", src),
            "retries": metric(api_port, "logferry_component_retries_total", snk),
            "checkpoint lag": metric(api_port, "logferry_file_checkpoint_lag_bytes", file_label),
            "checkpoint age": metric(api_port, "logferry_file_checkpoint_age_seconds", file_label),
            "memory limit": scalar(api_port, "logferry_memory_limit_bytes"),
            "stalled": scalar(api_port, "logferry_delivery_stalled_seconds"),
        }
        expected = {
            "source received": first,
            "source bytes": app.path.stat().st_size,
            "sink received": first,
            "sink sent": first,
            "sink bytes": (out_bytes := s3_bytes(s3, bucket)),
            "sink bytes in": out_bytes - first,  # the same records, without their newlines
            "objects": len(numbers.seen_keys),
            "unacked": 0,
            "retries": 0,
            "checkpoint lag": 0,
            "checkpoint age": 0,
            "memory limit": 48 * 1024 * 1024,
            "stalled": 0,
        }
        assert seen == expected
        assert get(base + "/readyz") == (200, "ready\n")
        assert get(base + "/healthz") == (200, "ok\n")

        # The endpoint goes away with records in flight: retries climb, the stall is reported.
        proxy.down()
        app.write(second)
        status, body = poll(
            lambda: (r := get(base + "/readyz"))[0] == 503 and r,
            timeout=60,
            what="/readyz to report the stall",
        )
        assert body.startswith("not ready: no delivery for "), body
        assert "record(s) waiting" in body, body
        assert scalar(api_port, "logferry_delivery_stalled_seconds") >= 3
        # The SDK retries a refused connection itself first; then ours counts.
        poll(
            lambda: metric(api_port, "logferry_component_retries_total", snk) >= 1,
            timeout=60,
            what="a retry counted",
        )
        assert metric(api_port, "logferry_source_unacked_events", src) > 0
        used = scalar(api_port, "logferry_memory_used_bytes")
        assert 0 < used <= 48 * 1024 * 1024
        # wedged_timeout = "0s": never unhealthy, however long the stall.
        assert get(base + "/healthz") == (200, "ok\n")
        time.sleep(1)

        proxy.up()
        counts = numbers.wait_for(first + second, running)
        poll(lambda: get(base + "/readyz")[0] == 200, timeout=60, what="/readyz back to 200")
        poll(
            lambda: metric(api_port, "logferry_source_acked_events_total", src) == first + second,
            timeout=30,
            what="the rest acknowledged",
        )
        assert scalar(api_port, "logferry_delivery_stalled_seconds") == 0
        assert metric(api_port, "logferry_component_sent_events_total", snk) == first + second
        stderr = running.terminate()
        assert running.returncode == 0, stderr[-4000:]
        app.close()
    assert sorted(counts) == list(range(first + second))
