"""The application side of a sidecar scenario, and the checks on what came out.

An end-to-end test is only as good as its workload: it has to look like an application that
writes logs *while* the router runs (growing files, a JSON log and a plain-text log, a rotation
mid-run), and its check has to be exact (every line present, exactly once, carrying the
metadata of where it came from). Both halves live here so the `file`-sink tests that pass
today and the `s3`-sink scenarios share one definition of "delivered".

Waiting is always polling against a deadline: the deadline is a hang guard sized for a slow,
noisy 2-core machine, never the expected duration.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")

TEXT_ID = re.compile(r"\bid=(txt-\d{6})\b")
# <prefix>YYYY/MM/DD/HH/MM/<name>.ndjson.gz; the name is the router's (uuidv7), never hidden.
TIME_KEY = re.compile(r"(\d{4})/(\d{2})/(\d{2})/(\d{2})/(\d{2})/([^/.][^/]*)\.ndjson\.gz$")


class PollTimeout(AssertionError):
    """A `poll` ran out of time (as opposed to a check that failed outright)."""


def poll(
    check: Callable[[], T],
    *,
    timeout: float,
    what: str,
    interval: float = 0.25,
) -> T:
    """Calls `check` until it returns something truthy; fails after `timeout` seconds.

    `timeout` is a hang guard, not an expectation: a passing run returns as soon as the
    condition holds. The last falsy value (or exception) is put in the failure message.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            got = check()
            if got:
                return got
            last = got
        except AssertionError:
            raise
        except Exception as e:  # transient (e.g. a listing racing a write): keep polling
            last = e
        if time.monotonic() >= deadline:
            raise PollTimeout(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


def wait_for_open(router, path: Path, timeout: float = 60.0) -> None:
    """Waits until the running router (conftest.RunningRouter) holds `path` open (Linux /proc).

    A rename-rotation is only safe for lines the router will still read through its open
    descriptor; rotating before the router ever opened the file would lose them by design
    (README: a rotated file no glob matches is only read while it is open). So the app
    rotates only once the router has the file open. A router that exits meanwhile (say, it
    rejected its config) fails the wait at once, with its stderr.
    """
    target = os.path.realpath(path)
    fd_dir = Path(f"/proc/{router.pid}/fd")

    def is_open() -> bool:
        if not router.alive():
            raise AssertionError(
                f"the router exited with status {router.proc.returncode} before opening {path}; "
                f"stderr:\n{router.stderr[-4000:]}"
            )
        for fd in fd_dir.iterdir():
            try:
                if os.readlink(fd) == target:
                    return True
            except OSError:
                pass
        return False

    poll(is_open, timeout=timeout, what=f"the router to open {path}", interval=0.1)


class AppWriter:
    """An application writing two logs into a shared volume.

    - `app.log`: JSON lines with an `id` (`json-000001`, ...), rotated by rename + recreate;
    - `text.log`: plain-text lines with the id inside the text (`... id=txt-000001 ...`).

    Lines are appended in small flushed batches, so the router sees files that grow while it
    reads them. `expected` holds every id written, for `assert_exactly_once`.
    """

    def __init__(self, log_dir: Path) -> None:
        self.dir = Path(log_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.json_path = self.dir / "app.log"
        self.text_path = self.dir / "text.log"
        self.expected: set[str] = set()
        self.rotations = 0
        self._json_seq = 0
        self._text_seq = 0
        self._json = open(self.json_path, "a", encoding="utf-8")
        self._text = open(self.text_path, "a", encoding="utf-8")

    def write_json(self, n: int, batch: int = 50, pause: float = 0.01) -> None:
        for i in range(n):
            self._json_seq += 1
            rid = f"json-{self._json_seq:06d}"
            line = {
                "id": rid,
                "level": ("info", "warn", "error")[self._json_seq % 3],
                "msg": f"order {self._json_seq} processed",
                "duration_ms": self._json_seq % 97,
                "user": {"tier": "gold" if self._json_seq % 2 else "free"},
            }
            self._json.write(json.dumps(line) + "\n")
            self.expected.add(rid)
            if (i + 1) % batch == 0:
                self._json.flush()
                time.sleep(pause)
        self._json.flush()

    def write_text(self, n: int, batch: int = 50, pause: float = 0.01) -> None:
        for i in range(n):
            self._text_seq += 1
            rid = f"txt-{self._text_seq:06d}"
            now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]
            self._text.write(
                f"{now} INFO [worker-{self._text_seq % 4}] handled GET /items "
                f"id={rid} status=200 in {self._text_seq % 50}ms\n"
            )
            self.expected.add(rid)
            if (i + 1) % batch == 0:
                self._text.flush()
                time.sleep(pause)
        self._text.flush()

    def rotate_json(self) -> Path:
        """Rename-and-create, as logrotate without copytruncate (or the app itself) does."""
        self._json.flush()
        self.rotations += 1
        rotated = self.dir / f"app.log.{self.rotations}"
        os.rename(self.json_path, rotated)
        self._json.close()
        self._json = open(self.json_path, "a", encoding="utf-8")
        return rotated

    def close(self) -> None:
        self._json.close()
        self._text.close()


def record_id(record: dict) -> str | None:
    if isinstance(record.get("id"), str):
        return record["id"]
    m = TEXT_ID.search(record.get("log", "")) if isinstance(record.get("log"), str) else None
    return m.group(1) if m else None


def decode_ndjson(data: bytes, compressed: bool = True) -> list[dict]:
    """Objects are gzip (possibly multi-member); every line must be one JSON object."""
    if compressed:
        data = gzip.decompress(data)
    records = []
    for n, line in enumerate(data.decode("utf-8").splitlines(), 1):
        assert line.strip(), f"empty line {n} in an NDJSON object"
        rec = json.loads(line)
        assert isinstance(rec, dict), f"line {n} is not a JSON object: {line[:200]}"
        records.append(rec)
    return records


@dataclass
class StoredObject:
    """One delivered object, whatever the sink: a file under the file sink's `path` or an
    S3 object. `metadata`/`headers` are only known for S3."""

    key: str
    data: bytes
    metadata: dict[str, str] | None = None
    content_type: str | None = None
    content_encoding: str | None = None

    @property
    def records(self) -> list[dict]:
        return decode_ndjson(self.data, compressed=self.key.endswith(".gz"))


def file_sink_objects(root: Path) -> list[StoredObject]:
    """The complete objects of a `file` sink: everything but hidden in-progress `.tmp` files."""
    out = []
    root = Path(root)
    if not root.exists():
        return out
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            out.append(StoredObject(p.relative_to(root).as_posix(), p.read_bytes()))
    return out


class S3Objects:
    """Reads a bucket's objects, downloading each key once (keys are never rewritten)."""

    def __init__(self, s3, bucket: str, prefix: str = "") -> None:
        self.s3, self.bucket, self.prefix = s3, bucket, prefix
        self._cache: dict[str, StoredObject] = {}

    def list(self) -> list[StoredObject]:
        paginator = self.s3.get_paginator("list_objects_v2")
        keys = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            keys.extend(o["Key"] for o in page.get("Contents", []))
        for key in keys:
            if key not in self._cache:
                got = self.s3.get_object(Bucket=self.bucket, Key=key)
                self._cache[key] = StoredObject(
                    key=key,
                    data=got["Body"].read(),
                    metadata=dict(got.get("Metadata") or {}),
                    content_type=got.get("ContentType"),
                    content_encoding=got.get("ContentEncoding"),
                )
        return [self._cache[k] for k in sorted(keys)]


def all_records(objects: Iterable[StoredObject]) -> list[dict]:
    return [r for o in objects for r in o.records]


def ids_seen(objects: Iterable[StoredObject]) -> Counter:
    return Counter(record_id(r) for r in all_records(objects))


def wait_until_delivered(
    list_objects: Callable[[], list[StoredObject]],
    expected: set[str],
    router=None,
    timeout: float = 90.0,
) -> list[StoredObject]:
    """Polls the sink until every expected id has arrived (before the router is stopped).

    With `router` (a conftest.RunningRouter), a router that exits meanwhile fails at once.
    """

    def complete():
        if router is not None and not router.alive():
            raise AssertionError(
                f"the router exited with status {router.proc.returncode} before delivering "
                f"everything; stderr:\n{router.stderr[-4000:]}"
            )
        objs = list_objects()
        missing = expected - set(ids_seen(objs))
        return objs if not missing else None

    def describe():
        missing = sorted(expected - set(ids_seen(list_objects())))
        return f"{len(missing)} of {len(expected)} ids still missing, e.g. {missing[:5]}"

    try:
        return poll(complete, timeout=timeout, what="every line to be delivered", interval=0.5)
    except PollTimeout as e:
        try:
            detail = describe()
        except Exception as d:
            detail = f"(could not list the sink: {d!r})"
        raise PollTimeout(f"{e}: {detail}") from None


def assert_exactly_once(objects: list[StoredObject], expected: set[str]) -> list[dict]:
    """Every expected id in exactly one record across all objects, and nothing else."""
    records = all_records(objects)
    counts = Counter(record_id(r) for r in records)
    unknown = [r for r in records if record_id(r) is None]
    assert not unknown, f"records that the app never wrote: {unknown[:3]}"
    missing = sorted(expected - set(counts))
    extra = sorted(set(counts) - expected)
    dupes = sorted(k for k, c in counts.items() if c > 1)
    assert not missing, f"{len(missing)} lines lost, e.g. {missing[:10]}"
    assert not extra, f"unexpected ids {extra[:10]}"
    assert not dupes, f"{len(dupes)} lines delivered more than once, e.g. {dupes[:10]}"
    return records


def parse_ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def assert_time_sliced(obj: StoredObject, prefix_re: str, since: datetime, until: datetime) -> None:
    """The key is `<prefix>YYYY/MM/DD/HH/MM/<name>.ndjson.gz`, the slice lies in the test's
    time window, and every record's `@timestamp` falls in the key's minute."""
    m = re.fullmatch(prefix_re + TIME_KEY.pattern, obj.key)
    assert m, f"key {obj.key!r} does not match {prefix_re + TIME_KEY.pattern!r}"
    y, mo, d, h, mi = (int(x) for x in m.groups()[-6:-1])
    slice_start = datetime(y, mo, d, h, mi, tzinfo=timezone.utc)
    assert since.replace(second=0, microsecond=0) <= slice_start <= until, (
        f"{obj.key}: time slice {slice_start} outside the run {since}..{until}"
    )
    for r in obj.records:
        ts = parse_ts(r["@timestamp"])
        assert ts.replace(second=0, microsecond=0) == slice_start, (
            f"{obj.key}: record time {r['@timestamp']} is not in the key's minute"
        )


def assert_s3_object_contract(obj: StoredObject) -> None:
    """What the `s3` sink promises for each object besides its key: gzip NDJSON with
    Content-Encoding gzip and Content-Type application/x-ndjson, and user metadata
    `x-amz-meta-records`, `x-amz-meta-min-event-time`, `x-amz-meta-max-event-time` that
    agree with the records (an indexer can then skip objects without opening them)."""
    assert obj.key.endswith(".ndjson.gz"), obj.key
    assert obj.content_encoding == "gzip", (obj.key, obj.content_encoding)
    assert obj.content_type == "application/x-ndjson", (obj.key, obj.content_type)
    records = obj.records
    meta = obj.metadata or {}
    assert {"records", "min-event-time", "max-event-time"} <= set(meta), (obj.key, meta)
    assert int(meta["records"]) == len(records), (obj.key, meta, len(records))
    times = [parse_ts(r["@timestamp"]) for r in records]
    assert parse_ts(meta["min-event-time"]) == min(times), (obj.key, meta)
    assert parse_ts(meta["max-event-time"]) == max(times), (obj.key, meta)


def assert_fields(records: list[dict], expected: dict[str, object], what: str) -> None:
    for r in records:
        got = {k: r.get(k) for k in expected}
        assert got == expected, f"{what} fields differ in record {record_id(r)}: {got} != {expected}"
