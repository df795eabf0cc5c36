"""AN3155 framing, NACK cases and protection rules of the virtual ROM, over ``sim://``."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stmflash import devices
from stmflash.errors import UsageError
from stmflash.sim import open_serial, registry
from stmflash.sim.an3155 import ACK, NACK, An3155Rom, crc32_words
from stmflash.sim.chip import VirtualChip

F1, F4, G0, L0 = (devices.find(p) for p in ("0x410", "0x413", "0x460", "0x417"))


def xor(data: bytes) -> int:
    x = 0
    for b in data:
        x ^= b
    return x


def addr(a: int) -> bytes:
    raw = a.to_bytes(4, "big")
    return raw + bytes([xor(raw)])


class Host:
    """A tiny AN3155 host over a sim:// port (instant mode: reads never wait)."""

    def __init__(self, device: devices.Device, name: str, **chip_kw) -> None:
        self.chip = registry.register(name, VirtualChip(device, **chip_kw))
        self.port = open_serial(f"sim://{device.short_name}?chip={name}", timeout=0.01)

    def x(self, data: bytes, n: int = 64) -> bytes:
        self.port.write(data)
        return self.port.read(n)

    def sync(self) -> bytes:
        return self.x(b"\x7f")

    def cmd(self, code: int) -> bytes:
        return self.x(bytes([code, code ^ 0xFF]))

    def write(self, address: int, data: bytes) -> bytes:
        out = self.cmd(0x31)
        if out != bytes([ACK]):
            return out
        out += self.x(addr(address))
        if out[-1] != ACK:
            return out
        frame = bytes([len(data) - 1]) + data
        return out + self.x(frame + bytes([xor(frame)]))

    def read(self, address: int, n: int) -> bytes:
        out = self.cmd(0x11)
        if out != bytes([ACK]):
            return out
        out += self.x(addr(address))
        if out[-1] != ACK:
            return out
        return out + self.x(bytes([n - 1, (n - 1) ^ 0xFF]), n + 1)

    def ext_erase(self, pages: list[int]) -> bytes:
        out = self.cmd(0x44)
        body = (len(pages) - 1).to_bytes(2, "big") + b"".join(p.to_bytes(2, "big") for p in pages)
        return out + self.x(body + bytes([xor(body)]))

    def ext_special(self, code: int) -> bytes:
        out = self.cmd(0x44)
        body = code.to_bytes(2, "big")
        return out + self.x(body + bytes([xor(body)]))


@pytest.fixture(autouse=True)
def _clean_registry():
    yield
    registry.clear()


def test_sync_then_get_lists_device_commands() -> None:
    h = Host(G0, "g0")
    assert h.sync() == bytes([ACK])
    out = h.cmd(0x00)
    cmds = G0.commands
    assert out == bytes([ACK, len(cmds), G0.usart_protocol, *cmds, ACK])


def test_get_version_and_get_id() -> None:
    h = Host(F4, "f4")
    h.sync()
    assert h.cmd(0x01) == bytes([ACK, F4.usart_protocol, 0, 0, ACK])
    assert h.cmd(0x02) == bytes([ACK, 1, 0x04, 0x13, ACK])


def test_second_sync_after_sync_is_nacked() -> None:
    h = Host(F1, "f1")
    assert h.sync() == bytes([ACK])
    assert h.sync() == b""  # taken as a command byte: waits for its complement
    assert h.sync() == bytes([NACK])  # 0x7F 0x7F: complement check fails


def test_bytes_before_sync_are_ignored() -> None:
    h = Host(F1, "f1")
    assert h.x(b"\x00\xff\x55") == b""
    assert h.sync() == bytes([ACK])


def test_bad_complement_and_unknown_command_nack() -> None:
    h = Host(G0, "g0")
    h.sync()
    assert h.x(b"\x00\x00") == bytes([NACK])
    assert h.cmd(0x43) == bytes([NACK])  # G0 has Extended Erase, not legacy Erase
    assert h.cmd(0xA1) == bytes([NACK])  # no Get Checksum in its command list
    assert h.cmd(0x50) == bytes([NACK])


