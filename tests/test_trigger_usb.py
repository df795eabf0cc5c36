"""Pin-less entry over USB on the virtual bus: the 1200-baud touch and DFU_DETACH.

``STMFLASH_USB_SIM="F407=IMG;app=1"`` boots the chip's flash application, which enumerates
as a CDC-ACM device (0483:5740) with a DFU runtime interface; the entry makes it come back
as the ROM's 0483:df11 on the same port path.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from stmflash import devices
from stmflash.errors import EXIT_NO_ANSWER, LinkError, UsageError
from stmflash.sim import usb_backend
from stmflash.sim.app import demo_vector_table
from stmflash.sim.chip import VirtualChip, flash_bytes
from stmflash.trigger.host import (
    DetachEntry,
    TouchEntry,
    enter_dfu,
    find_cdc_devices,
    find_runtime_dfu,
)
from stmflash.trigger.host import (
    usb_backend as host_backend,
)
from stmflash.trigger.wait import scan_usb

F407 = devices.find("F407")


@pytest.fixture(autouse=True)
def _fresh_bus() -> Iterator[None]:
    usb_backend.forget()
    yield
    usb_backend.forget()


def image_with_app(tmp_path: Path) -> Path:
    path = tmp_path / "f4.img"
    chip = VirtualChip(F407, image_path=path)
    chip.preload(F407.flash_start, demo_vector_table(chip))
    chip.save()
    return path


def app_bin(tmp_path: Path) -> tuple[Path, bytes]:
    data = bytearray(os.urandom(5000))
    data[:8] = struct.pack("<II", 0x20020000, F407.flash_start + 0x301)
    path = tmp_path / "new.bin"
    path.write_bytes(bytes(data))
    return path, bytes(data)


def use_sim(monkeypatch: pytest.MonkeyPatch, spec: str) -> VirtualChip:
    monkeypatch.setenv("STMFLASH_USB_SIM", spec)
    return usb_backend.bus_from_env().chip(0)


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from stmflash.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


def test_application_enumerates_as_cdc_with_dfu_runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chip = use_sim(monkeypatch, f"F407={image_with_app(tmp_path)};app=1")
    assert chip.mode == "app"
    backend = host_backend()
    (seen,) = scan_usb(backend)
    assert (seen.vid, seen.pid, seen.path) == (0x0483, 0x5740, "1-1")
    (rt,) = find_runtime_dfu(backend)
    assert rt.interface == 2 and rt.will_detach
    assert len(find_cdc_devices(backend)) == 1


@pytest.mark.parametrize("entry", [TouchEntry, DetachEntry])
def test_entry_reenumerates_as_rom_dfu_on_the_same_port(
    entry: type, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chip = use_sim(monkeypatch, f"F407={image_with_app(tmp_path)};app=1;port=2-1.3")
    before = chip.reset_count
    seen = entry().enter()
    assert (seen.vid, seen.pid, seen.path) == (0x0483, 0xDF11, "2-1.3")
    assert chip.mode == "bootloader" and chip.reset_count == before + 1


def test_detach_without_will_detach_needs_the_usb_reset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chip = use_sim(monkeypatch, f"F407={image_with_app(tmp_path)};app=nodetach")
    (rt,) = find_runtime_dfu(host_backend())
    assert not rt.will_detach
    seen = DetachEntry().enter()
    assert seen.pid == 0xDF11 and chip.mode == "bootloader" and chip.usb_app.detaches == 1


def test_no_application_on_the_bus_is_a_clear_link_error(monkeypatch: pytest.MonkeyPatch) -> None:
    use_sim(monkeypatch, "F407")  # ROM DFU already, no application
    with pytest.raises(LinkError) as err:
        TouchEntry().enter()
    assert "no USB CDC application" in str(err.value)
    with pytest.raises(LinkError) as err:
        DetachEntry().enter()
    assert "DFU runtime interface (FE/01/01)" in str(err.value)
    assert enter_dfu("detach,none") is None  # the fallback: already in DFU


@pytest.mark.parametrize("how", ["1200", "detach"])
def test_dfu_enter_flashes_and_leaves_the_new_app_running(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    img = image_with_app(tmp_path)
    chip = use_sim(monkeypatch, f"F407={img};app=1")
    path, data = app_bin(tmp_path)
    code, _, err = cli(["dfu", "--enter", how, str(path), "--leave"], capsys)
    assert code == 0, err
    assert bytes(chip.flash[: len(data)]) == data
    assert chip.mode == "app"  # running the new application, enumerated as the app again
    assert [s.pid for s in scan_usb(host_backend())] == [0x5740]
    usb_backend.forget()  # saves the image
    assert flash_bytes(img)[: len(data)] == data


def test_dfu_enter_without_application_exits_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_sim(monkeypatch, "F407")
    path, _ = app_bin(tmp_path)
    code, _, err = cli(["dfu", "--enter", "1200", str(path)], capsys)
    assert code == EXIT_NO_ANSWER
    assert err.splitlines()[-1].startswith("stmflash: error: no USB CDC application")
    assert "Traceback" not in err


# ---- real-hardware paths, with the OS parts replaced ------------------------------------------


class FakePortInfo:
    def __init__(self, device: str, vid: int, pid: int, location: str) -> None:
        self.device, self.name, self.vid, self.pid, self.location = device, device.split("/")[-1], vid, pid, location
        self.serial_number = "X"


class FakeSerial:
    opened: list[FakeSerial] = []

    def __init__(self, port: str, baudrate: int) -> None:
        self.port, self.baudrate = port, baudrate
        self.events: list[tuple[str, object]] = [("open", baudrate)]
        self._dtr = True
        FakeSerial.opened.append(self)

    @property
    def dtr(self) -> bool:
        return self._dtr

    @dtr.setter
    def dtr(self, value: bool) -> None:
        self._dtr = value
        self.events.append(("dtr", value))

    def close(self) -> None:
        self.events.append(("close", None))


def test_touch_on_a_real_port_opens_at_1200_drops_dtr_and_follows_the_port_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import serial
    from serial.tools import list_ports

    from stmflash.trigger import host
    from stmflash.trigger.wait import UsbSeen

    monkeypatch.delenv("STMFLASH_USB_SIM", raising=False)
    ports = [FakePortInfo("/dev/ttyACM0", 0x0483, 0x5740, "1-4.2:1.0"),
             FakePortInfo("/dev/ttyUSB0", 0x0403, 0x6001, "1-3:1.0")]
    monkeypatch.setattr(list_ports, "comports", lambda: ports)
    monkeypatch.setattr(serial, "Serial", FakeSerial)
    scans = iter([[UsbSeen(0x0483, 0x5740, "1-4.2")], [], [UsbSeen(0x0483, 0xDF11, "1-3.1"),
                                                         UsbSeen(0x0483, 0xDF11, "1-4.2")]])
    last: list[UsbSeen] = []

    def scan(_backend: object) -> list[UsbSeen]:
        nonlocal last
        last = next(scans, last)
        return last

    monkeypatch.setattr(host, "scan_usb", scan)
    slept: list[float] = []
    FakeSerial.opened.clear()
    entry = TouchEntry(None, backend_factory=lambda: None, sleep=slept.append, settle=0.0)  # ST port picked
    seen = entry.enter()
    assert seen == UsbSeen(0x0483, 0xDF11, "1-4.2")
    (touched,) = FakeSerial.opened
    assert touched.port == "/dev/ttyACM0"
    assert touched.events == [("open", 1200), ("dtr", False), ("close", None)]
    assert slept[0] == 0.5  # the application's reset timer runs before we scan

    ports.append(FakePortInfo("/dev/ttyACM1", 0x0483, 0x5740, "1-5:1.0"))
    with pytest.raises(UsageError) as err:  # two ST ports and none named
        TouchEntry(None, backend_factory=lambda: None, sleep=slept.append).enter()
    assert "several USB serial ports" in str(err.value) and "/dev/ttyACM1" in str(err.value)


def test_uart_detach_strategy_sends_dfu_detach(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stmflash.uart.entry import parse_entry

    chip = use_sim(monkeypatch, f"F407={image_with_app(tmp_path)};app=1")
    (strategy,) = parse_entry("detach:1-1")
    strategy.enter(object())  # the serial port is not involved: the request goes over USB
    assert chip.mode == "bootloader" and chip.usb_app.detaches == 1


def test_list_shows_the_application_runtime_interface(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import json

    use_sim(monkeypatch, f"F407={image_with_app(tmp_path)};app=1;port=2-3")
    code, out, _err = cli(["list", "--json"], capsys)
    assert code == 0
    assert json.loads(out)["dfu_runtime"] == [{"vid": "0483", "pid": "5740", "path": "2-3", "interface": 2,
                                               "will_detach": True, "detach_timeout_ms": 1000}]
    code, out, _err = cli(["list"], capsys)
    assert code == 0 and re.search(r"^  2-3 +0483:5740 dfu-runtime", out, re.M), out
