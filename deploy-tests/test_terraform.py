"""terraform/: formatting, parsing, documentation, checkov, and the router config each example
renders (with the module's template, the example's values) passing `logferry validate`."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import hcl
import tfdocs
import tftemplate
from conftest import REPO, assert_valid

TF = REPO / "terraform"
MODULES = sorted(p for p in (TF / "modules").iterdir() if p.is_dir())
EXAMPLES = sorted(p for p in (TF / "examples").iterdir() if p.is_dir())
ROOTS = MODULES + EXAMPLES
TF_FILES = sorted(TF.rglob("*.tf"))
SIDECAR = TF / "modules" / "logferry-sidecar"
IAM = TF / "modules" / "logferry-iam"
SIDECAR_SOURCE = "../../modules/logferry-sidecar"
TEMPLATE = SIDECAR / "templates" / "logferry.toml.tftpl"
TERRAFORM = shutil.which("terraform")
TF_TIMEOUT = 120  # hang guard


def rel(p: Path) -> str:
    return str(p.relative_to(REPO))


def terraform(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    assert TERRAFORM
    env = {**os.environ, "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1"}
    # The mirror is passed as -plugin-dir; the same directory as the plugin cache makes init
    # fail ("cannot install existing provider directory to itself").
    env.pop("TF_PLUGIN_CACHE_DIR", None)
    return subprocess.run(
        [TERRAFORM, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=TF_TIMEOUT
    )


# -- terraform itself ------------------------------------------------------------------------


@pytest.mark.skipif(TERRAFORM is None, reason="no terraform binary on PATH: fmt check skipped")
def test_terraform_fmt():
    done = terraform("fmt", "-check", "-recursive", "-diff", str(TF), cwd=REPO)
    assert done.returncode == 0, f"terraform fmt -check found unformatted files:\n{done.stdout}{done.stderr}"


def _aws_provider_mirror() -> Path | None:
    """A local provider mirror holding hashicorp/aws, if this machine has one: TF_PLUGIN_CACHE_DIR,
    the user's plugin directory, or /opt/tf-plugins (where the offline dev machines keep one)."""
    candidates = [os.environ.get("TF_PLUGIN_CACHE_DIR"), Path.home() / ".terraform.d" / "plugins", "/opt/tf-plugins"]
    for d in candidates:
        if d and (Path(d) / "registry.terraform.io" / "hashicorp" / "aws").is_dir():
            return Path(d)
    return None


@pytest.mark.parametrize("root", EXAMPLES, ids=lambda p: p.name)
def test_terraform_validate(root, tmp_path):
    """Needs the AWS provider, which cannot be downloaded on these machines; runs where a
    local mirror (TF_PLUGIN_CACHE_DIR or ~/.terraform.d/plugins) holds it."""
    if TERRAFORM is None:
        pytest.skip("no terraform binary on PATH")
    mirror = _aws_provider_mirror()
    if mirror is None:
        pytest.skip("the hashicorp/aws provider is not available offline here (no TF_PLUGIN_CACHE_DIR or "
                    "~/.terraform.d/plugins mirror): terraform validate skipped")
    missing = [p for p in _required_providers(root) if not (mirror / "registry.terraform.io" / "hashicorp" / p).is_dir()]
    if missing:
        # eks-daemonset needs hashicorp/kubernetes, which no mirror here holds: its files are
        # still parsed, reference-checked, checkov-scanned and compared with eks/daemonset/.
        pytest.skip(f"provider(s) {missing} not in the mirror {mirror}: terraform validate skipped")
    # A copy, so no .terraform/ or lock file lands in the repository.
    work = tmp_path / "terraform"
    shutil.copytree(TF, work)
    cwd = work / "examples" / root.name
    done = terraform("init", "-backend=false", "-input=false", f"-plugin-dir={mirror}", cwd=cwd)
    assert done.returncode == 0, done.stdout + done.stderr
    done = terraform("validate", "-no-color", cwd=cwd)
    assert done.returncode == 0, done.stdout + done.stderr


# -- parsing and documentation ---------------------------------------------------------------


@pytest.mark.parametrize("path", TF_FILES, ids=rel)
def test_every_tf_file_parses(path):
    parsed = hcl.load_file(path)
    assert parsed, f"{rel(path)} parsed to nothing"


@pytest.mark.parametrize("root", ROOTS, ids=lambda p: rel(p))
def test_module_layout_and_documentation(root):
    for name in ["main.tf", "variables.tf", "outputs.tf", "versions.tf", "README.md"]:
        assert (root / name).is_file(), f"{rel(root)} lacks {name}"
    parsed = hcl.load_dir(root)
    variables = hcl.blocks(parsed, "variable")
    outputs = hcl.blocks(parsed, "output")
    assert variables and outputs
    for name, body in variables.items():
        assert "description" in body and "type" in body, f"{rel(root)}: variable {name} needs a description and a type"
    for name, body in outputs.items():
        assert "description" in body, f"{rel(root)}: output {name} needs a description"
    # The terraform-docs section is generated from the .tf files and up to date.
    readme = (root / "README.md").read_text()
    assert tfdocs.current(readme) == tfdocs.generate(root), (
        f"{rel(root)}/README.md: the terraform-docs section is out of date; run "
        "~/.cache/logferry/deploy-venv/bin/python deploy-tests/tfdocs.py"
    )


