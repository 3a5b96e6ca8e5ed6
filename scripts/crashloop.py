#!/usr/bin/env python3
"""Crash loop: kill -9 the real router while an application rotates its log fast, then check
that every line it could have saved reached the sink (issue 13, item 3).

    scripts/crashloop.py                       # one random seed (printed), file sink
    scripts/crashloop.py --seed 7              # replay seed 7
    scripts/crashloop.py --seeds 300           # soak: seeds 1..300, a line each, then totals
    scripts/crashloop.py --seeds 20 --first-seed 1000 --sink s3   # S3 on LocalStack (boto3)

The binary is `target/release/logferry` (or `--bin`, or `LOGFERRY_BIN`); build it first with
`cargo build --release -p logferry`. The file-sink mode needs only Python 3.11's standard
library; `--sink s3` needs boto3 (the LocalStack venv has it:
`~/.cache/logferry/localstack-venv/bin/python scripts/crashloop.py --sink s3`) and a LocalStack
(`--endpoint`, default `$LOCALSTACK_ENDPOINT` or http://127.0.0.1:4566).

What one seed does
------------------
Everything random comes from the seed (one `random.Random` per actor, derived from it); the
timing of threads and processes does not, so a seed replays the same plan, not the same
interleaving. Run a failing seed a few times.

- The application (two threads of this process, like an app and logrotate):
  - the writer appends numbered JSON lines of ~250 bytes (`{"id":N,...}`) to `app.log` in
    blocks of 400, one `write(2)` per block (the "flush every 400 lines"), paced so that
    `--lines` take the seed's write phase (2-10 s, longer for slow time-based rotation);
  - the rotator rotates by size (0.6-2 MB, the issue's set-up) or by time (per seed, a range
    inside 50 ms-5 s), cycling through three kinds: `rename` (app.log -> app.log.N, then a new
    app.log; the writer reopens 0-2 blocks later, as an app that handles SIGHUP when it gets
    to it), `copytruncate` (copy app.log to app.log.N while the writer goes on, then truncate
    app.log) and `rename+delete` (a rename, then deleting old rotations, see below). N counts
    up, so every rotated name matches `app.log.*[0-9]`.
- The router runs with the issue's config (`include = [app.log, app.log.*[0-9]]`,
  `read_from = "beginning"`, `memory_limit = "32MiB"`, `flush_interval = "1s"`, a `file` sink
  with gzip, or `s3`), is SIGKILLed every 0.2-2.5 s (8-10 times, and on while the writer still
  writes), restarted at once, and after the writer is done killed a last time; one
  `run --exit-on-eof` then drains.
- The check reads the completed objects only: for the file sink, files whose name does not
  start with `.` (the sink writes `.<name>.tmp` and renames it when the object is fsynced);
  for S3, the listed objects. A record counts for id N only when it is the whole line N (its
  `msg` and `pad` intact); anything else is a fragment (a prefix of one line, e.g. the torn
  last line of a copy) or garbled (not a prefix of any line; a failure).

What is excluded from "lost", and why
-------------------------------------
- Lines written between the copy and the truncation of a copytruncate. The copy stops at
  some byte; the writer appends more; the truncation removes it. No router can save those
  lines unless it happens to read them in between, so they are excluded exactly: the writer
  and the truncation take one lock, so the harness knows the last id written before each
  truncation (B), and it reads the last complete line of the copy (C); ids C+1..B are the
  window. They are reported ("window"), with how many arrived anyway.
- Deleted rotations. The issue's third kind deletes rotations older than 5 s; a line in a
  rotation deleted before any router read it is gone, and counting it separately would let a
  router that never reads rotated files pass as "deleted before read". So the rule here is:
  at each `rename+delete`, delete rotations older than the seed's age (1-5 s; 5 s alone would
  rarely be reached in a CI seed's few seconds of writing) **whose every line is already in a
  completed output object**. Deleting still frees inodes for the next app.log or copy
  (reuses are counted and reported), and the router still finds files gone that it had open
  or had checkpointed; but every line of a deleted file was delivered first, so nothing is
  excused and "lost" stays exact: lost = written - delivered - window.

Also reported: duplicates (ids delivered more than once; count and rate per line written),
router processes that exited by themselves, panics or ERROR lines in any router's stderr, a
drain that does not end (`--drain-timeout`, default 300 s, a hang guard), temp files left in
the sink's directory, the time each phase took. The exit status is 1 when any seed lost a
line or showed one of these failures (duplicates alone do not fail; `--max-dup-rate` makes
them). A failing seed's work dir is kept and printed.
"""

from __future__ import annotations

import argparse
import bisect
import gzip
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ENDPOINT = "http://127.0.0.1:4566"

# -- the lines -------------------------------------------------------------------------------

PAD = "p" * 166
BLOCK = 400  # lines per write(2): "a flush every 400 lines"


def line_text(i: int) -> str:
    """Line `i` without its newline (~250 bytes, valid JSON, a pure function of `i`)."""
    return f'{{"id":{i},"level":"info","msg":"order {i} processed for tenant {i % 97}","pad":"{PAD}"}}'


def line_dict(i: int) -> dict:
    """Line `i` as JSON parses it (what a record must equal, less `@timestamp`)."""
    return {"id": i, "level": "info", "msg": f"order {i} processed for tenant {i % 97}", "pad": PAD}


def block_bytes(first: int, end: int) -> bytes:
    return "".join(line_text(i) + "\n" for i in range(first, end)).encode()


