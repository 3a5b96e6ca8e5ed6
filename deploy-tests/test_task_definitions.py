"""task-definitions/: each file is valid input for `aws ecs register-task-definition
--cli-input-json` (botocore's model of RegisterTaskDefinition), keeps the sidecar contract,
and its inline LOGFERRY_CONFIG passes `logferry validate`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import REPO, assert_valid

# firelens.json is a FireLens router, not a sidecar: test_firelens_task_definition.py checks it.
TASK_DEFINITIONS = sorted(p for p in (REPO / "task-definitions").glob("*.json") if p.name != "firelens.json")
ROUTER = "logferry"
HEALTHCHECK = ["CMD", "/usr/local/bin/logferry", "healthcheck"]


def rel(p: Path) -> str:
    return str(p.relative_to(REPO))


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def containers(doc: dict) -> tuple[dict, list[dict]]:
    (router,) = [c for c in doc["containerDefinitions"] if c["name"] == ROUTER]
    return router, [c for c in doc["containerDefinitions"] if c["name"] != ROUTER]


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("environment", [])}


@pytest.fixture(scope="module")
def register_input_shape():
    import botocore.session

    model = botocore.session.get_session().get_service_model("ecs")
    return model.operation_model("RegisterTaskDefinition").input_shape


def test_there_are_both_task_definitions():
    assert {p.name for p in TASK_DEFINITIONS} >= {"fargate-sidecar.json", "ec2-sidecar-instance-profile.json"}


@pytest.mark.parametrize("path", TASK_DEFINITIONS, ids=rel)
def test_valid_register_task_definition_input(path, register_input_shape):
    from botocore.validate import ParamValidator

    report = ParamValidator().validate(load(path), register_input_shape)
    assert not report.has_errors(), f"{rel(path)}:\n{report.generate_report()}"


def test_the_model_check_catches_a_misspelt_key(register_input_shape):
    from botocore.validate import ParamValidator

    doc = load(TASK_DEFINITIONS[0])
    doc["containerDefinitions"][0]["memoryReservaton"] = 64
    assert ParamValidator().validate(doc, register_input_shape).has_errors()


@pytest.mark.parametrize("path", TASK_DEFINITIONS, ids=rel)
def test_inline_config_passes_logferry_validate(path, validate):
    router, _ = containers(load(path))
    env = env_of(router)
    # The config's ${VAR}s come from the container's own environment.
    result = validate(env["LOGFERRY_CONFIG"], path.stem + ".toml", {k: v for k, v in env.items() if k != "LOGFERRY_CONFIG"})
    assert_valid(result, f"{rel(path)} LOGFERRY_CONFIG")
    assert "sink archive (s3" in result.stdout


@pytest.mark.parametrize("path", TASK_DEFINITIONS, ids=rel)
def test_sidecar_contract(path):
    doc = load(path)
    router, apps = containers(doc)
    config = env_of(router)["LOGFERRY_CONFIG"]
    # Non-essential, started first, stopped last: every app waits for a HEALTHY router.
    assert router["essential"] is False
    for app in apps:
        assert {"containerName": ROUTER, "condition": "HEALTHY"} in app["dependsOn"], app["name"]
    # Health check without a shell or curl, against the config's API address.
    assert router["healthCheck"]["command"] == HEALTHCHECK
    assert re.search(r'^address = "127\.0\.0\.1:2020"$', config, re.M), "the healthcheck's default URL is :2020"
    # Config inline, no file mounted; runs the pipeline from it.
    assert router["command"] == ["run"]
    # Sizing and hardening.
    assert (router["cpu"], router["memoryReservation"], router["memory"]) == (64, 64, 128)
    assert router["readonlyRootFilesystem"] is True
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", router["user"]), "non-root numeric user"
    assert router["linuxParameters"]["capabilities"]["drop"] == ["ALL"]
    # Volumes: the log dir the config tails is mounted read-only in the router and writable
    # in the app; data_dir is a writable volume.
    mounts = {m["containerPath"]: m for m in router["mountPoints"]}
    volumes = {v["name"] for v in doc["volumes"]}
    (include,) = re.findall(r'^include = \["([^"]+)"\]', config, re.M)
    log_dir = str(Path(include).parent)
    assert mounts[log_dir]["readOnly"] is True and mounts[log_dir]["sourceVolume"] in volumes
    for app in apps:
        assert {"sourceVolume": mounts[log_dir]["sourceVolume"], "containerPath": log_dir, "readOnly": False} in app["mountPoints"]
    (data_dir,) = re.findall(r'^data_dir = "([^"]+)"', config, re.M)
    assert mounts[data_dir]["readOnly"] is False and mounts[data_dir]["sourceVolume"] in volumes
    # Records belong to the app, named in the enrichment.
    (app_name,) = re.findall(r'^ecs_container = "([^"]+)"', config, re.M)
    assert app_name in {a["name"] for a in apps}


def test_fargate_uses_the_task_role_and_ephemeral_volumes():
    doc = load(REPO / "task-definitions" / "fargate-sidecar.json")
    assert doc["requiresCompatibilities"] == ["FARGATE"] and doc["networkMode"] == "awsvpc"
    assert doc["taskRoleArn"] and doc["executionRoleArn"]
    assert all("host" not in v and "dockerVolumeConfiguration" not in v for v in doc["volumes"])
    router, _ = containers(doc)
    assert re.search(r"^ec2 = false$", env_of(router)["LOGFERRY_CONFIG"], re.M), "Fargate has no IMDS"


def test_ec2_uses_the_instance_profile_and_a_bind_mount():
    doc = load(REPO / "task-definitions" / "ec2-sidecar-instance-profile.json")
    assert doc["requiresCompatibilities"] == ["EC2"]
    # No task role: the SDK falls through to the instance profile (IMDSv2).
    assert "taskRoleArn" not in doc
    router, _ = containers(doc)
    log_volume = next(m["sourceVolume"] for m in router["mountPoints"] if m["readOnly"])
    assert "host" in next(v for v in doc["volumes"] if v["name"] == log_volume)
    assert re.search(r"^ec2 = true$", env_of(router)["LOGFERRY_CONFIG"], re.M)
