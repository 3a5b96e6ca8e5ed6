"""`--config s3://bucket/key` and `LOGFERRY_CONFIG_S3`, against LocalStack.

Why these cases: the config is the one thing read before anything runs, so what a user sees
when it is wrong matters as much as the happy path: a missing key, a missing bucket, an object
too large, and a TOML error must each be one line naming the object and the cause, with exit
78 like any config error, and the same object must drive `validate` and a real `run`.
"""

from __future__ import annotations

import gzip
import json

import configs
from conftest import DUMMY_CREDENTIALS

EXIT_CONFIG = 78


def env_for(endpoint: str, **extra: str) -> dict[str, str]:
    return {
        **DUMMY_CREDENTIALS,
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        # The SDK's own variable: the config object is read through LocalStack.
        "AWS_ENDPOINT_URL": endpoint,
        **extra,
    }


def config_text(tmp_path) -> str:
    return configs.pipeline(tmp_path) + configs.file_sink(tmp_path / "out", key_prefix="%Y/")


def write_lines(tmp_path, n: int) -> None:
    logs = tmp_path / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "app.log", "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": i, "msg": f"line {i}"}) + "\n")


def read_out(tmp_path) -> list[dict]:
    out = []
    for p in sorted((tmp_path / "out").rglob("*.ndjson.gz")):
        out += [json.loads(line) for line in gzip.decompress(p.read_bytes()).splitlines()]
    return out


def test_validate_and_run_from_s3(router, s3, bucket, endpoint, tmp_path):
    key = "configs/web/logferry.toml"
    s3.put_object(Bucket=bucket, Key=key, Body=config_text(tmp_path).encode())
    url = f"s3://{bucket}/{key}"
    env = env_for(endpoint)

    done = router.command("validate", "--config", url, env=env)
    assert done.returncode == 0, done.stderr
    assert "config OK" in done.stdout
    assert str(tmp_path / "out") in done.stdout, done.stdout

    # The environment variable, without --config.
    done = router.command("validate", env={**env, "LOGFERRY_CONFIG_S3": url})
    assert done.returncode == 0, done.stderr
    assert str(tmp_path / "out") in done.stdout

    write_lines(tmp_path, 500)
    done = router.command("run", "--config", url, "--exit-on-eof", env=env)
    assert done.returncode == 0, done.stderr
    assert "config read from S3" in done.stderr
    assert sorted(r["id"] for r in read_out(tmp_path)) == list(range(500))