def id_of_line(raw: bytes) -> int | None:
    """The id of a complete line, or None when the bytes are not exactly one of our lines."""
    try:
        d = json.loads(raw)
        i = d["id"]
    except (ValueError, KeyError, TypeError):
        return None
    if isinstance(i, int) and raw == line_text(i).encode():
        return i
    return None


# -- the plan --------------------------------------------------------------------------------

KINDS = ("rename", "copytruncate", "rename+delete")
TIME_RANGES = ((0.05, 0.3), (0.3, 1.5), (1.0, 5.0), (0.05, 5.0))


@dataclass
class Plan:
    """Everything a seed decides up front."""

    seed: int
    lines: int
    write_seconds: float
    rotate_by: str  # "bytes" | "time"
    rotate_lo: float  # bytes, or seconds
    rotate_hi: float
    first_kind: int  # where in KINDS the cycle starts
    delete_after: float
    kills: int  # scheduled; more while the writer still writes
    copy_pause: float  # at most this long between a copy and its truncation

    @classmethod
    def from_seed(cls, seed: int, lines: int, max_write_seconds: float) -> "Plan":
        rng = random.Random(seed)
        write_seconds = rng.uniform(2.0, max_write_seconds)
        if rng.random() < 0.5:
            rotate_by, lo, hi = "bytes", 600_000.0, 2_000_000.0
        else:
            rotate_by = "time"
            lo, hi = rng.choice(TIME_RANGES)
            # Long enough for about four rotations, so slow ones still cycle through the kinds.
            write_seconds = max(write_seconds, 4 * (lo * hi) ** 0.5)
        return cls(
            seed=seed,
            lines=lines,
            write_seconds=write_seconds,
            rotate_by=rotate_by,
            rotate_lo=lo,
            rotate_hi=hi,
            first_kind=rng.randrange(3),
            delete_after=rng.uniform(1.0, 5.0),
            kills=rng.randint(8, 10),
            copy_pause=rng.choice((0.0, 0.002, 0.01)),
        )

    def describe(self) -> str:
        if self.rotate_by == "bytes":
            rot = f"every {self.rotate_lo / 1e6:.1f}-{self.rotate_hi / 1e6:.1f} MB"
        else:
            rot = f"every {self.rotate_lo * 1000:.0f} ms-{self.rotate_hi:.1f} s"
        return (
            f"{self.lines} lines in {self.write_seconds:.1f} s, rotate {rot} starting with "
            f"{KINDS[self.first_kind]}, delete rotations older than {self.delete_after:.1f} s once "
            f"delivered, {self.kills}+ kills, up to {self.copy_pause * 1000:.0f} ms between copy and truncate"
        )


# -- what the application did ----------------------------------------------------------------


@dataclass
class Placement:
    """Ids first..last (inclusive) and the file that holds them at the end (or held them)."""

    first: int
    last: int
    file: str
    kind: str


@dataclass
class Gen:
    """One incarnation of app.log (from its creation to its rename)."""

    first: int  # first id written to it
    last: int = -1  # last id written to it so far
    seg_start: int = 0  # first id after the latest truncation
    renamed_to: str | None = None
    rename_kind: str | None = None


@dataclass
class Rotated:
    name: str
    kind: str
    at: float
    first: int
    last: int  # inclusive; last < first means empty
    inode: int
    deleted: bool = False


class Ledger:
    """The exact record of where every id went. Mutated under `App.lock` only."""

    def __init__(self) -> None:
        self.gens: list[Gen] = []
        self.placements: list[Placement] = []
        self.windows: list[tuple[int, int, str]] = []  # (first, last, copy name)
        self.rotated: list[Rotated] = []
        self.rotations: Counter = Counter()
        self.torn_copies: list[tuple[str, int]] = []  # (copy, id of its torn last line)
        self.bad_copies: list[str] = []
        self.deleted = 0
        self.inodes_freed: set[int] = set()
        self.inode_reuses = 0
        self.events: list[dict] = []  # for ledger.json in the work dir
        self.t0 = time.monotonic()

    def event(self, ev: str, **kw) -> None:
        self.events.append({"t": round(time.monotonic() - self.t0, 3), "ev": ev, **kw})

    def new_inode(self, name: str, ino: int) -> None:
        reused = ino in self.inodes_freed
        if reused:
            self.inode_reuses += 1
            self.inodes_freed.discard(ino)
        self.event("create", name=name, ino=ino, reused=reused)

    def dump(self, path: Path) -> None:
        doc = {
            "placements": [vars(p) for p in self.placements],
            "windows": self.windows,
            "torn_copies": self.torn_copies,
            "rotated": [vars(r) for r in self.rotated],
            "events": self.events,
        }
        path.write_text(json.dumps(doc, indent=1))

    def finish(self) -> None:
        """Places the live file's last segment."""
        if self.gens and self.gens[-1].renamed_to is None:
            g = self.gens[-1]
            if g.last >= g.seg_start:
                self.placements.append(Placement(g.seg_start, g.last, "app.log", "live at the end"))
        self.placements.sort(key=lambda p: p.first)

    def placement(self, i: int) -> Placement | None:
        idx = bisect.bisect_right([p.first for p in self.placements], i) - 1
        if idx >= 0 and self.placements[idx].first <= i <= self.placements[idx].last:
            return self.placements[idx]
        return None


