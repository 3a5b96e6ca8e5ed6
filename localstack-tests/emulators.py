"""Stand-ins for the AWS endpoints that only exist *inside* AWS.

LocalStack emulates the regional services (S3, Logs, Firehose, ...), but not the link-local
endpoints a sidecar talks to on the host it runs on: the EC2 instance metadata service
(IMDSv2, which is also where the SDK gets instance-profile credentials) and the ECS task
metadata endpoint v4. The router and the AWS SDK inside it reach both through environment
variables (`AWS_EC2_METADATA_SERVICE_ENDPOINT`, `ECS_CONTAINER_METADATA_URI_V4`), so a tiny
HTTP server on 127.0.0.1 with responses shaped like AWS's documented examples is enough to
run the real binary as if it were on EC2, Fargate or an EKS node.

Why stdlib `http.server` in a thread: nothing to install, no event loop shared with pytest, port
0 so tests never collide, and every request is recorded so a test can prove *what the router
asked for* (e.g. that the SDK really read `iam/security-credentials/<role>` and so really used
the instance profile rather than some credential that leaked in from the environment).

Each emulator exposes the values it serves as attributes and as `expected_fields()` (the
record fields the router derives from them), so tests assert against the emulator and not
against copies of literals.
"""

from __future__ import annotations

import json
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

__all__ = ["Request", "ImdsEmulator", "EcsMetadataEmulator", "KubernetesApiEmulator", "TcpProxy"]


@dataclass(frozen=True)
class Request:
    """One request an emulator received, as the client sent it."""

    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    status: int = 0
    time: float = field(default_factory=time.time)


@dataclass
class _Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain"
    headers: dict[str, str] = field(default_factory=dict)


