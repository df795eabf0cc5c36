"""The AN3155 client session: sync corner cases, framing, erase splitting, entry sequences."""

from __future__ import annotations

import dataclasses

import pytest

from stmflash import devices
from stmflash.errors import LinkError, ProtectionError, UsageError
from stmflash.sim import registry
from stmflash.sim.chip import VirtualChip
from stmflash.uart import protocol as P
from stmflash.uart.entry import NoEntry, PinsEntry, parse_entry, parse_sequence
from stmflash.uart.link import UartLink, connect


class ScriptedPort:
    """A fake serial port: every write() is answered from a script of replies."""

    def __init__(self, replies: list[bytes]) -> None:
        self.replies = list(replies)
        self.sent: list[bytes] = []
        self.rx = bytearray()
        self.timeout = 0.01
        self._timeout = 0.01
        self.name = "fake"
        self.baudrate = 115200

    def write(self, data: bytes) -> int:
        self.sent.append(bytes(data))
        if self.replies:
            self.rx += self.replies.pop(0)
        return len(data)

    def read(self, n: int) -> bytes:
        out = bytes(self.rx[:n])
        del self.rx[:n]
        return out

    def reset_input_buffer(self) -> None:
        self.rx.clear()


@pytest.mark.parametrize(
    "replies",
    [
        [b"\x79"],  # fresh chip: ACK
        [b"\x1f"],  # already synced: NACK to the 0x7F taken as a command
        [b"\x00\x79"],  # stray zero before the ACK
        [b"", b"\x1f"],  # silent to the first 0x7F, NACK to the second
    ],
)
def test_sync_accepts_every_alive_answer(replies: list[bytes]) -> None:
    port = ScriptedPort(replies)
    P.Bootloader(port, sync_timeouts=(0.01, 0.01)).sync()
    assert port.sent[0] == b"\x7f"


def test_sync_gives_up_with_a_clear_message() -> None:
    port = ScriptedPort([])
    with pytest.raises(LinkError, match="no answer from the chip on fake to 0x7F"):
        P.Bootloader(port, sync_timeouts=(0.0, 0.0, 0.0)).sync()


def test_write_frame_is_n_minus_one_data_and_xor() -> None:
    port = ScriptedPort([b"\x79", b"\x79", b"\x79"])
    bl = P.Bootloader(port, pipeline=False)
    bl.write_memory(0x08000100, b"\x01\x02\x03\x04")
    assert port.sent[0] == b"\x31\xce"
    assert port.sent[1] == bytes([0x08, 0x00, 0x01, 0x00, 0x08 ^ 0x01])
    assert port.sent[2] == bytes([3, 1, 2, 3, 4, 3 ^ 1 ^ 2 ^ 3 ^ 4])


def test_pipelined_write_sends_command_and_address_together_but_waits_before_data() -> None:
    port = ScriptedPort([b"\x79\x79", b"\x79"])
    bl = P.Bootloader(port)
    bl.write_memory(0x08000100, b"\x01\x02\x03\x04")
    assert port.sent[0] == b"\x31\xce" + bytes([0x08, 0x00, 0x01, 0x00, 0x09])
    assert port.sent[1][0] == 3


def test_pipelining_is_refused_when_lost_bytes_could_form_a_command() -> None:
    bl = P.Bootloader(ScriptedPort([]))
    bl.commands = (0x00, 0x11, 0x31, 0x43)
    # 0x080143BC: the bytes 0x43 0xBC would be an Erase command if the ROM lost two bytes
    head = bytes([0x31, 0xCE]) + bl._addr_bytes(0x080143BC)
    assert not bl._harmless(head, (0,))
    assert bl._harmless(bytes([0x31, 0xCE]) + bl._addr_bytes(0x08000100), (0,))


def test_pipelining_falls_back_after_a_failure() -> None:
    # the ROM answers only the command ACK of a pipelined frame, then NACKs the address
    port = ScriptedPort([b"\x79\x1f", b"\x1f", b"\x79", b"\x79", b"\x79" + bytes(range(256))])
    bl = P.Bootloader(port, retries=2)
    assert bl.read_memory(0x08000000, 256) == bytes(range(256))
    assert not bl.pipeline


def test_extended_erase_special_codes() -> None:
    port = ScriptedPort([b"\x79\x01\x31\x44\x79", b"\x79", b"\x79"])
    bl = P.Bootloader(port)
    bl.get()
    bl.erase_special("mass", timeout_s=0.0)
    assert port.sent[-1] == b"\xff\xff\x00"


def test_legacy_erase_mass_and_page_list() -> None:
    port = ScriptedPort([b"\x79\x01\x22\x43\x79", b"\x79", b"\x79", b"\x79", b"\x79"])
    bl = P.Bootloader(port)
    bl.get()
    bl.erase_special("mass", timeout_s=0.0)
    assert port.sent[-2:] == [b"\x43\xbc", b"\xff\x00"]
    bl.erase_pages([1, 2], timeout_s=0.0)
    assert port.sent[-1] == bytes([1, 1, 2, 1 ^ 1 ^ 2])


class RecordingBootloader:
    def __init__(self, device: devices.Device, code: int) -> None:
        self.device = device
        self.info = P.ChipInfo(0x31, (code,), 0x31, device.pid, device=device)
        self.commands = (code,)
        self.erase_code = code
        self.calls: list[tuple[str, object]] = []
        self.block = 256

    def erase_pages(self, pages, *, timeout_s):
        assert timeout_s > 0
        self.calls.append(("pages", list(pages)))

    def erase_special(self, which, *, timeout_s):
        self.calls.append(("special", which))


