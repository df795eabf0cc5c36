"""The virtual USB ROM against DFU hosts that are not ours, under realistic timing.

pydfu (micropython ``tools/pydfu.py``, the usual deploy tool for F405 boards) follows the
literal AN3156 flow: after each DNLOAD it sends GETSTATUS (must answer dfuDNBUSY) and a
second GETSTATUS straight away (must answer dfuDNLOAD-IDLE), never waiting for
bwPollTimeout. That works on silicon because the ROM holds (NAKs) the control transfer
until the operation is over. :class:`PydfuStyleHost` issues exactly that request sequence
(written from pydfu's documented flow, not its code): erase the pages the image covers,
then per ``wTransferSize`` chunk SET_ADDRESS + DNLOAD(wValue=2), then leave.

``pyfu-usb`` (PyPI, square) is the second host, run unchanged in a child process whose
``usb.core.find`` is given the virtual backend. ``pydfuutil`` 0.11.3 (PyPI, a port of
dfu-util) runs on a pyusb backend but cannot program an ST ROM, real or virtual: its probe
lists every alternate setting once per alternate setting (pyusb iterates a configuration
by altsetting) and then refuses "More than one DFU capable USB device found" for a raw
.bin; with a DfuSe .dfu (which skips that check) its parser extends an 11-byte buffer
instead of filling it and reports "No valid DfuSe signature" for any file.
"""

from __future__ import annotations

import os
import random
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import usb.core
import usb.util

from stmflash.devices import find
from stmflash.dfu.protocol import State
from stmflash.sim.chip import VirtualChip, flash_bytes
from stmflash.sim.usb_backend import VirtualBus

DEVICES = ["F407", "F072", "G474", "H743", "L476"]
# not a multiple of 4, 8, 16 or 32: the ROM completes the last unit with 0xFF
IMAGE_SIZE = 2 * 2048 + 1001

DNLOAD, UPLOAD, GETSTATUS, CLRSTATUS, GETSTATE, ABORT = 1, 2, 3, 4, 5, 6
OUT, IN = 0x21, 0xA1
TIMEOUT_MS, STATUS_TIMEOUT_MS = 4000, 20000  # pydfu's request timeouts


class HostFailed(Exception):
    pass


class PydfuStyleHost:
    """pydfu's request sequence: two GETSTATUS back to back after every DNLOAD."""

    def __init__(self, backend) -> None:
        devs = list(usb.core.find(find_all=True, backend=backend, custom_match=self._is_dfu))
        if len(devs) != 1:
            raise HostFailed(f"{len(devs)} DFU devices")
        self.dev = dev = devs[0]
        dev.set_configuration()
        usb.util.claim_interface(dev, 0)
        self.xfer = None
        for intf in dev[0]:
            extra = bytes(intf.extra_descriptors)
            if len(extra) == 9 and extra[1] == 0x21:
                self.xfer = struct.unpack("<BBBHHH", extra)[4]
        if self.xfer is None:
            raise HostFailed("no DFU functional descriptor")
        for _ in range(4):  # reach dfuIDLE
            state = self.status()
            if state == State.IDLE:
                break
            if state in (State.DNLOAD_IDLE, State.UPLOAD_IDLE):
                dev.ctrl_transfer(OUT, ABORT, 0, 0, None, TIMEOUT_MS)
            else:
                dev.ctrl_transfer(OUT, CLRSTATUS, 0, 0, None, TIMEOUT_MS)

    @staticmethod
    def _is_dfu(dev) -> bool:
        for cfg in dev:
            for intf in cfg:
                return intf.bInterfaceClass == 0xFE and intf.bInterfaceSubClass == 1
        return False

    def status(self) -> int:
        return self.dev.ctrl_transfer(IN, GETSTATUS, 0, 0, 6, STATUS_TIMEOUT_MS)[4]

    def expect(self, stage: str, state: int) -> None:
        got = self.status()
        if got != state:
            raise HostFailed(f"{stage} failed ({State(got).name})")

    def command(self, stage: str, payload: bytes, value: int = 0) -> None:
        self.dev.ctrl_transfer(OUT, DNLOAD, value, 0, payload, TIMEOUT_MS)
        self.expect(stage, State.DNBUSY)
        self.expect(stage, State.DNLOAD_IDLE)  # no wait for bwPollTimeout

    def layout(self) -> list[tuple[int, int]]:
        """(address, page size) per page of alt 0's memory map."""
        text = usb.util.get_string(self.dev, self.dev[0][(0, 0)].iInterface)
        parts = text.split("/")
        pages = []
        for i in range(1, len(parts), 2):
            addr = int(parts[i], 0)
            for seg in parts[i + 1].split(","):
                m = re.match(r"(\d+)\*(\d+)(.)(.)", seg)
                assert m, seg
                count, size = int(m.group(1)), int(m.group(2)) * {"K": 1024, "M": 1 << 20}.get(m.group(3), 1)
                for _ in range(count):
                    pages.append((addr, size))
                    addr += size
        return pages

    def download(self, address: int, data: bytes) -> None:
        end = address + len(data)
        for page, size in self.layout():
            if page < end and page + size > address:
                self.command("erase", struct.pack("<BI", 0x41, page))
        for off in range(0, len(data), self.xfer):
            self.command("set address", struct.pack("<BI", 0x21, address + off))
            self.command("write memory", data[off : off + self.xfer], value=2)

    def leave(self, address: int) -> None:
        self.command("set address", struct.pack("<BI", 0x21, address))
        self.dev.ctrl_transfer(OUT, DNLOAD, 0, 0, None, TIMEOUT_MS)
        try:
            self.status()  # dfuMANIFEST; the device may already be gone
        except usb.core.USBError:
            pass
        usb.util.dispose_resources(self.dev)


