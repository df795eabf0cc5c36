"""One memory model behind both ROM front-ends: the same operation on the same chip state
gives the same outcome (success, or a refusal) and the same memory afterwards, whether it
arrives as AN3155 bytes or as DfuSe requests.

Every memory-model operation is run on two chips prepared identically — one behind
:class:`An3155Rom`, one behind :class:`DfuseRom` — for each part that has both ROM
interfaces, including the parts whose table entry refuses mass erase (WB55, L072,
L151xC). RAM is the one documented difference of reach, not of model: DfuSe only
addresses what the ROM's alternate settings describe (AN3156), so a RAM download is
errTARGET whatever the model would allow.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from stmflash.devices import Device, find
from stmflash.dfu.protocol import ABORT, CLRSTATUS, DNLOAD, GETSTATUS, UPLOAD, State
from stmflash.sim.an3155 import ACK, An3155Rom
from stmflash.sim.chip import VirtualChip
from stmflash.sim.dfuse import DfuseRom, SimStall
from tests.test_sim_an3155 import addr as _addr
from tests.test_sim_an3155 import xor as _xor

DEVICES = ["F407", "F072", "G474", "H743", "L476", "WB55", "L072", "L151xC"]


class Uart:
    """AN3155 host on the byte-level front-end: ``True`` = last answer ACK."""

    def __init__(self, chip: VirtualChip) -> None:
        self.rom = An3155Rom(chip)
        assert self.x(b"\x7f") == bytes([ACK])

    def x(self, data: bytes) -> bytes:
        self.rom.feed(data)
        return self.rom.take_output()

    def _open(self, code: int, address: int) -> bool:
        if self.x(bytes([code, code ^ 0xFF])) != bytes([ACK]):
            return False
        return self.x(_addr(address))[-1:] == bytes([ACK])

    def write(self, address: int, data: bytes) -> bool:
        if not self._open(0x31, address):
            return False
        frame = bytes([len(data) - 1]) + data
        return self.x(frame + bytes([_xor(frame)]))[-1:] == bytes([ACK])

    def read(self, address: int, n: int) -> bytes | None:
        if not self._open(0x11, address):
            return None
        out = self.x(bytes([n - 1, (n - 1) ^ 0xFF]))
        return out[1:] if out[:1] == bytes([ACK]) else None

    def _erase(self, body: bytes) -> bool:
        if self.x(bytes([0x44, 0xBB])) != bytes([ACK]):
            return False
        return self.x(body + bytes([_xor(body)]))[-1:] == bytes([ACK])

    def erase(self, index: int) -> bool:
        return self._erase(b"\x00\x00" + index.to_bytes(2, "big"))

    def mass_erase(self) -> bool:
        return self._erase(b"\xff\xff")


class Dfu:
    """DfuSe host on the request-level front-end (AN3156 flow): ``True`` = dfuDNLOAD-IDLE."""

    def __init__(self, chip: VirtualChip) -> None:
        self.rom = DfuseRom(chip)

    def _run(self, value: int, payload: bytes) -> bool:
        rom = self.rom
        try:
            rom.request(DNLOAD, value, payload, len(payload))
            assert rom.request(GETSTATUS, 0, None, 6)[4] == State.DNBUSY
            state = rom.request(GETSTATUS, 0, None, 6)[4]
        except SimStall:
            state = State.ERROR
        if state == State.ERROR:
            rom.request(CLRSTATUS, 0, None, 0)
        return state == State.DNLOAD_IDLE

    def write(self, address: int, data: bytes) -> bool:
        if not self._run(0, struct.pack("<BI", 0x21, address)):
            return False
        return self._run(2, data)

    def read(self, address: int, n: int) -> bytes | None:
        if not self._run(0, struct.pack("<BI", 0x21, address)):
            return None
        self.rom.request(ABORT, 0, None, 0)  # to dfuIDLE before UPLOAD
        try:
            data = self.rom.request(UPLOAD, 2, None, n)
        except SimStall:
            self.rom.request(CLRSTATUS, 0, None, 0)
            return None
        self.rom.request(ABORT, 0, None, 0)
        return bytes(data)

    def erase(self, index: int) -> bool:
        units = self.rom.chip.device.erase_units
        address = units[index].address if index < len(units) else units[-1].end
        return self._run(0, struct.pack("<BI", 0x41, address))

    def mass_erase(self) -> bool:
        return self._run(0, b"\x41")


@dataclass
class Case:
    name: str
    prepare: Callable[[VirtualChip], None]
    run: Callable[[Uart | Dfu, Device], object]


def _programmed(chip: VirtualChip) -> None:
    chip.preload(chip.device.flash_start, bytes(range(64)) * 4)


def _protect_unit_1(chip: VirtualChip) -> None:
    chip.preload(chip.device.erase_units[1].address, b"\x5a" * 64)
    chip.write_protect([1], reset=False)


def _rdp1(chip: VirtualChip) -> None:
    _programmed(chip)
    chip.set_rdp(1)


def _nothing(chip: VirtualChip) -> None:
    pass


def _misaligned(dev: Device) -> int:
    return dev.flash_start + (4 if dev.write_align > 4 else 2)


CASES = [
    Case("write whole units", _nothing, lambda h, d: h.write(d.flash_start, b"\x11" * 64)),
    Case("write ending inside a unit", _nothing, lambda h, d: h.write(d.flash_start + 256, b"\x22" * 12)),
    Case("write starting inside a unit", _nothing, lambda h, d: h.write(_misaligned(d), b"\x33" * 32)),
    Case("write over programmed cells", _programmed, lambda h, d: h.write(d.flash_start, b"\x00" * 32)),
    Case("write identical data again", _programmed, lambda h, d: h.write(d.flash_start, bytes(range(32)))),
    Case("write into a protected unit", _protect_unit_1,
         lambda h, d: h.write(d.erase_units[1].address + 64, b"\x44" * 32)),
    Case("write past the end of flash", _nothing, lambda h, d: h.write(d.flash.end, b"\x55" * 32)),
    Case("read flash", _programmed, lambda h, d: h.read(d.flash_start, 128)),
    Case("read unmapped", _nothing, lambda h, d: h.read(0x60000000, 16)),
    Case("erase a unit", _programmed, lambda h, d: h.erase(0)),
    Case("erase a protected unit", _protect_unit_1, lambda h, d: h.erase(1)),
    Case("erase a unit that does not exist", _nothing, lambda h, d: h.erase(len(d.erase_units))),
    Case("mass erase", _programmed, lambda h, d: h.mass_erase()),
    Case("mass erase with a protected unit", _protect_unit_1, lambda h, d: h.mass_erase()),
    Case("write under RDP 1", _rdp1, lambda h, d: h.write(d.flash_start + 512, b"\x66" * 32)),
    Case("read under RDP 1", _rdp1, lambda h, d: h.read(d.flash_start, 16)),
    Case("erase under RDP 1", _rdp1, lambda h, d: h.erase(0)),
    Case("mass erase under RDP 1", _rdp1, lambda h, d: h.mass_erase()),
]


def _memory(chip: VirtualChip) -> tuple[bytes, bytes, int]:
    return bytes(chip.flash), chip.option_bytes(), chip.rdp_level


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("name", DEVICES)
def test_both_front_ends_same_outcome(name: str, case: Case) -> None:
    device = find(name)
    assert "dfu" in device.interfaces and device.dfu
    chips = [VirtualChip(device), VirtualChip(device)]
    for chip in chips:
        case.prepare(chip)
    before = _memory(chips[0])
    uart_result = case.run(Uart(chips[0]), device)
    dfu_result = case.run(Dfu(chips[1]), device)
    assert uart_result == dfu_result, f"UART {uart_result!r} vs DFU {dfu_result!r}"
    assert _memory(chips[0]) == _memory(chips[1])
    if case.name.startswith("mass erase") and case.prepare is _programmed:
        # the table decides, and both front-ends follow it
        assert uart_result is device.mass_erase
        assert (_memory(chips[0]) == before) is not device.mass_erase


@pytest.mark.parametrize("name", ["F407", "WB55"])
def test_ram_is_reachable_over_uart_only(name: str) -> None:
    device = find(name)
    assert device.ram_usable is not None
    chips = [VirtualChip(device), VirtualChip(device)]
    assert Uart(chips[0]).write(device.ram_usable.start, b"ramx") is True
    assert Uart(chips[0]).write(device.ram[0].start, b"ramx") is False  # reserved by the ROM
    assert Dfu(chips[1]).write(device.ram_usable.start, b"ramx") is False  # no alt describes RAM
    assert chips[1].read(device.ram_usable.start, 4) == bytes(4)