class App:
    """The writer and the rotator. One lock orders writes, renames and truncations, which is
    what makes the ledger exact; the copy itself runs outside it, like logrotate's."""

    def __init__(self, plan: Plan, log_dir: Path, delivered) -> None:
        self.plan = plan
        self.dir = log_dir
        self.path = log_dir / "app.log"
        self.delivered = delivered  # () -> set of ids in completed output objects
        self.lock = threading.Lock()
        self.ledger = Ledger()
        self.fd = -1
        self.since_rotation = 0
        self.reopen_in: int | None = None
        self.done = threading.Event()
        self.abort = threading.Event()  # the harness failed: stop writing
        self.error: BaseException | None = None
        self.rng = random.Random(f"{plan.seed}/rotator")
        self._threads = [
            threading.Thread(target=self._guard(self._write), name="writer", daemon=True),
            threading.Thread(target=self._guard(self._rotate), name="rotator", daemon=True),
        ]
        self.write_ended_at: float | None = None

    def _guard(self, fn):
        def run():
            try:
                fn()
            except BaseException as e:  # reported by join()
                self.error = e
                self.done.set()

        return run

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._open(0)
        for t in self._threads:
            t.start()

    def writing(self) -> bool:
        return not self.done.is_set()

    def join(self, timeout: float) -> None:
        for t in self._threads:
            t.join(timeout)
            if t.is_alive():
                raise RuntimeError(f"the app's {t.name} thread hung")
        if self.error is not None:
            raise RuntimeError(f"the app failed: {self.error!r}") from self.error
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.ledger.finish()

    # writer

    def _open(self, first_id: int) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.ledger.new_inode("app.log", os.fstat(self.fd).st_ino)
        self.ledger.gens.append(Gen(first=first_id, seg_start=first_id))
        self.ledger.event("open", first_id=first_id)

    def _write(self) -> None:
        plan = self.plan
        rate = plan.lines / plan.write_seconds
        start = time.monotonic()
        for first in range(0, plan.lines, BLOCK):
            if self.abort.is_set():
                break
            end = min(first + BLOCK, plan.lines)
            data = block_bytes(first, end)
            wait = start + first / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            with self.lock:
                if self.reopen_in is not None:
                    if self.reopen_in == 0:
                        self._open(first)
                        self.reopen_in = None
                    else:
                        self.reopen_in -= 1
                view = memoryview(data)
                while view:
                    view = view[os.write(self.fd, view) :]
                self.ledger.gens[-1].last = end - 1
                self.since_rotation += len(data)
        self.write_ended_at = time.monotonic()
        self.done.set()

    # rotator

    def _rotate(self) -> None:
        plan, rng = self.plan, self.rng
        k = plan.first_kind
        n = 0
        while not self.done.is_set():
            if plan.rotate_by == "bytes":
                threshold = rng.uniform(plan.rotate_lo, plan.rotate_hi)
                while not self.done.is_set() and self.since_rotation < threshold:
                    time.sleep(0.002)
            else:
                lo, hi = plan.rotate_lo, plan.rotate_hi
                self.done.wait(lo * (hi / lo) ** rng.random())  # log-uniform in [lo, hi]
            if self.done.is_set():
                break
            kind = KINDS[k % 3]
            k += 1
            n += 1
            name = f"app.log.{n}"
            if kind == "copytruncate":
                self._copytruncate(name)
            else:
                self._rename(name, kind)
                # The next rotation waits for the writer to reopen (logrotate runs seconds
                # apart; two rotations before the app reopens would leave nothing to rotate).
                while not self.done.is_set() and self.reopen_in is not None:
                    time.sleep(0.001)
                if kind == "rename+delete":
                    self._delete_old()
            self.ledger.rotations[kind] += 1

    def _rename(self, name: str, kind: str) -> None:
        target = self.dir / name
        with self.lock:
            os.rename(self.path, target)
            g = self.ledger.gens[-1]
            g.renamed_to, g.rename_kind = name, kind
            # logrotate's `create`: the new file exists before the app reopens.
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.close(fd)
            self.reopen_in = self.rng.randint(0, 2)
            self.since_rotation = 0
            rotated_at = time.monotonic()
            self.ledger.event("rename", to=name, kind=kind, last_written=g.last)
        # The writer may still append to the renamed file until it reopens; its range is
        # final once it has.
        while not self.done.is_set() and self.reopen_in is not None:
            time.sleep(0.001)
        with self.lock:
            last = g.last
            ino = target.stat().st_ino
            if last >= g.seg_start:
                self.ledger.placements.append(Placement(g.seg_start, last, name, f"renamed ({kind})"))
            self.ledger.rotated.append(Rotated(name, kind, rotated_at, g.seg_start, last, ino))

    def _copytruncate(self, name: str) -> None:
        target = self.dir / name
        shutil.copyfile(self.path, target)
        ino = target.stat().st_ino
        with self.lock:
            self.ledger.new_inode(name, ino)
        first, last_complete, torn = read_copy(target)
        pause = self.rng.uniform(0, self.plan.copy_pause)
        if pause:
            time.sleep(pause)
        with self.lock:
            os.truncate(self.path, 0)
            g = self.ledger.gens[-1]
            start, end = g.seg_start, g.last  # ids start..end were in app.log before the truncation
            g.seg_start = end + 1
            self.since_rotation = 0
            rotated_at = time.monotonic()
            if first is not None and first != start:
                self.ledger.bad_copies.append(f"{name} starts with id {first}, app.log with {start}")
            copied_to = last_complete if last_complete is not None else start - 1
            self.ledger.event(
                "truncate", copy=name, copy_first=first, copied_to=copied_to, last_written=end, torn=torn
            )
            if copied_to >= start:
                self.ledger.placements.append(Placement(start, copied_to, name, "copytruncate copy"))
            if end > copied_to:
                self.ledger.windows.append((copied_to + 1, end, name))
                self.ledger.placements.append(
                    Placement(copied_to + 1, end, f"{name} (written after the copy)", "copytruncate window")
                )
            if torn is not None:
                self.ledger.torn_copies.append((name, torn))
            self.ledger.rotated.append(Rotated(name, "copytruncate", rotated_at, start, copied_to, ino))

    def _delete_old(self) -> None:
        now = time.monotonic()
        old = [r for r in self.ledger.rotated if not r.deleted and now - r.at >= self.plan.delete_after]
        if not old:
            return
        have = self.delivered()
        for r in old:
            if all(i in have for i in range(r.first, r.last + 1)):
                os.unlink(self.dir / r.name)
                r.deleted = True
                with self.lock:
                    self.ledger.deleted += 1
                    self.ledger.inodes_freed.add(r.inode)
                    self.ledger.event("delete", name=r.name, ino=r.inode, ids=[r.first, r.last])