def _required_providers(root: Path) -> list[str]:
    """Names of the providers a root needs: its own and those of the local modules it calls."""
    names = set(hcl.load_file(root / "versions.tf")["terraform"][0]["required_providers"][0])
    for body in hcl.blocks(hcl.load_dir(root), "module").values():
        source = hcl.value(body["source"], hcl.no_refs)
        if source.startswith("."):
            names |= set(_required_providers((root / source).resolve()))
    return sorted(n for n in names if not n.startswith("__"))


@pytest.mark.parametrize("root", ROOTS, ids=lambda p: rel(p))
def test_providers_are_pinned(root):
    tf = hcl.load_file(root / "versions.tf")["terraform"][0]
    providers = {k: v for k, v in tf["required_providers"][0].items() if not k.startswith("__")}
    assert providers, f"{rel(root)}: no required_providers"
    for name, p in providers.items():
        assert hcl.value(p["source"], hcl.no_refs) == f"hashicorp/{name}"
        constraint = hcl.value(p["version"], hcl.no_refs)
        assert re.search(r"(~>|<)\s*\d", constraint), f"{rel(root)}: provider {name} needs an upper bound, got {constraint!r}"
    # A root that calls a module declares every provider the module needs (so init pins it).
    assert set(_required_providers(root)) == set(providers), f"{rel(root)}: declare {set(_required_providers(root)) - set(providers)}"


def test_every_variable_with_a_closed_set_of_values_is_validated():
    """The sidecar's config-facing variables are the ones a typo would break at run time."""
    variables = hcl.blocks(hcl.load_dir(SIDECAR), "variable")
    for name in ["image", "region", "api_address", "log_include", "parser", "s3_compression",
                 "s3_key_prefix", "memory_limit", "s3_flush_interval", "s3_bucket"]:
        assert "validation" in variables[name], f"variable {name} has no validation"


# -- checkov ---------------------------------------------------------------------------------


def _checkov() -> str:
    exe = os.environ.get("LOGFERRY_CHECKOV") or shutil.which("checkov")
    if not exe or not Path(exe).exists():
        pytest.fail("checkov not found; run deploy-tests/run.sh (it installs checkov) or set LOGFERRY_CHECKOV",
                    pytrace=False)
    return exe


def run_checkov(directory: Path, framework: str, tmp_path: Path) -> list[dict]:
    done = subprocess.run(
        [_checkov(), "-d", str(directory), "--framework", framework, "--quiet", "--compact",
         "--output", "json", "--skip-download"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "HOME": str(tmp_path), "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"},
    )
    assert done.returncode in (0, 1), f"checkov failed to run:\n{done.stderr[-4000:]}"
    out = json.loads(done.stdout)
    return out if isinstance(out, list) else [out]


@pytest.mark.parametrize("directory,framework", [(TF, "terraform"), (REPO / "eks", "kubernetes")],
                         ids=["terraform", "eks"])
def test_checkov_is_clean(directory, framework, tmp_path):
    reports = run_checkov(directory, framework, tmp_path)
    failed, skipped = [], []
    for r in reports:
        results = r.get("results", {})
        failed += results.get("failed_checks", [])
        skipped += results.get("skipped_checks", [])
    assert reports and any(r.get("summary", {}).get("passed", 0) for r in reports), "checkov checked nothing"
    assert not failed, "checkov failures:\n" + "\n".join(
        f"{c['check_id']} {c['check_name']}: {c['file_path']}:{c['file_line_range']} {c['resource']}" for c in failed
    )
    for c in skipped:
        reason = (c.get("check_result") or {}).get("suppress_comment", "")
        assert reason and reason != "No comment provided", f"{c['check_id']} skipped without a reason in {c['file_path']}"


# -- the router config, rendered as templatefile would ---------------------------------------


def _templatefile_call() -> tuple[str, dict[str, str]]:
    """The sidecar's `templatefile(path, {k = var.k, ...})`: the template path and the map."""
    locals_ = {}
    for block in hcl.load_dir(SIDECAR).get("locals", []):
        locals_.update(block)
    call = locals_["config"]
    m = re.fullmatch(r'\$\{templatefile\("\$\{path\.module\}/([^"]+)", \{(.*)\}\)\}', call, re.S)
    assert m, f"local.config is not a templatefile(...) call: {call[:200]}"
    pairs = dict(re.findall(r"(\w+)\s*=\s*([^,}]+)", m.group(2)))
    return m.group(1), {k: v.strip() for k, v in pairs.items()}


