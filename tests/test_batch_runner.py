"""The batch runner's logic over a direct in-memory link to virtual chips (no transport):
serials merged and verified, retries, failures recorded, protection after verification."""

from __future__ import annotations

import io
import threading

import pytest

from stmflash.devices import find
from stmflash.errors import LinkError, UsageError
from stmflash.image.model import Image
from stmflash.production.job import JobConfig, SerialConfig, parse_protect
from stmflash.production.live import Events
from stmflash.production.report import RunReport
from stmflash.production.runner import BatchRunner
from stmflash.production.serials import SerialFormat
from stmflash.production.store import open_ledger
from stmflash.production.targets import Target
from stmflash.sim.chip import VirtualChip

DEV = find("F103")  # 1 KiB pages: a small image touches few units
BASE = DEV.flash_start
IMAGE = Image.from_segments([(BASE, bytes(range(256)) * 8)], source="fw.bin")
SERIAL_AT = BASE + 0x1000


class ChipLink:
    """The Link protocol straight onto a VirtualChip (what a transport would do)."""

    max_read = 256
    max_write = 256

    def __init__(self, chip: VirtualChip, fail_writes: int = 0) -> None:
        self.chip = chip
        self.device = chip.device
        self.uid = chip.uid
        self.fail_writes = fail_writes
        self.log: list[str] = []

    def read(self, address, length):
        return self.chip.read(address, length)

    def write(self, address, data):
        if self.fail_writes:
            self.fail_writes -= 1
            raise LinkError(f"timeout writing 0x{address:08X}")
        self.chip.program(address, data)

    def erase(self, units):
        self.chip.erase_units([u.index for u in units])

    def mass_erase(self):
        self.chip.mass_erase()

    def checksum(self, address, length):
        return None

    def start(self, address):
        self.log.append("go")

    def reset(self):
        self.log.append("reset")

    def write_protect(self, units):
        self.log.append(f"wrp{units}")
        self.chip.write_protect_groups({self.chip.group_of(u) for u in units}, reset=False)

    def readout_protect(self, level=1):
        self.log.append(f"rdp{level}")
        self.chip.set_rdp(level)


class FakeConnector:
    def __init__(self, chips: dict[str, VirtualChip], *, silent=(), flaky: dict[str, int] | None = None):
        self.chips = chips
        self.silent = set(silent)
        self.flaky = dict(flaky or {})
        self.links: dict[str, ChipLink] = {}
        self.lock = threading.Lock()

    def connect(self, target, job, reporter):
        if target.spec in self.silent:
            raise LinkError(f"no answer from the bootloader on {target.spec}")
        with self.lock:  # flaky: how many connections fail their first write
            fails = 1 if self.flaky.get(target.spec, 0) > 0 else 0
            self.flaky[target.spec] = self.flaky.get(target.spec, 0) - fails
        link = ChipLink(self.chips[target.spec], fail_writes=fails)
        self.links[target.spec] = link
        return link

    def close(self, link):
        pass

    def present(self, target, job):
        return True


def _run(tmp_path, n=6, *, silent=(), flaky=None, protect=(), retries=1, ledger=None, serial=True):
    chips = {f"t{i}": VirtualChip(DEV, seed=i) for i in range(n)}
    targets = [Target("uart", name, name) for name in chips]
    sc = SerialConfig(SERIAL_AT, SerialFormat("ascii", prefix="SN", width=6), str(tmp_path / "l.db"), first=1)
    job = JobConfig(serial=sc if serial else None, retries=retries,
                    protect=parse_protect(list(protect), confirmed=True), after="go")
    led = ledger or (open_ledger(sc.ledger) if serial else None)
    events = Events(stdout=io.StringIO(), stderr=io.StringIO(), live=False)
    report = RunReport(str(tmp_path / "reports"), "run")
    conn = FakeConnector(chips, silent=silent, flaky=flaky)
    BatchRunner(job, IMAGE, targets, events=events, report=report, connector=conn, ledger=led).run()
    if led is not None and ledger is None:
        led.close()
    return chips, report, conn, events


def test_all_boards_get_distinct_verified_serials(tmp_path):
    chips, report, conn, events = _run(tmp_path, n=6)
    assert report.passed == 6 and report.failed == 0
    serials = set()
    for name, chip in chips.items():
        assert chip.read(BASE, IMAGE.size) == IMAGE.segments[0].data
        s = chip.read(SERIAL_AT, 8)
        assert s.startswith(b"SN")
        serials.add(s)
        assert conn.links[name].log == ["go"]
    assert len(serials) == 6
    by_target = {b.target: b for b in report.boards}
    assert {by_target[n].serial.encode() for n in chips} == serials
    assert all(b.uid == chips[b.target].uid.hex().upper() for b in report.boards)


