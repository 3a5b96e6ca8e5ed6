"""task-definitions/firelens.json: Logferry as the FireLens log router. Valid input for
RegisterTaskDefinition, and the Fluent Bit file ECS generates from it passes
`logferry validate --fluent-bit-config` with the app's logs routed to CloudWatch Logs."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import REPO, VALIDATE_TIMEOUT

PATH = REPO / "task-definitions" / "firelens.json"
ROUTER = "log_router"


def load() -> dict:
    return json.loads(PATH.read_text())


def firelens_config(doc: dict, include: str | None = None) -> str:
    """The file the ECS agent mounts at /fluent-bit/etc/fluent-bit.conf for this task
    (amazon-ecs-agent agent/taskresource/firelens/firelensconfig_unix.go, written by
    awslabs/go-config-generator-for-fluentd-and-fluentbit): forward inputs on the unix socket
    and on TCP (127.0.0.1 in awsvpc mode), the health-check tcp input, include/exclude grep
    filters, the ECS metadata record_modifier, the user's @INCLUDE, the health-check null
    output and one output per awsfirelens container, options in key order."""
    (router,) = [c for c in doc["containerDefinitions"] if "firelensConfiguration" in c]
    options = router["firelensConfiguration"].get("options", {})
    listen = "127.0.0.1" if doc.get("networkMode") == "awsvpc" else "0.0.0.0"
    out = [
        "",
        "[INPUT]\n    Name forward\n    unix_path /var/run/fluent.sock\n",
        f"[INPUT]\n    Name forward\n    Listen {listen}\n    Port 24224\n",
        "[INPUT]\n    Name tcp\n    Tag firelens-healthcheck\n    Listen 127.0.0.1\n    Port 8877\n",
    ]
    outputs = ["[OUTPUT]\n    Name null\n    Match firelens-healthcheck\n"]
    for c in doc["containerDefinitions"]:
        log = c.get("logConfiguration", {})
        if log.get("logDriver") != "awsfirelens":
            continue
        opts = dict(log.get("options", {}))
        tag = f"{c['name']}-firelens*"
        if "include-pattern" in opts:
            out.append(f"[FILTER]\n    Name   grep\n    Match {tag}\n    Regex  log {opts.pop('include-pattern')}\n")
        if "exclude-pattern" in opts:
            out.append(f"[FILTER]\n    Name   grep\n    Match {tag}\n    Exclude log {opts.pop('exclude-pattern')}\n")
        name = opts.pop("Name")
        lines = "".join(f"    {k} {v}\n" for k, v in sorted(opts.items()))
        outputs.append(f"[OUTPUT]\n    Name {name}\n    Match {tag}\n{lines}")
    if options.get("enable-ecs-log-metadata", "true") == "true":
        out.append(
            "[FILTER]\n    Name record_modifier\n    Match *\n"
            "    Record ecs_cluster prod\n"
            "    Record ecs_task_arn arn:aws:ecs:eu-west-1:123456789012:task/prod/0f9c6a4f2c7d4e3b9a1e5d8c7b6a5f4e\n"
            f"    Record ecs_task_definition {doc['family']}:1\n"
        )
    if include:
        out.append(f"@INCLUDE {include}\n")
    return "\n".join(out + outputs)


@pytest.fixture(scope="module")
def register_input_shape():
    import botocore.session

    model = botocore.session.get_session().get_service_model("ecs")
    return model.operation_model("RegisterTaskDefinition").input_shape


def validate_fb(logferry_bin, path):
    return subprocess.run(
        [str(logferry_bin), "validate", "--fluent-bit-config", str(path)],
        env={"PATH": "/usr/bin:/bin"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=VALIDATE_TIMEOUT,
    )


def test_valid_register_task_definition_input(register_input_shape):
    from botocore.validate import ParamValidator

    report = ParamValidator().validate(load(), register_input_shape)
    assert not report.has_errors(), report.generate_report()


def test_router_contract():
    doc = load()
    (router,) = [c for c in doc["containerDefinitions"] if c["name"] == ROUTER]
    apps = [c for c in doc["containerDefinitions"] if c["name"] != ROUTER]
    assert router["firelensConfiguration"] == {"type": "fluentbit", "options": {"enable-ecs-log-metadata": "true"}}
    assert router["command"] == ["run", "--fluent-bit-config", "/fluent-bit/etc/fluent-bit.conf"]
    # FireLens creates the socket in a root-owned directory: root, but with nothing else.
    assert router["user"] == "0"
    assert router["readonlyRootFilesystem"] is True
    assert router["linuxParameters"]["capabilities"]["drop"] == ["ALL"]
    assert {m["containerPath"] for m in router["mountPoints"]} == {"/var/lib/logferry"}
    # /healthz is served on 127.0.0.1:2020 by default under --fluent-bit-config, which is
    # `logferry healthcheck`'s default URL: the container health check needs no arguments.
    assert router["healthCheck"]["command"] == ["CMD", "/usr/local/bin/logferry", "healthcheck"]
    for app in apps:
        assert app["logConfiguration"]["logDriver"] == "awsfirelens"
        assert app["logConfiguration"]["options"]["Name"] == "cloudwatch_logs"


def test_the_generated_fluent_bit_config_passes_logferry_validate(logferry_bin, tmp_path):
    conf = tmp_path / "fluent-bit.conf"
    conf.write_text(firelens_config(load()))
    p = validate_fb(logferry_bin, conf)
    assert p.returncode == 0, f"{conf.read_text()}\n{p.stderr}"
    # The generated file enables no HTTP server; /healthz is on for the health check anyway.
    assert "api: http://127.0.0.1:2020" in p.stdout, p.stdout
    assert "source input1_forward (forward: unix /var/run/fluent.sock" in p.stdout
    assert "source input2_forward (forward: tcp 127.0.0.1:24224" in p.stdout
    assert "transform filter1_record_modifier (enrich: ecs Disabled, ec2 Disabled, kubernetes Disabled, 3 static field(s))" in p.stdout
    assert "sink output2_cloudwatch_logs (cloudwatch_logs: group /ecs/logferry-firelens, stream app-{tag}, create_missing true, timestamp_key (none)) <- output2_cloudwatch_logs_match" in p.stdout


def test_with_a_users_file_enabling_the_api(logferry_bin, tmp_path):
    (tmp_path / "extra.conf").write_text("[SERVICE]\n    HTTP_Server On\n    HTTP_Listen 127.0.0.1\n    HTTP_Port 2020\n")
    doc = load()
    doc["containerDefinitions"][0]["logConfiguration"]["options"]["exclude-pattern"] = "^DEBUG"
    conf = tmp_path / "fluent-bit.conf"
    conf.write_text(firelens_config(doc, include=str(tmp_path / "extra.conf")))
    p = validate_fb(logferry_bin, conf)
    assert p.returncode == 0, f"{conf.read_text()}\n{p.stderr}"
    # `logferry healthcheck`'s default URL.
    assert "api: http://127.0.0.1:2020" in p.stdout
    assert "transform filter1_grep_exclude (filter: drop records matching any of 1 condition(s))" in p.stdout
