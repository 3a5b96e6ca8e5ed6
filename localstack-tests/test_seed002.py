"""Seed 002's architecture end to end, with the shipped manifests: app pods write files, a
sidecar Logferry (eks/sidecar-forward/) tails them and forwards over TCP with the shared key to
the node daemon (eks/daemonset/), which also tails the CRI files of `/var/log/containers`,
enriches them with pods from the Kubernetes API (an emulator), and ships both to S3 on
LocalStack.

Overrides, and only these (each must match exactly once, as in test_deploy.py): paths (logs,
data dirs, the labels file), loopback ports instead of 2020 and 24224, the API server's
endpoint (in-cluster it comes from KUBERNETES_SERVICE_HOST, over TLS), and what the kubelet
and the node provide: downward-API values, the Secret, IMDSv2 (the emulator) and
`AWS_ENDPOINT_URL`.

What could break, and is asserted: a line of either path missing; the sidecar's records
without their pod's labels (they come from the downward API in the app pod) or the daemon's
without theirs (from the watch); an excluded pod's lines shipped; the forward handshake
failing against the daemon's key; the daemon's acks coming too late for the sidecar (the
shipped flush is 60 s and the sidecar's ack_timeout 30 s: without the daemon's disk buffer
every chunk would time out and be sent again).
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import yaml

import workload
from conftest import REPO
from emulators import KubernetesApiEmulator
from test_deploy import free_port, labels_file, q, replace_once
from test_guarantees import metric

EKS = REPO / "eks"
NODE = "ip-10-0-1-23.ec2.internal"
RELAY_POD = "web-relay-6c9f8d7b5-q7x2k"
CRI_POD = "checkout-5f6d7c8b9-abcde"
EXCLUDED_POD = "noisy-7d9c5b6f4-zzzzz"


def doc(path: Path) -> dict:
    (d,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return d


def kubelet_env(container: dict, fields: dict[str, str], secret: dict[str, str]) -> dict[str, str]:
    """The container's env as the kubelet builds it: values, downward-API fields, Secret keys."""
    env = {}
    for e in container["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "fieldRef" in e["valueFrom"]:
            env[e["name"]] = fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "logferry-forward", ref
            env[e["name"]] = secret[ref["key"]]
    return env


def cri_lines(first: int, n: int, pod: str) -> str:
    """containerd's format; every fifth line is split into a P and an F part, as a runtime
    splits long lines."""
    out = []
    for i in range(first, first + n):
        line = json.dumps({"n": i, "path": "cri", "pod": pod, "msg": f"charge {i} settled"})
        ts = "2026-12-04T10:00:00.%09dZ" % (i % 1_000_000_000)
        if i % 5 == 0:
            out.append(f"{ts} stdout P {line[:20]}\n{ts} stdout F {line[20:]}\n")
        else:
            out.append(f"{ts} stdout F {line}\n")
    return "".join(out)


def test_seed_002_sidecar_and_node_files_through_the_daemon_to_s3(router, imds, s3, bucket, endpoint, tmp_path):
    key = {"shared_key": secrets.token_hex(32)}
    relay = doc(EKS / "sidecar-forward" / "deployment.yaml")["spec"]["template"]
    relay_labels = relay["metadata"]["labels"]
    with KubernetesApiEmulator() as api:
        api.put("shop", RELAY_POD, NODE, relay_labels, containers={"app": "busybox:1.37", "logferry": "logferry:0.1.0"})
        cri_pod = api.put("shop", CRI_POD, NODE, {"app": "checkout", "team": "payments"},
                          annotations={"prometheus.io/scrape": "true"}, containers={"app": "repo/checkout:3.1"})
        api.put("shop", EXCLUDED_POD, NODE, {"app": "noisy"}, annotations={"logferry.io/exclude": "true"},
                containers={"app": "repo/noisy:1"})
        api.put("shop", "elsewhere-1", "ip-10-0-9-9.ec2.internal", {"app": "elsewhere"})

        # -- the node daemon, from eks/daemonset/ --------------------------------------------
        ds = doc(EKS / "daemonset" / "daemonset.yaml")["spec"]["template"]["spec"]
        (daemon_container,) = ds["containers"]
        daemon_env = kubelet_env(daemon_container, {"spec.nodeName": NODE, "status.podIP": "127.0.0.1"}, key)
        daemon_env |= {"LOGFERRY_BUCKET": bucket, "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url,
                       "AWS_ENDPOINT_URL": endpoint}
        containers = tmp_path / "containers"
        containers.mkdir()
        daemon_api, forward_port = free_port(), free_port()
        config = doc(EKS / "daemonset" / "configmap.yaml")["data"]["logferry.toml"]
        config = replace_once(config, '"/var/log/containers/*.log"', q(containers / "*.log"), "the CRI logs")
        config = replace_once(config, '"/var/log/containers/logferry-node-', q(containers)[:-1] + "/logferry-node-",
                              "the daemon's own logs")
        config = replace_once(config, 'data_dir = "/var/lib/logferry"', f"data_dir = {q(tmp_path / 'daemon')}",
                              "the daemon's data")
        config = replace_once(config, '"127.0.0.1:2020"', f'"127.0.0.1:{daemon_api}"', "the daemon's API port")
        config = replace_once(config, ":24224\"", f':{forward_port}"', "the forward port")
        config = replace_once(config, "[sources.containers.kubernetes_api]\n",
                              f"[sources.containers.kubernetes_api]\nendpoint = {q(api.url)}\n", "the API server")
        daemon_args = list(daemon_container["args"])
        daemon_args[daemon_args.index("--config") + 1] = str(router.write_config(config, name="daemon.toml"))

        # -- the app pod's sidecar, from eks/sidecar-forward/ --------------------------------
        (sidecar_container,) = [c for c in relay["spec"]["initContainers"] if c["name"] == "logferry"]
        fields = {"metadata.name": RELAY_POD, "metadata.namespace": "shop", "metadata.uid": "3d0c5a2e-relay",
                  "spec.nodeName": NODE, "status.podIP": "10.0.1.88", "status.hostIP": "127.0.0.1"}
        sidecar_env = kubelet_env(sidecar_container, fields, key)
        assert not any(k.startswith("AWS_") for k in sidecar_env), "the app pod holds no AWS access"
        labels = tmp_path / "podinfo" / "labels"
        labels.parent.mkdir()
        labels.write_text(labels_file(relay_labels))
        sidecar_api = free_port()
        config = doc(EKS / "sidecar-forward" / "configmap.yaml")["data"]["logferry.toml"]
        config = replace_once(config, '"/var/log/app/*.log"', q(tmp_path / "app" / "*.log"), "the app's volume")
        config = replace_once(config, 'data_dir = "/var/lib/logferry"', f"data_dir = {q(tmp_path / 'sidecar')}",
                              "the sidecar's data")
        config = replace_once(config, '"127.0.0.1:2020"', f'"127.0.0.1:{sidecar_api}"', "the sidecar's API port")
        config = replace_once(config, "port = 24224\n", f"port = {forward_port}\n", "the daemon's port")
        config = replace_once(config, '"/etc/podinfo/labels"', q(labels), "the labels file")
        sidecar_args = list(sidecar_container["args"])
        sidecar_args[sidecar_args.index("--config") + 1] = str(router.write_config(config, name="sidecar.toml"))

        # -- the workload ----------------------------------------------------------------------
        app_lines, cri_n, excluded_n = 30_000, 8_000, 1_000
        (tmp_path / "app").mkdir()
        app_log = tmp_path / "app" / "app.log"
        cri_log = containers / f"{CRI_POD}_shop_app-{'a1' * 32}.log"
        excluded_log = containers / f"{EXCLUDED_POD}_shop_app-{'b2' * 32}.log"
        with open(app_log, "w") as f:
            f.writelines(f'{{"n":{i},"path":"sidecar","msg":"order {i} processed"}}\n' for i in range(app_lines // 2))
        cri_log.write_text(cri_lines(0, cri_n // 2, CRI_POD))
        excluded_log.write_text(cri_lines(10_000_000, excluded_n, EXCLUDED_POD))

        daemon = router.start_args(*daemon_args, env=daemon_env)
        sidecar = router.start_args(*sidecar_args, env=sidecar_env)
        # Half written before they start, half while they run.
        with open(app_log, "a") as f:
            f.writelines(f'{{"n":{i},"path":"sidecar","msg":"order {i} processed"}}\n'
                         for i in range(app_lines // 2, app_lines))
        with open(cri_log, "a") as f:
            f.write(cri_lines(cri_n // 2, cri_n - cri_n // 2, CRI_POD))

        def received(component: str) -> float:
            if not daemon.alive():
                raise AssertionError(f"the daemon exited ({daemon.proc.returncode}):\n{daemon.stderr[-4000:]}")
            if not sidecar.alive():
                raise AssertionError(f"the sidecar exited ({sidecar.proc.returncode}):\n{sidecar.stderr[-4000:]}")
            return metric(daemon_api, "logferry_component_received_events_total", f'[^}}]*component="{component}"[^}}]*') or 0

        workload.poll(lambda: received("sidecars") >= app_lines and received("containers") >= cri_n,
                      timeout=120, what="the daemon to receive both paths' lines", interval=0.5)
        # The sidecar's checkpoint moves with the daemon's acks: everything acknowledged.
        workload.poll(lambda: (metric(sidecar_api, "logferry_component_sent_events_total", '[^}]*component="daemon"[^}]*') or 0)
                      >= app_lines, timeout=60, what="the sidecar's chunks to be acknowledged", interval=0.5)
        timeouts = metric(sidecar_api, "logferry_sink_errors_total", '[^}]*reason="timeout"[^}]*')
        assert not timeouts, f"{timeouts} forward acks came later than ack_timeout"
        for running in (sidecar, daemon):
            stderr = running.terminate()
            assert running.returncode == 0, stderr[-4000:]
        assert "handshake" not in sidecar.stderr.lower(), sidecar.stderr[-4000:]
        assert api.watched_nodes() == {f"spec.nodeName={NODE}"}, "the daemon watches only its node's pods"

    objects = workload.S3Objects(s3, bucket).list()
    by_path: dict[str, dict[int, list]] = {"sidecar": {}, "cri": {}}
    for obj in objects:
        for r in obj.records:
            body = json.loads(r["log"]) if "log" in r else r
            by_path[body["path"]].setdefault(body["n"], []).append((obj.key, r))

    # Every line of both paths at least once; none of the excluded pod's.
    assert set(by_path["sidecar"]) == set(range(app_lines)), "sidecar lines missing"
    assert set(by_path["cri"]) == set(range(cri_n)), "CRI lines missing (or the excluded pod's shipped)"
    dupes = sum(len(v) - 1 for p in by_path.values() for v in p.values())
    assert dupes == 0, f"{dupes} duplicates without any crash"

    # The sidecar's records: its pod's labels from the downward API, keyed by its pod.
    for key_, r in (v[0] for v in by_path["sidecar"].values()):
        k8s = r["kubernetes"]
        assert k8s["labels"] == relay_labels and k8s["pod_name"] == RELAY_POD and k8s["namespace_name"] == "shop", k8s
        assert key_.startswith(f"logs/shop/{RELAY_POD}/"), key_
    # The daemon's: the path's fields plus the pod from the watch, keyed by its pod.
    for key_, r in (v[0] for v in by_path["cri"].values()):
        k8s = r["kubernetes"]
        assert k8s["labels"] == {"app": "checkout", "team": "payments"}, k8s
        assert k8s["pod_id"] == cri_pod["metadata"]["uid"] and k8s["host"] == NODE, k8s
        assert k8s["container_image"] == "repo/checkout:3.1" and k8s["container_name"] == "app", k8s
        assert k8s["annotations"] == {"prometheus.io/scrape": "true"}, k8s
        assert key_.startswith(f"logs/shop/{CRI_POD}/"), key_
    # Both went through the daemon: its node's EC2 fields (IMDSv2) on every record.
    workload.assert_fields([v[0][1] for p in by_path.values() for v in p.values()], imds.expected_fields(), "EC2")