def test_template_variables_are_the_module_variables():
    """Each template variable is the module variable of the same name, so rendering with the
    module's inputs is exactly what Terraform does."""
    path, pairs = _templatefile_call()
    assert SIDECAR / path == TEMPLATE
    variables = hcl.blocks(hcl.load_dir(SIDECAR), "variable")
    assert pairs
    for key, expr in pairs.items():
        assert expr == f"var.{key}", f"template variable {key} = {expr}: use var.{key}"
        assert key in variables


# Outputs of logferry-destinations the examples pass on, by their definition there:
# bucket_name is the bucket_name input; the log group is /logferry/<name_prefix> by default.
def _destinations_output(name: str, dest_inputs: dict[str, object]) -> object:
    if name == "bucket_name":
        return dest_inputs["bucket_name"]
    if name == "log_group_name":
        return dest_inputs.get("log_group_name") or f"/logferry/{dest_inputs['name_prefix']}"
    raise hcl.Unresolvable(f"module.destinations.{name}")


def example_inputs(example: Path) -> dict[str, object]:
    """The example's variables: defaults, then its terraform.tfvars.example."""
    values = hcl.variable_defaults(hcl.load_dir(example))
    tfvars = example / "terraform.tfvars.example"
    for k, v in hcl.load_file(tfvars).items():
        if not k.startswith("__"):  # __comments__
            values[k] = hcl.value(v, hcl.no_refs)
    return values


def sidecar_inputs(example: Path) -> dict[str, object]:
    """What the example passes to the sidecar module, resolved, plus the module's defaults."""
    parsed = hcl.load_dir(example)
    modules = hcl.blocks(parsed, "module")
    res = hcl.resources(parsed)
    ex_vars = example_inputs(example)

    def ref(expr: str) -> object:
        parts = expr.split(".")
        if parts[0] == "var" and len(parts) == 2:
            return ex_vars[parts[1]]
        if parts[0] == "module" and len(parts) == 3:
            body = modules[parts[1]]
            dest = {k: hcl.value(v, ref) for k, v in body.items() if k != "source" and not k.startswith("__")}
            return _destinations_output(parts[2], dest)
        if len(parts) == 3 and f"{parts[0]}.{parts[1]}" in res:
            return hcl.value(res[f"{parts[0]}.{parts[1]}"][parts[2]], ref)
        raise hcl.Unresolvable(expr)

    (call,) = [b for b in modules.values() if hcl.value(b["source"], hcl.no_refs) == SIDECAR_SOURCE]
    given = {k: hcl.value(v, ref) for k, v in call.items() if k != "source" and not k.startswith("__")}
    defaults = hcl.variable_defaults(hcl.load_dir(SIDECAR))
    required = set(hcl.blocks(hcl.load_dir(SIDECAR), "variable")) - set(defaults)
    assert required <= set(given), f"{example.name} does not set {required - set(given)}"
    return {**defaults, **given}


def template_vars(inputs: dict[str, object]) -> dict[str, object]:
    _, pairs = _templatefile_call()
    return {k: inputs[k] for k in pairs}


# Every sink and option on, to cover the template's branches.
ALL_OPTIONS = {
    "image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/logferry:0.1.0",
    "region": "us-east-1",
    "app_container_name": "web",
    "time_key": "ts",
    "environment": "staging",
    "enrich_ec2": True,
    "parser": "logfmt",
    "log_include": ["/var/log/app/*.log", "/var/log/app/**/*.json"],
    "s3_bucket": "acme-logs",
    "s3_kms_key_arn": "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    "s3_compression": "zstd",
    "cloudwatch_log_group": "/logferry/staging",
    "firehose_delivery_stream": "logferry-staging",
    "kinesis_stream": "logferry-staging",
}


def uses_sidecar(example: Path) -> bool:
    modules = hcl.blocks(hcl.load_dir(example), "module").values()
    return any(hcl.value(m["source"], hcl.no_refs) == SIDECAR_SOURCE for m in modules)


def render_cases() -> list[tuple[str, dict[str, object]]]:
    cases = [(ex.name, template_vars(sidecar_inputs(ex))) for ex in EXAMPLES if uses_sidecar(ex)]
    assert len(cases) >= 2, "the ECS examples use the sidecar module"
    defaults = hcl.variable_defaults(hcl.load_dir(SIDECAR))
    cases.append(("all-options", template_vars({**defaults, **ALL_OPTIONS})))
    return cases


@pytest.fixture(scope="module", params=render_cases(), ids=lambda c: c[0])
def rendered(request) -> tuple[str, dict[str, object], str]:
    name, variables = request.param
    return name, variables, tftemplate.render(TEMPLATE.read_text(), variables)


def test_rendered_config_passes_logferry_validate(rendered, validate):
    name, variables, text = rendered
    result = validate(text, f"{name}.toml")
    assert_valid(result, f"the config rendered for {name}")
    # The sinks the inputs ask for, and no others.
    for var, sink in [("s3_bucket", "sink archive (s3"), ("cloudwatch_log_group", "sink cloudwatch (cloudwatch_logs"),
                      ("firehose_delivery_stream", "sink firehose (firehose"),
                      ("kinesis_stream", "sink kinesis (kinesis_streams")]:
        assert (sink in result.stdout) == (variables[var] != ""), f"{name}: {sink}?\n{result.stdout}"


