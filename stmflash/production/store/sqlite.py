"""The embedded engine: one SQLite file for one station (Python's ``sqlite3``).

WAL mode with ``synchronous=FULL``: a committed allocation survives power loss (with
``NORMAL`` the last commits may roll back, and a number could be issued twice; see the
SQLite documentation, "Write-Ahead Logging" and "PRAGMA synchronous"). Writers take the
database lock up front (``BEGIN IMMEDIATE``) so that several processes on one machine
serialise allocations instead of failing with "database is locked".
"""

from __future__ import annotations

import os
import socket
import sqlite3
from typing import Any

from stmflash.production.store.base import LedgerRefused
from stmflash.production.store.sql import LIVE_LOCK, LIVE_RUNS, SqlStore

_MAGIC = b"SQLite format 3\0"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SqliteStore(SqlStore):
    engine = "sqlite"
    idpk = "INTEGER PRIMARY KEY AUTOINCREMENT"

    def __init__(self, path: str, **kw: Any) -> None:
        self.path = path
        self.host = socket.gethostname()
        try:
            with open(path, "rb") as fh:
                head = fh.read(16)
        except FileNotFoundError:
            head = None
        except OSError as exc:
            raise LedgerRefused(f"cannot open ledger {path}: {exc.strerror}") from None
        if head is not None and head.lstrip()[:1] == b"{":
            raise LedgerRefused(
                f"{path} is a JSON-lines serial journal from an older stmflash: bring it over with "
                f"'stmflash ledger import {path} --ledger {os.path.splitext(path)[0]}.db' and use the .db")
        if head and head != _MAGIC:
            raise LedgerRefused(f"ledger {path} is not an SQLite database")
        super().__init__(path, **kw)

    def _connect(self) -> Any:
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(directory, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            ok = conn.execute("PRAGMA quick_check").fetchone()
        except sqlite3.DatabaseError as exc:
            raise LedgerRefused(f"ledger {self.path} is damaged or unreadable ({exc}); restore the newest "
                                "copy (README: Serial-number ledger)") from None
        except OSError as exc:
            raise LedgerRefused(f"cannot open ledger {self.path}: {exc.strerror}") from None
        if ok is None or ok[0] != "ok":
            conn.close()
            raise LedgerRefused(f"ledger {self.path} failed its integrity check ({ok and ok[0]}); restore "
                                "the newest copy (README: Serial-number ledger)")
        return conn

    def _owner_token(self) -> str:
        return f"{self.host}/{os.getpid()}/{self.run_id}"

    def _live(self, cur: Any, tokens: set[str]) -> set[str]:
        live = set()
        for tok in tokens:
            host, _, rest = tok.partition("/")
            pid_s, _, run = rest.partition("/")
            if host != self.host:
                live.add(tok)  # cannot tell: assume another station is working on it
                continue
            try:
                pid = int(pid_s)
            except ValueError:
                continue
            if pid == os.getpid():
                with LIVE_LOCK:
                    if run in LIVE_RUNS:
                        live.add(tok)
            elif _pid_alive(pid):
                live.add(tok)
        return live

    def _begin(self, cur: Any, write: bool) -> None:
        cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")

    def _commit(self, conn: Any) -> None:
        conn.execute("COMMIT")

    def _rollback(self, conn: Any) -> None:
        if conn.in_transaction:
            conn.execute("ROLLBACK")

    def _is_conflict(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.IntegrityError)

    def _db_errors(self) -> tuple[type[BaseException], ...]:
        return (sqlite3.Error,)
