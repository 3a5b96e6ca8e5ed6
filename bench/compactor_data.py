"""Generates an hour of router-shaped gzip NDJSON objects for bench/compactor.sh.

`compactor_data.py ROOT OBJECTS MB_PER_OBJECT` writes ROOT/logs/2026/12/03/14/<task>/<n>.ndjson.gz:
records like the router's S3 objects (@timestamp in that hour, level, msg, request and trace
ids, latency, ECS fields, a kubernetes object with labels), gzip level 6 as the s3 sink writes.
"""

import gzip
import os
import random
import sys

root, objects, mb = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rnd = random.Random(16)
levels = ["info"] * 7 + ["warn", "error", "debug"]
msgs = ["request completed", "cache miss for key", "payment authorised", "upstream timeout after retries",
        "user signed in", "connection returned to pool", "slow query on orders", "retrying publish to queue"]
tasks = ["%032x" % rnd.getrandbits(128) for _ in range(40)]
apps = ["web", "worker", "api", "cron"]
per_object = int(mb * 1000 * 1000)
base = os.path.join(root, "logs", "2026", "12", "03", "14")
ms = 0
for n in range(objects):
    task = tasks[n % len(tasks)]
    app = apps[n % len(apps)]
    head = ('"ecs_cluster":"prod","ecs_task_arn":"arn:aws:ecs:us-east-1:123456789012:task/prod/%s",'
            '"ecs_task_id":"%s","ecs_task_definition":"%s:42","container_name":"%s","launch_type":"FARGATE",'
            '"availability_zone":"us-east-1a","kubernetes":{"namespace_name":"shop","pod_name":"%s-%d",'
            '"labels":{"app":"%s","team":"t%d"}}}\n' % (task, task, app, app, app, n % 8, app, n % 5))
    lines, size = [], 0
    while size < per_object:
        ms += 1
        t = ms * 3600000 // (objects * max(1, per_object // 330))
        ts = "2026-12-03T14:%02d:%02d.%03dZ" % ((t // 60000) % 60, (t // 1000) % 60, t % 1000)
        line = ('{"@timestamp":"%s","level":"%s","msg":"%s user=%d","request_id":"%08x-%04x-%04x",'
                '"trace_id":"%016x","latency_ms":%.1f,' % (ts, rnd.choice(levels), rnd.choice(msgs),
                rnd.randint(1, 99999), rnd.getrandbits(32), rnd.getrandbits(16), rnd.getrandbits(16),
                rnd.getrandbits(64), rnd.random() * 250)) + head
        lines.append(line)
        size += len(line)
    d = os.path.join(base, task)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "%05d.ndjson.gz" % n), "wb") as f:
        f.write(gzip.compress("".join(lines).encode(), compresslevel=6))
