"""Run the committed example images on an emulated Cortex-M core (unicorn) end to end.

This executes the real ARM code - vector table, Reset_Handler, the companion's early
check, the register-level UART loop, the matcher, the ack, the reset request and the
branch into the ROM - with the peripherals it touches modelled as plain memory except the
USART (a byte queue each way) and AIRCR (the reset request stops the run). RAM is kept
across the "reset", which is what makes the .noinit flag work on a chip.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from stmflash.trigger.frame import encode_ack, encode_request, find_ack

unicorn = pytest.importorskip("unicorn", reason="unicorn (test extra) runs the example images")
from unicorn import arm_const  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ROM_SP, ROM_ENTRY = 0x20001000, 0x100  # fake ROM: SP and reset handler offset in system memory
AIRCR = 0xE000ED0C
VTOR = 0xE000ED08


@dataclass(frozen=True)
class Board:
    image: str
    ram: tuple[int, int]
    sysmem: int
    rcc_rstf: int  # RCC_CSR
    sft: int
    rmvf: int
    syscfg: int  # MEMRMP / CFGR1
    syscfg_en: tuple[int, int]
    usart: int
    sr: int  # status register offset
    rd: int  # receive data offset
    td: int  # transmit data offset
    extra_pages: tuple[int, ...] = ()


BOARDS = {
    "f407": Board("blinky-f407.bin", (0x20000000, 0x20000), 0x1FFF0000, 0x40023874, 1 << 28,
                  1 << 24, 0x40013800, (0x40023844, 1 << 14), 0x40011000, 0x00, 0x04, 0x04),
    "g071": Board("blinky-g071.bin", (0x20000000, 0x9000), 0x1FFF0000, 0x40021060, 1 << 28,
                  1 << 23, 0x40010000, (0x40021040, 1 << 0), 0x40004400, 0x1C, 0x24, 0x28,
                  (0x50000000,)),
}


@dataclass
class Emu:
    board: Board
    uc: object = None
    rx: bytearray = field(default_factory=bytearray)
    tx: bytearray = field(default_factory=bytearray)
    reset_requested: int | None = None

    def __post_init__(self) -> None:
        b = self.board
        uc = unicorn.Uc(unicorn.UC_ARCH_ARM, unicorn.UC_MODE_THUMB | unicorn.UC_MODE_MCLASS)
        self.uc = uc
        image = (ROOT / "examples" / b.image).read_bytes()
        uc.mem_map(0x08000000, 0x20000)
        uc.mem_write(0x08000000, image)
        uc.mem_map(b.ram[0], b.ram[1])
        # fake ROM: vector table + "b ." at its reset handler
        uc.mem_map(b.sysmem, 0x8000)
        uc.mem_write(b.sysmem, struct.pack("<II", ROM_SP, b.sysmem + ROM_ENTRY + 1))
        uc.mem_write(b.sysmem + ROM_ENTRY, b"\xfe\xe7")
        # peripherals: plain memory around the USART, which is a byte queue
        page = b.usart & ~0xFFF
        uc.mem_map(0x40000000, page - 0x40000000)
        uc.mem_map(page + 0x1000, 0x40080000 - page - 0x1000)
        uc.mmio_map(page, 0x1000, self._usart_read, None, self._usart_write, None)
        for p in b.extra_pages:
            uc.mem_map(p, 0x1000)
        uc.mem_map(0xE000E000, 0x1000)
        uc.hook_add(unicorn.UC_HOOK_MEM_WRITE, self._aircr, begin=AIRCR, end=AIRCR + 3)

    # -- peripherals --
    def _usart_read(self, uc, offset, size, data):
        off = offset - (self.board.usart & 0xFFF)
        if off == self.board.sr:
            return (1 << 7) | (1 << 6) | ((1 << 5) if self.rx else 0)  # TXE TC RXNE
        if off == self.board.rd and self.rx:
            return self.rx.pop(0)
        return 0

    def _usart_write(self, uc, offset, size, value, data):
        if offset - (self.board.usart & 0xFFF) == self.board.td:
            self.tx.append(value & 0xFF)

    def _aircr(self, uc, access, address, size, value, data):
        self.reset_requested = value
        uc.emu_stop()

    def reg(self, address: int) -> int:
        return struct.unpack("<I", self.uc.mem_read(address, 4))[0]

    def set_reg(self, address: int, value: int) -> None:
        self.uc.mem_write(address, struct.pack("<I", value))

    # -- running --
    def power_on(self, reset_flags: int) -> None:
        """Reset state: peripherals cleared, RAM kept (it is not cleared by a reset)."""
        uc = self.uc
        for start, end in ((0x40000000, self.board.usart & ~0xFFF), (0xE000E000, 0xE000F000)):
            uc.mem_write(start, bytes(end - start))
        self.set_reg(self.board.rcc_rstf, reset_flags)
        self.reset_requested = None
        self.tx.clear()

    def run(self, max_instructions: int = 200_000) -> int:
        """Start from the image's vectors; returns the PC where execution stopped."""
        sp, reset = struct.unpack("<II", self.uc.mem_read(0x08000000, 8))
        self.uc.reg_write(arm_const.UC_ARM_REG_SP, sp)
        rom_loop = self.board.sysmem + ROM_ENTRY
        self.uc.emu_start(reset | 1, rom_loop, count=max_instructions)
        return self.uc.reg_read(arm_const.UC_ARM_REG_PC)