@pytest.mark.skipif(TERRAFORM is None, reason="no terraform binary: the renderer is not cross-checked")
def test_renderer_matches_terraform_templatefile(rendered, tmp_path):
    """Our renderer against the real templatefile (terraform console needs no provider)."""
    name, variables, text = rendered
    (tmp_path / "vars.json").write_text(json.dumps(variables))
    expr = f'base64encode(templatefile("{TEMPLATE}", jsondecode(file("{tmp_path / "vars.json"}"))))'
    done = subprocess.run(
        [TERRAFORM, "console"], input=expr + "\n", cwd=tmp_path, capture_output=True, text=True,
        timeout=TF_TIMEOUT, env={**os.environ, "CHECKPOINT_DISABLE": "1"},
    )
    assert done.returncode == 0, done.stderr
    want = base64.b64decode(done.stdout.strip().strip('"')).decode()
    assert text == want, f"{name}: the renderer differs from terraform's templatefile"


def test_iam_statements_follow_the_sinks():
    """The policy document (logferry-iam, which logferry-sidecar and eks-irsa use) has one
    dynamic statement per sink, each gated on its variable, with exactly the actions the sinks
    call."""
    sidecar_iam = hcl.blocks(hcl.load_dir(SIDECAR), "module")["iam"]
    assert hcl.value(sidecar_iam["source"], hcl.no_refs) == "../logferry-iam"
    for name in hcl.blocks(hcl.load_dir(IAM), "variable"):
        assert sidecar_iam[name] == f"${{var.{name}}}", f"logferry-sidecar passes {name} on as is"
    parsed = hcl.load_dir(IAM)
    doc = hcl.resources(parsed, "data")["aws_iam_policy_document.router"]
    statements = {}
    for dyn in doc["dynamic"]:
        ((name, body),) = [(hcl.label(k), v) for k, v in dyn.items() if not k.startswith("__")]
        assert name == "statement"
        content = body["content"][0]
        statements[hcl.value(content["sid"], hcl.no_refs)] = (body["for_each"], content["actions"])
    actions = {sid: sorted(hcl.value(a, hcl.no_refs)) for sid, (_, a) in statements.items()}
    assert actions == {
        "S3WriteUnderPrefix": ["s3:AbortMultipartUpload", "s3:PutObject"],
        "KmsForS3Objects": ["kms:Decrypt", "kms:GenerateDataKey"],
        "CloudWatchLogsWrite": ["logs:CreateLogStream", "logs:PutLogEvents"],
        "FirehosePut": ["firehose:PutRecordBatch"],
        "KinesisPut": ["kinesis:PutRecords"],
    }
    gates = {sid: fe for sid, (fe, _) in statements.items()}
    assert "var.s3_bucket" in gates["S3WriteUnderPrefix"]
    assert "var.s3_kms_key_arn" in gates["KmsForS3Objects"]
    assert "var.cloudwatch_log_group" in gates["CloudWatchLogsWrite"]
    assert "var.firehose_delivery_stream" in gates["FirehosePut"]
    assert "var.kinesis_stream" in gates["KinesisPut"]


# -- the renderer itself ---------------------------------------------------------------------


def test_renderer_subset():
    r = tftemplate.render
    assert r("a=${x}\n", {"x": "1"}) == "a=1\n"
    assert r("${jsonencode(x)}", {"x": ["a<b", "c"]}) == '["a\\u003cb","c"]'
    assert r("${b} ${n}", {"b": True, "n": 64}) == "true 64"
    assert r("x\n%{ if s != \"\" ~}\ny=${s}\n%{ endif ~}\nz\n", {"s": "1"}) == "x\ny=1\nz\n"
    assert r("x\n%{ if s != \"\" ~}\ny=${s}\n%{ endif ~}\nz\n", {"s": ""}) == "x\nz\n"
    assert r("%{ for p in l }[${p}]%{ endfor }", {"l": ["a", "b"]}) == "[a][b]"
    assert r("$${VAR} %%{x}", {}) == "${VAR} %{x}"
    assert r("a  ${~ x ~}  b", {"x": "-"}) == "a-b"
    # Strip markers reach one line only (checked against terraform 1.11).
    assert r("a \n\n  ${~ x ~}  \n\n b", {"x": "-"}) == "a \n\n-\n b"
    assert r("a\n%{ if x ~}\n\n  b\n%{~ endif ~}\n\nc\n", {"x": True}) == "a\n\n  b\nc\n"
    assert r("a\n%{ if x ~}\nb\n%{ endif ~}\n\nc\n", {"x": False}) == "a\n\nc\n"
    for bad, variables in [("${nope}", {}), ("${x}", {"x": [1]}), ("%{ if x }", {"x": True}), ("${upper(x)}", {"x": "a"})]:
        with pytest.raises(tftemplate.TemplateError):
            r(bad, variables)


