"""The serial-number ledger on both engines (an SQLite file and a real PostgreSQL server):
no number twice, none lost without a record, under threads, processes and restarts."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stmflash.production.store import LedgerError, LedgerRefused, RunRecord, open_ledger, redact
from stmflash.production.store.sql import SCHEMA_VERSION


@pytest.fixture(params=["sqlite", "postgresql"])
def spec(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "l.db")
    return request.getfixturevalue("pg_url")


def _numbers_by_uid(spec):
    with open_ledger(spec) as led:
        seen: dict[int, set] = {}
        for r in led.history():
            if r["op"] == "reserve":
                seen.setdefault(r["n"], set()).add(r["uid"])
    return seen


def test_reserve_done_failed_and_reclaim(spec):
    with open_ledger(spec, first=100, station="s1") as led:
        a = led.reserve("uidA", target="t0", serial_of=lambda n: f"SN{n}")
        b = led.reserve("uidB", target="t1")
        assert (a.n, b.n) == (100, 101)
        assert not a.reclaimed
        led.done(a.n)
        led.failed(b.n, "no answer on t1")
        again = led.reserve("uidA", target="t5")
        assert again.n == 100 and again.reclaimed
        led.done(again.n)
        retry = led.reserve("uidB", target="t1")
        assert retry.n == 101 and retry.reclaimed
        led.done(101)
        c = led.reserve(None, target="t2")
        assert c.n == 102
        led.failed(102, "boom")
        entries = {e.n: e for e in led.entries()}
        history = led.history()
    assert entries[100].status == "done" and entries[100].serial == "SN100" and entries[100].station == "s1"
    assert entries[101].status == "done"
    assert entries[102].status == "failed" and entries[102].error == "boom"
    assert [r["op"] for r in history].count("reserve") == 5


def test_result_and_run_row_are_one_idempotent_transaction(spec):
    with open_ledger(spec, station="s1") as led:
        r = led.reserve("U", target="t")
        led.written(r.n)
        rec = RunRecord("t", uid="U", serial_number=r.n, serial=str(r.n), result="passed",
                        phases={"write": 0.5}, run=led.run_id)
        led.record(rec, "done")
        led.record(rec, "done")  # the retry after a lost connection: counted once
        runs = led.runs()
        assert len(runs) == 1 and runs[0]["phases"] == {"write": 0.5} and runs[0]["station"] == "s1"
        assert [e.status for e in led.entries()] == ["done"]
        assert [h["op"] for h in led.history(r.n)] == ["reserve", "written", "done", "done"]
        assert led.check() == []


def test_restart_continues_and_reports_interrupted(spec):
    led = open_ledger(spec)
    r1 = led.reserve("u1")
    led.done(r1.n)
    r2 = led.reserve("u2")
    led.written(r2.n)  # the owner dies with the image half written
    led.close()
    with open_ledger(spec) as again:
        assert [e.n for e in again.interrupted()] == [r2.n]
        fresh = again.reserve("u3")
        assert fresh.n == r2.n + 1  # the interrupted number is not reused by another chip
        back = again.reserve("u2")
        assert back.n == r2.n and back.reclaimed  # its own chip may reclaim it
        again.done(back.n)
        assert again.interrupted() == []


def test_live_uid_elsewhere_is_refused(spec):
    with open_ledger(spec) as a, open_ledger(spec) as b:
        a.reserve("same-uid", target="t0")
        with pytest.raises(LedgerError, match="same-uid"):
            b.reserve("same-uid", target="t1")


def test_range_exhausted(spec):
    with open_ledger(spec, first=5, last=6) as led:
        led.reserve("a")
        led.reserve("b")
        with pytest.raises(LedgerError, match="exhausted"):
            led.reserve("c")


def test_a_later_range_start_is_a_gap_with_a_reason(spec):
    with open_ledger(spec) as led:
        led.reserve("a")
    with open_ledger(spec, first=50) as led:
        assert led.reserve("b").n == 50
        assert led.gaps() == [(2, 49, "serial range starts at 50")]
        assert not any("missing" in p for p in led.check())


def test_void_is_recorded_and_never_reissued(spec):
    with open_ledger(spec) as led:
        a = led.reserve("a")
        led.done(a.n)
        with pytest.raises(LedgerRefused, match="reason"):
            led.void(a.n, " ")
        e = led.void(a.n, "label printed twice")
        assert e.status == "void" and e.reason == "label printed twice"
        ahead = led.void(3, "pre-printed label lost")  # a number not yet issued
        assert ahead.status == "void"
        b = led.reserve("b")
        c = led.reserve("c")
        assert (b.n, c.n) == (2, 4)  # 1 and 3 are never handed out
        busy = led.reserve("d")
        with pytest.raises(LedgerError, match="being programmed"):
            led.void(busy.n, "x")
        assert [h["detail"] for h in led.history(1) if h["op"] == "void"] == ["label printed twice"]


def test_check_finds_done_without_run_row(spec):
    with open_ledger(spec) as led:
        led.done(led.reserve("a").n)  # no run row: not how batch does it
        assert led.check() == ["serial #1 is done but has no passed run row"]


def test_threads_never_share_a_number(spec):
    led = open_ledger(spec)
    got: list[int] = []
    lock = threading.Lock()

    def worker(k):
        for i in range(15):
            r = led.reserve(f"uid-{k}-{i}", target=f"t{k}")
            (led.done if i % 3 else led.failed)(r.n, *(() if i % 3 else ("err",)))
            with lock:
                got.append(r.n)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    led.close()
    assert sorted(got) == list(range(1, 91))
    assert all(len(uids) == 1 for uids in _numbers_by_uid(spec).values())


def _proc_worker(spec, k, count):
    with open_ledger(spec, station=f"p{k}") as led:
        for i in range(count):
            r = led.reserve(f"p{k}-{i}")
            led.done(r.n)


def test_processes_never_share_a_number(spec):
    with open_ledger(spec):
        pass  # schema created once, so the workers race on numbers only
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_proc_worker, args=(spec, k, 25)) for k in range(4)]
    for pr in procs:
        pr.start()
    for pr in procs:
        pr.join(60)
        assert pr.exitcode == 0
    by_n = _numbers_by_uid(spec)
    assert sorted(by_n) == list(range(1, 101))
    assert all(len(u) == 1 for u in by_n.values())
    with open_ledger(spec) as led:
        assert {e.status for e in led.entries()} == {"done"}
        assert {e.station for e in led.entries()} == {"p0", "p1", "p2", "p3"}


def test_schema_is_versioned_and_a_newer_one_refused(tmp_path):
    p = tmp_path / "l.db"
    with open_ledger(str(p)) as led:
        led.reserve("a")
    conn = sqlite3.connect(p)
    assert conn.execute("SELECT value FROM stmflash_meta WHERE key='schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    conn.execute("UPDATE stmflash_meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    with pytest.raises(LedgerRefused, match="newer than this stmflash"):
        open_ledger(str(p))


def test_damaged_or_foreign_files_are_refused(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"SQLite format 3\0" + b"\x00" * 50 + b"garbage" * 200)
    with pytest.raises(LedgerRefused, match="bad.db"):
        open_ledger(str(bad))
    text = tmp_path / "notes.db"
    text.write_text("serials: 1 2 3\n")
    with pytest.raises(LedgerRefused, match="not an SQLite database"):
        open_ledger(str(text))
    journal = tmp_path / "old.jsonl"
    journal.write_text('{"v":1,"op":"reserve","n":1,"uid":"a"}\n')
    with pytest.raises(LedgerRefused, match="stmflash ledger import"):
        open_ledger(str(journal))
    with pytest.raises(LedgerRefused, match="unknown engine 'mysql'"):
        open_ledger("mysql://u:pw@h/db")


def test_redact_hides_passwords():
    assert redact("postgresql://line:s3cret@db.local:5433/line3?sslmode=require") == \
        "postgresql://line:***@db.local:5433/line3?sslmode=require"
    assert redact("postgresql://line@db/line3") == "postgresql://line@db/line3"
    assert redact("line3.db") == "line3.db"


def test_postgres_password_from_pgpassword_and_never_in_messages(pg_server, monkeypatch):
    db = pg_server.new_database()
    with open_ledger(pg_server.url(db), station="s") as led:
        assert led.where == pg_server.url(db).replace(pg_server.password, "***")
    monkeypatch.setenv("PGPASSWORD", pg_server.password)
    with open_ledger(pg_server.url(db, password=False)) as led:
        assert led.reserve("a").n == 1
    monkeypatch.delenv("PGPASSWORD")
    wrong = pg_server.url(db).replace(pg_server.password, "not-the-password")
    with pytest.raises(LedgerRefused) as ei:  # exit 2 at once: waiting will not fix a password
        open_ledger(wrong)
    assert "authentication failed" in str(ei.value)
    assert "not-the-password" not in str(ei.value) and "***" in str(ei.value)


def test_postgres_unreachable_is_exit_3_after_waiting(pg_server):
    from stmflash.production.store import LedgerUnavailable

    url = pg_server.url("postgres").replace(f":{pg_server.port}/", ":1/")  # nothing listens there
    with pytest.raises(LedgerUnavailable) as ei:
        open_ledger(url, connect_wait=0.5)
    assert ei.value.exit_code == 3 and "cannot reach ledger" in str(ei.value)
    assert pg_server.password not in str(ei.value)


def test_postgres_reconnects_after_a_server_restart(pg_server, pg_url):
    notes: list[str] = []
    led = open_ledger(pg_url, on_reconnect=notes.append)
    a = led.reserve("a")
    pg_server.restart()
    led.done(a.n)  # the connection died with the server: reconnected, then written
    b = led.reserve("b")
    assert b.n == a.n + 1 and notes and "reconnected" in notes[0]
    assert {e.n: e.status for e in led.entries()} == {a.n: "done", b.n: "reserved"}
    led.close()


@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from(["done", "failed", "none"])), max_size=40))
def test_property_uid_number_bijection(tmp_path_factory, ops):
    """Whatever the sequence of chips and outcomes: one number per chip, one chip per number,
    and every allocated number has a status."""
    p = str(tmp_path_factory.mktemp("prop") / "l.db")
    uid_of: dict[int, str] = {}
    num_of: dict[str, int] = {}
    led = open_ledger(p)
    for chip, outcome in ops:
        uid = f"chip{chip}"
        r = led.reserve(uid, target="t")
        assert num_of.setdefault(uid, r.n) == r.n
        assert uid_of.setdefault(r.n, uid) == uid
        if outcome == "done":
            led.done(r.n)
        elif outcome == "failed":
            led.failed(r.n, "x")
    led.close()
    with open_ledger(p) as again:
        entries = again.entries()
    assert sorted(e.n for e in entries) == sorted(uid_of)
    assert all(e.status in ("done", "failed", "interrupted") for e in entries)


def test_postgres_liveness_across_roles(pg_server, pg_url):
    """A station logged in as another role sees a live reservation as live (pid only), and as
    interrupted once that station's session is gone."""
    db = pg_url.rsplit("/", 1)[1]
    role = f"station_{db}"
    with open_ledger(pg_url, station="a") as a:
        pg_server.sql(f"CREATE ROLE {role} LOGIN PASSWORD 'pw-{db}'")
        for grant in (f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}",
                      f"GRANT USAGE, CREATE ON SCHEMA public TO {role}"):
            pg_server.sql(grant, db)
        other = f"postgresql://{role}:pw-{db}@127.0.0.1:{pg_server.port}/{db}"
        r = a.reserve("chip-1", target="t0")
        with open_ledger(other, station="b") as b:
            assert {e.n: e.status for e in b.entries()} == {r.n: "reserved"}
            with pytest.raises(LedgerError, match="being programmed"):
                b.void(r.n, "not while station a works on it")
            a.close()
            for _ in range(50):  # the server notices the closed session at once, or nearly
                if b.entries()[0].status == "interrupted":
                    break
            assert b.entries()[0].status == "interrupted"
            assert b.reserve("chip-2").n == r.n + 1
