"""Serial-number ledger and run records in a real database, chosen by URL.

- ``line3.db`` or ``sqlite:///line3.db``: one SQLite file, for a single station
  (:mod:`.sqlite`);
- ``postgresql://user@host/db``: one PostgreSQL database shared by a line of stations
  drawing from one serial pool (:mod:`.postgres`, needs ``stmflash[postgres]``).

Both engines run the same SQL (:mod:`.sql`) under the same rules (:mod:`.base`).
Today's JSON-lines journals are brought over with ``stmflash ledger import``
(:mod:`.journal`).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from stmflash.production.store.base import (
    RUN_COLUMNS,
    Entry,
    LedgerError,
    LedgerRefused,
    LedgerUnavailable,
    Reservation,
    RunRecord,
    new_run_id,
    now_iso,
)
from stmflash.production.store.sql import SqlStore

#: the ledger a station uses when none is named (next to where stmflash runs)
DEFAULT_LEDGER = "stmflash-serials.db"

Store = SqlStore


def is_url(spec: str) -> bool:
    return "://" in spec


def redact(spec: str) -> str:
    """``spec`` with any password replaced by ``***`` (for every message and report)."""
    if not is_url(spec):
        return spec
    parts = urlsplit(spec)
    if parts.password is None:
        return spec
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


def sqlite_path(spec: str) -> str | None:
    """The file of an SQLite ledger spec (a path or ``sqlite:///path``), None for other engines."""
    if spec.startswith("sqlite:///"):
        return spec[len("sqlite:///"):]  # sqlite:///rel.db, sqlite:////abs/path.db
    if is_url(spec):
        return None
    return spec


def check_spec(spec: str) -> None:
    """Refuse a ledger spec no engine understands (before anything is opened)."""
    if spec.startswith(("postgresql://", "postgres://")) or sqlite_path(spec) is not None:
        if sqlite_path(spec) == "":
            raise LedgerRefused(f"ledger {spec!r}: no file name")
        return
    scheme = spec.split("://", 1)[0]
    raise LedgerRefused(f"ledger {redact(spec)}: unknown engine {scheme!r} (a file, sqlite:///FILE or "
                        "postgresql://USER@HOST/DB)")


def open_ledger(spec: str, *, first: int = 1, last: int | None = None, run_id: str | None = None,
                station: str | None = None, on_reconnect: Callable[[str], None] | None = None,
                connect_wait: float = 5.0) -> SqlStore:
    """Open (creating or migrating its schema) the ledger named by ``spec``; a database
    server that does not answer is retried with backoff for ``connect_wait`` seconds."""
    check_spec(spec)
    kw: dict[str, Any] = {"first": first, "last": last, "run_id": run_id or new_run_id(),
                          "station": station or default_station(), "on_reconnect": on_reconnect,
                          "connect_wait": connect_wait}
    path = sqlite_path(spec)
    if path is not None:
        from stmflash.production.store.sqlite import SqliteStore

        return SqliteStore(os.path.expanduser(path), **kw)
    from stmflash.production.store.postgres import PostgresStore

    return PostgresStore(spec, redact(spec), **kw)


def default_station() -> str:
    return socket.gethostname() or "station"


__all__ = [
    "DEFAULT_LEDGER", "RUN_COLUMNS", "Entry", "LedgerError", "LedgerRefused", "LedgerUnavailable",
    "Reservation", "RunRecord", "Store", "check_spec", "default_station", "is_url", "new_run_id",
    "now_iso", "open_ledger", "redact", "sqlite_path",
]