# -- what `terraform validate` would catch first, without the provider ------------------------


def _text(root: Path) -> str:
    # Comments out: a reference in a comment is not one.
    return "\n".join(re.sub(r"(?m)^\s*#.*$", "", p.read_text()) for p in sorted(root.glob("*.tf")))


@pytest.mark.parametrize("root", ROOTS, ids=lambda p: rel(p))
def test_references_resolve(root):
    """Every var.x, local.x, module.m.out and resource reference names something declared,
    every module argument is a variable of that module and every required one is set."""
    parsed = hcl.load_dir(root)
    text = _text(root)
    variables = set(hcl.blocks(parsed, "variable"))
    locals_ = {k for block in parsed.get("locals", []) for k in block if not k.startswith("__")}
    modules = hcl.blocks(parsed, "module")
    declared = set(hcl.resources(parsed)) | {f"data.{k}" for k in hcl.resources(parsed, "data")}

    assert set(re.findall(r"\bvar\.(\w+)", text)) <= variables, set(re.findall(r"\bvar\.(\w+)", text)) - variables
    assert set(re.findall(r"\blocal\.(\w+)", text)) <= locals_, set(re.findall(r"\blocal\.(\w+)", text)) - locals_
    refs = set(re.findall(r"(?<![\w.])((?:data\.)?(?:aws|kubernetes)_\w+\.\w+)", text))
    assert refs <= declared, f"{rel(root)}: undeclared {sorted(refs - declared)}"
    for mod, out in re.findall(r"\bmodule\.(\w+)\.(\w+)", text):
        assert mod in modules, f"{rel(root)}: module.{mod} is not declared"
        source = (root / hcl.value(modules[mod]["source"], hcl.no_refs)).resolve()
        outputs = hcl.blocks(hcl.load_dir(source), "output")
        assert out in outputs, f"{rel(root)}: module.{mod} has no output {out}"
    for name, body in modules.items():
        source = (root / hcl.value(body["source"], hcl.no_refs)).resolve()
        mod_vars = hcl.blocks(hcl.load_dir(source), "variable")
        args = {k for k in body if k != "source" and not k.startswith("__")}
        assert args <= set(mod_vars), f"{rel(root)}: module {name} has no variables {args - set(mod_vars)}"
        required = {k for k, v in mod_vars.items() if "default" not in v}
        assert required <= args, f"{rel(root)}: module {name} needs {required - args}"


# -- the Parquet compactor in logferry-destinations ------------------------------------------

DESTINATIONS = TF / "modules" / "logferry-destinations"

# The compactor's Parquet schema (lambda/README.md, "Columns"), in file order.
PARQUET_SCHEMA = [
    ("timestamp", "timestamp"),
    *[(c, "string") for c in [
        "level", "log", "message", "msg", "ecs_cluster", "ecs_task_arn", "ecs_task_id", "ecs_task_definition",
        "container_name", "container_id", "aws_region", "availability_zone", "launch_type", "ec2_instance_id",
        "ec2_instance_type", "az", "private_ip", "ami_id", "account_id", "hostname"]],
    ("kubernetes", "struct<pod_name:string,namespace_name:string,pod_id:string,host:string,container_name:string,"
                   "container_id:string,container_image:string,container_hash:string,docker_id:string,"
                   "labels:map<string,string>,annotations:map<string,string>>"),
    ("rest", "string"),
]


def _indexer_statements() -> dict[str, tuple[str, dict]]:
    """sid -> (for_each, content) of the indexer policy's dynamic statements."""
    doc = hcl.resources(hcl.load_dir(DESTINATIONS), "data")["aws_iam_policy_document.indexer"]
    out = {}
    for dyn in doc["dynamic"]:
        ((name, body),) = [(hcl.label(k), v) for k, v in dyn.items() if not k.startswith("__")]
        assert name == "statement"
        content = body["content"][0]
        out[hcl.value(content["sid"], hcl.no_refs)] = (body["for_each"], content)
    return out


