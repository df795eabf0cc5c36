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


# ---- a part whose ROM has no USB DFU (AN2606: L05x listens on USART1/USART2 only) --------------

L053 = devices.find("L053")


def l053_with_app(tmp_path: Path) -> tuple[Path, Path]:
    """An L053 image running the demo application, and a small valid L053 program."""
    img = tmp_path / "l0.img"
    chip = VirtualChip(L053, image_path=img)
    chip.preload(L053.flash_start, demo_vector_table(chip))
    chip.save()
    prog = tmp_path / "l0.bin"
    prog.write_bytes(struct.pack("<II", 0x20002000, L053.flash_start + 0x101) + bytes(248))
    return img, prog


def test_a_rom_without_usb_dfu_never_enumerates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The virtual L05x is no more forgiving than silicon: after the touch its ROM runs and
    listens on its USARTs, and nothing appears on USB (AN2606 sec. 65.1 Table 146)."""
    img, _ = l053_with_app(tmp_path)
    chip = use_sim(monkeypatch, f"L053={img};app=1")
    assert [s.pid for s in scan_usb(host_backend())] == [0x5740]
    with pytest.raises(LinkError) as err:
        TouchEntry(timeout=0.3).enter()
    assert "the application left but the ROM bootloader did not enumerate" in str(err.value)
    assert "'stmflash devices NAME' shows where a part's ROM listens" in str(err.value)
    assert chip.mode == "bootloader" and chip.usb_app.touches == 1
    assert scan_usb(host_backend()) == []


@pytest.mark.parametrize("how", ["1200", "detach", "1200,detach"])
def test_dfu_enter_to_a_part_whose_rom_has_no_usb_names_its_usart_pins(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from stmflash.errors import EXIT_USAGE

    img, prog = l053_with_app(tmp_path)
    chip = use_sim(monkeypatch, f"L053={img};app=1")
    code, _, err = cli(["dfu", "--enter", how, "--device", "L053", str(prog)], capsys)
    assert code == EXIT_USAGE, err
    (line,) = err.strip().splitlines()
    assert line.startswith(f"stmflash: error: --enter {how}: the STM32L05xxx/06xxx ROM bootloader has no USB DFU")
    assert "AN2606 Rev 70 sec. 65.1 Table 146" in line
    assert "USART1 TX PA9 / RX PA10, USART2 TX PA2 / RX PA3" in line and "stmflash uart" in line
    # refused before the trigger: the application still runs, untouched
    assert chip.mode == "app" and chip.usb_app.touches == 0 and chip.usb_app.detaches == 0


def test_dfu_enter_with_device_named_still_enters_a_part_with_usb_rom(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    chip = use_sim(monkeypatch, f"F407={image_with_app(tmp_path)};app=1")
    path, data = app_bin(tmp_path)
    code, _, err = cli(["dfu", "--enter", "1200", "--device", "F407", str(path)], capsys)
    assert code == 0, err
    assert bytes(chip.flash[: len(data)]) == data


class VanishingCdcPort:
    """The application's own USB CDC port (``/dev/ttyACM*``): answers the trigger like the
    stmflash companion, then leaves with the application (the node no longer exists), so
    switching it back to 8E1 and syncing fail."""

    name = "/dev/ttyACM-stmflash-test-vanished"

    def __init__(self) -> None:
        from stmflash.trigger import frame

        self.frame = frame
        self.baudrate, self.parity, self.timeout = 115200, "E", 0.05
        self.pending = b""
        self.gone = False
        self.is_open = True

    @property
    def in_waiting(self) -> int:
        return len(self.pending)

    def write(self, data: bytes) -> int:
        if self.gone:
            raise OSError(5, "Input/output error")
        got = self.frame.decode_frame(bytes(data)[-self.frame.FRAME_LEN:])
        if got is not None:
            self.pending = self.frame.encode_ack(got[1])
        return len(data)

    def read(self, n: int = 1) -> bytes:
        out, self.pending = self.pending[:n], self.pending[n:]
        if out and not self.pending:
            self.gone = True  # the application resets into its ROM after the ack
        return out

    def flush(self) -> None:
        pass

    def reset_input_buffer(self) -> None:
        self.pending = b""

    def apply_settings(self, settings: dict[str, object]) -> None:
        if self.gone:
            raise OSError(2, "No such file or directory")
        for k, v in settings.items():
            setattr(self, k, v)

    def open(self) -> None:
        raise OSError(2, f"could not open port {self.name}: No such file or directory")

    def close(self) -> None:
        self.is_open = False


@pytest.mark.parametrize("device, expect", [
    ("L053", "ROM bootloader has no USB DFU (AN2606 Rev 70 sec. 65.1 Table 146): it listens on USART1 TX PA9 / RX PA10"),
    ("F407", "the STM32F405xx/07xx/15xx/17xx ROM is a USB DFU device now: stmflash dfu"),
    (None, "'stmflash devices NAME' shows where the part's ROM listens"),
])
def test_command_over_the_apps_own_usb_cdc_port_says_where_the_rom_listens(device: str | None, expect: str) -> None:
    """``stmflash uart /dev/ttyACM0 --enter command`` on the application's own USB CDC port:
    the trigger works, the port leaves with the application, and instead of a failed
    8E1 switch or sync timeout the message names where the ROM listens."""
    from stmflash.trigger.host import CommandStrategy, TriggerOptions

    port = VanishingCdcPort()
    dev = devices.find(device) if device else None
    strategy = CommandStrategy(TriggerOptions(device=dev, timeout=0.5))
    with pytest.raises(LinkError) as err:
        strategy.enter(port)
    assert strategy.ack is not None  # the application took the trigger
    msg = str(err.value)
    assert msg.startswith(f"the application on {port.name} acknowledged the trigger and {port.name} went away")
    assert expect in msg
    assert strategy.explain_failure(port) is not None and expect in str(strategy.explain_failure(port))


def test_a_usb_serial_bridge_that_stays_is_not_blamed() -> None:
    """A bridge (ST-LINK VCP, FTDI) stays on the bus while the chip resets: no such message."""
    from stmflash.trigger.host import CommandStrategy, TriggerOptions

    port = VanishingCdcPort()
    port.name = "/dev/null"  # exists: a port that did not go away
    strategy = CommandStrategy(TriggerOptions(device=L053, timeout=0.5))
    with pytest.raises(LinkError) as err:
        strategy.enter(port)
    assert "went away" not in str(err.value) and strategy.explain_failure(port) is None


def test_list_reads_the_runtime_applications_in_one_enumeration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``dfu_runtime`` and ``runtime_apps`` come from one scan of the bus (the DFU device
    list is the only other one), and keep their shapes: an application with a DFU runtime
    interface is in both, a CDC-only device (a USB-serial adapter) only in runtime_apps."""
    import json

    import usb.core

    from stmflash.trigger import runtime

    app_img = image_with_app(tmp_path)
    use_sim(monkeypatch, f"F407={app_img};app=1;port=2-3,F407={tmp_path / 'b.img'};adapter=1;port=2-4")
    finds: list[object] = []
    real_find = usb.core.find
    monkeypatch.setattr(usb.core, "find", lambda *a, **k: finds.append(k.get("backend")) or real_find(*a, **k))
    scans: list[int] = []
    real_scan = runtime.scan
    monkeypatch.setattr(runtime, "scan", lambda *a, **k: scans.append(1) or real_scan(*a, **k))
    code, out, err = cli(["list", "--json"], capsys)
    assert code == 0, err
    assert scans == [1] and len(finds) == 2
    doc = json.loads(out)
    assert doc["dfu_runtime"] == [{"vid": "0483", "pid": "5740", "path": "2-3", "interface": 2,
                                   "will_detach": True, "detach_timeout_ms": 1000}]
    assert doc["runtime_apps"] == [
        {"usb": "0483:5740", "path": "2-3", "kind": "dfu-runtime", "enter": "--enter detach"},
        {"usb": "1209:0001", "path": "2-4", "kind": "cdc", "enter": "--enter 1200"},
    ]
    apps = real_scan()
    assert [(a.kind, a.cdc_interface, a.dfu_interface) for a in apps] == [("dfu-runtime", 0, 2), ("cdc", 0, None)]


def test_uart_connect_reports_the_vanished_cdc_port_with_the_parts_pins() -> None:
    """Through ``stmflash.uart.link.connect`` (what ``stmflash uart --enter command
    --device L053`` runs): one line naming the port and the L05x ROM's USART pins."""
    from stmflash.trigger.host import set_defaults
    from stmflash.uart.link import connect

    port = VanishingCdcPort()
    set_defaults(device=L053, timeout=0.5)
    try:
        with pytest.raises(LinkError) as err:
            connect(port.name, enter="command", ser=port, timeout=0.05, retries=0)
    finally:
        set_defaults()
    msg = str(err.value)
    assert "\n" not in msg and f"{port.name} went away" in msg
    assert "USART1 TX PA9 / RX PA10, USART2 TX PA2 / RX PA3" in msg and err.value.exit_code == 3
