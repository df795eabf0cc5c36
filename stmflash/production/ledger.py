"""Serial-number ledger: an append-only, fsynced JSON-lines journal shared by every worker.

A production line must never hand out one serial number twice, even when several
processes program boards at once or one of them is killed halfway. So a number is
*reserved* in the journal (written and fsynced under an exclusive ``flock``) before
it is put into an image, and an outcome (``done``/``failed``) is appended afterwards.
The file is never rewritten: recovery after a crash is a plain replay.

Format (one JSON object per line, ``"v": 1``)::

    {"v":1,"op":"reserve","n":7,"uid":"0123..","serial":"SN-000007","target":"/dev/ttyUSB0",
     "run":"20261121-193000-ab12","pid":4242,"host":"station3","t":"2026-11-21T19:30:01Z"}
    {"v":1,"op":"done","n":7,"uid":"0123..","run":..., "t":...}
    {"v":1,"op":"failed","n":7,"uid":"0123..","error":"no answer on /dev/ttyUSB0","run":..., "t":...}

Rules, applied on replay:
- the next fresh number is ``max(first, highest number ever reserved + 1)``; numbers are
  never reused for another chip;
- a chip (keyed by its 96-bit UID) that already holds a number gets the same number
  back (re-flash, retry after a failure, or after an interrupted run);
- a ``reserve`` with no later outcome whose owner process is gone is *interrupted*:
  reported, never handed to another chip;
- a torn last line (power loss mid-write) is ignored; it was not fsynced, so its number
  was never used.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from stmflash.errors import StmflashError, UsageError

FORMAT_VERSION = 1

#: run ids of Ledger objects open in this process (a reservation of ours is live only
#: while its run is open)
_LIVE_RUNS: set[str] = set()
_LIVE_LOCK = threading.Lock()


class LedgerError(StmflashError):
    """The ledger cannot give out a number (range exhausted, chip busy elsewhere)."""


@dataclass
class Entry:
    """The latest known state of one serial number."""

    n: int
    uid: str | None
    status: str  # "reserved" | "done" | "failed" | "interrupted"
    serial: str = ""
    target: str = ""
    run: str = ""
    error: str = ""
    pid: int = 0
    host: str = ""
    time: str = ""
    history: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "uid": self.uid,
            "status": self.status,
            "serial": self.serial,
            "target": self.target,
            "run": self.run,
            "error": self.error,
            "history": list(self.history),
        }


@dataclass(frozen=True)
class Reservation:
    n: int
    uid: str | None
    reclaimed: bool  # True when the chip got back the number it already had


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Ledger:
    """One journal file; safe to share between threads, and between processes via flock."""

    def __init__(self, path: str | os.PathLike[str], *, first: int = 1, last: int | None = None,
                 run_id: str | None = None) -> None:
        self.path = os.fspath(path)
        if first < 0 or (last is not None and last < first):
            raise UsageError(f"{self.path}: bad serial range {first}..{last}")
        self.first = first
        self.last = last
        self.run_id = run_id or new_run_id()
        self.host = socket.gethostname()
        self._lock = threading.RLock()
        self._entries: dict[int, Entry] = {}
        self._by_uid: dict[str, int] = {}
        self._max = first - 1
        self._offset = 0
        self._pending = b""
        self.corrupt_lines = 0
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(directory, exist_ok=True)
            existed = os.path.exists(self.path)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise UsageError(f"cannot open serial ledger {self.path}: {exc.strerror}") from exc
        if not existed:
            dfd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        with _LIVE_LOCK:
            _LIVE_RUNS.add(self.run_id)
        with self._locked():
            pass  # initial replay

    # ---- locking and replay ----------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                self._catch_up()
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _catch_up(self) -> None:
        size = os.fstat(self._fd).st_size
        if size <= self._offset:
            return
        data = os.pread(self._fd, size - self._offset, self._offset)
        self._offset = size
        buf = self._pending + data
        lines = buf.split(b"\n")
        self._pending = lines.pop()  # incomplete tail (torn write): not applied
        for raw in lines:
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
                self._apply(rec)
            except (ValueError, KeyError, TypeError):
                self.corrupt_lines += 1

    def _apply(self, rec: dict[str, Any]) -> None:
        op = rec["op"]
        n = int(rec["n"])
        uid = rec.get("uid")
        if op == "reserve":
            e = self._entries.get(n)
            if e is None:
                e = Entry(n=n, uid=uid, status="reserved")
                self._entries[n] = e
            e.status = "reserved"
            e.uid = uid if uid is not None else e.uid
            e.serial = rec.get("serial", e.serial)
            e.target = rec.get("target", "")
            e.run = rec.get("run", "")
            e.pid = int(rec.get("pid", 0))
            e.host = rec.get("host", "")
            e.time = rec.get("t", "")
            e.error = ""
            e.history.append("reserve")
            if uid:
                self._by_uid.setdefault(uid, n)
            self._max = max(self._max, n)
        elif op in ("done", "failed"):
            e = self._entries.get(n)
            if e is None:  # outcome without reserve: keep it, still burns the number
                e = Entry(n=n, uid=uid, status=op)
                self._entries[n] = e
                if uid:
                    self._by_uid.setdefault(uid, n)
                self._max = max(self._max, n)
            e.status = op
            e.error = rec.get("error", "") if op == "failed" else ""
            e.time = rec.get("t", e.time)
            e.history.append(op)
        else:
            raise KeyError(op)

    def _append(self, rec: dict[str, Any]) -> None:
        """Append one record and fsync; caller holds the lock and has caught up."""
        rec = {"v": FORMAT_VERSION, **rec}
        line = json.dumps(rec, separators=(",", ":"), sort_keys=False).encode() + b"\n"
        if self._pending:
            # a writer died mid-line: terminate its torn line so ours parses on its own
            line = b"\n" + line
            self._pending = b""
            self.corrupt_lines += 1
        os.write(self._fd, line)
        os.fsync(self._fd)
        self._offset += len(line)
        self._apply(rec)

    def _is_live(self, e: Entry) -> bool:
        if e.status != "reserved":
            return False
        if e.host and e.host != self.host:
            return True  # cannot tell: assume another station is working on it
        if e.pid == os.getpid():
            with _LIVE_LOCK:
                return e.run in _LIVE_RUNS
        return _pid_alive(e.pid) if e.pid else False

    def _status(self, e: Entry) -> str:
        if e.status == "reserved" and not self._is_live(e):
            return "interrupted"
        return e.status

    # ---- public API ------------------------------------------------------------------
    def reserve(self, uid: str | None, *, target: str = "", serial_of: Any = None) -> Reservation:
        """Give ``uid`` its number (its old one if it has one), durably, before use.

        ``serial_of(n) -> str`` renders the serial recorded in the journal.
        """
        with self._locked():
            if uid and uid in self._by_uid:
                n = self._by_uid[uid]
                e = self._entries[n]
                if self._is_live(e) and not (e.run == self.run_id and e.target == target):
                    raise LedgerError(
                        f"chip {uid} already holds serial #{n} in a board still being programmed "
                        f"({e.target or 'unknown target'}, run {e.run})"
                    )
                reclaimed = True
            else:
                n = max(self._max + 1, self.first)
                if self.last is not None and n > self.last:
                    raise LedgerError(f"{self.path}: serial range {self.first}..{self.last} is exhausted")
                reclaimed = False
            old = self._entries.get(n)
            serial = serial_of(n) if serial_of else (old.serial if old and old.serial else str(n))
            self._append({
                "op": "reserve",
                "n": n,
                "uid": uid,
                "serial": serial,
                "target": target,
                "run": self.run_id,
                "pid": os.getpid(),
                "host": self.host,
                "t": _now(),
            })
            return Reservation(n, uid, reclaimed)

    def done(self, n: int, *, uid: str | None = None) -> None:
        with self._locked():
            self._append({"op": "done", "n": n, "uid": uid, "run": self.run_id, "t": _now()})

    def failed(self, n: int, error: str, *, uid: str | None = None) -> None:
        with self._locked():
            self._append({"op": "failed", "n": n, "uid": uid, "error": error, "run": self.run_id, "t": _now()})

    def entries(self) -> list[Entry]:
        """Every number ever allocated, with its status as seen now (sorted by number)."""
        with self._locked():
            out = []
            for n in sorted(self._entries):
                e = self._entries[n]
                copy = Entry(**{**e.__dict__, "history": list(e.history)})
                copy.status = self._status(e)
                out.append(copy)
            return out

    def interrupted(self) -> list[Entry]:
        return [e for e in self.entries() if e.status == "interrupted"]

    def number_of(self, uid: str) -> int | None:
        with self._locked():
            return self._by_uid.get(uid)

    def close(self) -> None:
        with _LIVE_LOCK:
            _LIVE_RUNS.discard(self.run_id)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every well-formed record of a journal, in order (for audits and tests)."""
    out = []
    with open(path, "rb") as fh:
        for raw in fh.read().split(b"\n"):
            if not raw.strip():
                continue
            try:
                out.append(json.loads(raw))
            except ValueError:
                continue
    return out
