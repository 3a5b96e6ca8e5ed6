"""What the workloads share: the sample application record, and one router run under
`/usr/bin/time -v`, read back the same way for every workload."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass


LEVELS = ["info"] * 7 + ["warn", "error", "debug"]
LOGGERS = ["http.server", "db.pool", "payments.client", "auth.session", "cache.redis"]
MSGS = ["request completed", "cache miss for key", "payment authorised",
        "upstream timeout after retries", "user signed in", "connection returned to pool"]
PATHS = ["/api/v1/orders", "/api/v1/users/me", "/healthz", "/api/v1/payments", "/static/app.js"]


def sample_fields(rnd) -> dict:
    """The fields of one application log record (a web service's request log), drawn from
    `rnd` in a fixed order so that a seeded generator always writes the same data."""
    rid = "%08x-%04x-%04x-%04x-%012x" % (rnd.getrandbits(32), rnd.getrandbits(16), rnd.getrandbits(16),
                                         rnd.getrandbits(16), rnd.getrandbits(48))
    return {"level": rnd.choice(LEVELS), "logger": rnd.choice(LOGGERS), "msg": rnd.choice(MSGS),
            "request_id": rid, "user_id": rnd.randint(1, 99999), "latency_ms": rnd.random() * 250,
            "path": rnd.choice(PATHS), "status": 200, "trace_id": "%016x" % rnd.getrandbits(64)}


@dataclass
class Run:
    stderr: str
    user: float
    sys: float
    wall: float
    rss_mib: float

    @property
    def cpu(self) -> float:
        return self.user + self.sys

    def sent(self, sink: str) -> list[int]:
        """What the exit summary says `sink` delivered (one entry per matching line)."""
        return [int(m.group(1)) for m in re.finditer(r"component=%s .*?sent=(\d+)" % re.escape(sink), self.stderr)]


def run_router(binary: str, config: str, env: dict[str, str]) -> Run:
    """`logferry run --config CONFIG --exit-on-eof`; exits the script when the router fails."""
    cmd = ["/usr/bin/time", "-v", binary, "run", "--config", config, "--exit-on-eof"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stderr)
        sys.exit(p.returncode)
    t = p.stderr

    def field(name: str) -> str:
        m = re.search(re.escape(name) + r":\s*(.+)", t)
        return m.group(1).strip() if m else "0"

    parts = [float(x) for x in field("Elapsed (wall clock) time (h:mm:ss or m:ss)").split(":")]
    return Run(
        stderr=t,
        user=float(field("User time (seconds)")),
        sys=float(field("System time (seconds)")),
        wall=sum(v * 60**i for i, v in enumerate(reversed(parts))),
        rss_mib=int(field("Maximum resident set size (kbytes)")) / 1024,
    )
