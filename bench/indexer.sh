#!/usr/bin/env bash
# Indexer benchmark: index one ~200 MB (uncompressed) gzip NDJSON object from a local file,
# as the Lambda indexes an S3 object (same code: logferry_indexer::index::index_stream), and
# report MB/s (uncompressed) per CPU-second and peak RSS (VmHWM via /usr/bin/time -v).
#   bench/indexer.sh               # 200 MB
#   MB=50 bench/indexer.sh
# Data is generated once under bench/data/ (ignored by git): records shaped like the router's
# S3 objects (@timestamp, level, msg, request_id, trace_id, ECS fields, a kubernetes object).
# Not a test: figures vary with the machine. Exits 1 if peak RSS reaches 64 MiB (the budget).
set -euo pipefail
cd "$(dirname "$0")/.."
MB=${MB:-200}
data=bench/data/indexer-${MB}MB.ndjson.gz
cargo build --release -p logferry-indexer --no-default-features --example index_file --quiet
bin=${CARGO_TARGET_DIR:-target}/release/examples/index_file
mkdir -p bench/data
if [[ ! -f $data ]]; then
  echo "bench/indexer.sh: generating $data" >&2
  python3 - "$MB" "$data.tmp" <<'PY'
import gzip, random, sys
mb, out = int(sys.argv[1]), sys.argv[2]
rnd = random.Random(7)
levels = ["info"] * 7 + ["warn", "error", "debug"]
msgs = ["request completed", "cache miss for key", "payment authorised", "upstream timeout after retries",
        "user signed in", "connection returned to pool", "slow query on orders", "retrying publish to queue"]
tasks = ["%032x" % rnd.getrandbits(128) for _ in range(4)]
target, written, i = mb * 1000 * 1000, 0, 0
with gzip.open(out, "wt", compresslevel=2) as f:
    buf = []
    while written < target:
        ms = i * 5
        ts = "2026-11-25T%02d:%02d:%02d.%03dZ" % ((ms // 3600000) % 24, (ms // 60000) % 60, (ms // 1000) % 60, ms % 1000)
        task = tasks[i % 4]
        line = ('{"@timestamp":"%s","level":"%s","msg":"%s user=%d","request_id":"%08x-%04x-%04x","trace_id":"%016x",'
                '"latency_ms":%.1f,"ecs_cluster":"prod","ecs_task_id":"%s","container_name":"app",'
                '"kubernetes":{"namespace_name":"shop","pod_name":"web-%d"}}\n'
                % (ts, rnd.choice(levels), rnd.choice(msgs), rnd.randint(1, 99999), rnd.getrandbits(32),
                   rnd.getrandbits(16), rnd.getrandbits(16), rnd.getrandbits(64), rnd.random() * 250, task, i % 8))
        buf.append(line)
        written += len(line)
        i += 1
        if len(buf) >= 10000:
            f.write("".join(buf)); buf.clear()
    f.write("".join(buf))
PY
  mv "$data.tmp" "$data"
fi
timings=$(mktemp)
trap 'rm -f "$timings"' EXIT
stats=$(/usr/bin/time -v -o "$timings" "$bin" "$data")
python3 - "$stats" "$timings" <<'PY'
import json, re, sys
s = json.loads(sys.argv[1])
t = open(sys.argv[2]).read()
user = float(re.search(r"User time \(seconds\): ([\d.]+)", t).group(1))
sys_ = float(re.search(r"System time \(seconds\): ([\d.]+)", t).group(1))
rss_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1))
mb = s["uncompressed_bytes"] / 1e6
cpu = user + sys_
print(f"indexed {s['records']:,} records, {mb:.1f} MB uncompressed ({s['stored_bytes'] / 1e6:.1f} MB gzip)")
print(f"wall {s['elapsed_s']:.2f} s, CPU {cpu:.2f} s (user {user:.2f}, sys {sys_:.2f})")
print(f"throughput: {mb / cpu:.1f} MB/s uncompressed per CPU-second ({mb / s['elapsed_s']:.1f} MB/s wall)")
print(f"peak RSS (VmHWM): {rss_kib / 1024:.1f} MiB (budget 64 MiB)")
print(f"token filter: {s['token_items']:,} distinct tokens, {s['filter_bits'] / 8 / 1024:.0f} KiB; "
      f"index document {s['index_document_bytes'] / 1024:.0f} KiB")
sys.exit(0 if rss_kib < 64 * 1024 else 1)
PY