def test_legacy_erase_only_on_legacy_parts() -> None:
    h = Host(F1, "f1")
    h.sync()
    assert h.cmd(0x44) == bytes([NACK])
    h.chip.preload(F1.flash_start, b"\x00" * 2048)
    assert h.cmd(0x43) == bytes([ACK])
    assert h.x(bytes([0, 1, 1])) == bytes([ACK])  # one page: number 1, checksum 0^1
    assert h.chip.flash[:1024] == b"\x00" * 1024
    assert h.chip.flash[1024:2048] == b"\xff" * 1024
    assert h.cmd(0x43) == bytes([ACK])
    assert h.x(b"\xff\x00") == bytes([ACK])  # global erase
    assert h.chip.flash[:1024] == b"\xff" * 1024


def test_write_read_roundtrip_and_checksum_nack() -> None:
    h = Host(G0, "g0")
    h.sync()
    data = bytes(range(32))
    assert h.write(G0.flash_start, data) == bytes([ACK, ACK, ACK])
    assert h.read(G0.flash_start, 32) == bytes([ACK, ACK, ACK]) + data
    # bad data checksum
    h.cmd(0x31)
    h.x(addr(G0.flash_start + 64))
    assert h.x(bytes([3, 1, 2, 3, 4, 0])) == bytes([NACK])
    assert h.chip.flash[64:68] == b"\xff" * 4
    # bad address checksum
    assert h.cmd(0x11) == bytes([ACK])
    assert h.x(G0.flash_start.to_bytes(4, "big") + b"\x00") == bytes([NACK])
    # bad length complement
    h.cmd(0x11)
    h.x(addr(G0.flash_start))
    assert h.x(b"\x0f\x0f") == bytes([NACK])


@pytest.mark.parametrize(
    ("device", "address", "size", "why"),
    [
        (F1, 0x08000002, 4, "start not on a 4-byte unit (write_misaligned = nack)"),
        (L0, 0x08000000, 6, "length not a multiple of 4 (AN3155)"),
        (F1, 0x08000000, 6, "length not a multiple of 4"),
        (F1, 0x20000000, 4, "bootloader-reserved RAM"),
        (F1, 0x40000000, 4, "unmapped address"),
        (F1, 0x1FFFF000, 4, "system memory is read-only"),
    ],
)
def test_write_nacks(device: devices.Device, address: int, size: int, why: str) -> None:
    if "unit" in why:
        assert device.write_misaligned == "nack", "pick a device whose ROM NACKs misaligned writes"
    h = Host(device, "x")
    h.sync()
    out = h.write(address, bytes(size))
    assert out[-1] == NACK, why


@pytest.mark.parametrize("query", ["G071", "H743", "L476"])
def test_short_tail_is_padded_and_misaligned_start_dropped(query: str) -> None:
    """A multiple of 4 that ends inside a programming unit: the ROM fills the unit with
    0xFF (a later write into that unit is refused); a start inside a unit: ACK, nothing
    programmed (``write_misaligned = "drop"``)."""
    device = devices.find(query)
    unit = device.write_align
    assert unit > 4 and device.write_misaligned == "drop"
    h = Host(device, query)
    h.sync()
    assert h.write(device.flash_start, b"\x11" * 4)[-1] == ACK
    assert h.chip.flash[:unit] == b"\x11" * 4 + b"\xff" * (unit - 4)
    # the rest of that unit was programmed (as 0xFF): writing into it is refused
    assert h.write(device.flash_start + unit, b"\x22" * unit)[-1] == ACK
    assert h.write(device.flash_start + 4, b"\x33" * 4)[-1] == ACK  # misaligned: dropped
    assert h.chip.flash[: 2 * unit] == b"\x11" * 4 + b"\xff" * (unit - 4) + b"\x22" * unit
    assert h.chip.dropped_writes == 1
    out = h.write(device.flash_start + 2 * unit + 4, b"\x44" * (2 * unit))
    assert out[-1] == ACK and h.chip.flash[2 * unit : 4 * unit] == b"\xff" * (2 * unit)


