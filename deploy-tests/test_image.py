"""router/Dockerfile, read rather than built (no Docker engine on these machines): the final
stage, the user, the entrypoint every health check calls, and the default config."""

from __future__ import annotations

import json
import re

from conftest import REPO, assert_valid

DOCKERFILE = REPO / "router" / "Dockerfile"
BINARY = "/usr/local/bin/logferry"


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    ins = instructions()
    last_from = max(i for i, (w, _) in enumerate(ins) if w == "FROM")
    return ins[last_from:]


def test_multi_stage_distroless_non_root():
    ins = instructions()
    assert sum(1 for w, _ in ins if w == "FROM") >= 2, "multi-stage build"
    stage = dict((w, a) for w, a in final_stage())
    assert stage["FROM"].startswith("gcr.io/distroless/cc")
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", stage["USER"]), "numeric non-root USER"
    # The image is built from the same package the tests run.
    build = " ".join(a for w, a in ins if w == "RUN")
    assert "cargo build --release --locked -p logferry" in build


def test_entrypoint_and_default_config():
    stage = dict((w, a) for w, a in final_stage())
    assert json.loads(stage["ENTRYPOINT"]) == [BINARY]
    cmd = json.loads(stage["CMD"])
    assert cmd[:2] == ["run", "--config"]
    # The default config file comes from router/examples/container.toml.
    build = " ".join(a for w, a in instructions() if w == "RUN")
    m = re.search(r"install -D -m 0644 (\S+) /out" + re.escape(cmd[2]), build)
    assert m, f"the Dockerfile does not install a file at {cmd[2]}"
    assert (REPO / m.group(1)).is_file()


def test_default_config_passes_logferry_validate(validate):
    build = " ".join(a for w, a in instructions() if w == "RUN")
    (src,) = re.findall(r"install -D -m 0644 (\S+) /out/etc/logferry/logferry.toml", build)
    result = validate((REPO / src).read_text(), "container.toml")
    assert_valid(result, src)
    # data_dir is the directory the image creates for the non-root user.
    (data_dir,) = re.findall(r'^data_dir = "([^"]+)"', (REPO / src).read_text(), re.M)
    copies = [a for w, a in final_stage() if w == "COPY"]
    assert any("--chown=65532:65532" in c and c.rstrip("/").endswith(data_dir) for c in copies)


def test_every_health_check_calls_the_image_binary():
    shipped = [p for p in (REPO / "task-definitions").glob("*.json")] + list((REPO / "eks").rglob("*.yaml"))
    shipped += list((REPO / "terraform" / "modules").rglob("*.tf"))
    calls = [m for p in shipped for m in re.findall(r'"(/[\w/]+/logferry)",\s*"healthcheck"', p.read_text())]
    assert calls and set(calls) == {BINARY}


def test_dockerignore_keeps_the_context_small():
    ignored = (REPO / ".dockerignore").read_text().split()
    assert "target" in ignored and ".git" in ignored


def test_the_shipped_binary_is_small(logferry_bin):
    # What the image copies: the release profile strips debug info and symbols
    # (issue 17: at most 30 MiB; 123 MiB with line tables).
    size = logferry_bin.stat().st_size
    assert size <= 30 * 2**20, f"{logferry_bin}: {size / 2**20:.1f} MiB; is the release profile still stripped?"
