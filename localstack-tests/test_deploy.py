"""What ships is what is tested: the router runs with the exact environment, command and
config of `task-definitions/*.json` (Fargate with task credentials, EC2 with the instance
profile behind IMDSv2), of the `eks/` manifests (ConfigMap + the
router container's env), and of the config `terraform/examples/ecs-fargate` renders into
LOGFERRY_CONFIG (S3 and CloudWatch Logs), against LocalStack and the metadata emulators.

Overrides, and only these, each because the test is not inside a task or a pod:
- paths: the shared log volume (`/var/log/app`), the data volume (`/var/lib/logferry`), and
  for EKS the ConfigMap mount (`/etc/logferry/logferry.toml`) and the downward-API labels file
  (`/etc/podinfo/labels`) become directories under the test's tmp dir;
- the API port: `127.0.0.1:2020` becomes a free loopback port (other routers may run on this
  machine); the container health check gets the same URL through `--url`;
- `LOGFERRY_BUCKET`: the test's throwaway bucket; in the Terraform-rendered config the bucket,
  the log group (created first, as Terraform would) and the region (`us-east-1`, where the
  test's LocalStack clients are) are the test's;
- what the platform injects, played by the test: ECS sets `ECS_CONTAINER_METADATA_URI_V4`
  (the ECS v4 emulator); Fargate also `AWS_REGION` and task-role credentials (here static
  dummy keys, as LocalStack accepts any); on EC2 the instance profile is the IMDSv2 emulator
  (`AWS_EC2_METADATA_SERVICE_ENDPOINT`); Kubernetes resolves the downward-API `fieldRef`s (the test's pod
  values) and writes the labels file from the pod template's labels; the EKS node's instance
  profile is the IMDSv2 emulator (`AWS_EC2_METADATA_SERVICE_ENDPOINT`);
- `AWS_ENDPOINT_URL`: LocalStack instead of the AWS endpoints.
Every text override must match exactly once, so a changed manifest fails here instead of
silently testing something else.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

import workload
from conftest import DUMMY_CREDENTIALS, REGION, REPO, unique
from emulators import EcsMetadataEmulator
from test_cloudwatch_sink import read_stream
from workload import AppWriter

TASK_DEFINITION = REPO / "task-definitions" / "fargate-sidecar.json"
TASK_DEFINITION_EC2 = REPO / "task-definitions" / "ec2-sidecar-instance-profile.json"
EKS = REPO / "eks"
ROUTER = "logferry"
HOUR_KEY = r"\d{4}/\d{2}/\d{2}/\d{2}/[^/]+\.ndjson\.gz"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def replace_once(text: str, old: str, new: str, what: str) -> str:
    n = text.count(old)
    assert n == 1, f"override of {what}: {old!r} occurs {n} times in the shipped config"
    return text.replace(old, new)


def q(value: object) -> str:
    return json.dumps(str(value))


def override_paths(config: str, tmp: Path, port: int) -> str:
    config = replace_once(config, '"/var/log/app/*.log"', q(tmp / "logs" / "*.log"), "the log volume")
    config = replace_once(config, 'data_dir = "/var/lib/logferry"', f"data_dir = {q(tmp / 'data')}", "the data volume")
    return replace_once(config, '"127.0.0.1:2020"', f'"127.0.0.1:{port}"', "the API port")


def received(port: int) -> float:
    """Lines the file source has read, from /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith("logferry_component_received_events_total") and 'component="app"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def read_everything_then_stop(running, app: AppWriter, port: int) -> None:
    """Waits until the router has read every line (the shipped flush_interval is 60 s, so the
    objects are written at shutdown), then SIGTERM: it must flush and exit 0."""
    want = len(app.expected)

    def all_read():
        if not running.alive():
            raise AssertionError(f"the router exited early ({running.proc.returncode}):\n{running.stderr[-4000:]}")
        return received(port) >= want

    workload.poll(all_read, timeout=90, what=f"the router to read {want} lines", interval=0.25)
    stderr = running.terminate()
    assert running.returncode == 0, stderr[-4000:]
    app.close()


def assert_hourly_keys(objects, prefix: str, since: datetime, until: datetime) -> None:
    for obj in objects:
        m = re.fullmatch(re.escape(prefix) + HOUR_KEY, obj.key)
        assert m, f"key {obj.key!r} is not {prefix}YYYY/MM/DD/HH/<name>.ndjson.gz"
        y, mo, d, h = (int(x) for x in obj.key[len(prefix):].split("/")[:4])
        hour = datetime(y, mo, d, h, tzinfo=timezone.utc)
        assert since.replace(minute=0, second=0, microsecond=0) <= hour <= until
        for r in obj.records:
            ts = workload.parse_ts(r["@timestamp"])
            assert ts.replace(minute=0, second=0, microsecond=0) == hour, (obj.key, r["@timestamp"])
        workload.assert_s3_object_contract(obj)