def test_write_over_programmed_flash_nacks_and_changes_nothing() -> None:
    h = Host(F4, "f4")
    h.sync()
    assert h.write(F4.flash_start, b"\x12\x34\x56\x78")[-1] == ACK
    assert h.write(F4.flash_start, b"\x12\x34\x56\x78")[-1] == ACK  # identical: fine
    assert h.write(F4.flash_start, b"\x00\x00\x00\x00")[-1] == NACK
    assert h.chip.flash[:4] == b"\x12\x34\x56\x78"


def test_write_ram_usable_and_read_system_memory_bl_id() -> None:
    h = Host(F4, "f4")
    h.sync()
    assert h.write(F4.ram_usable.start, b"abcd")[-1] == ACK
    assert h.chip.read(F4.ram_usable.start, 4) == b"abcd"
    out = h.read(F4.bl_id_address, 1)
    assert out == bytes([ACK, ACK, ACK, F4.bl_ids[0]])
    size = h.read(F4.flash_size_reg, 2)[3:]
    assert int.from_bytes(size, "little") == F4.flash_size // 1024
    assert h.read(F4.uid_reg, 12)[3:] == h.chip.uid


def test_read_nacks_unmapped_and_region_overrun() -> None:
    h = Host(F1, "f1")
    h.sync()
    assert h.read(0x40000000, 4)[-1] == NACK
    end = F1.flash_start + F1.flash_size
    assert h.read(end - 4, 16)[-1] == NACK


def test_extended_erase_pages_mass_and_refusals() -> None:
    h = Host(G0, "g0")
    h.sync()
    h.chip.preload(G0.flash_start, b"\x00" * 8192)
    assert h.ext_erase([1, 3]) == bytes([ACK, ACK])
    f = h.chip.flash
    assert f[0:2048] == b"\x00" * 2048 and f[2048:4096] == b"\xff" * 2048
    assert f[4096:6144] == b"\x00" * 2048 and f[6144:8192] == b"\xff" * 2048
    assert h.ext_erase([len(G0.erase_units)]) == bytes([ACK, NACK])  # no such page
    assert h.ext_special(0xFFFE) == bytes([ACK, NACK])  # single bank: no bank erase
    assert h.ext_special(0xFFF0) == bytes([ACK, NACK])  # reserved code
    assert h.ext_special(0xFFFF) == bytes([ACK, ACK])
    assert h.chip.flash == b"\xff" * G0.flash_size


def test_no_mass_erase_device_nacks_mass_erase() -> None:
    h = Host(L0, "l0")
    h.sync()
    h.chip.preload(L0.flash_start, b"\x5a" * 256)
    assert h.ext_special(0xFFFF) == bytes([ACK, NACK])
    assert h.chip.flash[:256] == b"\x5a" * 256
    assert h.ext_erase([0, 1]) == bytes([ACK, ACK])
    assert h.chip.flash[:256] == b"\x00" * 256  # L0 program flash erases to zeros (RM0377 3.3)


def test_sector_erase_uses_sector_numbers() -> None:
    h = Host(F4, "f4")
    h.sync()
    h.chip.preload(0x08010000, b"\x00" * 16)  # sector 4 (64 KiB) starts at 0x08010000
    h.chip.preload(0x0800C000, b"\x00" * 16)  # sector 3
    assert h.ext_erase([4]) == bytes([ACK, ACK])
    assert h.chip.read(0x08010000, 16) == b"\xff" * 16
    assert h.chip.read(0x0800C000, 16) == b"\x00" * 16


def test_go_jumps_and_bootloader_goes_quiet() -> None:
    h = Host(F1, "f1")
    h.sync()
    assert h.cmd(0x21) == bytes([ACK])
    assert h.x(addr(0x40000000)) == bytes([NACK])
    h.cmd(0x21)
    assert h.x(addr(F1.flash_start)) == bytes([ACK])
    assert h.chip.mode == "app" and h.chip.go_address == F1.flash_start
    assert h.sync() == b""
    h.chip.reset()
    assert h.sync() == bytes([ACK])