@pytest.fixture(params=sorted(BOARDS))
def emu(request) -> Emu:
    e = Emu(BOARDS[request.param])
    e.uc.mem_write(e.board.ram[0], bytes(e.board.ram[1]))
    return e


def test_app_echoes_and_ignores_noise(emu):
    emu.power_on(reset_flags=1 << 27)  # power-on reset
    noise = b"hello \xb0\x07\x01 world\r\n" + encode_request(5)[:-1] + b"\x00"
    emu.rx.extend(noise)
    pc = emu.run()
    assert emu.reset_requested is None
    assert not emu.rx, "the application did not read its UART"
    assert bytes(emu.tx) == noise  # echo
    assert pc & ~1 != emu.board.sysmem + ROM_ENTRY
    assert emu.reg(VTOR) == 0x08000000, "the app does not point VTOR at its own table"


def test_trigger_acks_resets_and_enters_rom(emu):
    b = emu.board
    emu.power_on(reset_flags=1 << 27)
    emu.rx.extend(b"garbage" + encode_request(0x1234ABCD))
    emu.run()
    assert emu.reset_requested is not None, "no reset after a valid trigger"
    assert emu.reset_requested & 0xFFFF0004 == 0x05FA0004  # VECTKEY | SYSRESETREQ
    assert find_ack(bytes(emu.tx), 0x1234ABCD)
    assert bytes(emu.tx).endswith(encode_ack(0x1234ABCD))

    # The reset: peripherals back to reset values, RAM kept, SFTRSTF set by hardware.
    emu.power_on(reset_flags=b.sft)
    pc = emu.run()
    assert pc == b.sysmem + ROM_ENTRY, f"stopped at {pc:#x}, not in the ROM"
    assert emu.uc.reg_read(arm_const.UC_ARM_REG_SP) == ROM_SP
    assert emu.reg(VTOR) == b.sysmem
    assert emu.reg(b.syscfg) & 3 == 1, "system memory not remapped"
    assert emu.reg(b.syscfg_en[0]) & b.syscfg_en[1]
    assert emu.reg(b.rcc_rstf) & b.rmvf, "reset flags not cleared"
    assert emu.tx == bytearray(), "the ROM was entered before the application ran"

    # One shot: the next software reset (say, the ROM's own) boots the application.
    emu.power_on(reset_flags=b.sft)
    emu.rx.extend(b"ok")
    pc = emu.run()
    assert pc != b.sysmem + ROM_ENTRY
    assert bytes(emu.tx) == b"ok"


def test_request_then_pin_reset_boots_the_application(emu):
    b = emu.board
    emu.power_on(reset_flags=1 << 27)
    emu.rx.extend(encode_request(77))
    emu.run()
    assert emu.reset_requested is not None
    emu.power_on(reset_flags=1 << 26)  # the user pressed NRST instead
    emu.rx.extend(b"still here")
    pc = emu.run()
    assert pc != b.sysmem + ROM_ENTRY
    assert bytes(emu.tx) == b"still here"
    emu.power_on(reset_flags=b.sft)  # and the stale request is gone for good
    emu.rx.extend(b"x")
    assert emu.run() != b.sysmem + ROM_ENTRY


def test_wrong_key_does_not_reset(emu):
    emu.power_on(reset_flags=1 << 27)
    emu.rx.extend(encode_request(9, key=b"other"))
    emu.run()
    assert emu.reset_requested is None


def test_implausible_rom_table_boots_the_application(emu):
    b = emu.board
    emu.power_on(reset_flags=1 << 27)
    emu.rx.extend(encode_request(3))
    emu.run()
    emu.uc.mem_write(b.sysmem, b"\xff" * 8)  # wrong family / unreadable ROM
    emu.power_on(reset_flags=b.sft)
    emu.rx.extend(b"z")
    pc = emu.run()
    assert pc != b.sysmem + ROM_ENTRY
    assert bytes(emu.tx) == b"z"
    assert emu.reg(b.syscfg) & 3 == 0, "remap left in place for the application"
