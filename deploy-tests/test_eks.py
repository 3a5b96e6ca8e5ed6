"""eks/: every manifest against the Kubernetes 1.29 and 1.31 schemas (strict: unknown fields
fail), the kustomizations, the sidecar contract (native and classic), and the ConfigMaps'
router configs through `logferry validate`."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pytest
import yaml

from conftest import REPO, assert_valid

EKS = REPO / "eks"
# kustomization.yaml files are kustomize's, not API objects.
MANIFESTS = sorted(p for p in EKS.rglob("*.yaml") if p.name != "kustomization.yaml")
KUSTOMIZATIONS = sorted(EKS.rglob("kustomization.yaml"))
KUBERNETES_VERSIONS = ["1.29", "1.31"]
# What the router's kubernetes enrichment reads (its defaults, from the source).
METADATA_RS = REPO / "router" / "src" / "transforms" / "enrich" / "metadata" / "mod.rs"
HEALTHCHECK = ["/usr/local/bin/logferry", "healthcheck"]
# (deployment, configmap, variant) per sidecar flavour.
VARIANTS = [
    (EKS / "deployment.yaml", EKS / "configmap.yaml", "native"),
    (EKS / "classic" / "deployment.yaml", EKS / "classic" / "configmap.yaml", "classic"),
    # Seed 002: the sidecar forwards to the node daemon (eks/daemonset/).
    (EKS / "sidecar-forward" / "deployment.yaml", EKS / "sidecar-forward" / "configmap.yaml", "forward"),
]


def rel(p: Path) -> str:
    return str(p.relative_to(REPO))


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def pod_spec(deployment: Path) -> dict:
    (dep,) = docs(deployment)
    return dep["spec"]["template"]["spec"]


def router_container(spec: dict, variant: str) -> dict:
    pool = spec.get("initContainers", []) if variant in ("native", "forward") else spec["containers"]
    (router,) = [c for c in pool if c["name"] == "logferry"]
    return router


def configmap_config(path: Path) -> str:
    (cm,) = docs(path)
    return cm["data"]["logferry.toml"]


def router_defaults() -> tuple[set[str], str]:
    """The downward-API env var names and the labels file path the router reads by default."""
    src = METADATA_RS.read_text()
    names = set(re.findall(r'^\s+\w+: "([A-Z_]+)"\.to_owned\(\),', src, re.M))
    labels = re.search(r'pub const DEFAULT_LABELS_FILE: &str = "([^"]+)";', src)
    assert names and labels, f"cannot find the kubernetes defaults in {rel(METADATA_RS)}"
    return names, labels.group(1)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=rel)
def test_manifest_is_valid_for_kubernetes(path, version):
    import kubernetes_validate

    for doc in docs(path):
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{rel(path)} ({doc.get('kind')}) is not valid for Kubernetes {version}: {e}")


def test_the_validator_rejects_a_misspelt_field():
    import kubernetes_validate

    (dep,) = docs(EKS / "deployment.yaml")
    dep["spec"]["template"]["spec"]["initContainers"][0]["restartPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, "1.31", strict=True)


@pytest.mark.parametrize("path", KUSTOMIZATIONS, ids=rel)
def test_kustomization_resources_exist(path):
    (k,) = docs(path)
    assert k["kind"] == "Kustomization"
    for res in k["resources"]:
        target = (path.parent / res).resolve()
        assert target.is_file() or (target / "kustomization.yaml").is_file(), f"{rel(path)}: {res} does not exist"


def test_irsa_overlay_names_the_service_account_it_ships():
    (k,) = docs(EKS / "irsa" / "kustomization.yaml")
    (sa,) = docs(EKS / "irsa" / "serviceaccount.yaml")
    assert sa["kind"] == "ServiceAccount"
    assert re.fullmatch(r"arn:aws:iam::\d{12}:role/.+", sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"])
    (patch,) = k["patches"]
    (dep,) = docs(EKS / "deployment.yaml")
    assert patch["target"] == {"kind": "Deployment", "name": dep["metadata"]["name"]}
    ops = yaml.safe_load(patch["patch"])
    assert {"op": "add", "path": "/spec/template/spec/serviceAccountName", "value": sa["metadata"]["name"]} in ops


@pytest.mark.parametrize("deployment,configmap,variant", VARIANTS, ids=[v[2] for v in VARIANTS])
def test_sidecar_contract(deployment, configmap, variant):
    spec = pod_spec(deployment)
    router = router_container(spec, variant)
    if variant in ("native", "forward"):
        assert router["restartPolicy"] == "Always", "a native sidecar is an init container with restartPolicy Always"
        assert not spec.get("shareProcessNamespace")
    else:
        assert spec["shareProcessNamespace"] is True
        assert "process_gone" in configmap_config(configmap)

    # The config it mounts is the ConfigMap of its variant.
    (cm,) = docs(configmap)
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m for m in router["volumeMounts"]}
    config_arg = router["args"][router["args"].index("--config") + 1]
    (config_mount,) = [m for m in mounts.values() if config_arg.startswith(m["mountPath"] + "/")]
    assert volumes[config_mount["name"]]["configMap"]["name"] == cm["metadata"]["name"]

    # Downward API: exactly the env vars and labels file the router reads.
    names, labels_file = router_defaults()
    env = {e["name"]: e for e in router["env"]}
    assert names <= set(env), f"missing downward-API env: {names - set(env)}"
    (podinfo,) = [m for m in mounts.values() if labels_file.startswith(m["mountPath"] + "/")]
    items = volumes[podinfo["name"]]["downwardAPI"]["items"]
    assert {"path": Path(labels_file).name, "fieldRef": {"fieldPath": "metadata.labels"}} in items
    config = configmap_config(configmap)
    assert f'labels_file = "{labels_file}"' in config
    app = [c for c in spec["containers"] if c["name"] != "logferry"]
    assert env["CONTAINER_NAME"]["value"] in {c["name"] for c in app}

    # The shared log volume: written by the app, read-only for the router, and the glob in it.
    (include,) = re.findall(r'include = \["([^"]+)"\]', config)
    (logs,) = [m for m in mounts.values() if include.startswith(m["mountPath"] + "/")]
    assert logs["readOnly"] is True
    assert any(m["name"] == logs["name"] and not m.get("readOnly") for c in app for m in c["volumeMounts"])
    # data_dir is a writable volume (the root file system is read-only).
    (data_dir,) = re.findall(r'data_dir = "([^"]+)"', config)
    assert mounts_at(router, data_dir) and not mounts_at(router, data_dir).get("readOnly")

    # Probes: the API is on loopback, so they exec the binary's healthcheck, on the API's port.
    (api,) = re.findall(r'address = "(127\.0\.0\.1:\d+)"', config)
    assert router["livenessProbe"]["exec"]["command"][:2] == HEALTHCHECK
    ready = router["readinessProbe"]["exec"]["command"]
    assert ready[:2] == HEALTHCHECK and ready[ready.index("--url") + 1] == f"http://{api}/readyz"
    assert api == "127.0.0.1:2020", "the healthcheck's default URL is http://127.0.0.1:2020/healthz"

    # Resources and hardening.
    assert router["resources"]["requests"] == {"cpu": "50m", "memory": "64Mi"}
    assert router["resources"]["limits"]["memory"] == "128Mi"
    sc = router["securityContext"]
    assert sc["runAsNonRoot"] and sc["runAsUser"] != 0 and sc["readOnlyRootFilesystem"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False


def mounts_at(container: dict, path: str) -> dict:
    return next((m for m in container["volumeMounts"] if m["mountPath"] == path), {})


@pytest.mark.parametrize("deployment,configmap,variant", VARIANTS, ids=[v[2] for v in VARIANTS])
def test_configmap_config_passes_logferry_validate(deployment, configmap, variant, validate):
    router = router_container(pod_spec(deployment), variant)
    # The literal env of the container (LOGFERRY_BUCKET feeds ${LOGFERRY_BUCKET}); what the
    # kubelet fills in (downward API, Secrets) gets a stand-in.
    env = {e["name"]: e.get("value", "10.0.1.23") for e in router["env"]}
    result = validate(configmap_config(configmap), f"eks-{variant}.toml", env)
    assert_valid(result, rel(configmap))


# -- node daemon (eks/daemonset/) ------------------------------------------------------------

DAEMON = EKS / "daemonset"


def daemon_parts() -> tuple[dict, dict, str]:
    (ds,) = docs(DAEMON / "daemonset.yaml")
    spec = ds["spec"]["template"]["spec"]
    (router,) = spec["containers"]
    return spec, router, configmap_config(DAEMON / "configmap.yaml")


def test_daemonset_node_contract():
    spec, router, config = daemon_parts()
    (k,) = docs(DAEMON / "kustomization.yaml")
    assert set(k["resources"]) == {p.name for p in DAEMON.glob("*.yaml") if p.name != "kustomization.yaml"}
    (sa,) = docs(DAEMON / "serviceaccount.yaml")
    assert spec["serviceAccountName"] == sa["metadata"]["name"]
    assert spec["automountServiceAccountToken"] is False and sa["automountServiceAccountToken"] is False
    assert spec["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in spec["tolerations"], "must run on every node, whatever its taints"
    assert not spec.get("hostNetwork") and not spec.get("hostPID")

    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in router["volumeMounts"]}
    # /var/log read-only at the host's own path, so /var/log/containers symlinks resolve.
    varlog = mounts["/var/log"]
    assert varlog["readOnly"] is True and volumes[varlog["name"]]["hostPath"]["path"] == "/var/log"
    (include,) = re.findall(r'include = \["([^"]+)"\]', config)
    assert include == "/var/log/containers/*.log"
    assert 'parser = "cri"' in config and 'kubernetes_metadata = "api"' in config
    assert re.search(r"^kubernetes = false$", config, re.M), "the downward API would describe the daemon itself"
    # Checkpoints on the host, writable.
    (data_dir,) = re.findall(r'data_dir = "([^"]+)"', config)
    data = mounts[data_dir]
    assert not data.get("readOnly") and volumes[data["name"]]["hostPath"]["path"] == data_dir
    # The config is this ConfigMap.
    (cm,) = docs(DAEMON / "configmap.yaml")
    config_arg = router["args"][router["args"].index("--config") + 1]
    assert volumes[mounts[str(Path(config_arg).parent)]["name"]]["configMap"]["name"] == cm["metadata"]["name"]

    # Its own logs are excluded: the daemon's pods are <daemonset>-xxxxx, container logferry.
    (ds,) = docs(DAEMON / "daemonset.yaml")
    (exclude,) = re.findall(r'exclude = \["([^"]+)"\]', config)
    own = f"/var/log/containers/{ds['metadata']['name']}-x7k2p_kube-system_{router['name']}-{'a' * 64}.log"
    other = f"/var/log/containers/web-1_prod_app-{'a' * 64}.log"
    assert fnmatch.fnmatchcase(own, exclude) and not fnmatch.fnmatchcase(other, exclude)
    assert "{kubernetes.namespace_name}/{kubernetes.pod_name}/" in config

    # Probes on the loopback API; resources; hardening (uid 0 without capabilities).
    (api,) = re.findall(r'address = "(127\.0\.0\.1:\d+)"', config)
    assert router["livenessProbe"]["exec"]["command"][:2] == HEALTHCHECK
    ready = router["readinessProbe"]["exec"]["command"]
    assert ready[:2] == HEALTHCHECK and ready[ready.index("--url") + 1] == f"http://{api}/readyz"
    assert router["resources"]["requests"] and router["resources"]["limits"]["memory"]
    sc = router["securityContext"]
    assert sc["readOnlyRootFilesystem"] and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}, "reads root-owned logs as their owner, no capability needed"
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"


def test_daemonset_reads_its_node_pods_with_the_least_rbac():
    spec, router, config = daemon_parts()
    (sa,) = docs(DAEMON / "serviceaccount.yaml")
    role, binding = docs(DAEMON / "rbac.yaml")
    assert role["kind"] == "ClusterRole" and binding["kind"] == "ClusterRoleBinding"
    # get/list/watch on pods and namespaces, nothing more.
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods", "namespaces"], "verbs": ["get", "list", "watch"]}]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role["metadata"]["name"]}
    (k,) = docs(DAEMON / "kustomization.yaml")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": k["namespace"]}]
    # The node from the downward API; the router's default for node_name is $NODE_NAME.
    env = {e["name"]: e for e in router["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert 'kubernetes_metadata = "api"' in config and "[sources.containers.kubernetes_api]" in config
    assert "endpoint" not in config.split("[sources.containers.kubernetes_api]")[1].split("[")[0], "in-cluster default"
    # Token and CA projected where in-cluster clients look, read-only; no automount.
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in router["volumeMounts"]}
    sa_mount = mounts["/var/run/secrets/kubernetes.io/serviceaccount"]
    assert sa_mount["readOnly"] is True
    sources = volumes[sa_mount["name"]]["projected"]["sources"]
    assert {"serviceAccountToken"} <= {k for s in sources for k in s}
    assert any(s.get("configMap", {}).get("name") == "kube-root-ca.crt" for s in sources)


def test_daemonset_takes_sidecars_on_the_node_port():
    _, router, config = daemon_parts()
    (address,) = re.findall(r'address = "(\$\{POD_IP[^"]*)"', config)
    port = int(address.rsplit(":", 1)[1])
    (p,) = router["ports"]
    assert p["containerPort"] == p["hostPort"] == port and p["protocol"] == "TCP"
    env = {e["name"]: e for e in router["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert re.search(r'inputs = \["containers", "sidecars"\]', config)
    (np,) = docs(DAEMON / "networkpolicy.yaml")
    (rule,) = np["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": port}], "nothing else is open"


def test_forwarding_sidecars_and_the_daemon_agree(validate):
    """Seed 002: eks/sidecar-forward/'s sidecar reaches the daemon's forward source, proves the
    same Secret's key, and is acknowledged before its ack_timeout (the daemon's S3 sink has a
    disk buffer: acks on fsync, not after its 60 s flush and the upload)."""
    _, daemon, daemon_config = daemon_parts()
    spec = pod_spec(EKS / "sidecar-forward" / "deployment.yaml")
    sidecar = router_container(spec, "forward")
    config = configmap_config(EKS / "sidecar-forward" / "configmap.yaml")
    (address,) = re.findall(r'address = "(\$\{POD_IP[^"]*)"', daemon_config)
    assert re.search(rf'^port = {address.rsplit(":", 1)[1]}$', config, re.M)
    assert 'host = "${NODE_IP}"' in config
    env = {e["name"]: e for e in sidecar["env"]}
    assert env["NODE_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    denv = {e["name"]: e for e in daemon["env"]}
    for text, e in ((config, env), (daemon_config, denv)):
        assert 'shared_key = "${FORWARD_SHARED_KEY}"' in text
        assert e["FORWARD_SHARED_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "logferry-forward", "key": "shared_key"}
    assert "require_ack = true" in config and "ack_timeout" not in config
    archive = daemon_config.split("[sinks.archive]")[1]
    assert re.search(r'^buffer = \{ type = "disk"', archive, re.M), "acks would wait for the 60 s flush"
    # The pod holds no AWS access: its egress is the daemon's port only.
    (np,) = docs(EKS / "sidecar-forward" / "networkpolicy.yaml")
    assert np["spec"]["egress"] == [{"ports": [{"protocol": "TCP", "port": int(address.rsplit(":", 1)[1])}]}]


def test_daemonset_config_passes_logferry_validate(validate):
    _, router, config = daemon_parts()
    env = {e["name"]: e.get("value", "10.0.1.23") for e in router["env"]}
    assert_valid(validate(config, "eks-daemonset.toml", env), rel(DAEMON / "configmap.yaml"))