def verify_ledger(ledger: Ledger, log_dir: Path, lines: int) -> list[str]:
    """Checks the ledger against the files left on disk, so that "lost" and "window" rest on
    what the files hold, not on what the harness believes: every id is placed exactly once,
    and every file still there holds exactly the ids placed in it, in order (a copy may end
    in its recorded torn line)."""
    problems = []
    expect = 0
    for p in ledger.placements:
        if p.first != expect:
            problems.append(f"ledger: ids from {expect} placed at {p.first} ({p.file})")
        expect = p.last + 1
    if expect != lines:
        problems.append(f"ledger: ids placed up to {expect - 1}, {lines} written")
    ranges: dict[str, list[range]] = {}
    for p in ledger.placements:
        if p.kind != "copytruncate window":
            ranges.setdefault(p.file, []).append(range(p.first, p.last + 1))
    torn = dict(ledger.torn_copies)
    deleted = {r.name for r in ledger.rotated if r.deleted}
    on_disk = {f.name for f in log_dir.iterdir()}
    for name in sorted(on_disk | set(ranges)):
        if name in deleted:
            if name in on_disk:
                problems.append(f"{name} was deleted but exists")
            continue
        if name not in on_disk:
            problems.append(f"{name} holds ids but is not on disk")
            continue
        data = (log_dir / name).read_bytes()
        body, _, tail = data.rpartition(b"\n")
        got = [id_of_line(raw) for raw in body.split(b"\n")] if body else []
        want = [i for r in ranges.get(name, []) for i in r]
        if got != want:
            bad = next((k for k, (g, w) in enumerate(zip(got, want)) if g != w), min(len(got), len(want)))
            problems.append(
                f"{name}: {len(got)} lines on disk, {len(want)} in the ledger, first difference at line {bad}"
            )
        if tail and _leading_id(tail) != torn.get(name, -1):
            problems.append(f"{name} ends in a partial line the ledger does not know")
    return problems


def read_copy(path: Path) -> tuple[int | None, int | None, int | None]:
    """(id of the first line, id of the last complete line, id of a torn last line) of a copy."""
    size = path.stat().st_size
    if size == 0:
        return None, None, None
    with open(path, "rb") as f:
        head = f.readline()
        f.seek(max(0, size - 64 * 1024))
        tail = f.read()
    first = _leading_id(head)
    torn = None
    if not tail.endswith(b"\n"):
        torn = _leading_id(tail[tail.rfind(b"\n") + 1 :])
        tail = tail[: tail.rfind(b"\n") + 1]
    lines = tail.split(b"\n")
    last = id_of_line(lines[-2]) if len(lines) >= 2 else None
    return first, last, torn


def _leading_id(raw: bytes) -> int | None:
    prefix = b'{"id":'
    if not raw.startswith(prefix):
        return None
    rest = raw[len(prefix) : len(prefix) + 21]
    if b"," not in rest:  # a torn line may end inside the number
        return None
    digits = rest.split(b",")[0]
    return int(digits) if digits.isdigit() else None


# -- what arrived ----------------------------------------------------------------------------


class Tally:
    """Records of the completed objects: whole lines by id, fragments, garbled records."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.fragments: Counter = Counter()  # id -> records holding a prefix of its line
        self.garbled: list[str] = []
        self.objects = 0
        self.lock = threading.Lock()

    def add_object(self, data: bytes) -> None:
        counts: Counter = Counter()
        fragments: Counter = Counter()
        garbled = []
        for raw in data.split(b"\n"):
            if not raw:
                continue
            i = record_id(raw)
            if isinstance(i, int):
                counts[i] += 1
            elif isinstance(i, tuple):
                fragments[i[0]] += 1
            else:
                garbled.append(raw[:300].decode(errors="replace"))
        with self.lock:
            self.counts.update(counts)
            self.fragments.update(fragments)
            self.garbled.extend(garbled)
            self.objects += 1

    def ids(self) -> set[int]:
        with self.lock:
            return set(self.counts)


def record_id(raw: bytes) -> int | tuple[int] | None:
    """A record as the router wrote it: the app's line with `@timestamp` spliced in, or
    `{"@timestamp":..., "log": text}` for a line that was not JSON. Returns the id of a whole
    line, `(id,)` for a prefix of line id, None for anything else."""
    try:
        d = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(d, dict):
        return None
    d.pop("@timestamp", None)
    i = d.get("id")
    if isinstance(i, int) and not isinstance(i, bool):
        return i if d == line_dict(i) else None
    text = d.get("log")
    if isinstance(text, str) and len(d) == 1:
        j = _leading_id(text.encode())
        if j is not None and line_text(j).startswith(text):
            return (j,)
    return None


class FileOutput:
    """Completed objects of the `file` sink under `root`: never its `.<name>.tmp` files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tally = Tally()
        self.seen: set[Path] = set()
        self._lock = threading.Lock()

    def sink_config(self) -> str:
        return f"""
[sinks.out]
type = "file"
inputs = ["app"]
path = {q(self.root)}
compression = "gzip"
flush_interval = "1s"
"""

    def update(self) -> Tally:
        with self._lock:
            for dirpath, _dirs, files in os.walk(self.root):
                for name in files:
                    p = Path(dirpath) / name
                    if name.startswith(".") or p in self.seen:
                        continue
                    data = p.read_bytes()
                    self.tally.add_object(gzip.decompress(data) if name.endswith(".gz") else data)
                    self.seen.add(p)
        return self.tally

    def temp_files(self) -> int:
        return sum(1 for _d, _s, files in os.walk(self.root) for n in files if n.startswith("."))

    def delivered(self) -> set[int]:
        return self.update().ids()