def test_compactor_iam_statements_follow_the_settings():
    """Each compactor statement is gated on local.compactor, with exactly the calls the
    compactor makes; DeleteObject reaches the sources' prefixes only with compact_inputs =
    delete, tagging only with tag."""
    statements = _indexer_statements()
    compact = {sid: v for sid, v in statements.items() if sid.startswith("Compact")}
    actions = {sid: sorted(hcl.value(a, hcl.no_refs) for a in c["actions"]) for sid, (_, c) in compact.items()}
    assert actions == {
        "CompactList": ["s3:ListBucket"],
        "CompactRead": ["s3:GetObject"],
        "CompactWriteOwn": ["s3:AbortMultipartUpload", "s3:DeleteObject", "s3:PutObject"],
        "CompactListUploads": ["s3:ListBucketMultipartUploads"],
        "CompactTagInputs": ["s3:GetObjectTagging", "s3:PutObjectTagging"],
        "CompactDeleteInputs": ["s3:DeleteObject"],
    }
    for sid, (gate, _) in compact.items():
        assert "local.compactor" in gate, f"{sid} is not gated on the compactor"
    assert 'var.compact_inputs == "delete"' in compact["CompactDeleteInputs"][0]
    assert 'var.compact_inputs == "tag"' in compact["CompactTagInputs"][0]
    # Listing uploads names the bucket alone: the call takes no prefix condition.
    assert compact["CompactListUploads"][1]["resources"] == ['${local.bucket_arn}']
    assert "condition" not in compact["CompactListUploads"][1]
    for sid in ["CompactList", "CompactRead", "CompactWriteOwn", "CompactListUploads"]:
        assert "compact_inputs" not in compact[sid][0], f"{sid} does not depend on compact_inputs"
    # Own output only: the prefix and the compactor's quarantine, never the sources.
    own = compact["CompactWriteOwn"][1]["resources"]
    assert own == ['"${local.bucket_arn}/${var.compact_prefix}*"', '"${local.bucket_arn}/${local.compact_quarantine}*"']
    for sid in ["CompactTagInputs", "CompactDeleteInputs"]:
        assert "local.compact_source_prefixes" in str(compact[sid][1]["resources"])
    # ListBucket only under the prefixes it lists.
    (cond,) = compact["CompactList"][1]["condition"]
    assert hcl.value(cond["test"], hcl.no_refs) == "StringLike"
    assert hcl.value(cond["variable"], hcl.no_refs) == "s3:prefix"
    for p in ["var.compact_prefix", "var.index_prefix", "local.compact_quarantine", "local.compact_source_prefixes"]:
        assert p in cond["values"]
    # No ungated statement deletes objects.
    doc = hcl.resources(hcl.load_dir(DESTINATIONS), "data")["aws_iam_policy_document.indexer"]
    for st in doc["statement"]:
        assert not any("s3:Delete" in a for a in st["actions"]), st


def test_compactor_schedule_targets_the_function():
    res = hcl.resources(hcl.load_dir(DESTINATIONS))
    rule = res["aws_cloudwatch_event_rule.compactor"]
    target = res["aws_cloudwatch_event_target.compactor"]
    perm = res["aws_lambda_permission.compactor"]
    for body in (rule, target, perm):
        assert body["count"] == "${local.compactor ? 1 : 0}"
    assert rule["schedule_expression"] == "${var.compact_schedule}"
    assert target["rule"] == "${aws_cloudwatch_event_rule.compactor[0].name}"
    assert target["arn"] == "${aws_lambda_function.indexer[0].arn}"
    assert hcl.value(perm["principal"], hcl.no_refs) == "events.amazonaws.com"
    assert hcl.value(perm["action"], hcl.no_refs) == "lambda:InvokeFunction"
    assert perm["function_name"] == "${aws_lambda_function.indexer[0].function_name}"
    assert perm["source_arn"] == "${aws_cloudwatch_event_rule.compactor[0].arn}"
    # The function gets the settings, and the timeout the compactor needs.
    fn = res["aws_lambda_function.indexer"]
    assert "local.compact_environment" in fn["environment"][0]["variables"]
    assert fn["timeout"] == "${local.function_timeout}"
    assert res["aws_sqs_queue.indexer"]["visibility_timeout_seconds"] == "${6 * local.function_timeout}"


def _rust_str_list(source: str, name: str) -> list[str]:
    """The strings of `pub const NAME: &[&str] = &[...]` in lambda/src/compacted.rs."""
    body = re.search(rf"pub const {name}: &\[&str\] = &\[(.*?)\];", source, re.S)
    assert body, name
    return re.findall(r'"([^"]*)"', re.sub(r"//[^\n]*", "", body.group(1)))


def _rust_str(source: str, name: str) -> str:
    found = re.search(rf'pub const {name}: &str = "([^"]*)";', source)
    assert found, name
    return found.group(1)


COMPACTED_RS = REPO / "lambda" / "src" / "compacted.rs"


def test_parquet_schema_is_the_compactors():
    """PARQUET_SCHEMA names the columns lambda/src/compacted.rs writes, in its order."""
    rs = COMPACTED_RS.read_text()
    k8s = [f"{f}:string" for f in _rust_str_list(rs, "KUBERNETES_STRINGS")] + \
          [f"{f}:map<string,string>" for f in _rust_str_list(rs, "KUBERNETES_MAPS")]
    assert [c for c, _ in PARQUET_SCHEMA] == [
        _rust_str(rs, "TIMESTAMP_COLUMN"), *_rust_str_list(rs, "STRING_COLUMNS"),
        _rust_str(rs, "KUBERNETES"), _rust_str(rs, "REST")]
    assert dict(PARQUET_SCHEMA)["kubernetes"] == f"struct<{','.join(k8s)}>"