def _utc(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Emulator:
    """A threaded HTTP/1.1 server on 127.0.0.1:0 that hands each request to `self._handle`.

    HTTP/1.1 with Content-Length on every answer, because the SDK's clients keep connections
    alive; daemon threads, so a test that forgets `close()` cannot hang the interpreter.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[Request] = []
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "EC2ws" if isinstance(emulator, ImdsEmulator) else "ecs-agent"
            sys_version = ""

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    resp = emulator._handle(self.command, self.path, headers)
                except Exception as e:  # a bug here must show up as a 500, not a hang
                    resp = _Response(500, f"emulator error: {e!r}".encode())
                emulator._record(Request(self.command, self.path, headers, resp.status))
                self.send_response(resp.status)
                self.send_header("Content-Type", resp.content_type)
                self.send_header("Content-Length", str(len(resp.body)))
                for k, v in resp.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(resp.body)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _serve

            def log_message(self, format, *args):  # noqa: A002 - keep pytest output clean
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # close() waits up to one interval
            name=type(self).__name__,
            daemon=True,
        )
        self._thread.start()

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- what was asked ----------------------------------------------------------------------

    def _record(self, req: Request) -> None:
        with self._lock:
            self._requests.append(req)

    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._requests)

    def paths(self, method: str | None = None, status: int | None = None) -> list[str]:
        return [
            r.path
            for r in self.requests
            if (method is None or r.method == method) and (status is None or r.status == status)
        ]

    def served(self, path: str) -> bool:
        """Whether `path` was answered with 200 at least once."""
        return path in self.paths(status=200)

    def _handle(self, method: str, path: str, headers: dict[str, str]) -> _Response:
        raise NotImplementedError


class ImdsEmulator(_Emulator):
    """EC2 instance metadata service, IMDSv2 only (as a hardened instance has it).

    Token flow as on EC2: `PUT /latest/api/token` with `x-aws-ec2-metadata-token-ttl-seconds`
    (1..21600) returns a token and echoes the TTL in the same response header (the AWS SDKs
    refuse a token response without it); every GET must carry `x-aws-ec2-metadata-token`,
    else 401. A PUT carrying `X-Forwarded-For` is refused with 403, like the real service does
    to stop proxied token requests. Unknown paths answer 404.

    The role's credentials are served under `iam/security-credentials/<role>` (and under the
    newer `iam/security-credentials-extended/<role>` that some SDKs try first), so the
    SDK's instance-profile provider works against it. `allow_v1=True` serves GETs without a
    token too (IMDSv1), for tests of the fallback.
    """

    TTL_HEADER = "x-aws-ec2-metadata-token-ttl-seconds"
    TOKEN_HEADER = "x-aws-ec2-metadata-token"

    def __init__(
        self,
        role: str = "logferry-node-role",
        *,
        instance_id: str = "i-0abc1234def567890",
        instance_type: str = "m6i.large",
        region: str = "us-east-1",
        availability_zone: str = "us-east-1a",
        private_ip: str = "10.0.1.23",
        ami_id: str = "ami-0abcdef1234567890",
        account_id: str = "123456789012",
        allow_v1: bool = False,
    ) -> None:
        self.role = role
        self.instance_id = instance_id
        self.instance_type = instance_type
        self.region = region
        self.availability_zone = availability_zone
        self.private_ip = private_ip
        self.ami_id = ami_id
        self.account_id = account_id
        self.hostname = f"ip-{private_ip.replace('.', '-')}.ec2.internal"
        self.allow_v1 = allow_v1
        now = datetime.now(timezone.utc).replace(microsecond=0)
        # Shaped like real instance-profile credentials; LocalStack accepts any key and maps
        # "ASIA..." keys to its default account.
        self.access_key_id = "ASIA" + secrets.token_hex(8).upper()
        self.secret_access_key = secrets.token_urlsafe(30)
        self.session_token = "IQoJb3JpZ2luX2VjE" + secrets.token_urlsafe(96)
        self.credentials_last_updated = _utc(now)
        self.credentials_expiration = _utc(now + timedelta(hours=6))
        self._tokens: dict[str, float] = {}  # token -> expiry (monotonic)
        self._documents = self._build_documents()
        super().__init__()

    def expected_fields(self) -> dict[str, str]:
        """The EC2 fields the router's enrich transform adds, from what this emulator serves."""
        return {
            "ec2_instance_id": self.instance_id,
            "ec2_instance_type": self.instance_type,
            "az": self.availability_zone,
            "private_ip": self.private_ip,
            "ami_id": self.ami_id,
            "account_id": self.account_id,
            "hostname": self.hostname,
        }

    @property
    def credentials_path(self) -> str:
        return f"/latest/meta-data/iam/security-credentials/{self.role}"

    def credentials_served(self) -> bool:
        """Whether the role's credentials were handed out (by either credentials path)."""
        extended = f"/latest/meta-data/iam/security-credentials-extended/{self.role}"
        return self.served(self.credentials_path) or self.served(extended)

    def _build_documents(self) -> dict[str, tuple[str, str]]:
        creds = {
            "Code": "Success",
            "LastUpdated": self.credentials_last_updated,
            "Type": "AWS-HMAC",
            "AccessKeyId": self.access_key_id,
            "SecretAccessKey": self.secret_access_key,
            "Token": self.session_token,
            "Expiration": self.credentials_expiration,
        }
        extended = dict(creds, AccountId=self.account_id)
        info = {
            "Code": "Success",
            "LastUpdated": self.credentials_last_updated,
            "InstanceProfileArn": f"arn:aws:iam::{self.account_id}:instance-profile/{self.role}",
            "InstanceProfileId": "AIPA" + secrets.token_hex(8).upper(),
        }
        identity = {
            "accountId": self.account_id,
            "architecture": "x86_64",
            "availabilityZone": self.availability_zone,
            "billingProducts": None,
            "devpayProductCodes": None,
            "marketplaceProductCodes": None,
            "imageId": self.ami_id,
            "instanceId": self.instance_id,
            "instanceType": self.instance_type,
            "kernelId": None,
            "pendingTime": "2026-01-05T08:12:44Z",
            "privateIp": self.private_ip,
            "ramdiskId": None,
            "region": self.region,
            "version": "2017-09-30",
        }
        md = "/latest/meta-data/"
        text = "text/plain"
        docs = {
            md: (
                "ami-id\navailability-zone\nhostname\niam/\ninstance-id\ninstance-type\n"
                "local-hostname\nlocal-ipv4\nplacement/",
                text,
            ),
            md + "instance-id": (self.instance_id, text),
            md + "instance-type": (self.instance_type, text),
            md + "placement/": ("availability-zone\nregion", text),
            md + "placement/availability-zone": (self.availability_zone, text),
            md + "placement/region": (self.region, text),
            md + "local-ipv4": (self.private_ip, text),
            md + "ami-id": (self.ami_id, text),
            md + "local-hostname": (self.hostname, text),
            md + "hostname": (self.hostname, text),
            md + "iam/": ("info\nsecurity-credentials/", text),
            md + "iam/info": (json.dumps(info, indent=2), text),
            md + "iam/security-credentials/": (self.role, text),
            md + f"iam/security-credentials/{self.role}": (json.dumps(creds, indent=2), text),
            md + "iam/security-credentials-extended/": (self.role, text),
            md + f"iam/security-credentials-extended/{self.role}": (
                json.dumps(extended, indent=2),
                text,
            ),
            "/latest/dynamic/instance-identity/document": (json.dumps(identity, indent=2), text),
        }
        return docs

    def _handle(self, method: str, path: str, headers: dict[str, str]) -> _Response:
        path = path.split("?", 1)[0]
        if path == "/latest/api/token":
            if method != "PUT":
                return _Response(405, b"Method Not Allowed")
            if "x-forwarded-for" in headers:
                return _Response(403, b"Forbidden")
            try:
                ttl = int(headers.get(self.TTL_HEADER, ""))
            except ValueError:
                return _Response(400, b"Bad Request")
            if not 1 <= ttl <= 21600:
                return _Response(400, b"Bad Request")
            token = "AQAEA" + secrets.token_urlsafe(40)
            with self._lock:
                self._tokens[token] = time.monotonic() + ttl
            return _Response(200, token.encode(), headers={self.TTL_HEADER: str(ttl)})
        if method not in ("GET", "HEAD"):
            return _Response(405, b"Method Not Allowed")
        token = headers.get(self.TOKEN_HEADER)
        if token is not None or not self.allow_v1:
            with self._lock:
                expiry = self._tokens.get(token or "")
            if expiry is None or expiry < time.monotonic():
                return _Response(401, b"Unauthorized")
        doc = self._documents.get(path)
        if doc is None:
            return _Response(404, b"Not Found")
        body, ctype = doc
        return _Response(200, body.encode(), content_type=ctype)