class S3Output:
    """Objects of the `s3` sink in `bucket` (S3 shows only complete objects)."""

    def __init__(self, endpoint: str, bucket: str | None) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            sys.exit(
                "--sink s3 needs boto3: run with ~/.cache/logferry/localstack-venv/bin/python "
                "(localstack-tests/localstack.sh install)"
            )
        self.endpoint = endpoint
        self.s3 = boto3.session.Session(
            aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
        ).client(
            "s3",
            endpoint_url=endpoint,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5, "mode": "standard"}),
        )
        self.own_bucket = bucket is None
        self.bucket = bucket or f"crashloop-{os.getpid()}-{random.randrange(1 << 32):08x}"
        if self.own_bucket:
            self.s3.create_bucket(Bucket=self.bucket)
        self.tally = Tally()
        self.seen: set[str] = set()
        self._lock = threading.Lock()

    def sink_config(self) -> str:
        return f"""
[sinks.out]
type = "s3"
inputs = ["app"]
bucket = {q(self.bucket)}
compression = "gzip"
flush_interval = "1s"
region = "us-east-1"
endpoint_url = {q(self.endpoint)}
force_path_style = true
"""

    def update(self) -> Tally:
        with self._lock:
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
                for o in page.get("Contents", []):
                    key = o["Key"]
                    if key in self.seen:
                        continue
                    data = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
                    self.tally.add_object(gzip.decompress(data) if key.endswith(".gz") else data)
                    self.seen.add(key)
        return self.tally

    def temp_files(self) -> int:
        return 0

    def delivered(self) -> set[int]:
        return self.update().ids()

    def cleanup(self) -> None:
        if not self.own_bucket:
            return
        try:
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
            self.s3.delete_bucket(Bucket=self.bucket)
        except Exception as e:  # LocalStack's state goes at its stop anyway
            print(f"warning: could not delete bucket {self.bucket}: {e}", file=sys.stderr)


def q(value: object) -> str:
    return json.dumps(str(value))


# -- the router ------------------------------------------------------------------------------


class Routers:
    """Starts the router with a clean environment, each run's stdout/stderr in its own file."""

    def __init__(self, binary: Path, work: Path, config: Path, env: dict[str, str]) -> None:
        self.binary, self.work, self.config = binary, work, config
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(work / "home"),
            "LANG": "C.UTF-8",
            "LOGFERRY_LOG": os.environ.get("LOGFERRY_CRASHLOOP_LOG", "info"),
            **env,
        }
        (work / "home").mkdir(exist_ok=True)
        self.runs = 0
        self.proc: subprocess.Popen | None = None
        self.stderrs: list[Path] = []
        self.self_exits: list[str] = []

    def start(self, *extra: str) -> subprocess.Popen:
        self.runs += 1
        err = self.work / f"router-{self.runs}.stderr"
        self.stderrs.append(err)
        with open(self.work / f"router-{self.runs}.stdout", "wb") as o, open(err, "wb") as e:
            self.proc = subprocess.Popen(
                [str(self.binary), "run", "--config", str(self.config), *extra],
                env=self.env,
                cwd=self.work,
                stdin=subprocess.DEVNULL,
                stdout=o,
                stderr=e,
            )
        return self.proc

    def terminate(self, timeout: float) -> bool:
        """SIGTERM and wait; False (and SIGKILL) when it does not exit within `timeout`."""
        p = self.proc
        if p is None:
            return True
        if p.poll() is not None:
            self.self_exits.append(f"run {self.runs} exited by itself with {p.returncode}")
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=30)
            return False
        finally:
            self.proc = None
        return True

    def kill(self) -> None:
        p = self.proc
        if p is None:
            return
        if p.poll() is not None:
            self.self_exits.append(f"run {self.runs} exited by itself with {p.returncode}")
        else:
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=30)
        self.proc = None

    def problems(self) -> list[str]:
        """Panics and ERROR lines in every run's stderr (first few of each run)."""
        out = []
        for path in self.stderrs:
            try:
                text = path.read_text(errors="replace")
            except FileNotFoundError:
                continue
            bad = [
                ln
                for ln in text.splitlines()
                if "panicked" in ln or " ERROR " in ln or ln.startswith("ERROR")
            ]
            out.extend(f"{path.name}: {ln[:400]}" for ln in bad[:5])
        return out


def router_config(work: Path, logs: Path, sink: str) -> str:
    return f"""\
[global]
data_dir = {q(work / "data")}
memory_limit = "32MiB"

[sources.app]
type = "file"
include = [{q(logs / "app.log")}, {q(logs / "app.log.*[0-9]")}]
read_from = "beginning"
parser = "json"
{sink}"""


# -- one seed --------------------------------------------------------------------------------


