"""A line of four stations: four ``stmflash batch --loop`` processes sharing one ledger,
16 virtual boards on pty slots, random SIGKILLs of stations (each restarted), and for
PostgreSQL one server restart in the middle. Afterwards: every board passed with its
own serial in flash, every issued number is accounted for, the run table matches."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from stmflash.devices import find
from stmflash.production.serials import SerialFormat
from stmflash.production.store import open_ledger
from stmflash.sim.chip import _uid_for, flash_bytes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEX = os.path.join(ROOT, "examples", "blinky-f407.hex")
SERIAL_AT = 0x08003F00
FLASH = 0x08000000
FMT = SerialFormat("ascii", prefix="L3-", width=6)
STATIONS = 4
SLOTS_PER_STATION = 2
BOARDS = 16


def _uid(tmp_path, seed: int) -> str:
    """The UID the virtual board with this seed and image file answers with."""
    return _uid_for(find("F407"), seed, tmp_path / f"board{seed}.img").hex().upper()


class Line:
    """The fixture around the stations: puts boards on slots, removes them when done."""

    def __init__(self, tmp_path, spec: str) -> None:
        self.tmp = tmp_path
        self.spec = spec
        self.slots = [str(tmp_path / f"slot{i}") for i in range(STATIONS * SLOTS_PER_STATION)]
        self.boards = {1000 + i: _uid(tmp_path, 1000 + i) for i in range(BOARDS)}  # seed -> uid
        queue = sorted(self.boards)
        self.per_slot = {s: queue[i::len(self.slots)] for i, s in enumerate(self.slots)}
        self.stations: dict[int, subprocess.Popen] = {}
        self.kills = 0
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.where: dict[str, str] = {}  # what each slot's feeder is doing (for failure messages)
        self.reseat = {s: threading.Event() for s in self.slots}

    # ---- stations ---------------------------------------------------------------------
    def station_cmd(self, k: int) -> list[str]:
        slots = self.slots[k * SLOTS_PER_STATION:(k + 1) * SLOTS_PER_STATION]
        return [sys.executable, "-m", "stmflash", "batch", HEX, *slots, "--loop", "--station", f"st{k}",
                "--ledger", self.spec, "--serial-address", hex(SERIAL_AT), "--serial-format", "ascii",
                "--serial-prefix", "L3-", "--serial-width", "6", "--report-dir", str(self.tmp / f"rep{k}"),
                "--parity", "none", "--after", "stay", "--retries", "2", "--json", "--quiet"]

    def start_station(self, k: int) -> None:
        log = open(self.tmp / f"st{k}.log", "ab")
        self.stations[k] = subprocess.Popen(self.station_cmd(k), stdout=log, stderr=log, cwd=ROOT)
        log.close()

    def kill_station(self, k: int) -> None:
        self.stations[k].send_signal(signal.SIGKILL)
        self.stations[k].wait(10)
        self.kills += 1
        # the operator re-seats the boards of the dead station: a ROM bootloader left in the
        # middle of a command by a host that died waits for its bytes forever (AN3155 has no
        # timeout), and a pty has no reset line to bring it back
        for slot in self.slots[k * SLOTS_PER_STATION:(k + 1) * SLOTS_PER_STATION]:
            self.reseat[slot].set()

    # ---- boards -------------------------------------------------------------------------
    def feeder(self, slot: str, store) -> None:
        try:
            for seed in self.per_slot[slot]:
                uid = self.boards[seed]
                while not self.stop.is_set():
                    self.where[slot] = f"inserting {seed}"
                    srv = self.insert(slot, seed)
                    self.where[slot] = f"waiting {seed}"
                    state = self.wait_board(store, uid, srv, self.reseat[slot])
                    self.where[slot] = f"removing {seed} ({state})"
                    srv.send_signal(signal.SIGTERM)
                    srv.wait(20)
                    if state == "done" or self.stop.is_set():
                        break
                    time.sleep(0.3)  # failed or re-seated: pulled and plugged in again
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(f"{slot}: {exc!r}")

    def insert(self, slot: str, seed: int) -> subprocess.Popen:
        log = open(self.tmp / f"board{seed}.log", "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "stmflash", "sim", "uart", "-d", "F407", "--image",
             str(self.tmp / f"board{seed}.img"), "--seed", str(seed), "--link", slot,
             "--timing", "realistic", "--baud", "230400"],  # a board takes long enough to be killed mid-way
            stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT)
        log.close()
        assert proc.stdout.readline().startswith("/dev/")
        return proc

    def wait_board(self, store, uid: str, srv: subprocess.Popen, reseat: threading.Event) -> str:
        while not self.stop.is_set():
            if reseat.is_set():
                reseat.clear()
                return "reseat"
            with self.lock:
                try:
                    e = [x for x in store.entries() if x.uid == uid]
                except Exception as exc:  # noqa: BLE001 - the server is restarting
                    self.where[uid] = repr(exc)
                    e = []
            if e and e[0].status in ("done", "failed"):
                return e[0].status
            if srv.poll() is not None:
                raise AssertionError(f"board {uid} left its slot: exit {srv.returncode}")
            time.sleep(0.2)
        return "stopped"


def _run_line(tmp_path, spec: str, restart_server=None, seed: int = 15, secret: str | None = None) -> None:
    rnd = random.Random(seed)
    line = Line(tmp_path, spec)
    store = open_ledger(spec, station="fixture")
    for k in range(STATIONS):
        line.start_station(k)
    feeders = [threading.Thread(target=line.feeder, args=(s, store), daemon=True) for s in line.slots]
    for f in feeders:
        f.start()
    interrupted: list[str] = []
    deadline = time.monotonic() + float(os.environ.get("STMFLASH_LINE_S", "80"))
    restarted = False
    try:
        next_kill = time.monotonic() + rnd.uniform(0.5, 1.5)
        while any(f.is_alive() for f in feeders):
            assert time.monotonic() < deadline, f"the line did not finish 16 boards in time: {line.where}\n" + "\n".join(
                open(tmp_path / f"st{k}.log").read()[-800:] for k in range(STATIONS))
            done = sum(1 for e in _entries(line, store) if e.status == "done")
            # the server restarts once the kills are done, so that the stations that ride
            # through it are not replaced by fresh ones (a fresh process never reconnects)
            if restart_server is not None and not restarted and done >= BOARDS // 2 and line.kills >= 2:
                restart_server()
                restarted = True
            if line.kills < 3 and not restarted and time.monotonic() >= next_kill:
                # kill a station in the middle of a board (its number reserved or being written)
                busy = [e for e in _entries(line, store) if e.status in ("reserved", "written")]
                if busy:
                    victim = rnd.choice(busy)
                    k = int(victim.station[2:])
                    line.kill_station(k)
                    interrupted.append(_wait_interrupted(line, store, victim.n))
                    time.sleep(rnd.uniform(0.0, 0.3))
                    line.start_station(k)
                    next_kill = time.monotonic() + rnd.uniform(0.5, 2.0)
            for k, p in line.stations.items():
                if p.poll() is not None:
                    raise AssertionError(f"station {k} exited {p.returncode}:\n"
                                         + open(tmp_path / f"st{k}.log").read()[-2000:])
            time.sleep(0.1)
    finally:
        line.stop.set()
        for p in line.stations.values():
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait(10)
        for f in feeders:
            f.join(30)
    assert not line.errors, line.errors
    assert line.kills >= 2 and interrupted == ["interrupted"] * line.kills
    assert restart_server is None or restarted
    logs = "".join(open(tmp_path / f"st{k}.log").read() for k in range(STATIONS))
    if restart_server is not None:
        assert "reconnected to ledger" in logs  # the stations rode through the restart
    assert "Traceback" not in logs
    assert secret is None or secret not in logs
    entries = _entries(line, store)
    runs = store.runs()
    store.close()

    # every board passed with its own serial, and the flash holds exactly that number
    flash_serial = {}
    image_head = open(tmp_path / "board1000.img", "rb").read(16)
    for seed, uid in line.boards.items():
        flash = flash_bytes(str(tmp_path / f"board{seed}.img"))
        assert flash[:16] == image_head[:16] or flash[:4] != b"\xff" * 4
        flash_serial[uid] = FMT.decode(flash[SERIAL_AT - FLASH:][:9])
    assert None not in flash_serial.values(), flash_serial
    assert len(set(flash_serial.values())) == BOARDS, "two boards hold the same serial"
    # every issued number is accounted for, and belongs to the chip that carries it
    assert {e.status for e in entries} <= {"done", "interrupted", "void"}, [e.to_dict() for e in entries]
    done = {e.uid: e.n for e in entries if e.status == "done"}
    assert done == flash_serial
    assert len({e.n for e in entries}) == len(entries)
    # the run table matches the boards: a passed row per board, each with the board's number
    passed = [r for r in runs if r["result"] == "passed"]
    assert {r["uid"] for r in passed} == set(flash_serial)
    assert all(r["serial_number"] == flash_serial[r["uid"]] for r in passed)
    assert {r["station"] for r in runs} <= {f"st{k}" for k in range(STATIONS)}
    assert all(r["uid"] in flash_serial for r in runs if r["uid"])
    with open_ledger(spec, station="fixture") as again:
        assert again.check() == []


def _wait_interrupted(line: Line, store, n: int) -> str:
    """The status of ``n`` right after its station was killed (interrupted, once noticed)."""
    status = "?"
    for _ in range(50):
        status = next(e.status for e in _entries(line, store) if e.n == n)
        if status != "reserved" and status != "written":
            break
        time.sleep(0.1)
    return status


def _entries(line: Line, store):
    for _ in range(100):
        try:
            with line.lock:
                return store.entries()
        except Exception:  # noqa: BLE001 - the server is restarting
            time.sleep(0.2)
    raise AssertionError("ledger unreachable")


@pytest.mark.timeout(150)
def test_four_stations_postgresql_with_kills_and_a_server_restart(tmp_path, pg_server, pg_url):
    _run_line(tmp_path, pg_url, restart_server=pg_server.restart, secret=pg_server.password)


@pytest.mark.timeout(150)
def test_four_stations_sqlite_with_kills(tmp_path):
    _run_line(tmp_path, str(tmp_path / "line3.db"))
