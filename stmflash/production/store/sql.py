"""The one SQL implementation of the ledger, shared by the SQLite and PostgreSQL engines.

Every allocation is one transaction: lock the pool row (``SELECT … FOR UPDATE`` on
PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), take ``next_n``, insert the number's row,
advance the pool, commit. Two stations therefore never get the same number, and a
rolled-back transaction leaves no gap (the counter and the row commit together; see the
PostgreSQL manual, "Explicit Locking", 13.3.2 Row-Level Locks). Results are written with
their run row in one transaction too, keyed by a client-made id, so a retry after a lost
connection can never count a board twice.

The schema is versioned in ``stmflash_meta``; :data:`MIGRATIONS` brings any older
database up to :data:`SCHEMA_VERSION` when it is opened. Engines fill in the dialect
(``{idpk}``, placeholders, row locks) and liveness of an owner.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from stmflash.production.store.audit import Audits
from stmflash.production.store.base import (
    RUN_COLUMNS,
    Entry,
    LedgerError,
    LedgerRefused,
    LedgerUnavailable,
    Reservation,
    RunRecord,
    now_iso,
)

SCHEMA_VERSION = 1

MIGRATIONS: list[tuple[int, list[str]]] = [
    (1, [
        "CREATE TABLE stmflash_pool (name TEXT PRIMARY KEY, next_n BIGINT)",
        "INSERT INTO stmflash_pool (name, next_n) VALUES ('default', NULL)",
        """CREATE TABLE stmflash_serials (
            n BIGINT PRIMARY KEY, uid TEXT, serial TEXT NOT NULL DEFAULT '',
            state TEXT NOT NULL, station TEXT NOT NULL DEFAULT '', target TEXT NOT NULL DEFAULT '',
            run_id TEXT NOT NULL DEFAULT '', owner TEXT NOT NULL DEFAULT '',
            error TEXT NOT NULL DEFAULT '', reason TEXT NOT NULL DEFAULT '',
            source TEXT NOT NULL DEFAULT '', created TEXT NOT NULL, updated TEXT NOT NULL)""",
        # one live number per chip; a voided number no longer binds its chip
        "CREATE UNIQUE INDEX stmflash_serials_uid ON stmflash_serials (uid) WHERE state <> 'void'",
        """CREATE TABLE stmflash_events (
            seq {idpk}, n BIGINT NOT NULL, op TEXT NOT NULL, uid TEXT, station TEXT NOT NULL,
            run_id TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '', t TEXT NOT NULL)""",
        "CREATE TABLE stmflash_gaps (lo BIGINT NOT NULL, hi BIGINT NOT NULL, reason TEXT NOT NULL, t TEXT NOT NULL)",
        """CREATE TABLE stmflash_runs (
            seq {idpk}, rid TEXT NOT NULL UNIQUE, run_id TEXT NOT NULL, station TEXT NOT NULL,
            target TEXT NOT NULL, port TEXT NOT NULL, attempts INTEGER NOT NULL, uid TEXT NOT NULL,
            device TEXT NOT NULL, image TEXT NOT NULL, image_crc TEXT NOT NULL, serial TEXT NOT NULL,
            serial_number BIGINT, duration_s DOUBLE PRECISION NOT NULL, phases TEXT NOT NULL,
            result TEXT NOT NULL, error TEXT NOT NULL, exit_code INTEGER NOT NULL,
            protection TEXT NOT NULL, job TEXT NOT NULL, operator TEXT NOT NULL,
            started TEXT NOT NULL, finished TEXT NOT NULL)""",
        "CREATE INDEX stmflash_runs_serial ON stmflash_runs (serial_number)",
        "CREATE INDEX stmflash_runs_finished ON stmflash_runs (finished)",
    ]),
]

_LIVE_STATES = ("reserved", "written")
_SERIAL_COLS = "n, uid, serial, state, station, target, run_id, owner, error, reason, source, created, updated"
_RUN_DB_COLS = ("rid", "run_id", "station", "target", "port", "attempts", "uid", "device", "image", "image_crc",
                "serial", "serial_number", "duration_s", "phases", "result", "error", "exit_code", "protection",
                "job", "operator", "started", "finished")

#: run ids of stores open in this process (a reservation of ours is live only while open)
LIVE_RUNS: set[str] = set()
LIVE_LOCK = threading.Lock()


class SqlStore(Audits):
    """Serial allocation and run records over a DB-API connection; safe to share between threads."""

    engine = "sql"
    placeholder = "?"
    for_update = ""
    idpk = "INTEGER PRIMARY KEY"
    #: how long an operation waits for the database to come back before the board fails safe
    reconnect_s = 60.0

    def __init__(self, where: str, *, first: int = 1, last: int | None = None, run_id: str,
                 station: str, on_reconnect: Callable[[str], None] | None = None,
                 connect_wait: float = 5.0) -> None:
        if first < 0 or (last is not None and last < first):
            raise LedgerRefused(f"{where}: bad serial range {first}..{last}")
        self.where = where  # printable (password redacted)
        self.first = first
        self.last = last
        self.run_id = run_id
        self.station = station
        self.on_reconnect = on_reconnect
        self._lock = threading.RLock()
        self._conn: Any = None
        self._token = ""
        self._mark: Any = None
        self._refusal: LedgerRefused | None = None
        self.db_id = ""
        with LIVE_LOCK:
            LIVE_RUNS.add(run_id)
        try:
            self._reconnect(connect_wait, announce=False)  # rides through a server restart
            self._tx(self._migrate)
        except BaseException:
            self.close()
            raise

    # ---- engine hooks --------------------------------------------------------------------
    def _connect(self) -> Any:
        raise NotImplementedError

    def _owner_token(self) -> str:
        raise NotImplementedError

    def _live(self, cur: Any, tokens: set[str]) -> set[str]:
        """The subset of owner tokens whose owner is still working (inside a transaction)."""
        raise NotImplementedError

    def _begin(self, cur: Any, write: bool) -> None:
        pass

    def _commit(self, conn: Any) -> None:
        conn.commit()

    def _rollback(self, conn: Any) -> None:
        conn.rollback()

    def _migration_lock(self, cur: Any) -> None:
        pass

    def _is_conn_error(self, exc: BaseException) -> bool:
        return False

    def _is_conflict(self, exc: BaseException) -> bool:
        return False

    def _db_errors(self) -> tuple[type[BaseException], ...]:
        """The driver's own error classes (turned into one-line ledger errors)."""
        return ()

    # ---- plumbing --------------------------------------------------------------------------
    def _q(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    def _x(self, cur: Any, sql: str, args: Iterable[Any] = ()) -> Any:
        cur.execute(self._q(sql), tuple(args))
        return cur

    def _one(self, cur: Any, sql: str, args: Iterable[Any] = ()) -> Any:
        return self._x(cur, sql, args).fetchone()

    def _reconnect(self, wait_s: float | None = None, *, announce: bool = True) -> None:
        """Back off and reconnect until the database answers or ``wait_s`` (default
        ``reconnect_s``) passes; a refused ledger (damaged, bad URL) is not retried."""
        deadline = time.monotonic() + (self.reconnect_s if wait_s is None else wait_s)
        delay = 0.1
        last: BaseException | None = None
        while True:
            try:
                self._conn = self._connect()
                self._token = self._owner_token()
            except LedgerRefused:
                self._drop()
                raise
            except Exception as exc:  # noqa: BLE001 - any failure to connect is retried
                self._drop()
                last = exc
                if time.monotonic() + delay > deadline:
                    raise LedgerUnavailable(f"cannot reach ledger {self.where}: {self._clean(last)}") from None
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            if announce and self.on_reconnect is not None:
                self.on_reconnect(f"reconnected to ledger {self.where}")
            return

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close
                pass

    def _clean(self, exc: BaseException) -> str:
        return " ".join(str(exc).split()) or type(exc).__name__

    def _tx(self, fn: Callable[[Any], Any], *, write: bool = True, retry: bool = True) -> Any:
        """Run ``fn(cursor)`` in one transaction; reconnect and re-run after a lost connection.

        Every ``fn`` here is safe to re-run: allocation finds the chip's row if the lost
        commit went through, results are keyed by their run id.
        """
        with self._lock:
            for attempt in range(4):
                if self._conn is None:
                    if not retry:
                        raise LedgerUnavailable(f"ledger {self.where} is not connected")
                    self._reconnect()
                conn = self._conn
                try:
                    cur = conn.cursor()
                    self._begin(cur, write)
                    out = fn(cur)
                    self._commit(conn)
                    return out
                except BaseException as exc:
                    if self._is_conn_error(exc):
                        self._drop()
                        if not retry or attempt == 3:
                            raise LedgerUnavailable(f"ledger {self.where}: {self._clean(exc)}") from None
                        continue
                    try:
                        self._rollback(conn)
                    except Exception as rb:  # noqa: BLE001
                        if self._is_conn_error(rb):
                            self._drop()
                    if self._is_conflict(exc) and attempt < 3:
                        continue  # another station inserted the same chip first: re-read
                    if isinstance(exc, self._db_errors()):
                        raise LedgerError(f"ledger {self.where}: {self._clean(exc)}") from None
                    raise
            raise LedgerError(f"ledger {self.where}: transaction kept failing")  # pragma: no cover

    def _migrate(self, cur: Any) -> None:
        self._migration_lock(cur)
        self._x(cur, "CREATE TABLE IF NOT EXISTS stmflash_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = self._one(cur, "SELECT value FROM stmflash_meta WHERE key = 'schema_version'")
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise LedgerRefused(f"ledger {self.where} has schema version {version}, newer than this "
                                f"stmflash understands ({SCHEMA_VERSION}): upgrade stmflash")
        for v, statements in MIGRATIONS:
            if v <= version:
                continue
            for sql in statements:
                self._x(cur, sql.replace("{idpk}", self.idpk))
            if version == 0:
                self._x(cur, "INSERT INTO stmflash_meta (key, value) VALUES ('schema_version', ?)", (str(v),))
                self._x(cur, "INSERT INTO stmflash_meta (key, value) VALUES ('db_id', ?)", (uuid.uuid4().hex,))
                self._x(cur, "INSERT INTO stmflash_meta (key, value) VALUES ('created', ?)", (now_iso(),))
            else:
                self._x(cur, "UPDATE stmflash_meta SET value = ? WHERE key = 'schema_version'", (str(v),))
            version = v
        self.db_id = self._one(cur, "SELECT value FROM stmflash_meta WHERE key = 'db_id'")[0]

    def _event(self, cur: Any, n: int, op: str, uid: str | None, detail: str = "") -> None:
        self._x(cur, "INSERT INTO stmflash_events (n, op, uid, station, run_id, detail, t) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (n, op, uid, self.station, self.run_id, detail, now_iso()))

    def _is_live_row(self, cur: Any, state: str, owner: str) -> bool:
        return state in _LIVE_STATES and bool(owner) and owner in self._live(cur, {owner})

    # ---- allocation ------------------------------------------------------------------------
    def reserve(self, uid: str | None, *, target: str = "", serial_of: Callable[[int], str] | None = None
                ) -> Reservation:
        """Give ``uid`` its number (its old one if it has one), committed before it is used."""
        if self._refusal is not None:
            raise self._refusal

        def tx(cur: Any) -> Reservation:
            now = now_iso()
            if uid:
                row = self._one(cur, "SELECT n, state, run_id, target, owner, serial FROM stmflash_serials "
                                "WHERE uid = ? AND state <> 'void'" + self.for_update, (uid,))
                if row is not None:
                    n, state, run, tgt, owner, old_serial = row
                    if self._is_live_row(cur, state, owner) and not (run == self.run_id and tgt == target):
                        raise LedgerError(f"chip {uid} already holds serial #{n} in a board still being "
                                          f"programmed ({tgt or 'unknown target'}, run {run})")
                    serial = serial_of(n) if serial_of else (old_serial or str(n))
                    self._x(cur, "UPDATE stmflash_serials SET state = 'reserved', owner = ?, run_id = ?, station = ?, "
                            "target = ?, serial = ?, error = '', updated = ? WHERE n = ?",
                            (self._token, self.run_id, self.station, target, serial, now, n))
                    self._event(cur, n, "reserve", uid, "reclaimed")
                    return Reservation(int(n), uid, True)
            (next_n,) = self._one(cur, "SELECT next_n FROM stmflash_pool WHERE name = 'default'" + self.for_update)
            n = self.first if next_n is None else max(int(next_n), self.first)
            if next_n is not None and n > next_n:
                self._x(cur, "INSERT INTO stmflash_gaps (lo, hi, reason, t) VALUES (?, ?, ?, ?)",
                        (next_n, n - 1, f"serial range starts at {self.first}", now))
            while self._one(cur, "SELECT 1 FROM stmflash_serials WHERE n = ?", (n,)) is not None:
                n += 1  # a number voided ahead of time
            if self.last is not None and n > self.last:
                raise LedgerError(f"ledger {self.where}: serial range {self.first}..{self.last} is exhausted")
            self._x(cur, "UPDATE stmflash_pool SET next_n = ? WHERE name = 'default'", (n + 1,))
            serial = serial_of(n) if serial_of else str(n)
            self._x(cur, f"INSERT INTO stmflash_serials ({_SERIAL_COLS}) VALUES (?, ?, ?, 'reserved', ?, ?, ?, ?, '', '', '', ?, ?)",
                    (n, uid, serial, self.station, target, self.run_id, self._token, now, now))
            self._event(cur, n, "reserve", uid)
            return Reservation(n, uid, False)

        res = self._tx(tx)
        if self._mark is not None:
            self._mark.raise_to(res.n)
        return res

    def written(self, n: int) -> None:
        """The image holding ``n`` is about to be written to the chip."""
        self._set_state(n, "written", "")

    def _set_state(self, n: int, state: str, error: str) -> None:
        def tx(cur: Any) -> None:
            self._update_own(cur, n, state, error)

        self._tx(tx)

    def _update_own(self, cur: Any, n: int, state: str, error: str) -> None:
        cur = self._x(cur, "UPDATE stmflash_serials SET state = ?, error = ?, owner = ?, updated = ? "
                      "WHERE n = ? AND run_id = ? AND state <> 'void'",
                      (state, error, self._token, now_iso(), n, self.run_id))
        if cur.rowcount == 0:
            raise LedgerError(f"serial #{n} is no longer reserved by this run in ledger {self.where} "
                              "(voided, or the ledger went backwards)")
        self._event(cur, n, state, None, error)

    def record(self, run: RunRecord, outcome: str | None = None) -> None:
        """Store one run row; with ``outcome`` ("done"/"failed") also the number's new state,
        in the same transaction (re-running it after a lost connection changes nothing)."""
        values = dict(run.to_dict(), rid=run.rid, run_id=run.run or self.run_id,
                      station=run.station or self.station, phases=json.dumps(run.phases, sort_keys=True))
        cols = ", ".join(_RUN_DB_COLS)
        marks = ", ".join("?" for _ in _RUN_DB_COLS)

        def tx(cur: Any) -> None:
            cur = self._x(cur, f"INSERT INTO stmflash_runs ({cols}) VALUES ({marks}) ON CONFLICT (rid) DO NOTHING",
                          [values[c] for c in _RUN_DB_COLS])
            if outcome is not None and run.serial_number is not None:
                self._update_own(cur, run.serial_number, outcome, run.error if outcome == "failed" else "")

        self._tx(tx)

    def done(self, n: int, *, uid: str | None = None) -> None:
        self._set_state(n, "done", "")

    def failed(self, n: int, error: str, *, uid: str | None = None) -> None:
        self._set_state(n, "failed", error)

    def void(self, n: int, reason: str) -> Entry:
        """Retire ``n`` by hand: recorded with the reason, never issued again."""
        if not reason.strip():
            raise LedgerRefused("void needs a --reason (it is recorded with the number)")

        def tx(cur: Any) -> None:
            now = now_iso()
            row = self._one(cur, "SELECT state, owner FROM stmflash_serials WHERE n = ?" + self.for_update, (n,))
            if row is None:
                self._x(cur, f"INSERT INTO stmflash_serials ({_SERIAL_COLS}) VALUES (?, NULL, '', 'void', ?, '', ?, '', '', ?, 'void', ?, ?)",
                        (n, self.station, self.run_id, reason, now, now))
            else:
                if self._is_live_row(cur, row[0], row[1]):
                    raise LedgerError(f"serial #{n} is being programmed right now: void it when the board is done")
                self._x(cur, "UPDATE stmflash_serials SET state = 'void', reason = ?, updated = ? WHERE n = ?",
                        (reason, now, n))
            self._event(cur, n, "void", None, reason)

        self._tx(tx)
        done = self.entry(n)
        assert done is not None
        return done

    # ---- reading ---------------------------------------------------------------------------
    def _rows(self, cur: Any, where: str = "", args: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        return list(self._x(cur, f"SELECT {_SERIAL_COLS} FROM stmflash_serials {where} ORDER BY n", args).fetchall())

    def _entries(self, cur: Any, where: str = "", args: Iterable[Any] = ()) -> list[Entry]:
        rows = self._rows(cur, where, args)
        live = self._live(cur, {r[7] for r in rows if r[3] in _LIVE_STATES and r[7]})
        out = []
        for n, uid, serial, state, station, target, run, owner, error, reason, source, created, updated in rows:
            status = state
            if state in _LIVE_STATES and owner not in live:
                status = "interrupted"
            out.append(Entry(int(n), uid, status, serial, station, target, run, error, reason, source,
                             created, updated))
        return out

    def entries(self) -> list[Entry]:
        """Every number ever allocated or voided, with its status as seen now (by number)."""
        return self._tx(self._entries, write=False)

    def entry(self, n: int) -> Entry | None:
        """One number's state as seen now, None when it was never issued or voided."""
        found = self._tx(lambda cur: self._entries(cur, "WHERE n = ?", (n,)), write=False)
        return found[0] if found else None

    def interrupted(self) -> list[Entry]:
        return [e for e in self.entries() if e.status == "interrupted"]

    def number_of(self, uid: str) -> int | None:
        row = self._tx(lambda cur: self._one(
            cur, "SELECT n FROM stmflash_serials WHERE uid = ? AND state <> 'void'", (uid,)), write=False)
        return None if row is None else int(row[0])

    def next_number(self) -> int:
        (next_n,) = self._tx(lambda cur: self._one(cur, "SELECT next_n FROM stmflash_pool WHERE name = 'default'"),
                             write=False)
        return self.first if next_n is None else max(int(next_n), self.first)

    def runs(self, *, since: str | None = None, run: str | None = None, serial_number: int | None = None,
             uid: str | None = None, last: int | None = None) -> list[dict[str, Any]]:
        """Run rows (oldest first), as dictionaries with :data:`RUN_COLUMNS`."""
        conds, args = [], []
        for col, val in (("finished >= ?", since), ("run_id = ?", run), ("serial_number = ?", serial_number),
                         ("uid = ?", uid)):
            if val is not None:
                conds.append(col)
                args.append(val)
        where = ("WHERE " + " AND ".join(conds)) if conds else ""
        order = "ORDER BY seq DESC" if last else "ORDER BY seq"
        limit = f" LIMIT {int(last)}" if last else ""
        cols = ", ".join(_RUN_DB_COLS)
        rows = self._tx(lambda cur: self._x(cur, f"SELECT {cols} FROM stmflash_runs {where} {order}{limit}",
                                            args).fetchall(), write=False)
        if last:
            rows = rows[::-1]
        out = []
        for r in rows:
            d = dict(zip(_RUN_DB_COLS, r, strict=True))
            d["run"] = d.pop("run_id")
            d.pop("rid")
            d["phases"] = json.loads(d["phases"] or "{}")
            out.append({k: d[k] for k in RUN_COLUMNS})
        return out

    def history(self, n: int | None = None) -> list[dict[str, Any]]:
        """Every state change (reserve, written, done, failed, void, import), oldest first."""
        where, args = ("WHERE n = ?", (n,)) if n is not None else ("", ())
        rows = self._tx(lambda cur: self._x(cur, "SELECT n, op, uid, station, run_id, detail, t FROM stmflash_events "
                                            f"{where} ORDER BY seq", args).fetchall(), write=False)
        return [dict(zip(("n", "op", "uid", "station", "run", "detail", "t"), r, strict=True)) for r in rows]

    def gaps(self) -> list[tuple[int, int, str]]:
        rows = self._tx(lambda cur: self._x(cur, "SELECT lo, hi, reason FROM stmflash_gaps ORDER BY lo").fetchall(),
                        write=False)
        return [(int(a), int(b), str(c)) for a, b, c in rows]

    # ---- lifetime --------------------------------------------------------------------------
    def close(self) -> None:
        with LIVE_LOCK:
            LIVE_RUNS.discard(self.run_id)
        with self._lock:
            self._drop()

    def __enter__(self) -> SqlStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