@dataclass
class Options:
    binary: Path
    sink: str = "file"  # "file" | "s3"
    lines: int = 150_000
    max_write_seconds: float = 10.0
    drain_timeout: float = 300.0
    endpoint: str = DEFAULT_ENDPOINT
    bucket: str | None = None
    workdir: Path | None = None
    keep: bool = False
    keep_failed: bool = True
    keep_dups: float | None = None
    no_kill: bool = False
    max_dup_rate: float | None = None


@dataclass
class Result:
    plan: Plan
    work: Path
    written: int = 0
    delivered: int = 0
    lost: list[int] = field(default_factory=list)
    lost_by_file: list[str] = field(default_factory=list)
    dups_by_kind: dict = field(default_factory=dict)
    dups_by_file: list[str] = field(default_factory=list)
    window: int = 0
    window_delivered: int = 0
    duplicates: int = 0
    max_copies: int = 0
    kills: int = 0
    rotations: dict = field(default_factory=dict)
    deleted: int = 0
    inode_reuses: int = 0
    torn_copies: int = 0
    fragments: int = 0
    garbled: list[str] = field(default_factory=list)
    unexpected: list[int] = field(default_factory=list)
    harness_problems: list[str] = field(default_factory=list)
    router_problems: list[str] = field(default_factory=list)
    self_exits: list[str] = field(default_factory=list)
    drain_stuck: bool = False
    term_stuck: bool = False
    drain_exit: int | None = None
    drain_seconds: float = 0.0
    loop_seconds: float = 0.0
    elapsed: float = 0.0
    temp_files: int = 0
    objects: int = 0
    dup_limit: float | None = None
    kept: bool = True
    kept_for_dups: bool = False

    @property
    def loss_rate(self) -> float:
        return len(self.lost) / self.written if self.written else 0.0

    @property
    def dup_rate(self) -> float:
        return self.duplicates / self.written if self.written else 0.0

    def failures(self) -> list[str]:
        f = []
        if self.lost:
            f.append(f"{len(self.lost)} lines lost")
        if self.garbled:
            f.append(f"{len(self.garbled)} garbled records")
        if self.unexpected:
            f.append(f"{len(self.unexpected)} ids never written")
        if self.harness_problems:
            f.append("harness: " + "; ".join(self.harness_problems[:5]))
        if self.router_problems:
            f.append(f"{len(self.router_problems)} panic/ERROR lines in router stderr")
        if self.self_exits:
            f.append("; ".join(self.self_exits))
        if self.term_stuck:
            f.append("the router did not exit after SIGTERM")
        if self.drain_stuck:
            f.append("the --exit-on-eof drain did not end")
        elif self.drain_exit not in (0, None):
            f.append(f"the drain exited {self.drain_exit}")
        if self.dup_limit is not None and self.dup_rate > self.dup_limit:
            f.append(f"duplicate rate {self.dup_rate:.2%} over {self.dup_limit:.2%}")
        return f

    @property
    def ok(self) -> bool:
        return not self.failures()

    def line(self) -> str:
        status = "ok" if self.ok else "FAIL: " + "; ".join(self.failures())
        rot = "/".join(str(self.rotations.get(k, 0)) for k in KINDS)
        return (
            f"seed {self.plan.seed}: written {self.written}, lost {len(self.lost)} ({self.loss_rate:.2%}), "
            f"window {self.window} ({self.window_delivered} arrived anyway), "
            f"duplicates {self.duplicates} ({self.dup_rate:.2%}), kills {self.kills}, "
            f"rotations {rot} (rename/copytruncate/rename+delete), deleted {self.deleted}, "
            f"inode reuses {self.inode_reuses}, {self.elapsed:.1f} s: {status}"
        )

    def report(self) -> str:
        out = [self.line()]
        out.append(f"  plan: {self.plan.describe()}")
        out.append(
            f"  kill loop {self.loop_seconds:.1f} s, drain {self.drain_seconds:.1f} s, "
            f"{self.objects} objects, {self.delivered} distinct ids delivered, at most {self.max_copies} copies of one id"
        )
        if self.dups_by_kind:
            out.append(
                "  duplicates by where the line was written: "
                + ", ".join(f"{k} {n}" for k, n in self.dups_by_kind.items())
            )
        out.extend(f"  duplicated: {s}" for s in self.dups_by_file[:20])
        if len(self.dups_by_file) > 20:
            out.append(f"  duplicated: ... {len(self.dups_by_file) - 20} more files")
        if self.torn_copies or self.fragments:
            out.append(
                f"  {self.torn_copies} copies ended in a torn line; {self.fragments} fragment records "
                "(a prefix of one line, e.g. that torn line) arrived"
            )
        if self.temp_files:
            out.append(
                f"  {self.temp_files} temp files left in the sink's directory (objects a kill interrupted)"
            )
        out.extend(f"  lost: {s}" for s in self.lost_by_file[:40])
        if len(self.lost_by_file) > 40:
            out.append(f"  lost: ... {len(self.lost_by_file) - 40} more ranges")
        out.extend(f"  garbled: {g}" for g in self.garbled[:5])
        if self.unexpected:
            out.append(f"  never written: {self.unexpected[:10]}")
        out.extend(f"  router: {p}" for p in self.router_problems[:20])
        out.extend(f"  router: {s}" for s in self.self_exits)
        if not self.ok:
            out.append(
                f"  work dir kept: {self.work}" if self.kept else "  work dir removed (--keep-failed limit)"
            )
        elif self.kept_for_dups:
            out.append(f"  work dir kept (--keep-dups): {self.work}")
        return "\n".join(out)


