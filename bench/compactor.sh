#!/usr/bin/env bash
# Compactor benchmark: one hour of 2 GB of gzip NDJSON in 2,000 objects (the shape of 2,000
# tasks flushing once) compacted to Parquet by the Lambda's code (logferry_indexer::compact)
# over a local directory (examples/compact_dir.rs: no network in the measurement). Reports
# MB/s of NDJSON per CPU-second, peak RSS, objects in and out, Parquet bytes against the gzip
# NDJSON, and, for one DuckDB query on two columns, the bytes it must read from each.
#   bench/compactor.sh                 # 2000 objects x 1 MB
#   OBJECTS=200 MB_PER_OBJECT=1 bench/compactor.sh
# Data is generated once under bench/data/ (ignored by git). Not a test: figures vary with
# the machine. Needs python3 (pyarrow and duckdb are installed in a venv under the cache).
set -euo pipefail
cd "$(dirname "$0")/.."
OBJECTS=${OBJECTS:-2000}
MB_PER_OBJECT=${MB_PER_OBJECT:-1}
cache=${LOGFERRY_CACHE:-$HOME/.cache/logferry}
root=bench/data/compact-${OBJECTS}x${MB_PER_OBJECT}MB
prefix=logs/2026/12/03/14/
# The data's own fields as declared columns, as its deployment would declare them
# (COMPACT_COLUMNS= for none: everything outside the fixed columns stays in `rest`).
export COMPACT_COLUMNS=${COMPACT_COLUMNS-request_id:string,trace_id:string,latency_ms:double}

cargo build --release -p logferry-indexer --no-default-features --features parquet --example compact_dir --quiet
bin=${CARGO_TARGET_DIR:-target}/release/examples/compact_dir

# pyarrow and duckdb: the LocalStack venv has them; else a venv of the benchmark's own.
py=$cache/localstack-venv/bin/python
if ! "$py" -c 'import pyarrow, duckdb' 2>/dev/null; then
  py=$cache/bench-venv/bin/python
  if ! "$py" -c 'import pyarrow, duckdb' 2>/dev/null; then
    echo "bench/compactor.sh: installing pyarrow and duckdb into $cache/bench-venv" >&2
    python3 -m venv "$cache/bench-venv"
    "$py" -m pip install --quiet --disable-pip-version-check pyarrow duckdb
  fi
fi

if [[ ! -d $root/logs ]]; then
  echo "bench/compactor.sh: generating $root ($OBJECTS objects of $MB_PER_OBJECT MB)" >&2
  rm -rf "$root.tmp"
  python3 bench/compactor_data.py "$root.tmp" "$OBJECTS" "$MB_PER_OBJECT"
  mv "$root.tmp" "$root"
fi
rm -rf "$root/compacted" "$root/_quarantine" "$root/.uploads"
sync
timings=$(mktemp)
trap 'rm -f "$timings"' EXIT
summary=$(/usr/bin/time -v -o "$timings" "$bin" "$root" "$prefix" 2026-12-03T14)
"$py" - "$root" "$summary" "$timings" <<'PY'
import glob, json, os, re, sys, time
import duckdb
import pyarrow.parquet as pq

root, summary, timings = sys.argv[1], json.loads(sys.argv[2]), open(sys.argv[3]).read()
num = lambda pat: float(re.search(pat, timings).group(1))  # noqa: E731
cpu = num(r"User time \(seconds\): ([\d.]+)") + num(r"System time \(seconds\): ([\d.]+)")
rss = num(r"Maximum resident set size \(kbytes\): (\d+)") / 1024
wall = timings.split("Elapsed (wall clock) time (h:mm:ss or m:ss): ")[1].split("\n")[0]
mb = summary["uncompressed_bytes"] / 1e6
out_dir = os.path.join(root, "compacted")
written = [p for p in glob.glob(out_dir + "/**/*", recursive=True) if os.path.isfile(p)]
parquet = [p for p in written if p.endswith(".parquet")]
inputs = glob.glob(os.path.join(root, "logs", "**", "*.ndjson.gz"), recursive=True)
gz_bytes = sum(os.path.getsize(p) for p in inputs)
pq_bytes = sum(os.path.getsize(p) for p in parquet)
row_groups = sum(pq.ParquetFile(p).metadata.num_row_groups for p in parquet)
print(f"compactor: {summary['objects']} objects, {summary['records']:,} records, {mb:,.0f} MB of NDJSON "
      f"({gz_bytes / 1e6:,.0f} MB gzip) in {cpu:.1f} CPU-s (wall {wall})")
print(f"  throughput:  {mb / cpu:,.0f} MB/s of NDJSON per CPU-second")
print(f"  peak RSS:    {rss:,.0f} MiB")
print(f"  objects:     {len(inputs):,} in -> {len(parquet)} Parquet files ({row_groups} row groups), "
      f"{len(written)} objects written with manifests and markers: {len(inputs) / max(1, len(written)):,.0f}x fewer")
print(f"  size:        {pq_bytes / 1e6:,.1f} MB Parquet = {100 * pq_bytes / gz_bytes:.1f}% of the gzip NDJSON "
      f"(declared columns: {os.environ.get('COMPACT_COLUMNS') or 'none'})")

# One query on two columns, both ways. NDJSON: every gzip byte is read; Parquet: the two
# column chunks and the footers (what a reader fetches from S3 by range).
task = "%032x"
con = duckdb.connect()
q_pq = ("SELECT level, count(*) FROM read_parquet(?, hive_partitioning = true) "
        "WHERE ecs_task_id = ? GROUP BY level ORDER BY level")
task_id = con.execute(f"SELECT any_value(ecs_task_id) FROM read_parquet('{parquet[0]}')").fetchone()[0]
t0 = time.time()
got_pq = con.execute(q_pq, [out_dir + "/**/*.parquet", task_id]).fetchall()
t_pq = time.time() - t0
t0 = time.time()
got_nd = con.execute(
    "SELECT level, count(*) FROM read_ndjson(?, columns = {'level': 'VARCHAR', 'ecs_task_id': 'VARCHAR'}) "
    "WHERE ecs_task_id = ? GROUP BY level ORDER BY level",
    [os.path.join(root, "logs", "**", "*.ndjson.gz"), task_id],
).fetchall()
t_nd = time.time() - t0
assert got_pq == got_nd, (got_pq, got_nd)
read_pq = 0
for p in parquet:
    md = pq.ParquetFile(p).metadata
    read_pq += md.serialized_size + 8
    for rg in range(md.num_row_groups):
        for c in range(md.num_columns):
            col = md.row_group(rg).column(c)
            if col.path_in_schema in ("level", "ecs_task_id"):
                read_pq += col.total_compressed_size
print(f"  query:       level counts of one task (DuckDB, same answer both ways): NDJSON reads "
      f"{gz_bytes / 1e6:,.0f} MB in {t_nd:.1f} s, Parquet {read_pq / 1e6:,.2f} MB in {t_pq:.2f} s "
      f"= {100 * read_pq / gz_bytes:.2f}% of the bytes")
PY