def assert_ecs_delivery(s3, bucket: str, app: AppWriter, expected_ecs: dict[str, str], environment: str,
                        started_at: datetime) -> list[dict]:
    """Every line once in S3, under logs/<cluster>/<hour>/, with the ECS fields."""
    objects = workload.S3Objects(s3, bucket).list()
    records = workload.assert_exactly_once(objects, app.expected)
    assert_hourly_keys(objects, f"logs/{expected_ecs['ecs_cluster']}/", started_at, datetime.now(timezone.utc))
    workload.assert_fields(records, {**expected_ecs, "environment": environment}, "ECS")
    return records


def run_task_definition(path: Path, platform_env: dict[str, str], launch_type: str, router, s3, bucket, endpoint,
                        tmp_path, started_at, logferry_bin) -> tuple[list[dict], dict[str, str]]:
    """Runs the router container of the task definition at `path` as ECS would, with the
    app's writes; returns the records in S3 and the ECS fields the emulator implies."""
    doc = json.loads(path.read_text())
    (container,) = [c for c in doc["containerDefinitions"] if c["name"] == ROUTER]
    (app_def,) = [c for c in doc["containerDefinitions"] if c["name"] != ROUTER]
    env = {e["name"]: e["value"] for e in container["environment"]}
    port = free_port()
    env["LOGFERRY_CONFIG"] = override_paths(env["LOGFERRY_CONFIG"], tmp_path, port)
    env["LOGFERRY_BUCKET"] = bucket
    with EcsMetadataEmulator(
        family=doc["family"], router_container=ROUTER, app_container=app_def["name"], region=REGION,
        availability_zone=f"{REGION}a", launch_type=launch_type,
    ) as ecs:
        env.update({**platform_env, "ECS_CONTAINER_METADATA_URI_V4": ecs.uri, "AWS_ENDPOINT_URL": endpoint})
        app = AppWriter(tmp_path / "logs")
        app.write_json(150)
        app.write_text(50)
        # The container's own command: `run`, config from LOGFERRY_CONFIG.
        running = router.start_args(*container["command"], env=env)
        workload.wait_for_open(running, app.json_path)
        # The container health check, as ECS runs it (plus --url for the moved port).
        check = container["healthCheck"]["command"]
        assert check[0] == "CMD" and check[1].endswith("/logferry")
        health = subprocess.run([str(logferry_bin), *check[2:], "--url", f"http://127.0.0.1:{port}/healthz"],
                                capture_output=True, text=True, timeout=30)
        assert health.returncode == 0, health.stderr
        app.write_json(250)
        app.write_text(100)
        read_everything_then_stop(running, app, port)
        expected_ecs = ecs.expected_fields()

    records = assert_ecs_delivery(s3, bucket, app, expected_ecs, "production", started_at)
    assert expected_ecs["ecs_task_definition"].startswith(doc["family"] + ":")
    return records, expected_ecs


def test_deploy_ecs_fargate_task_definition(router, s3, bucket, endpoint, tmp_path, started_at, logferry_bin):
    # Fargate injects AWS_REGION and the task role's credentials (here: static dummy keys).
    platform = {**DUMMY_CREDENTIALS, "AWS_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true"}
    run_task_definition(TASK_DEFINITION, platform, "FARGATE", router, s3, bucket, endpoint, tmp_path, started_at,
                        logferry_bin)


def test_deploy_ecs_ec2_task_definition_with_instance_profile(router, imds, s3, bucket, endpoint, tmp_path, started_at,
                                                             logferry_bin):
    # EC2 launch type, no task role: credentials and region come from the instance (IMDSv2).
    platform = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url}
    records, _ = run_task_definition(TASK_DEFINITION_EC2, platform, "EC2", router, s3, bucket, endpoint, tmp_path,
                                     started_at, logferry_bin)
    assert imds.credentials_served(), f"the router never used the instance profile: {imds.paths()}"
    workload.assert_fields(records, imds.expected_fields(), "EC2")