def test_readout_protection_rules() -> None:
    from stmflash import ob_fields

    h = Host(G0, "g0")
    # a G0 boots main flash after the option-byte reload once flash is programmed, unless
    # nBOOT_SEL = 0 lets the (strapped-high) BOOT0 pin choose system memory (RM0444 Table 8)
    pin = ob_fields.resolve(G0, {"nBOOT_SEL": "pin"})
    h.chip.store_raw_option_bytes(ob_fields.apply(G0, h.chip.option_bytes(), pin))
    h.sync()
    h.chip.preload(G0.flash_start, b"\x11" * 64)
    assert h.cmd(0x82) == bytes([ACK, ACK])
    assert h.chip.rdp_level == 1 and h.chip.reset_count == 1
    assert h.sync() == bytes([ACK])  # reset: sync again
    assert h.cmd(0x01)[0] == ACK and h.cmd(0x02)[0] == ACK  # still identify
    assert h.cmd(0x11) == bytes([NACK])
    assert h.cmd(0x31) == bytes([NACK])
    assert h.cmd(0x21) == bytes([NACK])
    assert h.cmd(0x44) == bytes([NACK])
    assert h.cmd(0x73) == bytes([NACK])
    assert h.cmd(0x82) == bytes([NACK])
    assert h.cmd(0x92) == bytes([ACK, ACK])  # readout unprotect: mass erase + reset
    assert h.chip.rdp_level == 0
    assert h.chip.flash == b"\xff" * G0.flash_size
    assert h.sync() == bytes([ACK])
    assert h.read(G0.flash_start, 4)[-1] == 0xFF


def test_double_nack_under_rdp_when_configured() -> None:
    h = Host(F1, "f1", rdp_double_nack=True)
    h.chip.set_rdp(1)
    h.sync()
    assert h.cmd(0x11) == bytes([NACK, NACK])


def test_rdp_level2_chip_is_silent() -> None:
    with pytest.raises(UsageError, match="no RDP level 2"):
        VirtualChip(F1).set_rdp(2)  # F1 has no level 2 (PM0075)
    h = Host(G0, "g0")
    h.chip.set_rdp(2)
    assert h.sync() == b""
    assert h.cmd(0x00) == b""


def test_write_protect_unprotect_reset_and_silent_refusal() -> None:
    h = Host(F1, "f1")
    h.sync()
    assert h.cmd(0x63) == bytes([ACK])
    assert h.x(bytes([0, 0, 0])) == bytes([ACK])  # protect group 0 (pages 0..3)
    assert h.chip.wrp == set(range(4)) and h.chip.reset_count == 1
    assert h.chip.option_bytes()[8:10] == b"\xfe\x01"  # F1 WRP0 bit 0 cleared, nWRP0
    h.sync()
    assert h.write(F1.flash_start, b"\x00" * 4)[-1] == ACK  # ACKed ...
    assert h.chip.flash[:4] == b"\xff" * 4  # ... but nothing written
    h.chip.preload(F1.flash_start, b"\x00" * 4)
    assert h.cmd(0x43) == bytes([ACK])
    assert h.x(bytes([0, 0, 0])) == bytes([ACK])
    assert h.chip.flash[:4] == b"\x00" * 4  # erase silently refused
    assert h.cmd(0x63) == bytes([ACK])
    assert h.x(bytes([0, 200, 200])) == bytes([NACK])  # no such group
    assert h.cmd(0x73) == bytes([ACK, ACK])
    assert h.chip.wrp == set() and h.chip.reset_count == 2


def test_option_byte_write_resets_and_rdp2_silences() -> None:
    h = Host(G0, "g0")
    h.sync()
    ob = bytearray(h.chip.option_bytes()[:8])
    ob[0], ob[1] = 0xCC, 0x33
    assert h.write(G0.option_bytes.start, bytes(ob))[-1] == ACK
    assert h.chip.reset_count == 1 and h.chip.rdp_level == 2
    assert h.sync() == b""


