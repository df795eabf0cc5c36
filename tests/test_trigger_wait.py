"""Following a board across re-enumeration by its USB port path (fake bus, fake clock)."""

from __future__ import annotations

import pytest

from stmflash.errors import EXIT_NO_ANSWER, LinkError
from stmflash.trigger.wait import (
    UsbSeen,
    location_path,
    usb_path,
    wait_for_reenumeration,
)

APP = UsbSeen(0x0483, 0x5740, "1-4.2", "/dev/ttyACM0")
DFU = UsbSeen(0x0483, 0xDF11, "1-4.2")
OTHER_DFU = UsbSeen(0x0483, 0xDF11, "1-3")


class FakeBus:
    """Scans return the next listed snapshot (the last one repeats); time advances per poll."""

    def __init__(self, *snapshots: list[UsbSeen]) -> None:
        self.snapshots = list(snapshots)
        self.scans = 0
        self.now = 0.0
        self.slept: list[float] = []

    def scan(self) -> list[UsbSeen]:
        i = min(self.scans, len(self.snapshots) - 1)
        self.scans += 1
        return self.snapshots[i]

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


def wait(bus: FakeBus, **kw):
    kw.setdefault("old", APP)
    kw.setdefault("settle", 0.0)
    return wait_for_reenumeration(bus.scan, clock=bus.clock, sleep=bus.sleep, poll=0.1, **kw)


def test_paths() -> None:
    assert usb_path(1, (4, 2)) == "1-4.2"
    assert usb_path(1, ()) is None and usb_path(None, (1,)) is None
    assert location_path("1-4.2:1.0") == "1-4.2"
    assert location_path(None) is None


def test_leaves_then_arrives_on_the_same_port() -> None:
    bus = FakeBus([APP], [APP], [], [], [OTHER_DFU], [OTHER_DFU, DFU])
    assert wait(bus) == DFU
    assert bus.scans == 6


def test_a_dfu_device_on_another_port_is_not_ours() -> None:
    bus = FakeBus([APP], [OTHER_DFU])
    with pytest.raises(LinkError) as err:
        wait(bus, timeout=1.0)
    assert "1-4.2" in str(err.value) and "left but the ROM bootloader did not enumerate" in str(err.value)
    assert err.value.exit_code == EXIT_NO_ANSWER


def test_arrival_implies_departure_between_two_polls() -> None:
    bus = FakeBus([DFU])
    assert wait(bus) == DFU and bus.scans == 1


def test_application_that_never_leaves_is_named() -> None:
    bus = FakeBus([APP])
    with pytest.raises(LinkError) as err:
        wait(bus, timeout=2.0, how="the 1200-baud touch")
    msg = str(err.value)
    assert "0483:5740" in msg and "did not disconnect within 2 s" in msg and "1200-baud touch" in msg


def test_serial_and_usb_scans_of_one_device_match_by_path() -> None:
    # the old device came from a serial scan (has a tty name); a USB scan has none
    bus = FakeBus([UsbSeen(0x0483, 0x5740, "1-4.2")], [], [DFU])
    assert wait(bus) == DFU


def test_unknown_path_takes_a_new_dfu_device() -> None:
    old = UsbSeen(0x0483, 0x5740, None, "/dev/ttyACM0")
    bus = FakeBus([OTHER_DFU], [OTHER_DFU, DFU])
    assert wait(bus, old=old, before=[OTHER_DFU]) == DFU


def test_settles_after_arrival() -> None:
    bus = FakeBus([DFU])
    wait(bus, settle=0.5)
    assert bus.slept == [0.5]