def rendered_terraform_config(example: str) -> str:
    """The example's LOGFERRY_CONFIG, rendered by deploy-tests/render.py (its venv is made by
    deploy-tests/run.sh, which scripts/test.sh runs before this suite)."""
    venv = Path(os.environ.get("LOGFERRY_CACHE", Path.home() / ".cache" / "logferry")) / "deploy-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        pytest.skip(f"{venv} is missing: run deploy-tests/run.sh once (it renders the Terraform config)")
    done = subprocess.run([str(python), str(REPO / "deploy-tests" / "render.py"), example],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def override_value(config: str, key: str, new: str, what: str) -> str:
    """`key = "..."` (one line) gets the value `new`."""
    lines = re.findall(rf'^{re.escape(key)} = "[^"]*"$', config, re.M)
    assert len(lines) == 1, f"override of {what}: {key} occurs {len(lines)} times"
    return config.replace(lines[0], f"{key} = {q(new)}")


def test_deploy_terraform_ecs_fargate_config_to_s3_and_cloudwatch(router, s3, logs, bucket, endpoint, tmp_path, started_at):
    config = rendered_terraform_config("ecs-fargate")
    port = free_port()
    config = override_paths(config, tmp_path, port)
    config = override_value(config, "bucket", bucket, "the bucket")
    group = unique("/logferry/test")
    config = override_value(config, "log_group", group, "the log group")
    regions = set(re.findall(r'^region = "([^"]+)"$', config, re.M))
    assert len(regions) == 1, regions
    config = config.replace(f'region = "{regions.pop()}"', f'region = "{REGION}"')
    # Terraform (logferry-destinations) creates the group; the sink only adds streams.
    logs.create_log_group(logGroupName=group)
    with EcsMetadataEmulator(router_container=ROUTER, region=REGION, availability_zone=f"{REGION}a") as ecs:
        env = {
            "LOGFERRY_CONFIG": config,
            **DUMMY_CREDENTIALS,
            "ECS_CONTAINER_METADATA_URI_V4": ecs.uri,
            "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        app = AppWriter(tmp_path / "logs")
        app.write_json(200)
        app.write_text(50)
        # The module's container command: `run`, config from LOGFERRY_CONFIG.
        running = router.start_args("run", env=env)
        workload.wait_for_open(running, app.json_path)
        app.write_json(150)
        read_everything_then_stop(running, app, port)
        expected_ecs = ecs.expected_fields()

    assert_ecs_delivery(s3, bucket, app, expected_ecs, "demo", started_at)

    stream = f"{expected_ecs['container_name']}/{expected_ecs['ecs_task_id']}"
    streams = [s["logStreamName"] for s in logs.describe_log_streams(logGroupName=group)["logStreams"]]
    assert streams == [stream]
    events = read_stream(logs, group, stream)
    ids = [workload.record_id(json.loads(e["message"])) for e in events]
    assert sorted(ids) == sorted(app.expected), f"{len(ids)} events for {len(app.expected)} lines"


def pod_values() -> dict[str, str]:
    return {
        "metadata.name": "web-7d4b9c8f5-x2x9z",
        "metadata.namespace": "shop",
        "metadata.uid": "0f8e5d2c-3b1a-4c9d-8e7f-6a5b4c3d2e1f",
        "spec.nodeName": "ip-10-0-1-23.ec2.internal",
        "status.podIP": "10.0.1.57",
    }


def kubelet_env(container: dict, pod: dict[str, str]) -> dict[str, str]:
    """The container's env as the kubelet builds it: literal values and downward-API fieldRefs."""
    env = {}
    for e in container["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            env[e["name"]] = pod[e["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def labels_file(labels: dict[str, str]) -> str:
    """The downward API's labels file: sorted `key="value"` lines, Go-quoted values."""
    return "\n".join(f"{k}={json.dumps(v)}" for k, v in sorted(labels.items())) + "\n"


def test_deploy_eks_native_sidecar_manifests(router, imds, s3, bucket, endpoint, tmp_path, started_at):
    (deployment,) = yaml.safe_load_all((EKS / "deployment.yaml").read_text())
    (configmap,) = yaml.safe_load_all((EKS / "configmap.yaml").read_text())
    template = deployment["spec"]["template"]
    (container,) = [c for c in template["spec"]["initContainers"] if c["name"] == ROUTER]
    pod = pod_values()
    env = kubelet_env(container, pod)
    env["LOGFERRY_BUCKET"] = bucket
    # The node: instance-profile credentials (and region) from IMDSv2; LocalStack for AWS.
    env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = imds.url
    env["AWS_ENDPOINT_URL"] = endpoint
    assert not any(k.startswith("AWS_") for k in env if k not in ("AWS_EC2_METADATA_SERVICE_ENDPOINT", "AWS_ENDPOINT_URL"))

    labels = tmp_path / "podinfo" / "labels"
    labels.parent.mkdir()
    labels.write_text(labels_file(template["metadata"]["labels"]))
    port = free_port()
    config = override_paths(configmap["data"]["logferry.toml"], tmp_path, port)
    config = replace_once(config, '"/etc/podinfo/labels"', q(labels), "the labels file")
    config_path = router.write_config(config)
    args = list(container["args"])
    i = args.index("--config")
    assert args[i + 1] == "/etc/logferry/logferry.toml"
    args[i + 1] = str(config_path)

    app = AppWriter(tmp_path / "logs")
    app.write_json(150)
    app.write_text(50)
    running = router.start_args(*args, env=env)
    workload.wait_for_open(running, app.json_path)
    app.write_json(200)
    app.rotate_json()
    app.write_json(100)
    read_everything_then_stop(running, app, port)

    assert imds.credentials_served(), f"the router never used the instance profile: {imds.paths()}"
    objects = workload.S3Objects(s3, bucket).list()
    records = workload.assert_exactly_once(objects, app.expected)
    assert_hourly_keys(objects, f"logs/{pod['metadata.namespace']}/", started_at, datetime.now(timezone.utc))
    workload.assert_fields(records, imds.expected_fields(), "EC2")
    expected_k8s = {
        "pod_name": pod["metadata.name"],
        "namespace_name": pod["metadata.namespace"],
        "pod_id": pod["metadata.uid"],
        "host": pod["spec.nodeName"],
        "pod_ip": pod["status.podIP"],
        "container_name": env["CONTAINER_NAME"],
        "labels": template["metadata"]["labels"],
    }
    workload.assert_fields(records, {"kubernetes": expected_k8s}, "Kubernetes")