def run_seed(seed: int, opts: Options, log=print) -> Result:
    plan = Plan.from_seed(seed, opts.lines, opts.max_write_seconds)
    opts.binary = Path(opts.binary).resolve()  # the router runs in the work dir
    work = Path(tempfile.mkdtemp(prefix=f"crashloop-{seed}-", dir=opts.workdir))
    log(f"seed {seed}: {plan.describe()}; work dir {work}", flush=True)
    res = Result(plan=plan, work=work, dup_limit=opts.max_dup_rate)
    t0 = time.monotonic()
    logs = work / "logs"
    if opts.sink == "s3":
        output = S3Output(opts.endpoint, opts.bucket)
        env = {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    else:
        output = FileOutput(work / "out")
        env = {}
    config = work / "logferry.toml"
    config.write_text(router_config(work, logs, output.sink_config()))
    routers = Routers(opts.binary, work, config, env)
    app = App(plan, logs, output.delivered)
    kill_rng = random.Random(f"{seed}/kills")
    try:
        app.start()
        routers.start()
        kills = 0
        if opts.no_kill:
            # The baseline: one router for the whole write phase, stopped with SIGTERM.
            while app.writing():
                time.sleep(0.1)
            time.sleep(2.0)
            res.term_stuck = not routers.terminate(opts.drain_timeout)
        while not opts.no_kill and (kills < plan.kills or app.writing()):
            time.sleep(kill_rng.uniform(0.2, 2.5))
            routers.kill()
            kills += 1
            if kills < plan.kills or app.writing():
                routers.start()
        res.kills = kills
        app.join(timeout=120)
        res.loop_seconds = time.monotonic() - t0

        t1 = time.monotonic()
        p = routers.start("--exit-on-eof")
        try:
            p.wait(timeout=opts.drain_timeout)
            res.drain_exit = p.returncode
        except subprocess.TimeoutExpired:
            res.drain_stuck = True
            p.kill()
            p.wait(timeout=30)
        routers.proc = None
        res.drain_seconds = time.monotonic() - t1
    finally:
        app.abort.set()  # a no-op unless the harness itself failed
        if routers.proc is not None and routers.proc.poll() is None:
            routers.proc.kill()
            routers.proc.wait(timeout=30)

    tally = output.update()
    ledger = app.ledger
    res.written = plan.lines
    res.objects = tally.objects
    res.rotations = dict(ledger.rotations)
    res.deleted = ledger.deleted
    res.inode_reuses = ledger.inode_reuses
    res.torn_copies = len(ledger.torn_copies)
    res.harness_problems = ledger.bad_copies + verify_ledger(ledger, logs, plan.lines)
    res.fragments = sum(tally.fragments.values())
    res.garbled = tally.garbled
    res.delivered = sum(1 for i in tally.counts if 0 <= i < plan.lines)
    res.duplicates = sum(c - 1 for c in tally.counts.values() if c > 1)
    res.max_copies = max(tally.counts.values(), default=0)
    dups_by_kind: Counter = Counter()
    for i, c in tally.counts.items():
        if c > 1:
            p = ledger.placement(i)
            dups_by_kind[p.kind if p else "?"] += c - 1
    res.dups_by_kind = dict(dups_by_kind.most_common())
    res.dups_by_file = dups_by_file(tally.counts, ledger)
    res.unexpected = sorted(i for i in tally.counts if not 0 <= i < plan.lines)
    window = {i for a, b, _ in ledger.windows for i in range(a, b + 1)}
    res.window = len(window)
    res.window_delivered = sum(1 for i in window if i in tally.counts)
    res.lost = [i for i in range(plan.lines) if i not in tally.counts and i not in window]
    res.lost_by_file = lost_by_file(res.lost, ledger)
    res.router_problems = routers.problems()
    res.self_exits = routers.self_exits
    res.temp_files = output.temp_files()
    res.elapsed = time.monotonic() - t0
    ledger.dump(work / "ledger.json")
    if isinstance(output, S3Output):
        output.cleanup()
    res.kept_for_dups = opts.keep_dups is not None and res.dup_rate > opts.keep_dups
    keep = opts.keep or res.kept_for_dups
    if (res.ok and not keep) or (not res.ok and not opts.keep_failed):
        shutil.rmtree(work, ignore_errors=True)
        res.kept = False
    return res


def dups_by_file(counts: Counter, ledger: Ledger) -> list[str]:
    """Extra copies grouped by the file (and rotation kind) their lines were written to,
    most first: whole files repeated point at identity, a short run at the end of a file at
    progress a kill cut off before its checkpoint was saved."""
    groups: dict[tuple[str, str], list[int]] = {}
    extra: Counter = Counter()
    sizes: dict[tuple[str, str], int] = {}
    for i, c in counts.items():
        if c < 2:
            continue
        p = ledger.placement(i)
        key = (p.file, p.kind) if p else ("?", "not in the ledger")
        groups.setdefault(key, []).append(i)
        extra[key] += c - 1
        if p:
            sizes[key] = p.last - p.first + 1
    out = []
    for key, n in extra.most_common():
        ids = sorted(groups[key])
        of = f" of {sizes[key]}" if key in sizes else ""
        out.append(f"{key[0]} [{key[1]}]: {n} extra copies of {len(ids)}{of} lines (ids {ids[0]}-{ids[-1]})")
    return out


def lost_by_file(lost: list[int], ledger: Ledger) -> list[str]:
    """Lost ids grouped by the file (and rotation kind) they were written to."""
    groups: dict[tuple[str, str], list[int]] = {}
    sizes: dict[tuple[str, str], int] = {}
    for i in lost:
        p = ledger.placement(i)
        key = (p.file, p.kind) if p else ("?", "not in the ledger")
        groups.setdefault(key, []).append(i)
        if p:
            sizes[key] = p.last - p.first + 1
    out = []
    for (file, kind), ids in sorted(groups.items(), key=lambda kv: kv[1][0]):
        of = f" of {sizes[(file, kind)]}" if (file, kind) in sizes else ""
        out.append(f"{file} [{kind}]: {len(ids)}{of} lines (ids {ids[0]}-{ids[-1]})")
    return out


# -- the command -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--seed", type=int, action="append", help="run this seed (repeatable)")
    which.add_argument("--seeds", type=int, metavar="N", help="soak: run N seeds from --first-seed")
    ap.add_argument("--first-seed", type=int, default=1)
    ap.add_argument("--sink", choices=("file", "s3"), default="file")
    ap.add_argument(
        "--bin",
        type=Path,
        default=None,
        help="router binary (default $LOGFERRY_BIN or target/release/logferry)",
    )
    ap.add_argument("--lines", type=int, default=150_000, help="lines per seed (default 150000)")
    ap.add_argument(
        "--max-write-seconds", type=float, default=10.0, help="upper end of the write phase (default 10)"
    )
    ap.add_argument(
        "--drain-timeout", type=float, default=300.0, help="hang guard on the final drain (default 300 s)"
    )
    ap.add_argument("--endpoint", default=os.environ.get("LOCALSTACK_ENDPOINT", DEFAULT_ENDPOINT))
    ap.add_argument("--bucket", help="s3: use this bucket (default: a new one, deleted afterwards)")
    ap.add_argument("--workdir", type=Path, help="parent of the per-seed work dirs (default: the temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep work dirs of passing seeds too")
    ap.add_argument(
        "--keep-failed",
        type=int,
        default=5,
        metavar="N",
        help="keep the work dirs of the first N failing seeds (default 5)",
    )
    ap.add_argument(
        "--keep-dups",
        type=float,
        metavar="RATE",
        help="keep the work dirs of seeds whose duplicates exceed this fraction of lines",
    )
    ap.add_argument(
        "--max-dup-rate", type=float, help="fail a seed whose duplicates exceed this fraction of lines"
    )
    ap.add_argument(
        "--no-kill",
        action="store_true",
        help="baseline: one router through the write phase, stopped with SIGTERM (then the same drain)",
    )
    ap.add_argument("--fail-fast", action="store_true", help="stop at the first failing seed")
    args = ap.parse_args(argv)

    binary = args.bin or Path(os.environ.get("LOGFERRY_BIN", REPO / "target" / "release" / "logferry"))
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        print(f"no router binary at {binary}: cargo build --release -p logferry, or --bin", file=sys.stderr)
        return 2
    if args.seeds is not None:
        seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    elif args.seed:
        seeds = args.seed
    else:
        seeds = [random.SystemRandom().randrange(1, 1 << 31)]
    opts = Options(
        binary=binary,
        sink=args.sink,
        lines=args.lines,
        max_write_seconds=max(2.0, args.max_write_seconds),
        drain_timeout=args.drain_timeout,
        endpoint=args.endpoint,
        bucket=args.bucket,
        workdir=args.workdir,
        keep=args.keep,
        keep_dups=args.keep_dups,
        max_dup_rate=args.max_dup_rate,
        no_kill=args.no_kill,
    )
    shown = f"{seeds[0]}..{seeds[-1]}" if args.seeds is not None else ", ".join(map(str, seeds))
    print(f"crashloop: {len(seeds)} seed(s) {shown}, sink {args.sink}, router {binary}", flush=True)
    results: list[Result] = []
    t0 = time.monotonic()
    for seed in seeds:
        opts.keep_failed = sum(1 for r in results if not r.ok) < args.keep_failed
        r = run_seed(seed, opts, log=(lambda *a, **k: None) if len(seeds) > 1 else print)
        results.append(r)
        verbose = len(seeds) == 1 or not r.ok or r.kept_for_dups
        print(r.report() if verbose else r.line(), flush=True)
        if args.fail_fast and not r.ok:
            break
    if len(results) > 1:
        print(totals(results, time.monotonic() - t0))
    return 0 if all(r.ok for r in results) else 1


def totals(results: list[Result], elapsed: float) -> str:
    written = sum(r.written for r in results)
    lost = sum(len(r.lost) for r in results)
    dups = sum(r.duplicates for r in results)
    window = sum(r.window for r in results)
    failed = [r.plan.seed for r in results if not r.ok]
    lossy = [r.plan.seed for r in results if r.lost]
    kinds: Counter = Counter()
    for r in results:
        for s in r.lost_by_file:
            kinds[s.split("[", 1)[1].split("]", 1)[0]] += int(s.split("]: ", 1)[1].split(" ", 1)[0])
    lines = [
        f"total: {len(results)} seeds, written {written}, lost {lost} ({lost / written:.3%}) in {len(lossy)} seeds, "
        f"window {window}, duplicates {dups} ({dups / written:.2%}), kills {sum(r.kills for r in results)}, "
        f"{elapsed:.0f} s",
    ]
    rates = sorted(r.dup_rate for r in results)
    worst = max(results, key=lambda r: r.dup_rate)
    lines.append(
        f"duplicate rate per seed: median {rates[len(rates) // 2]:.2%}, worst {worst.dup_rate:.2%} "
        f"(seed {worst.plan.seed}), none in {sum(1 for r in results if not r.duplicates)} seeds"
    )
    if kinds:
        lines.append("lost by kind: " + ", ".join(f"{k} {n}" for k, n in kinds.most_common()))
    if failed:
        lines.append(f"failed seeds: {failed}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
