"""Bringing a JSON-lines journal (stmflash before the database ledger) into a database.

The journal is replayed under its own rules (see the README, "Serial-number ledger"),
but nothing is guessed: a line that does not parse, or that contradicts the lines
before it (one number for two chips, two numbers for one chip, an outcome for a number
never reserved), stops the import with the file and line. The one exception is the
documented crash case: a last line without its newline was cut by a power loss before
it was fsynced, so its number was never used; it is skipped and said so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from stmflash.production.store.base import Entry, LedgerRefused, now_iso
from stmflash.production.store.sql import _SERIAL_COLS, SqlStore

_OPS = ("reserve", "done", "failed")


@dataclass
class Journal:
    path: str
    entries: dict[int, Entry] = field(default_factory=dict)
    torn_tail: bool = False


def _damaged(path: str, lineno: int, why: str) -> LedgerRefused:
    return LedgerRefused(
        f"{path}:{lineno}: {why}; nothing was imported. Repair that line by hand from the batch "
        "reports (batch-*.json hold each board's serial_number and uid), or delete it and retire its "
        "number after the import with 'stmflash ledger void N --reason ...' (README: Serial-number ledger)")


def read_journal(path: str) -> Journal:
    """Parse and replay a whole journal; LedgerRefused naming file:line on any damage."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise LedgerRefused(f"journal {path} not found") from None
    except OSError as exc:
        raise LedgerRefused(f"cannot read journal {path}: {exc.strerror}") from None
    journal = Journal(path)
    lines = data.split(b"\n")
    tail = lines.pop()  # after the last newline: empty, or a torn record
    if tail.strip():
        journal.torn_tail = True
    by_uid: dict[str, int] = {}
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            rec: Any = json.loads(raw)
        except ValueError as exc:  # JSONDecodeError, or UnicodeDecodeError for bytes that are not text
            why = getattr(exc, "msg", None) or getattr(exc, "reason", None) or str(exc)
            raise _damaged(path, lineno, f"not a JSON record ({why})") from None
        if not isinstance(rec, dict):
            raise _damaged(path, lineno, "not a JSON object")
        if rec.get("v") != 1:
            raise _damaged(path, lineno, f"unknown record version {rec.get('v')!r}")
        op, n, uid = rec.get("op"), rec.get("n"), rec.get("uid")
        if op not in _OPS:
            raise _damaged(path, lineno, f"unknown op {op!r}")
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise _damaged(path, lineno, f"bad serial number {n!r}")
        if uid is not None and not isinstance(uid, str):
            raise _damaged(path, lineno, f"bad uid {uid!r}")
        t = str(rec.get("t", ""))
        e = journal.entries.get(n)
        if op == "reserve":
            if e is not None and uid and e.uid and e.uid != uid:
                raise _damaged(path, lineno, f"serial #{n} reserved for chip {uid} but it belongs to chip {e.uid}")
            if uid and by_uid.get(uid, n) != n:
                raise _damaged(path, lineno, f"chip {uid} reserved #{n} but it already holds #{by_uid[uid]}")
            if e is None:
                e = journal.entries[n] = Entry(n, uid, "reserved", created=t)
            e.uid = uid or e.uid
            e.status = "reserved"
            e.serial = str(rec.get("serial", e.serial))
            e.target = str(rec.get("target", ""))
            e.run = str(rec.get("run", ""))
            e.station = str(rec.get("host", ""))  # the journal knew hosts, not stations
            e.error = ""
            e.updated = t
            if uid:
                by_uid[uid] = n
        else:
            if e is None:
                raise _damaged(path, lineno, f"{op} for serial #{n}, which was never reserved")
            e.status = op
            e.error = str(rec.get("error", "")) if op == "failed" else ""
            e.updated = t
    return journal


def import_journal(store: SqlStore, journal: Journal) -> int:
    """Write every number of ``journal`` into an empty ``store``; returns how many."""
    source = f"import:{journal.path}"

    def tx(cur: Any) -> int:
        if store._one(cur, "SELECT 1 FROM stmflash_serials LIMIT 1") is not None:
            raise LedgerRefused(f"ledger {store.where} already holds serial numbers: import into an empty one")
        now = now_iso()
        for e in sorted(journal.entries.values(), key=lambda x: x.n):
            state = "interrupted" if e.status == "reserved" else e.status  # its process is long gone
            store._x(cur, f"INSERT INTO stmflash_serials ({_SERIAL_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, '', ?, '', ?, ?, ?)",
                     (e.n, e.uid, e.serial, state, e.station, e.target, e.run, e.error, source,
                      e.created or now, e.updated or now))
            store._event(cur, e.n, "import", e.uid, journal.path)
        if journal.entries:
            store._x(cur, "UPDATE stmflash_pool SET next_n = ? WHERE name = 'default'",
                     (max(journal.entries) + 1,))
            numbers = sorted(journal.entries)
            for a, b in zip(numbers, numbers[1:], strict=False):
                if b > a + 1:
                    store._x(cur, "INSERT INTO stmflash_gaps (lo, hi, reason, t) VALUES (?, ?, ?, ?)",
                             (a + 1, b - 1, f"not in {journal.path}", now))
        return len(journal.entries)

    return store._tx(tx)