def test_get_checksum_framing_when_listed() -> None:
    dev = dataclasses.replace(G0, usart_protocol=0x33, usart_commands=None)
    assert 0xA1 in dev.commands
    h = Host(dev, "crc")
    h.sync()
    h.chip.preload(dev.flash_start, bytes(range(64)))
    assert h.cmd(0xA1) == bytes([ACK])
    assert h.x(addr(dev.flash_start)) == bytes([ACK])
    assert h.x(addr(16)) == bytes([ACK])  # 16 words
    assert h.x(addr(0x04C11DB7)) == bytes([ACK])
    out = h.x(addr(0xFFFFFFFF))
    crc = crc32_words(bytes(range(64)))
    assert out == bytes([ACK]) + crc.to_bytes(4, "big") + bytes([xor(crc.to_bytes(4, "big"))])
    from stmflash.image.crc import stm32_crc_bitwise

    assert crc == stm32_crc_bitwise(bytes(range(64)))


def test_state_machine_is_transport_free() -> None:
    chip = VirtualChip(F4)
    rom = An3155Rom(chip)
    rom.feed(b"\x7f\x02\xfd")
    assert rom.take_output() == bytes([ACK, ACK, 1, 0x04, 0x13, ACK])
    assert rom.take_output() == b""


def test_erase_checksum_nacks_change_nothing() -> None:
    h = Host(F1, "f1")
    h.sync()
    h.chip.preload(F1.flash_start, b"\x00" * 16)
    assert h.cmd(0x43) == bytes([ACK])
    assert h.x(bytes([0, 0, 0x55])) == bytes([NACK])  # bad XOR
    assert h.cmd(0x43) == bytes([ACK])
    assert h.x(b"\xff\x01") == bytes([NACK])  # global erase needs 0x00 after 0xFF
    assert h.chip.flash[:16] == b"\x00" * 16
    g = Host(G0, "g0")
    g.sync()
    g.chip.preload(G0.flash_start, b"\x00" * 16)
    assert g.cmd(0x44) == bytes([ACK])
    assert g.x(bytes([0, 0, 0, 0, 0x77])) == bytes([NACK])
    assert g.cmd(0x44) == bytes([ACK])
    assert g.x(b"\xff\xff\x01") == bytes([NACK])  # mass erase code with a wrong checksum
    assert g.chip.flash[:16] == b"\x00" * 16


def test_get_checksum_nacks_bad_address_and_unlisted() -> None:
    dev = dataclasses.replace(G0, usart_protocol=0x33, usart_commands=None)
    h = Host(dev, "crc")
    h.sync()
    assert h.cmd(0xA1) == bytes([ACK])
    assert h.x(addr(dev.flash_start + 2)) == bytes([NACK])  # not word aligned
    assert h.cmd(0xA1) == bytes([ACK])
    assert h.x(addr(0x60000000)) == bytes([NACK])
    assert h.cmd(0xA1) == bytes([ACK])
    assert h.x(addr(dev.flash_start)) == bytes([ACK])
    assert h.x(addr(dev.flash_size)) == bytes([NACK])  # words: 4x the flash size overruns


@given(st.lists(st.binary(min_size=1, max_size=40), max_size=30), st.sampled_from([F1, F4, G0, L0]))
def test_random_bytes_never_break_the_rom(chunks: list[bytes], device: devices.Device) -> None:
    """Whatever the host sends, the ROM answers or stays quiet, and a reset recovers it."""
    chip = VirtualChip(device)
    rom = An3155Rom(chip)
    rom.feed(b"\x7f")
    assert rom.take_output() == bytes([ACK])
    for chunk in chunks:
        rom.feed(chunk)
        rom.take_output()
    chip.power_on() if not chip.powered else chip.reset()
    if chip.rdp_level == 2:
        return  # the random bytes wrote RDP level 2 into the option bytes: silent for good
    rom.feed(b"\x7f")
    assert rom.take_output()[-1:] == bytes([ACK])
