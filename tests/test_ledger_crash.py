"""A batch SIGKILLed in the middle, then run again: no serial number twice, none lost
without a record (every allocated number is done, failed or interrupted)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from stmflash.production.store import open_ledger

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEX = os.path.join(ROOT, "examples", "blinky-f407.hex")


def _targets(tmp_path, seeds, timing):
    return [f"sim://F407?seed={s}&image={tmp_path / f'chip{s}.img'}&timing={timing}" for s in seeds]


def _batch(tmp_path, targets, ledger):
    return [sys.executable, "-m", "stmflash", "batch", HEX, *targets, "--serial-address", "0x08003F00",
            "--serial-format", "u32", "--ledger", str(ledger), "--report-dir", str(tmp_path / "rep"),
            "--json", "--quiet"]


def _reserves(ledger):
    with open_ledger(str(ledger)) as led:
        return [r for r in led.history() if r["op"] == "reserve"], led.entries()


def test_sigkill_mid_batch_then_rerun(tmp_path):
    ledger = tmp_path / "serials.db"
    proc = subprocess.Popen(_batch(tmp_path, _targets(tmp_path, range(8), "realistic"), ledger),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if ledger.exists() and len(_reserves(ledger)[0]) >= 4:
                break
            time.sleep(0.02)
        else:
            raise AssertionError("the batch never reserved numbers")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    first, entries = _reserves(ledger)
    reserved_first = {r["n"]: r["uid"] for r in first}
    finished_first = {e.n for e in entries if e.status in ("done", "failed")}
    assert reserved_first and len(finished_first) < 8  # really killed mid-run
    status = {e.n: e.status for e in entries}
    assert set(status) == set(reserved_first)
    assert all(status[n] == "interrupted" for n in reserved_first if n not in finished_first)

    # same 8 boards again plus 4 new ones, instant timing
    rerun = subprocess.run(_batch(tmp_path, _targets(tmp_path, range(12), "instant"), ledger),
                           capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    recs, entries = _reserves(ledger)
    uid_of: dict[int, str] = {}
    for r in recs:
        assert uid_of.setdefault(r["n"], r["uid"]) == r["uid"], f"number {r['n']} given to two chips"
    numbers_of_uid: dict[str, set[int]] = {}
    for n, uid in uid_of.items():
        numbers_of_uid.setdefault(uid, set()).add(n)
    assert all(len(ns) == 1 for ns in numbers_of_uid.values()), "a chip got two numbers"
    assert len(uid_of) == 12
    # chips interrupted in the first run reclaimed their own numbers
    for n, uid in reserved_first.items():
        assert uid_of[n] == uid
    # new chips got fresh numbers above everything handed out before
    old_uids = set(reserved_first.values())
    assert min(n for n, u in uid_of.items() if u not in old_uids) > max(reserved_first)
    assert {e.n for e in entries} == set(uid_of)
    assert all(e.status in ("done", "failed", "interrupted") for e in entries)
    assert sum(e.status == "done" for e in entries) == 12
    with open_ledger(str(ledger)) as led:
        assert led.check() == []