def firmware(size: int = IMAGE_SIZE, seed: int = 7) -> bytes:
    body = random.Random(seed).randbytes(size - 8)
    return (0x20001000).to_bytes(4, "little") + (0x08000101).to_bytes(4, "little") + body


@pytest.mark.parametrize("name", DEVICES)
def test_pydfu_style_host_under_realistic_timing(name: str) -> None:
    chip = VirtualChip(find(name), timing="realistic")
    bus = VirtualBus()
    dev = bus.attach(chip)
    fw = firmware()
    host = PydfuStyleHost(bus.backend)
    host.download(chip.device.flash_start, fw)
    # the erases and writes took real time: the second GETSTATUS was held, not refused
    assert dev.held >= 1
    unit = chip.device.write_align
    tail = -len(fw) % unit
    assert chip.flash[: len(fw) + tail] == fw + b"\xff" * tail
    host.leave(chip.device.flash_start)
    assert chip.mode == "app" and chip.go_address == chip.device.flash_start


def test_a_host_timeout_shorter_than_the_operation_is_a_usb_timeout() -> None:
    """What a host trusting the F4's under-reported mass-erase poll timeout meets."""
    chip = VirtualChip(find("F407"), timing="realistic")
    bus = VirtualBus()
    bus.attach(chip, scale=40.0)  # 16 s mass erase -> 0.4 s
    host = PydfuStyleHost(bus.backend)
    host.dev.ctrl_transfer(OUT, DNLOAD, 0, 0, b"\x41", TIMEOUT_MS)
    status = host.dev.ctrl_transfer(IN, GETSTATUS, 0, 0, 6, TIMEOUT_MS)
    assert status[4] == State.DNBUSY and int.from_bytes(bytes(status[1:4]), "little") == 100
    with pytest.raises(usb.core.USBTimeoutError):
        host.dev.ctrl_transfer(IN, GETSTATUS, 0, 0, 6, 50)
    assert host.status() == State.DNLOAD_IDLE  # held until the erase is over


PYFU_SHIM = """
import functools, sys
import usb.core
from stmflash.sim.usb_backend import bus_from_env
usb.core.find = functools.partial(usb.core.find, backend=bus_from_env().backend)
from pyfu_usb.__main__ import main
sys.argv = ["pyfu-usb", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("name", DEVICES)
def test_pyfu_usb_downloads_under_realistic_timing(tmp_path: Path, name: str) -> None:
    """pyfu-usb (PyPI, square): polls the state in a loop with no sleep at all."""
    pytest.importorskip("pyfu_usb", reason="pyfu-usb is a test extra: pip install -e '.[test]'")
    image = tmp_path / "chip.img"
    fw = tmp_path / "fw.bin"
    data = firmware()
    fw.write_bytes(data)
    device = find(name)
    env = {**os.environ, "STMFLASH_USB_SIM": f"{name}={image};timing=realistic"}
    proc = subprocess.run([sys.executable, "-c", PYFU_SHIM, "-D", str(fw), "-a", f"{device.flash_start:x}"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    flash = flash_bytes(image)
    tail = -len(data) % device.write_align
    assert flash[: len(data) + tail] == data + b"\xff" * tail
