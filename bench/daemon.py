"""What the Kubernetes API watch costs the node daemon (issue 15): `python3 bench/daemon.py`
(after `cargo build --release -p logferry`).

200 pods' kubelet-named CRI files are written live at RATE lines per second in total (default
50,000) for SECONDS (default 20), each file renamed away (rotated) every ROTATE_BYTES (default
2 MB) and created again, while the router tails them into a blackhole. Twice: with
`kubernetes_metadata = "path"` (fields from the file name) and with `"api"` against the
Kubernetes API emulator of localstack-tests/ serving the 200 pods of this node plus 800 of
other nodes, with 10 pods' labels changed every second (MODIFIED events the watch applies).
Reports per run the lines, the router's CPU seconds (from /proc, so the writer's CPU is not
counted), CPU microseconds per line and peak RSS, and the cost of the watch in %.

Not a test: figures vary with the machine; nothing here asserts a speed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "localstack-tests"))
from emulators import KubernetesApiEmulator  # noqa: E402

BIN = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "logferry")
PODS = 200
RATE = int(os.environ.get("RATE", "50000"))
SECONDS = float(os.environ.get("SECONDS_", os.environ.get("DURATION", "20")))
ROTATE_BYTES = int(os.environ.get("ROTATE_BYTES", str(2_000_000)))
NODE = "ip-10-0-1-23.ec2.internal"
TICK = 0.1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(data: str, logs: str, port: int, mode: str, api_url: str) -> str:
    api = f'\n[sources.containers.kubernetes_api]\nendpoint = "{api_url}"\nnode_name = "{NODE}"\n' if mode == "api" else ""
    return f"""[global]
data_dir = "{data}"
memory_limit = "64MiB"

[api]
address = "127.0.0.1:{port}"

[sources.containers]
type = "file"
include = ["{logs}/*.log"]
parser = "cri"
read_from = "beginning"
kubernetes_metadata = "{mode}"
{api}
[sinks.null]
type = "blackhole"
inputs = ["containers"]
"""


def metric(port: int, pattern: str) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    m = re.search(r"^" + pattern + r" (\d+)", text, re.M)
    return float(m.group(1)) if m else 0.0


def received(port: int) -> float:
    return metric(port, r'logferry_component_sent_events_total\{[^}]*component="null"[^}]*\}')


def proc_cpu(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_hwm_mib(pid: int) -> float:
    m = re.search(r"VmHWM:\s+(\d+) kB", open(f"/proc/{pid}/status").read())
    return int(m.group(1)) / 1024


def pods(api: KubernetesApiEmulator, names: list[str], generation: int, only: range | None = None) -> None:
    for i in only if only is not None else range(len(names)):
        api.put("shop", names[i], NODE, {"app": f"svc-{i % 40}", "team": f"t{i % 7}", "gen": str(generation)},
                annotations={"prometheus.io/scrape": "true", "owner": f"team-{i % 7}"},
                containers={"app": f"repo/svc-{i % 40}:1.{generation}"}, uid=f"uid-{i:04d}")


def run(mode: str) -> dict:
    work = tempfile.mkdtemp(prefix=f"logferry-bench-daemon-{mode}-")
    logs = os.path.join(work, "containers")
    os.makedirs(logs)
    names = [f"svc-{i % 40}-{i:05d}-x{i % 10}z" for i in range(PODS)]
    files = [os.path.join(logs, f"{n}_shop_app-{i:064x}.log") for i, n in enumerate(names)]
    with KubernetesApiEmulator() as api:
        pods(api, names, 0)
        for i in range(800):
            api.put("shop", f"elsewhere-{i}", f"ip-10-0-{i % 200}-9.ec2.internal", {"app": "elsewhere"})
        port = free_port()
        cfg = os.path.join(work, "logferry.toml")
        with open(cfg, "w") as f:
            f.write(config(os.path.join(work, "data"), logs, port, mode, api.url))
        env = dict(os.environ, LOGFERRY_LOG="warn")
        router = subprocess.Popen([BIN, "run", "--config", cfg], env=env, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            while received(port) == 0 and time.monotonic() < deadline:
                # A first line per file, so the router has them open before the clock starts.
                for p in files:
                    with open(p, "a") as f:
                        f.write('2026-12-04T10:00:00.000000000Z stdout F {"n":-1}\n')
                time.sleep(0.5)
            start_lines = received(port)
            cpu0, t0 = proc_cpu(router.pid), time.monotonic()
            handles = [open(p, "a") for p in files]
            sizes = [0] * PODS
            per_tick = int(RATE * TICK) // PODS
            written, tick, generation = 0, 0, 0
            while time.monotonic() - t0 < SECONDS:
                for i, h in enumerate(handles):
                    ts = "2026-12-04T10:%02d:%02d.%03d000000Z" % ((tick // 600) % 60, (tick // 10) % 60, tick % 10 * 100)
                    chunk = "".join(
                        f'{ts} stdout F {{"level":"info","msg":"request {written + k} served","pod":{i},"latency_ms":{k % 250}}}\n'
                        for k in range(per_tick))
                    h.write(chunk)
                    h.flush()
                    written += per_tick
                    sizes[i] += len(chunk)
                    if sizes[i] >= ROTATE_BYTES:
                        h.close()
                        os.replace(files[i], files[i] + ".1")
                        handles[i] = open(files[i], "a")
                        sizes[i] = 0
                tick += 1
                if mode == "api" and tick % 10 == 0:
                    generation += 1
                    pods(api, names, generation, range((generation * 10) % PODS, (generation * 10) % PODS + 10))
                time.sleep(max(0.0, t0 + tick * TICK - time.monotonic()))
            wrote_for = time.monotonic() - t0
            for h in handles:
                h.close()
            deadline = time.monotonic() + 120
            while received(port) < start_lines + written and time.monotonic() < deadline:
                time.sleep(0.2)
            got = received(port) - start_lines
            cached = metric(port, r"logferry_kubernetes_pods\{[^}]*\}")
            cpu = proc_cpu(router.pid) - cpu0
            rss = proc_hwm_mib(router.pid)
        finally:
            router.send_signal(signal.SIGTERM)
            _, err = router.communicate(timeout=60)
        if got < written:
            sys.stderr.write(err[-4000:])
            sys.exit(f"{mode}: the router delivered {got:,.0f} of {written:,} lines")
        if mode == "api" and cached != PODS:
            sys.exit(f"api: {cached:.0f} pods cached, expected this node's {PODS}: the run would not measure the watch")
    return {"mode": mode, "lines": written, "rate": written / wrote_for, "cpu": cpu, "rss": rss, "pods_cached": cached}


def main() -> None:
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} not found: cargo build --release -p logferry")
    results = [run("path"), run("api")]
    for r in results:
        print(f"{r['mode']:5s} {r['lines']:,} lines at {r['rate']:,.0f}/s over {PODS} rotating files: "
              f"{r['cpu']:.2f} CPU-s, {1e6 * r['cpu'] / r['lines']:.2f} us CPU per line, peak RSS {r['rss']:.1f} MiB")
    path, api = results
    print(f"watch cost: CPU per line {100 * (api['cpu'] / api['lines'] / (path['cpu'] / path['lines']) - 1):+.1f}%, "
          f"peak RSS {api['rss'] - path['rss']:+.1f} MiB")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
