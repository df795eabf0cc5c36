"""The serial-number ledger: no number twice, none lost without a record, under threads,
processes, restarts and torn writes."""

from __future__ import annotations

import json
import multiprocessing
import os
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stmflash.production.ledger import Ledger, LedgerError, read_records


def _numbers_by_uid(path):
    seen: dict[int, set] = {}
    for r in read_records(path):
        if r["op"] == "reserve":
            seen.setdefault(r["n"], set()).add(r["uid"])
    return seen


def test_reserve_done_failed_and_reclaim(tmp_path):
    p = tmp_path / "l.jsonl"
    with Ledger(p, first=100) as led:
        a = led.reserve("uidA", target="t0", serial_of=lambda n: f"SN{n}")
        b = led.reserve("uidB", target="t1")
        assert (a.n, b.n) == (100, 101)
        assert not a.reclaimed
        led.done(a.n, uid="uidA")
        led.failed(b.n, "no answer on t1", uid="uidB")
        again = led.reserve("uidA", target="t5")
        assert again.n == 100 and again.reclaimed
        led.done(again.n, uid="uidA")
        retry = led.reserve("uidB", target="t1")
        assert retry.n == 101 and retry.reclaimed
        led.done(101, uid="uidB")
        c = led.reserve(None, target="t2")
        assert c.n == 102
        led.failed(102, "boom")
        entries = {e.n: e for e in led.entries()}
    assert entries[100].status == "done" and entries[100].serial == "SN100"
    assert entries[101].status == "done"
    assert entries[102].status == "failed" and entries[102].error == "boom"
    recs = read_records(p)
    assert all(r["v"] == 1 for r in recs)
    assert [r["op"] for r in recs].count("reserve") == 5


def test_restart_continues_and_reports_interrupted(tmp_path):
    p = tmp_path / "l.jsonl"
    led = Ledger(p)
    r1 = led.reserve("u1")
    led.done(r1.n, uid="u1")
    r2 = led.reserve("u2")  # never completed
    # simulate a dead owner: drop the run from the live set without an outcome
    led.close()
    with Ledger(p) as again:
        inter = again.interrupted()
        assert [e.n for e in inter] == [r2.n]
        fresh = again.reserve("u3")
        assert fresh.n == r2.n + 1  # interrupted number not reused by another chip
        back = again.reserve("u2")
        assert back.n == r2.n and back.reclaimed  # its own chip may reclaim it
        again.done(back.n, uid="u2")
        assert again.interrupted() == []


def test_dead_process_reservation_is_interrupted(tmp_path):
    p = tmp_path / "l.jsonl"
    rec = {"v": 1, "op": "reserve", "n": 7, "uid": "x", "run": "r", "pid": 2**22 + 12345,
           "host": os.uname().nodename, "t": ""}
    p.write_text(json.dumps(rec) + "\n")
    with Ledger(p) as led:
        assert [e.n for e in led.interrupted()] == [7]
        assert led.reserve("y").n == 8


def test_torn_last_line_is_ignored_and_terminated(tmp_path):
    p = tmp_path / "l.jsonl"
    with Ledger(p) as led:
        led.done(led.reserve("a").n, uid="a")
    with open(p, "ab") as fh:
        fh.write(b'{"v":1,"op":"reserve","n":2,"ui')  # killed mid-write, never fsynced
    with Ledger(p) as led:
        r = led.reserve("b")
        assert r.n == 2  # the torn record never completed, so 2 was never used
        led.done(r.n, uid="b")
        assert led.corrupt_lines == 1
    recs = read_records(p)
    assert [(r["op"], r["n"]) for r in recs] == [("reserve", 1), ("done", 1), ("reserve", 2), ("done", 2)]


def test_live_uid_elsewhere_is_refused(tmp_path):
    p = tmp_path / "l.jsonl"
    with Ledger(p) as a, Ledger(p) as b:
        a.reserve("same-uid", target="t0")
        with pytest.raises(LedgerError, match="same-uid"):
            b.reserve("same-uid", target="t1")


def test_range_exhausted(tmp_path):
    with Ledger(tmp_path / "l.jsonl", first=5, last=6) as led:
        led.reserve("a")
        led.reserve("b")
        with pytest.raises(LedgerError, match="exhausted"):
            led.reserve("c")


def test_threads_never_share_a_number(tmp_path):
    p = tmp_path / "l.jsonl"
    led = Ledger(p)
    got: list[int] = []
    lock = threading.Lock()

    def worker(k):
        for i in range(25):
            r = led.reserve(f"uid-{k}-{i}", target=f"t{k}")
            (led.done if i % 3 else led.failed)(r.n, *(() if i % 3 else ("err",)))
            with lock:
                got.append(r.n)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    led.close()
    assert sorted(got) == list(range(1, 201))
    assert all(len(uids) == 1 for uids in _numbers_by_uid(p).values())


def _proc_worker(path, k, count):
    led = Ledger(path)
    for i in range(count):
        r = led.reserve(f"p{k}-{i}")
        led.done(r.n, uid=f"p{k}-{i}")
    led.close()


def test_processes_never_share_a_number(tmp_path):
    p = str(tmp_path / "l.jsonl")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_proc_worker, args=(p, k, 30)) for k in range(4)]
    for pr in procs:
        pr.start()
    for pr in procs:
        pr.join(60)
        assert pr.exitcode == 0
    by_n = _numbers_by_uid(p)
    assert sorted(by_n) == list(range(1, 121))
    assert all(len(u) == 1 for u in by_n.values())
    with Ledger(p) as led:
        assert {e.status for e in led.entries()} == {"done"}


@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from(["done", "failed", "none"])), max_size=40))
def test_property_uid_number_bijection(tmp_path_factory, ops):
    """Whatever the sequence of chips and outcomes: one number per chip, one chip per number,
    and every allocated number has a status."""
    p = tmp_path_factory.mktemp("prop") / "l.jsonl"
    uid_of: dict[int, str] = {}
    num_of: dict[str, int] = {}
    led = Ledger(p)
    for chip, outcome in ops:
        uid = f"chip{chip}"
        try:
            r = led.reserve(uid, target="t")
        except LedgerError:
            # only possible when this chip's previous reservation has no outcome yet
            assert led.number_of(uid) is not None
            continue
        assert num_of.setdefault(uid, r.n) == r.n
        assert uid_of.setdefault(r.n, uid) == uid
        if outcome == "done":
            led.done(r.n, uid=uid)
        elif outcome == "failed":
            led.failed(r.n, "x", uid=uid)
    led.close()
    with Ledger(p) as again:
        entries = again.entries()
    assert sorted(e.n for e in entries) == sorted(uid_of)
    assert all(e.status in ("done", "failed", "interrupted") for e in entries)