def test_declared_column_rules_are_the_compactors():
    """compact_columns refuses exactly the names the function refuses at start: the
    layout's columns and its partitions; the same types; the same cap."""
    rs = COMPACTED_RS.read_text()
    reserved = {c for c, _ in PARQUET_SCHEMA} | set(_rust_str_list(rs, "PARTITION_COLUMNS"))
    var = hcl.blocks(hcl.load_dir(DESTINATIONS), "variable")["compact_columns"]
    conditions = [v["condition"] for v in var["validation"]]
    (names,) = [c for c in conditions if "setintersection" in c]
    assert set(re.findall(r'"([a-z0-9_]+)"', names)) == reserved
    (types,) = [c for c in conditions if "values(var.compact_columns)" in c]
    rust_types = set(re.findall(r'"(\w+)" => ColumnType::', rs))
    assert set(re.findall(r'"(\w+)"', types)) == rust_types == {"string", "bigint", "double", "boolean"}
    (cap,) = [c for c in conditions if "length(var.compact_columns) <=" in c]
    assert re.search(r"<= (\d+)", cap).group(1) == re.search(r"pub const MAX_DECLARED: usize = (\d+);", rs).group(1)
    (pattern,) = [c for c in conditions if "regex" in c]
    assert "^[a-z_][a-z0-9_]{0,63}$" in pattern


def test_parquet_table_columns_are_the_parquet_schema():
    parsed = hcl.load_dir(DESTINATIONS)
    locals_ = {}
    for block in parsed.get("locals", []):
        locals_.update(block)
    # The fixed columns around the declared ones, which come in name order (a map's order).
    leading = [tuple(c) for c in hcl.value(locals_["parquet_leading_columns"], hcl.no_refs)]
    trailing = [tuple(c) for c in hcl.value(locals_["parquet_trailing_columns"], hcl.no_refs)]
    assert leading + trailing == PARQUET_SCHEMA
    assert trailing == PARQUET_SCHEMA[-2:]
    assert locals_["parquet_columns"] == "${concat(local.parquet_leading_columns, " \
        "[for name, ty in var.compact_columns : [name, ty]], local.parquet_trailing_columns)}"
    table = hcl.resources(parsed)["aws_glue_catalog_table.logs_parquet"]
    (dyn,) = table["storage_descriptor"][0]["dynamic"]
    assert dyn['"columns"']["for_each"] == "${local.parquet_columns}"
    params = {hcl.label(k): v for k, v in table["parameters"].items()}
    assert [hcl.value(k["name"], hcl.no_refs) for k in table["partition_keys"]] == ["dt", "hour", "source"]
    # The compactor's layout; $${x} is a literal ${x} for Athena's projection.
    assert params["storage.location.template"] == \
        '"s3://${local.bucket_id}/${var.compact_prefix}dt=$${dt}/hour=$${hour}/source=$${source}/"'
    assert params["projection.source.values"] == '${join(",", keys(var.compact_sources))}'
    assert hcl.value(params["projection.hour.digits"], hcl.no_refs) == "2"


def test_destinations_plan_with_the_compactor(tmp_path):
    """`terraform test` (tests/compactor.tftest.hcl): the compactor's settings as planned
    (environment, shared timeout/memory, schedule, permission, Glue layout, queries) and the
    plan-time refusals (no sources, sources outside logs_prefix, compact_prefix under
    logs_prefix, tag expiration, bad compact_inputs, bad source name)."""
    if TERRAFORM is None:
        pytest.skip("no terraform binary on PATH")
    mirror = _aws_provider_mirror()
    if mirror is None:
        pytest.skip("the hashicorp/aws provider is not available offline here: terraform test skipped")
    work = tmp_path / "destinations"
    shutil.copytree(DESTINATIONS, work)
    zip_path = tmp_path / "bootstrap.zip"
    zip_path.write_bytes(b"")
    done = terraform("init", "-backend=false", "-input=false", f"-plugin-dir={mirror}", cwd=work)
    assert done.returncode == 0, done.stdout + done.stderr
    done = terraform("test", "-no-color", f"-var=indexer_zip_path={zip_path}", cwd=work)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"Success! (\d+) passed, 0 failed", done.stdout), done.stdout
    assert int(re.search(r"(\d+) passed", done.stdout).group(1)) >= 8, done.stdout


# -- the node daemon's RBAC: Terraform and eks/daemonset/ agree ------------------------------

NODE_RBAC = TF / "modules" / "logferry-eks-node-rbac"


