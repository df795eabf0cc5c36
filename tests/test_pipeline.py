"""The link-independent programming pipeline, against an in-memory fake link."""

from __future__ import annotations

import random

import pytest

from stmflash import devices
from stmflash.errors import UsageError, VerifyError
from stmflash.image.crc import stm32_crc
from stmflash.image.model import Image
from stmflash.pipeline import program, start_address


class FakeLink:
    """Flash whose programming only moves bits away from the erased value (clears them;
    sets them where ``device.erased`` is 0x00, L0/L1), with an optional on-chip CRC and a
    call log."""

    max_read = 256
    max_write = 256

    def __init__(self, device: devices.Device, *, crc: bool = False, stuck: int | None = None) -> None:
        self.device = device
        self.mem = bytearray([device.erased ^ 0xFF]) * device.flash_size  # not erased: erase must happen
        self.crc = crc
        self.stuck = stuck  # an address whose byte never programs (write-protected cell)
        self.calls: list[tuple] = []
        self.uid = b"\x01" * 12

    def _off(self, addr: int) -> int:
        return addr - self.device.flash_start

    def read(self, address: int, length: int) -> bytes:
        self.calls.append(("read", address, length))
        return bytes(self.mem[self._off(address) : self._off(address) + length])

    def write(self, address: int, data: bytes) -> None:
        assert len(data) <= self.max_write and address % self.device.write_align == 0
        assert len(data) % self.device.write_align == 0
        self.calls.append(("write", address, len(data)))
        o = self._off(address)
        for i, b in enumerate(data):
            if self.stuck is not None and address + i == self.stuck:
                continue
            if self.device.erased:
                self.mem[o + i] &= b
            else:
                self.mem[o + i] |= b

    def erase(self, units) -> None:
        for u in units:
            self.calls.append(("erase", u.index))
            o = self._off(u.address)
            self.mem[o : o + u.size] = self.device.erased_bytes * u.size

    def mass_erase(self) -> None:
        self.calls.append(("mass",))
        self.mem[:] = self.device.erased_bytes * len(self.mem)

    def checksum(self, address: int, length: int) -> int | None:
        if not self.crc:
            return None
        self.calls.append(("crc", address, length))
        o = self._off(address)
        return stm32_crc(bytes(self.mem[o : o + length]))

    def start(self, address: int) -> None:
        self.calls.append(("go", address))

    def reset(self) -> None:
        self.calls.append(("reset",))


def _image(dev: devices.Device, size: int, offset: int = 0, seed: int = 1) -> Image:
    return Image.from_bytes(random.Random(seed).randbytes(size), dev.flash_start + offset)


@pytest.mark.parametrize("pid", ["0x460", "0x413", "0x410", "0x417"])
@pytest.mark.parametrize("crc", [False, True])
def test_program_writes_verifies_and_starts(pid: str, crc: bool) -> None:
    dev = devices.find(pid)
    link = FakeLink(dev, crc=crc)
    img = _image(dev, 5000, offset=0)
    result = program(link, img)
    assert bytes(link.mem[:5000]) == img.segments[0].data
    assert result.verified and result.verify_method == ("checksum" if crc else "read-back")
    assert link.calls[-1] == ("go", dev.flash_start)
    assert result.image_crc32 == img.crc32()
    # an on-chip CRC makes read-back unnecessary
    assert any(c[0] == "read" for c in link.calls) != crc


def test_vector_table_unit_is_written_last_on_empty_check_parts() -> None:
    dev = devices.find("0x460")
    assert dev.empty_check
    link = FakeLink(dev)
    program(link, _image(dev, 10000), after="stay")
    writes = [c[1] for c in link.calls if c[0] == "write"]
    first = dev.erase_units[0]
    assert all(first.address <= a < first.end for a in writes[-8:])
    assert not any(first.address <= a < first.end for a in writes[:-8])