class EcsMetadataEmulator(_Emulator):
    """ECS task metadata endpoint v4, shaped like AWS's documented Fargate example.

    `GET /v4/<id>` answers the calling container's own document (the router, named
    `log_router`); `GET /v4/<id>/task` the task with its two containers, `log_router` and the
    application `app`. `/stats` and `/task/stats` answer `{}`. `.uri` is the value the agent
    puts in `ECS_CONTAINER_METADATA_URI_V4`.
    """

    def __init__(
        self,
        *,
        cluster: str = "default",
        task_id: str = "e9028f8d5d8e4f258373e7b93ce9a3c3",
        family: str = "curltest",
        revision: str = "3",
        region: str = "us-west-2",
        account_id: str = "111122223333",
        availability_zone: str = "us-west-2a",
        launch_type: str = "FARGATE",
        router_container: str = "log_router",
        app_container: str = "app",
        endpoint_id: str | None = None,
    ) -> None:
        self.cluster = cluster
        self.cluster_arn = f"arn:aws:ecs:{region}:{account_id}:cluster/{cluster}"
        self.task_id = task_id
        self.task_arn = f"arn:aws:ecs:{region}:{account_id}:task/{cluster}/{task_id}"
        self.family = family
        self.revision = revision
        self.task_definition = f"{family}:{revision}"
        self.region = region
        self.account_id = account_id
        self.availability_zone = availability_zone
        self.launch_type = launch_type
        self.router_container_name = router_container
        self.router_container_id = f"{task_id}-1875915406"
        self.app_container_name = app_container
        self.app_container_id = f"{task_id}-2495160603"
        self.endpoint_id = endpoint_id or f"{task_id}-1875915406"
        self._router_doc = self._container(self.router_container_name, self.router_container_id, 1)
        self._app_doc = self._container(self.app_container_name, self.app_container_id, 2)
        super().__init__()

    @property
    def uri(self) -> str:
        return f"{self.url}/v4/{self.endpoint_id}"

    def expected_fields(self) -> dict[str, str]:
        """The ECS fields the router's enrich transform adds, from what this emulator serves."""
        return {
            "ecs_cluster": self.cluster,
            "ecs_task_arn": self.task_arn,
            "ecs_task_id": self.task_id,
            "ecs_task_definition": self.task_definition,
            "container_name": self.app_container_name,
            "container_id": self.app_container_id,
            "aws_region": self.region,
            "availability_zone": self.availability_zone,
            "launch_type": self.launch_type,
        }

    def _container(self, name: str, docker_id: str, index: int) -> dict:
        return {
            "DockerId": docker_id,
            "Name": name,
            "DockerName": name,
            "Image": f"{self.account_id}.dkr.ecr.{self.region}.amazonaws.com/{name}:latest",
            "ImageID": "sha256:" + secrets.token_hex(32),
            "Labels": {
                "com.amazonaws.ecs.cluster": self.cluster_arn,
                "com.amazonaws.ecs.container-name": name,
                "com.amazonaws.ecs.task-arn": self.task_arn,
                "com.amazonaws.ecs.task-definition-family": self.family,
                "com.amazonaws.ecs.task-definition-version": self.revision,
            },
            "DesiredStatus": "RUNNING",
            "KnownStatus": "RUNNING",
            "Limits": {"CPU": 2, "Memory": 512 if index == 2 else 64},
            "CreatedAt": "2026-01-05T08:12:44.44527186Z",
            "StartedAt": "2026-01-05T08:12:45.44527186Z",
            "Type": "NORMAL",
            "ContainerARN": f"arn:aws:ecs:{self.region}:{self.account_id}:container/"
            f"{self.cluster}/{self.task_id}/{secrets.token_hex(16)}",
            "LogDriver": "awslogs",
            "LogOptions": {
                "awslogs-group": f"/ecs/{self.family}",
                "awslogs-region": self.region,
                "awslogs-stream": f"ecs/{name}/{self.task_id}",
            },
            "Networks": [
                {
                    "NetworkMode": "awsvpc",
                    "IPv4Addresses": ["192.0.2.3"],
                    "AttachmentIndex": 0,
                    "MACAddress": "0a:de:f6:10:51:e5",
                    "IPv4SubnetCIDRBlock": "192.0.2.0/24",
                    "DomainNameServers": ["192.0.2.2"],
                    "DomainNameSearchList": [f"{self.region}.compute.internal"],
                    "PrivateDNSName": f"ip-192-0-2-3.{self.region}.compute.internal",
                    "SubnetGatewayIpv4Address": "192.0.2.1/24",
                }
            ],
        }

    def task_document(self) -> dict:
        return {
            "Cluster": self.cluster_arn,
            "TaskARN": self.task_arn,
            "Family": self.family,
            "Revision": self.revision,
            "DesiredStatus": "RUNNING",
            "KnownStatus": "RUNNING",
            "Limits": {"CPU": 0.25, "Memory": 512},
            "PullStartedAt": "2026-01-05T08:12:30.053330955Z",
            "PullStoppedAt": "2026-01-05T08:12:40.592684631Z",
            "AvailabilityZone": self.availability_zone,
            "LaunchType": self.launch_type,
            "Containers": [self._router_doc, self._app_doc],
            "ClockDrift": {
                "ClockErrorBound": 0.5458234999999999,
                "ReferenceTimestamp": "2026-01-05T08:12:00Z",
                "ClockSynchronizationStatus": "SYNCHRONIZED",
            },
            "EphemeralStorageMetrics": {"Utilized": 261, "Reserved": 20496},
        }

    def set_app_status(self, status: str) -> None:
        """What ECS shows once the application container exits: `KnownStatus` (and, for a
        stopped container, `DesiredStatus`) become `STOPPED`, with an exit code."""
        self._app_doc["KnownStatus"] = status
        if status == "STOPPED":
            self._app_doc["DesiredStatus"] = "STOPPED"
            self._app_doc["ExitCode"] = 0
            self._app_doc["FinishedAt"] = _utc(datetime.now(timezone.utc))

    def _handle(self, method: str, path: str, headers: dict[str, str]) -> _Response:
        path = path.split("?", 1)[0].rstrip("/")
        base = f"/v4/{self.endpoint_id}"
        if method not in ("GET", "HEAD"):
            return _Response(405, b"Method Not Allowed")
        answers: dict[str, Callable[[], object]] = {
            base: lambda: self._router_doc,
            base + "/task": self.task_document,
            base + "/stats": dict,
            base + "/task/stats": dict,
        }
        make = answers.get(path)
        if make is None:
            return _Response(404, b"404 page not found")
        return _Response(200, json.dumps(make(), indent=2).encode(), "application/json")