def test_errors_name_the_object_and_the_cause(router, s3, bucket, endpoint, tmp_path):
    env = env_for(endpoint)

    def fails(*args: str, extra: dict[str, str] | None = None) -> str:
        done = router.command(*args, env={**env, **(extra or {})})
        assert done.returncode == EXIT_CONFIG, (done.returncode, done.stderr)
        return done.stderr

    err = fails("validate", "--config", f"s3://{bucket}/nope.toml")
    assert f"cannot read config s3://{bucket}/nope.toml: NoSuchKey" in err, err

    err = fails("validate", "--config", f"s3://{bucket}-missing/a.toml")
    assert f"cannot read config s3://{bucket}-missing/a.toml: NoSuchBucket" in err, err

    err = fails("validate", "--config", f"s3://{bucket}")
    assert "is not s3://bucket/key" in err, err

    # One byte over the limit.
    s3.put_object(Bucket=bucket, Key="big.toml", Body=b"#" * (1024 * 1024 + 1))
    err = fails("validate", "--config", f"s3://{bucket}/big.toml")
    assert "1048577 bytes, more than the 1048576" in err, err

    s3.put_object(Bucket=bucket, Key="bin.toml", Body=b"a = \xff\n")
    err = fails("validate", "--config", f"s3://{bucket}/bin.toml")
    assert "not UTF-8" in err, err

    # A TOML problem: the usual message, located in the object.
    s3.put_object(Bucket=bucket, Key="bad.toml", Body=(config_text(tmp_path) + "bogus_key = 1\n").encode())
    err = fails("validate", "--config", f"s3://{bucket}/bad.toml")
    assert f"s3://{bucket}/bad.toml:" in err and "bogus_key" in err, err

    err = fails("validate", extra={"LOGFERRY_CONFIG_S3": f"s3://{bucket}/x.toml", "LOGFERRY_CONFIG": "[global]"})
    assert "LOGFERRY_CONFIG and LOGFERRY_CONFIG_S3" in err, err

    # Nothing on the other end: still one line, naming the object.
    err = fails("validate", "--config", f"s3://{bucket}/k.toml", extra={"AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    assert f"cannot read config s3://{bucket}/k.toml: " in err, err

    # --fluent-bit-config is one config too: never silently next to another.
    from conftest import REPO

    fb = REPO / "router" / "tests" / "fixtures" / "fluent-bit" / "cloudwatch.conf"
    err = fails("validate", "--fluent-bit-config", str(fb), extra={"LOGFERRY_CONFIG_S3": f"s3://{bucket}/x.toml"})
    assert "--fluent-bit-config cannot be combined with LOGFERRY_CONFIG_S3" in err, err


def test_fluent_bit_config_from_s3_with_its_includes_and_parsers(router, s3, bucket, endpoint, tmp_path):
    """`--fluent-bit-config s3://...`, as aws-for-fluent-bit's init image reads configs from
    S3: the object's relative `@INCLUDE` and `Parsers_File` come from beside it in the
    bucket, and every message names the object and line, never a local copy."""
    from conftest import REPO

    fixtures = REPO / "router" / "tests" / "fixtures" / "fluent-bit"
    for name in ("kinesis.conf", "kinesis-extra.conf", "kinesis-parsers.conf"):
        s3.put_object(Bucket=bucket, Key=f"firelens/web/{name}", Body=(fixtures / name).read_bytes())
    env = env_for(
        endpoint,
        LOCALSTACK_ENDPOINT=endpoint,
        FIRELENS_SOCKET=str(tmp_path / "fl.sock"),
        FIRELENS_HEALTH_PORT="18877",
        FIRELENS_API_PORT="12020",
        FIRELENS_TASK_ID="t1",
        FIRELENS_STREAM="s1",
        FIRELENS_DATA_DIR=str(tmp_path / "data"),
    )
    url = f"s3://{bucket}/firelens/web/kinesis.conf"
    done = router.command("validate", "--fluent-bit-config", url, env=env)
    assert done.returncode == 0, done.stderr
    assert "config OK" in done.stdout
    # The parser filter came from the included object, its parser from the Parsers_File.
    assert f"fluent-bit: s3://{bucket}/firelens/web/kinesis-extra.conf:" in done.stdout, done.stdout
    assert "parse" in done.stdout and "kinesis_streams" in done.stdout
    assert "logferry-fluent-bit-" not in done.stdout + done.stderr, "no local copy is named"

    def fails(key: str) -> str:
        done = router.command("validate", "--fluent-bit-config", f"s3://{bucket}/{key}", env=env)
        assert done.returncode == EXIT_CONFIG, (done.returncode, done.stdout, done.stderr)
        assert "logferry-fluent-bit-" not in done.stderr, done.stderr
        return done.stderr

    # An include that is not there: named with the line that names it.
    main = (fixtures / "kinesis.conf").read_text()
    s3.put_object(Bucket=bucket, Key="firelens/bad/a.conf", Body=main.replace("kinesis-extra.conf", "nope.conf").encode())
    err = fails("firelens/bad/a.conf")
    line = next(i + 1 for i, l in enumerate(main.splitlines()) if l.startswith("@INCLUDE"))
    assert f"cannot read s3://{bucket}/firelens/bad/nope.conf (named at s3://{bucket}/firelens/bad/a.conf:{line}): NoSuchKey" in err, err

    # A problem inside an included object: located in that object.
    s3.put_object(Bucket=bucket, Key="firelens/bad2/kinesis.conf", Body=main.encode())
    s3.put_object(
        Bucket=bucket,
        Key="firelens/bad2/kinesis-extra.conf",
        Body=b"[FILTER]\n    Name lua\n    Match *\n",
    )
    err = fails("firelens/bad2/kinesis.conf")
    assert f"s3://{bucket}/firelens/bad2/kinesis-extra.conf:1" in err and "lua" in err, err

    s3.put_object(Bucket=bucket, Key="firelens/glob/a.conf", Body=b"@INCLUDE conf.d/*.conf\n")
    err = fails("firelens/glob/a.conf")
    assert "is a glob, which cannot be read from S3" in err, err

    s3.put_object(Bucket=bucket, Key="firelens/up/a.conf", Body=b"@INCLUDE ../../secrets.conf\n")
    err = fails("firelens/up/a.conf")
    assert "leaves the config's folder" in err, err