def test_node_rbac_module_is_the_daemonsets_rbac():
    """logferry-eks-node-rbac grants what eks/daemonset/rbac.yaml grants, to the same service
    account: get/list/watch on pods and namespaces, nothing more."""
    import yaml

    docs = {d["kind"]: d for d in yaml.safe_load_all((REPO / "eks" / "daemonset" / "rbac.yaml").read_text())}
    parsed = hcl.load_dir(NODE_RBAC)
    variables = {k: hcl.value(v["default"], hcl.no_refs) for k, v in hcl.blocks(parsed, "variable").items()}
    resources = hcl.resources(parsed)
    role = resources["kubernetes_cluster_role_v1.node"]
    (rule,) = role["rule"]
    # `resources` is local.resources: pods, plus namespaces with namespace_labels (default on).
    assert rule["resources"] == "${local.resources}"
    (locals_,) = parsed["locals"]
    assert locals_["resources"] == '${var.namespace_labels ? ["pods", "namespaces"] : ["pods"]}'
    assert variables["namespace_labels"] is True
    (yaml_rule,) = docs["ClusterRole"]["rules"]
    assert yaml_rule == {"apiGroups": hcl.value(rule["api_groups"], hcl.no_refs),
                         "resources": ["pods", "namespaces"],
                         "verbs": hcl.value(rule["verbs"], hcl.no_refs)}
    assert set(yaml_rule["verbs"]) == {"get", "list", "watch"}
    assert variables["name"] == docs["ClusterRole"]["metadata"]["name"]

    binding = resources["kubernetes_cluster_role_binding_v1.node"]
    (subject,) = binding["subject"]
    (yaml_subject,) = docs["ClusterRoleBinding"]["subjects"]
    assert hcl.value(subject["kind"], hcl.no_refs) == yaml_subject["kind"] == "ServiceAccount"
    assert variables["service_account"] == yaml_subject["name"]
    assert variables["namespace"] == yaml_subject["namespace"]
    (role_ref,) = binding["role_ref"]
    assert role_ref["name"] == "${kubernetes_cluster_role_v1.node.metadata[0].name}"

    # The example binds it to the account its IRSA role trusts, in the kustomization's namespace.
    example = hcl.load_dir(TF / "examples" / "eks-daemonset")
    ex_vars = {k: hcl.value(v["default"], hcl.no_refs) for k, v in hcl.blocks(example, "variable").items()
               if "default" in v}
    kustomization = yaml.safe_load((REPO / "eks" / "daemonset" / "kustomization.yaml").read_text())
    assert ex_vars["namespace"] == kustomization["namespace"] == yaml_subject["namespace"]
    assert ex_vars["service_account"] == yaml_subject["name"]
    rbac = hcl.blocks(example, "module")["rbac"]
    assert rbac["service_account"] == "${var.service_account}" and rbac["namespace"] == "${var.namespace}"


def test_irsa_role_trusts_exactly_one_service_account():
    """logferry-irsa-role: only `namespace:service_account` of the cluster's OIDC provider may
    assume the role (sub and aud pinned), and both EKS examples build their role with it."""
    parsed = hcl.load_dir(TF / "modules" / "logferry-irsa-role")
    trust = hcl.resources(parsed, "data")["aws_iam_policy_document.trust"]
    (statement,) = trust["statement"]
    assert hcl.value(statement["actions"], hcl.no_refs) == ["sts:AssumeRoleWithWebIdentity"]
    unq = lambda v: [unq(x) for x in v] if isinstance(v, list) else v.strip('"')  # noqa: E731
    conditions = {unq(c["variable"]): (unq(c["test"]), unq(c["values"])) for c in statement["condition"]}
    assert conditions == {
        "${local.issuer}:sub": ("StringEquals", ["system:serviceaccount:${var.namespace}:${var.service_account}"]),
        "${local.issuer}:aud": ("StringEquals", ["sts.amazonaws.com"]),
    }
    for example in ["eks-irsa", "eks-daemonset"]:
        role = hcl.blocks(hcl.load_dir(TF / "examples" / example), "module")["role"]
        assert unq(role["source"]) == "../../modules/logferry-irsa-role"
        assert unq(role["service_account"]) == "${var.service_account}" and unq(role["namespace"]) == "${var.namespace}"
        assert unq(role["policy_json"]) == "${module.iam.json}"


def test_fargate_example_compacts_what_its_router_writes():
    """The example's compactor source is the key prefix its router writes under, for its
    own cluster, and the compactor is on by default (it still needs indexer_zip_path)."""
    parsed = hcl.load_dir(TF / "examples" / "ecs-fargate")
    modules = hcl.blocks(parsed, "module")
    written = hcl.value(modules["logferry"]["s3_key_prefix"], hcl.no_refs)
    assert hcl.resources(parsed)["aws_ecs_cluster.this"]["name"] == "${var.name}"
    sources = modules["destinations"]["compact_sources"]
    assert sources == {"${(var.name)}": '"' + written.replace("{ecs_cluster}", "${var.name}") + '"'}, sources
    assert modules["destinations"]["compactor_enabled"] == "${var.compactor_enabled}"
    variables = hcl.blocks(parsed, "variable")
    assert hcl.value(variables["compactor_enabled"]["default"], hcl.no_refs) is True
    # The declared column is a field the demo app writes, with its type.
    columns = hcl.value(variables["compact_columns"]["default"], hcl.no_refs)
    assert columns == {"n": "bigint"}
    assert '\\"n\\":%d' in (TF / "examples" / "ecs-fargate" / "main.tf").read_text(), "the demo app no longer writes n"