class TcpProxy:
    """A loopback TCP forwarder to `target` that can be taken down and brought back on the
    same port: the router's `endpoint_url` points here, so a test can cut the sink off (the
    port refuses connections and open connections are reset) without stopping LocalStack,
    whose state would not survive a restart.
    """

    def __init__(self, target: str) -> None:
        host, _, port = target.replace("http://", "").rstrip("/").rpartition(":")
        self.target = (host or "127.0.0.1", int(port))
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def is_up(self) -> bool:
        return self._listener is not None

    def up(self) -> None:
        with self._lock:
            if self._listener is not None:
                return
            ls = socket.socket()
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            ls.bind(("127.0.0.1", self.port))
            ls.listen(64)
            self._listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def down(self) -> None:
        with self._lock:
            ls, self._listener = self._listener, None
            conns, self._conns = self._conns, []
        if ls is not None:
            try:
                ls.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            ls.close()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def close(self) -> None:
        self.down()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not ls:
                    client.close()
                    upstream.close()
                    return
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class KubernetesApiEmulator:
    """The slice of the Kubernetes API a node daemon uses: `GET /api/v1/pods` with a
    `fieldSelector=spec.nodeName=<node>`, as a list (a `PodList` with its resourceVersion) and as
    a watch (newline-delimited `{"type", "object"}` events, chunked, held open like the API
    server holds it). Pods are added with `put`; open watches are sent the change. Every request
    is recorded, with its bearer token, so a test can prove the router watched only its node.

    Not `_Emulator`: a watch is a response without Content-Length that stays open."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._rv = 1
        self._pods: dict[tuple[str, str], dict] = {}
        self._events: list[tuple[int, str, dict]] = []
        self._closing = False
        self.requests: list[Request] = []
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            sys_version = ""

            def do_GET(self) -> None:  # noqa: N802
                from urllib.parse import parse_qs, urlsplit

                url = urlsplit(self.path)
                q = {k: v[0] for k, v in parse_qs(url.query).items()}
                headers = {k.lower(): v for k, v in self.headers.items()}
                with emulator._cond:
                    emulator.requests.append(Request("GET", self.path, headers, 200))
                if url.path != "/api/v1/pods":
                    return self._json(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
                node = q.get("fieldSelector", "").removeprefix("spec.nodeName=")
                if q.get("watch") not in ("true", "1"):
                    with emulator._cond:
                        items = [p for p in emulator._pods.values() if p["spec"].get("nodeName") == node]
                        rv = emulator._rv
                    return self._json(200, {"kind": "PodList", "apiVersion": "v1",
                                            "metadata": {"resourceVersion": str(rv)}, "items": items})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                since = int(q.get("resourceVersion") or 0)
                deadline = time.monotonic() + min(float(q.get("timeoutSeconds") or 60), 60)
                try:
                    while time.monotonic() < deadline:
                        with emulator._cond:
                            news = [e for e in emulator._events if e[0] > since]
                            if not news and not emulator._closing:
                                emulator._cond.wait(0.2)
                                continue
                            if emulator._closing:
                                break
                        for rv, kind, pod in news:
                            since = rv
                            if pod["spec"].get("nodeName") == node:
                                line = json.dumps({"type": kind, "object": pod}).encode() + b"\n"
                                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:
                    pass

            def _json(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format, *args):  # noqa: A002
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="KubernetesApiEmulator", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def put(self, namespace: str, name: str, node: str, labels: dict[str, str],
            annotations: dict[str, str] | None = None, containers: dict[str, str] | None = None,
            uid: str | None = None) -> dict:
        """Adds (or replaces) a pod; returns it as served."""
        with self._cond:
            self._rv += 1
            key = (namespace, name)
            pod = {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace, "uid": uid or secrets.token_hex(8),
                             "resourceVersion": str(self._rv), "labels": labels,
                             "annotations": annotations or {}},
                "spec": {"nodeName": node,
                         "containers": [{"name": c, "image": i} for c, i in (containers or {}).items()]},
            }
            kind = "MODIFIED" if key in self._pods else "ADDED"
            self._pods[key] = pod
            self._events.append((self._rv, kind, pod))
            self._cond.notify_all()
            return pod

    def watched_nodes(self) -> set[str]:
        from urllib.parse import parse_qs, urlsplit

        return {parse_qs(urlsplit(r.path).query).get("fieldSelector", [""])[0] for r in self.requests}

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
