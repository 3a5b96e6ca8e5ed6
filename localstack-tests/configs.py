"""Router configs the scenarios run with, written out as TOML text.

Kept as plain text templates (not generated from dicts) so that each test shows the config a
user would write, in the README's contract: a `file` source over the shared log volume, the
`enrich` transform, and one sink. The `s3` sink options are the contract the coming sink is
tested against; see test_s3_sink.py.
"""

from __future__ import annotations

import json
from pathlib import Path


def q(value: object) -> str:
    """A TOML basic string (JSON string escapes are valid TOML)."""
    return json.dumps(str(value))


def pipeline(
    tmp: Path,
    *,
    ecs: str = "false",
    ec2: str = "false",
    kubernetes: str = "false",
    labels_file: Path | None = None,
) -> str:
    """`[global]`, the file source over `<tmp>/logs/*.log` and the enrich transform `meta`.

    Detection switches are explicit (`true`/`false`, never `auto`) so a scenario never
    depends on what the machine running it happens to be.
    """
    labels = f"labels_file = {q(labels_file)}\n" if labels_file else ""
    return f"""\
[global]
data_dir = {q(tmp / "data")}

[sources.app]
type = "file"
include = [{q(tmp / "logs" / "*.log")}]
parser = "json"
glob_interval = "250ms"

[transforms.meta]
type = "enrich"
inputs = ["app"]
ecs = {ecs}
ec2 = {ec2}
kubernetes = {kubernetes}
{labels}"""


def file_sink(out: Path, key_prefix: str = "{ecs_cluster}/%Y/%m/%d/%H/%M/") -> str:
    return f"""
[sinks.out]
type = "file"
inputs = ["meta"]
path = {q(out)}
key_prefix = {q(key_prefix)}
compression = "gzip"
flush_interval = "1s"
"""


S3_KEY_PREFIX = "logs/{ecs_cluster}/{ecs_task_id}/%Y/%m/%d/%H/%M/"


def s3_sink(
    bucket: str,
    endpoint: str,
    *,
    name: str = "archive",
    inputs: str = "meta",
    key_prefix: str = S3_KEY_PREFIX,
) -> str:
    """The `s3` sink as the scenarios expect it (path-style addressing for LocalStack)."""
    return f"""
[sinks.{name}]
type = "s3"
inputs = [{q(inputs)}]
bucket = {q(bucket)}
key_prefix = {q(key_prefix)}
compression = "gzip"
flush_interval = "1s"
max_object_size = "50MiB"
region = "us-east-1"
endpoint_url = {q(endpoint)}
force_path_style = true
"""