@pytest.mark.parametrize("pid", ["0x413", "0x417"])  # F4 erases to 0xFF, L0 to 0x00
def test_blank_blocks_are_skipped_but_verified(pid: str) -> None:
    dev = devices.find(pid)
    data = bytearray(random.Random(2).randbytes(4096))
    data[1024:2048] = dev.erased_bytes * 1024  # blank on this part: skipped
    data[2048:3072] = bytes([dev.erased ^ 0xFF]) * 1024  # blank elsewhere: must be written here
    link = FakeLink(dev)
    result = program(link, Image.from_bytes(bytes(data), dev.flash_start), after="stay")
    written = {c[1] for c in link.calls if c[0] == "write"}
    assert not any(dev.flash_start + 1024 <= a < dev.flash_start + 2048 for a in written)
    assert any(dev.flash_start + 2048 <= a < dev.flash_start + 3072 for a in written)
    assert result.bytes_skipped == 1024
    assert bytes(link.mem[:4096]) == bytes(data)


def test_image_outside_flash_is_a_usage_error_before_touching_the_chip() -> None:
    dev = devices.find("0x410")
    link = FakeLink(dev)
    img = Image.from_bytes(b"\x00" * 16, dev.flash.end - 8)
    with pytest.raises(UsageError, match="0x08020000"):
        program(link, img)
    assert link.calls == []


def test_verify_mismatch_is_a_verify_error_naming_the_address() -> None:
    dev = devices.find("0x413")
    img = Image.from_bytes(b"\x00" * 512, dev.flash_start)
    link = FakeLink(dev, stuck=dev.flash_start + 0x123)
    link.mem[0x123] = 0xFF
    with pytest.raises(VerifyError, match="0x08000123"):
        program(link, img, erase="none")


def test_repair_rewrites_a_garbled_unit() -> None:
    dev = devices.find("0x460")
    img = _image(dev, 4096)
    link = FakeLink(dev)
    orig_write = link.write
    garbled = {"done": False}

    def write(address: int, data: bytes) -> None:
        if address == dev.flash_start + 2048 and not garbled["done"]:
            garbled["done"] = True
            data = bytes([data[0] ^ 0x10]) + data[1:]  # one bit lost on the wire
        orig_write(address, data)

    link.write = write  # type: ignore[method-assign]
    result = program(link, img, after="stay")
    assert result.verified
    assert bytes(link.mem[:4096]) == img.segments[0].data
    # the garbled page (unit 1) was erased again after the planned erase of pages 0-1
    erases = [c for c in link.calls if c[0] in ("erase", "mass")]
    assert erases[:2] == [("erase", 0), ("erase", 1)]
    assert erases.count(("erase", 1)) == 2 and ("mass",) not in erases


def test_after_modes_and_start_address() -> None:
    dev = devices.find("0x413")
    link = FakeLink(dev)
    program(link, _image(dev, 64), after="reset")
    assert link.calls[-1] == ("reset",)
    # an application linked behind a bootloader starts at its own vector table
    vt = (0x20001000).to_bytes(4, "little") + (dev.flash_start + 0x4101).to_bytes(4, "little")
    app = Image.from_bytes(vt + b"\x00" * 56, dev.flash_start + 0x4000)
    assert start_address(app, dev) == dev.flash_start + 0x4000
    assert start_address(Image.from_bytes(b"\x11" * 64, dev.flash_start + 0x4000), dev) == dev.flash_start


def test_erase_modes() -> None:
    dev = devices.find("0x413")
    link = FakeLink(dev)
    program(link, _image(dev, 100, offset=0x4000), erase="auto", after="stay")
    assert [c for c in link.calls if c[0] in ("erase", "mass")] == [("erase", 1)]
    link = FakeLink(dev)
    program(link, _image(dev, 100), erase="all", after="stay")
    assert ("mass",) in link.calls
    link = FakeLink(devices.find("0x417"))  # no mass erase: every page instead
    program(link, _image(link.device, 100), erase="all", after="stay")
    assert sum(1 for c in link.calls if c[0] == "erase") == len(link.device.erase_units)


@pytest.mark.parametrize("pid", ["0x413", "0x417"])
def test_short_last_unit_is_completed_with_the_erased_value(pid: str) -> None:
    """Bytes the image leaves out of its last programming unit read as erased: 0xFF, or 0x00
    on L0/L1, whose flash erases to zeros (the re-flash comparison assumes the same)."""
    dev = devices.find(pid)
    data = random.Random(5).randbytes(1001)
    link = FakeLink(dev)
    program(link, Image.from_bytes(data, dev.flash_start), after="stay")
    assert bytes(link.mem[:1001]) == data
    assert bytes(link.mem[1001:1004]) == dev.erased_bytes * 3