def test_failures_are_recorded_and_retries_help(tmp_path):
    chips, report, conn, events = _run(tmp_path, n=4, silent={"t1"}, flaky={"t2": 1}, retries=1)
    by = {b.target: b for b in report.boards}
    assert by["t1"].result == "failed" and "no answer" in by["t1"].error and by["t1"].exit_code == 3
    assert by["t1"].serial == ""  # never identified, so no number was burnt
    assert by["t2"].result == "passed" and by["t2"].attempts == 2
    assert chips["t2"].read(SERIAL_AT, 8) == by["t2"].serial.encode()
    with open_ledger(str(tmp_path / "l.db")) as led:
        ops = [(r["op"], r["n"]) for r in led.history()]
    assert sorted(n for op, n in ops if op == "reserve") == [1, 2, 3]  # one reserve per board
    assert sorted(n for op, n in ops if op == "done") == [1, 2, 3]


def test_failed_board_keeps_its_number_with_the_error(tmp_path):
    chips, report, conn, events = _run(tmp_path, n=2, flaky={"t0": 5}, retries=1)
    by = {b.target: b for b in report.boards}
    assert by["t0"].result == "failed" and "timeout writing" in by["t0"].error
    with open_ledger(str(tmp_path / "l.db")) as led:
        e = {x.n: x for x in led.entries()}[by["t0"].serial_number]
    assert e.status == "failed" and "timeout writing" in e.error


def test_reflash_keeps_number(tmp_path):
    led = open_ledger(str(tmp_path / "l.db"))
    chips1, rep1, _, _ = _run(tmp_path, n=3, ledger=led)
    chips2, rep2, _, _ = _run(tmp_path, n=3, ledger=led)  # same seeds -> same UIDs
    led.close()
    assert {b.uid: b.serial for b in rep1.boards} == {b.uid: b.serial for b in rep2.boards}


def test_protection_after_verify(tmp_path):
    chips, report, conn, events = _run(tmp_path, n=2, protect=("wrp", "rdp1"), serial=False)
    assert report.passed == 2
    for name, chip in chips.items():
        assert conn.links[name].log == ["wrp[0, 1]", "rdp1", "reset"]  # 2 KiB image on 1 KiB pages
        assert chip.rdp_level == 1
        assert {0, 1} <= chip.wrp
        assert chip.flash[: IMAGE.size] == IMAGE.segments[0].data
    assert all(b.protection == "wrp:0,1+rdp1" for b in report.boards)


def test_serial_over_image_data_is_refused_up_front(tmp_path):
    sc = SerialConfig(BASE + 4, SerialFormat("u32"), str(tmp_path / "l.db"))
    with open_ledger(sc.ledger) as led, pytest.raises(UsageError, match="overlaps image data"):
        BatchRunner(JobConfig(serial=sc), IMAGE, [], events=Events(live=False), report=RunReport(str(tmp_path), "r"),
                    connector=FakeConnector({}), ledger=led)


def test_loop_mode_counts_and_max_boards(tmp_path):
    chips = {"t0": VirtualChip(DEV, seed=1)}
    conn = FakeConnector(chips)
    swaps = iter([VirtualChip(DEV, seed=s) for s in range(10, 20)])
    original = conn.connect

    def connect(target, job, reporter):
        link = original(target, job, reporter)
        return link

    conn.connect = connect

    def probe_uid(target, job):
        # after each board is programmed, the operator swaps in a new chip
        chips["t0"] = next(swaps)
        return chips["t0"].uid.hex().upper()

    conn.probe_uid = probe_uid
    job = JobConfig(loop=True, max_boards=3)
    report = RunReport(str(tmp_path), "r")
    BatchRunner(job, IMAGE, [Target("uart", "t0", "t0")], events=Events(live=False, stderr=io.StringIO()),
                report=report, connector=conn, poll_s=0.01).run()
    assert len(report.boards) == 3 and report.passed == 3
    assert len({b.uid for b in report.boards}) == 3


@pytest.mark.timeout(30)
def test_loop_quota_releases_idle_workers(tmp_path):
    """With --max-boards reached on one slot, a slot still waiting for a board stops too."""
    chips = {"t0": VirtualChip(DEV, seed=1), "t1": VirtualChip(DEV, seed=2)}
    conn = FakeConnector(chips)
    conn.present = lambda target, job: target.spec == "t0"  # nothing ever plugged into t1
    conn.probe_uid = lambda target, job: "new-board"
    report = RunReport(str(tmp_path), "r")
    BatchRunner(JobConfig(loop=True, max_boards=1), IMAGE, [Target("uart", t, t) for t in chips],
                events=Events(live=False, stderr=io.StringIO()), report=report, connector=conn, poll_s=0.01).run()
    assert [b.target for b in report.boards] == ["t0"] and report.passed == 1