@pytest.mark.parametrize("code,limit", [(0x44, 511), (0x43, 255)])
def test_erase_lists_are_split_as_the_rom_requires(code: int, limit: int) -> None:
    dev = dataclasses.replace(devices.find("0x417"), flash_size=0x30000)  # 1536 pages of 128 B
    bl = RecordingBootloader(dev, code)
    link = UartLink(bl)  # type: ignore[arg-type]
    units = [u for u in dev.erase_units if u.index < 255] if code == 0x43 else list(dev.erase_units[:1200])
    link.erase(units)
    sizes = [len(c[1]) for c in bl.calls]  # type: ignore[arg-type]
    assert max(sizes) <= limit
    assert sum(sizes) == len(units)
    assert [p for c in bl.calls for p in c[1]] == [u.index for u in units]  # type: ignore[union-attr]


def test_dual_bank_erase_uses_bank_codes() -> None:
    dev = dataclasses.replace(devices.find("0x460"), banks=2)
    bl = RecordingBootloader(dev, 0x44)
    link = UartLink(bl)  # type: ignore[arg-type]
    bank2 = dev.bank_units(2)
    link.erase(bank2 + [dev.erase_units[0]])
    assert ("special", "bank2") in bl.calls
    assert ("pages", [0]) in bl.calls


def test_pin_sequence_grammar() -> None:
    steps = parse_sequence("-rts,dtr&-dtr,,brk")
    assert [(s.signal, s.level, s.delay_s) for s in steps] == [
        ("rts", False, 0.1),
        ("dtr", True, 0.0),
        ("dtr", False, pytest.approx(0.2)),
        ("brk", True, 0.0),
    ]
    with pytest.raises(UsageError, match="GPIO 4"):
        parse_sequence("4,-5")
    with pytest.raises(UsageError, match="unknown signal"):
        parse_sequence("cts")


def test_entry_chain_splits_on_strategy_names() -> None:
    chain = parse_entry("pins:rts,dtr,-dtr:-rts,dtr,-dtr,none", invert=["dtr"])
    assert isinstance(chain[0], PinsEntry) and isinstance(chain[1], NoEntry)
    assert len(chain[0].entry) == 3 and len(chain[0].exit_steps) == 3
    assert chain[0].invert == frozenset({"dtr"})
    with pytest.raises(UsageError, match="unknown --enter strategy"):
        parse_entry("jtag")


def test_pins_enter_the_bootloader_of_a_wired_virtual_chip() -> None:
    from stmflash.sim.protocol_sim import PinWiring

    chip = registry.register("pins", VirtualChip(devices.find("0x460")))
    chip.mode = "app"  # running its application: only a reset with BOOT0 high helps
    wiring = PinWiring(reset="dtr", boot0="rts")
    chip.on_line_change = wiring
    link = connect("sim://0x460?chip=pins", enter="pins:rts,dtr,-dtr:-rts,dtr,-dtr,none", timeout=0.05)
    assert link.device.pid == 0x460
    assert wiring.boots[-1] == "bootloader"
    link.close()  # exit sequence: BOOT0 low, reset into the application
    assert wiring.boots[-1] == "app"
    registry.unregister("pins")


def test_inverted_lines() -> None:
    from stmflash.sim.protocol_sim import PinWiring

    chip = registry.register("inv", VirtualChip(devices.find("0x460")))
    chip.mode = "app"
    wiring = PinWiring(reset="dtr", boot0="rts", reset_inverted=True)
    chip.on_line_change = wiring
    link = connect("sim://0x460?chip=inv", enter="pins:rts,dtr,-dtr", invert=["dtr"], timeout=0.05)
    assert wiring.boots == ["bootloader"]
    link.close()
    registry.unregister("inv")


def test_identify_reads_bl_id_flash_size_and_uid() -> None:
    chip = registry.register("id", VirtualChip(devices.find("0x413")))
    link = connect("sim://0x413?chip=id", timeout=0.05)
    assert link.info.bl_id in devices.find("0x413").bl_ids
    assert link.uid == chip.uid
    assert link.device.flash_size == chip.device.flash_size
    assert link.info.commands == chip.device.commands
    link.close()
    registry.unregister("id")


def test_readout_protection_is_a_protection_error_naming_unprotect() -> None:
    chip = registry.register("rdp", VirtualChip(devices.find("0x460")))
    chip.set_rdp(1)
    link = connect("sim://0x460?chip=rdp", timeout=0.05)
    assert link.info.read_protected
    with pytest.raises(ProtectionError, match="--unprotect"):
        link.read(0x08000000, 16)
    link.bl.readout_unprotect()
    assert chip.rdp_level == 0
    link.bl.identify()
    assert link.read(0x08000000, 4) == b"\xff" * 4
    link.close()
    registry.unregister("rdp")


def test_get_checksum_matches_stm32_crc() -> None:
    from stmflash.image.crc import stm32_crc

    dev = dataclasses.replace(devices.find("0x460"), usart_protocol=0x33)
    assert P.GET_CHECKSUM in dev.commands
    chip = registry.register("crc", VirtualChip(dev))
    data = bytes(range(256)) * 8
    chip.preload(0x08000000, data)
    link = connect("sim://0x460?chip=crc", timeout=0.05)
    assert link.checksum(0x08000000, len(data)) == stm32_crc(data)
    link.close()
    registry.unregister("crc")
